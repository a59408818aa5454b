//! Random zoom and shift: the image is scaled about its centre, placed at the centre of
//! the output plus a shift, and sampled bilinearly (as `cv2.warpAffine` does, grey 114
//! outside); boxes move with it and those left too small are dropped.

use image::{Rgb, RgbImage};

use super::{Augment, Labelled};

/// Grey of the area outside the image, as in Ultralytics.
const FILL: f32 = 114.0;

/// One draw of the random scale and shift.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Affine {
    /// Zoom factor.
    pub scale: f64,
    /// Shift of the centre as a share of the output size, per axis (x, y).
    pub shift: [f64; 2],
}

impl Affine {
    /// Draws a scale in [1 − scale, 1 + scale] and shifts in ±translate (three draws).
    pub fn draw(a: &Augment, uniform: &mut impl FnMut() -> f64) -> Self {
        let scale = 1.0 - a.scale + 2.0 * a.scale * uniform();
        let tx = (2.0 * uniform() - 1.0) * a.translate;
        let ty = (2.0 * uniform() - 1.0) * a.translate;
        Self {
            scale,
            shift: [tx, ty],
        }
    }
}

/// Applies `t` to `src`, producing an image of `out` = (width, height). Boxes are
/// clipped to the output and kept when over 2 pixels each way, with more than 10% of
/// their scaled area left and an aspect ratio under 100 (Ultralytics' candidate rule).
pub fn affine(src: &Labelled, out: (u32, u32), t: &Affine) -> Labelled {
    let (iw, ih) = src.image.dimensions();
    let (ow, oh) = out;
    let s = t.scale.max(1e-6);
    let cin = [iw as f64 / 2.0, ih as f64 / 2.0];
    let cout = [
        ow as f64 / 2.0 + t.shift[0] * ow as f64,
        oh as f64 / 2.0 + t.shift[1] * oh as f64,
    ];
    let mut image = RgbImage::new(ow, oh);
    for (x, y, p) in image.enumerate_pixels_mut() {
        let sx = (x as f64 + 0.5 - cout[0]) / s + cin[0] - 0.5;
        let sy = (y as f64 + 0.5 - cout[1]) / s + cin[1] - 0.5;
        *p = bilinear(&src.image, sx, sy);
    }
    let (wf, hf) = (ow as f64, oh as f64);
    let boxes = src
        .boxes
        .iter()
        .filter_map(|&(class, b)| {
            let map = |v: f64, axis: usize| (v - cin[axis]) * s + cout[axis];
            let before = (b[2] - b[0]) * (b[3] - b[1]) * s * s;
            let x1 = map(b[0], 0).clamp(0.0, wf);
            let x2 = map(b[2], 0).clamp(0.0, wf);
            let y1 = map(b[1], 1).clamp(0.0, hf);
            let y2 = map(b[3], 1).clamp(0.0, hf);
            let (w, h) = (x2 - x1, y2 - y1);
            let aspect = (w / h.max(1e-16)).max(h / w.max(1e-16));
            (w > 2.0 && h > 2.0 && w * h > 0.1 * before && aspect < 100.0)
                .then_some((class, [x1, y1, x2, y2]))
        })
        .collect();
    Labelled { image, boxes }
}

fn bilinear(img: &RgbImage, x: f64, y: f64) -> Rgb<u8> {
    let (w, h) = (img.width() as i64, img.height() as i64);
    let (x0, y0) = (x.floor() as i64, y.floor() as i64);
    let (fx, fy) = ((x - x0 as f64) as f32, (y - y0 as f64) as f32);
    let at = |xi: i64, yi: i64, c: usize| -> f32 {
        if xi < 0 || yi < 0 || xi >= w || yi >= h {
            FILL
        } else {
            img.get_pixel(xi as u32, yi as u32)[c] as f32
        }
    };
    let mut px = [0u8; 3];
    for (c, v) in px.iter_mut().enumerate() {
        let top = at(x0, y0, c) * (1.0 - fx) + at(x0 + 1, y0, c) * fx;
        let bottom = at(x0, y0 + 1, c) * (1.0 - fx) + at(x0 + 1, y0 + 1, c) * fx;
        *v = (top * (1.0 - fy) + bottom * fy).round().clamp(0.0, 255.0) as u8;
    }
    Rgb(px)
}

#[cfg(test)]
mod tests {
    use super::*;

    const WHITE: Rgb<u8> = Rgb([255, 255, 255]);
    const BLACK: Rgb<u8> = Rgb([0, 0, 0]);

    /// A 64 × 64 black image with a white square at 8..24 and its box.
    fn square() -> Labelled {
        let mut image = RgbImage::from_pixel(64, 64, BLACK);
        for y in 8..24 {
            for x in 8..24 {
                image.put_pixel(x, y, WHITE);
            }
        }
        Labelled {
            image,
            boxes: vec![(1, [8.0, 8.0, 24.0, 24.0])],
        }
    }

    #[test]
    fn identity_keeps_pixels_and_boxes() {
        let src = square();
        let out = affine(
            &src,
            (64, 64),
            &Affine {
                scale: 1.0,
                shift: [0.0, 0.0],
            },
        );
        assert_eq!(out.image, src.image);
        assert_eq!(out.boxes, src.boxes);
    }

    #[test]
    fn zoom_and_shift_move_the_box_with_the_object() {
        let t = Affine {
            scale: 1.5,
            shift: [0.1, 0.0],
        };
        let out = affine(&square(), (64, 64), &t);
        let b = out.boxes[0].1;
        // (8 − 32) × 1.5 + 32 + 6.4 = 2.4, (24 − 32) × 1.5 + 38.4 = 26.4.
        assert!(
            (b[0] - 2.4).abs() < 1e-9 && (b[2] - 26.4).abs() < 1e-9,
            "{b:?}"
        );
        assert!(b[1].abs() < 1e-9 && (b[3] - 20.0).abs() < 1e-9, "{b:?}");
        // The white square spans the box: inside is white, just outside is black.
        assert_eq!(out.image.get_pixel(14, 10), &WHITE);
        assert_eq!(out.image.get_pixel(3, 17), &WHITE);
        assert_eq!(out.image.get_pixel(28, 10), &BLACK);
        assert_eq!(out.image.get_pixel(14, 22), &BLACK);
    }

    #[test]
    fn a_smaller_output_crops_around_the_shifted_centre() {
        // 64 → 32: the output shows source pixels 16..48 at scale 1.
        let out = affine(
            &square(),
            (32, 32),
            &Affine {
                scale: 1.0,
                shift: [0.0, 0.0],
            },
        );
        assert_eq!(out.boxes, vec![(1, [0.0, 0.0, 8.0, 8.0])]);
        assert_eq!(out.image.get_pixel(7, 7), &WHITE);
        assert_eq!(out.image.get_pixel(8, 8), &BLACK);
    }

    #[test]
    fn boxes_pushed_out_of_the_image_are_dropped_and_the_border_is_grey() {
        let t = Affine {
            scale: 1.0,
            shift: [-0.5, -0.5],
        };
        let out = affine(&square(), (64, 64), &t);
        assert!(out.boxes.is_empty());
        assert_eq!(out.image.get_pixel(40, 40), &Rgb([114, 114, 114]));
    }
}
