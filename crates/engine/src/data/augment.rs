//! Training augmentations: horizontal flip, scale and translation jitter.

use image::imageops::{FilterType, resize};
use image::{Rgb, RgbImage};

use super::dataset::Label;

/// Augmentation strengths (Ultralytics' defaults: flip 0.5, scale 0.5, translate 0.1).
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Augment {
    /// Probability of a horizontal flip.
    pub flip: f64,
    /// Scale is drawn from [1 − scale, 1 + scale].
    pub scale: f64,
    /// Shift is drawn from ±translate × image size, per axis.
    pub translate: f64,
}

impl Default for Augment {
    fn default() -> Self {
        Self {
            flip: 0.5,
            scale: 0.5,
            translate: 0.1,
        }
    }
}

/// Applies a random flip, zoom and shift to an image and its labels. `uniform` draws
/// numbers in [0, 1). Boxes are moved with the pixels and clipped to the image; boxes
/// left with less than 2 pixels or less than 10% of their area are dropped.
pub fn augment(
    img: &RgbImage,
    labels: &[Label],
    a: &Augment,
    mut uniform: impl FnMut() -> f64,
) -> (RgbImage, Vec<Label>) {
    let (w, h) = img.dimensions();
    let (wf, hf) = (w as f64, h as f64);
    let flip = uniform() < a.flip;
    let s = 1.0 - a.scale + 2.0 * a.scale * uniform();
    let tx = (2.0 * uniform() - 1.0) * a.translate * wf;
    let ty = (2.0 * uniform() - 1.0) * a.translate * hf;
    let (sw, sh) = (
        ((wf * s).round() as u32).max(1),
        ((hf * s).round() as u32).max(1),
    );
    let scaled = resize(img, sw, sh, FilterType::Triangle);
    // Place the scaled image so that its centre lands at the centre plus the shift.
    let ox = ((wf - sw as f64) / 2.0 + tx).round() as i64;
    let oy = ((hf - sh as f64) / 2.0 + ty).round() as i64;
    let mut out = RgbImage::from_pixel(w, h, Rgb([114, 114, 114]));
    for (x, y, p) in scaled.enumerate_pixels() {
        let (dx, dy) = (x as i64 + ox, y as i64 + oy);
        if dx >= 0 && dy >= 0 && (dx as u32) < w && (dy as u32) < h {
            let fx = if flip { w - 1 - dx as u32 } else { dx as u32 };
            out.put_pixel(fx, dy as u32, *p);
        }
    }
    let (kx, ky) = (sw as f64 / wf, sh as f64 / hf);
    let mut moved = Vec::with_capacity(labels.len());
    for l in labels {
        let b = l.to_pixels(w, h);
        let mut x1 = b[0] * kx + ox as f64;
        let mut x2 = b[2] * kx + ox as f64;
        let y1 = (b[1] * ky + oy as f64).clamp(0.0, hf);
        let y2 = (b[3] * ky + oy as f64).clamp(0.0, hf);
        let area_before = (x2 - x1) * (b[3] - b[1]) * ky;
        x1 = x1.clamp(0.0, wf);
        x2 = x2.clamp(0.0, wf);
        if flip {
            (x1, x2) = (wf - x2, wf - x1);
        }
        let (bw, bh) = (x2 - x1, y2 - y1);
        if bw < 2.0 || bh < 2.0 || bw * bh < 0.1 * area_before {
            continue;
        }
        moved.push(Label {
            class: l.class,
            cx: ((x1 + x2) / 2.0 / wf) as f32,
            cy: ((y1 + y2) / 2.0 / hf) as f32,
            w: (bw / wf) as f32,
            h: (bh / hf) as f32,
        });
    }
    (out, moved)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn square_image() -> (RgbImage, Vec<Label>) {
        let mut img = RgbImage::from_pixel(64, 64, Rgb([0, 0, 0]));
        for y in 8..24 {
            for x in 8..24 {
                img.put_pixel(x, y, Rgb([255, 255, 255]));
            }
        }
        (
            img,
            vec![Label {
                class: 1,
                cx: 16.0 / 64.0,
                cy: 16.0 / 64.0,
                w: 16.0 / 64.0,
                h: 16.0 / 64.0,
            }],
        )
    }

    #[test]
    fn a_flip_mirrors_pixels_and_boxes_together() {
        let (img, labels) = square_image();
        let none = Augment {
            flip: 1.0,
            scale: 0.0,
            translate: 0.0,
        };
        let mut draws = [0.0, 0.5, 0.5, 0.5].into_iter();
        let (out, moved) = augment(&img, &labels, &none, || draws.next().unwrap());
        assert_eq!(out.get_pixel(63 - 16, 16), &Rgb([255, 255, 255]));
        assert_eq!(out.get_pixel(16, 16), &Rgb([0, 0, 0]));
        assert!((moved[0].cx - 48.0 / 64.0).abs() < 1e-6 && moved[0].class == 1);
    }

    #[test]
    fn zoom_and_shift_move_the_box_with_the_object() {
        let (img, labels) = square_image();
        let a = Augment {
            flip: 0.0,
            scale: 0.5,
            translate: 0.1,
        };
        // No flip; scale 1.5 (draw 1.0 → 1 + 0.5); shift +6.4 px in x, 0 in y.
        let mut draws = [0.9, 1.0, 1.0, 0.5].into_iter();
        let (out, moved) = augment(&img, &labels, &a, || draws.next().unwrap());
        let b = moved[0].to_pixels(64, 64);
        // The white square now spans the box: check its centre pixel and a pixel outside.
        let (cx, cy) = (((b[0] + b[2]) / 2.0) as u32, ((b[1] + b[3]) / 2.0) as u32);
        assert_eq!(out.get_pixel(cx, cy), &Rgb([255, 255, 255]));
        assert!((b[2] - b[0] - 24.0).abs() < 1.0, "scaled width {b:?}");
        assert_eq!(out.get_pixel((b[2] + 2.0) as u32, cy), &Rgb([0, 0, 0]));
    }

    #[test]
    fn boxes_pushed_out_of_the_image_are_dropped() {
        let (img, labels) = square_image();
        let a = Augment {
            flip: 0.0,
            scale: 0.0,
            translate: 0.5,
        };
        let mut draws = [0.9, 0.5, 0.0, 0.0].into_iter();
        let (_, moved) = augment(&img, &labels, &a, || draws.next().unwrap());
        assert!(moved.is_empty());
    }
}
