//! Ultralytics' letterbox: keep the aspect ratio, pad with grey 114 to a square.

use image::RgbImage;
use image::imageops::{FilterType, resize};

/// How an image was placed in the letterboxed input, to map boxes back.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Placement {
    /// Scale applied to the original image.
    pub gain: f64,
    /// Left padding in pixels.
    pub pad_x: f64,
    /// Top padding in pixels.
    pub pad_y: f64,
    /// Original width.
    pub width: u32,
    /// Original height.
    pub height: u32,
}

impl Placement {
    /// Maps a box from input pixels back to original-image pixels, clipped to it.
    pub fn to_original(&self, b: [f64; 4]) -> [f64; 4] {
        let (w, h) = (self.width as f64, self.height as f64);
        [
            ((b[0] - self.pad_x) / self.gain).clamp(0.0, w),
            ((b[1] - self.pad_y) / self.gain).clamp(0.0, h),
            ((b[2] - self.pad_x) / self.gain).clamp(0.0, w),
            ((b[3] - self.pad_y) / self.gain).clamp(0.0, h),
        ]
    }
}

/// Resizes (keeping aspect) and pads `img` into `height × width`, returning CHW RGB
/// floats in [0, 1] and the placement. As in Ultralytics validation, images are only
/// shrunk, never enlarged, unless `scale_up` is set.
pub fn letterbox(img: &RgbImage, height: u32, width: u32, scale_up: bool) -> (Vec<f32>, Placement) {
    let (w0, h0) = img.dimensions();
    let mut r = (height as f64 / h0 as f64).min(width as f64 / w0 as f64);
    if !scale_up {
        r = r.min(1.0);
    }
    let (nw, nh) = (
        ((w0 as f64) * r).round() as u32,
        ((h0 as f64) * r).round() as u32,
    );
    let resized;
    let src = if (nw, nh) != (w0, h0) {
        resized = resize(img, nw.max(1), nh.max(1), FilterType::Triangle);
        &resized
    } else {
        img
    };
    let dw = (width - nw.min(width)) as f64 / 2.0;
    let dh = (height - nh.min(height)) as f64 / 2.0;
    let (left, top) = ((dw - 0.1).round() as u32, (dh - 0.1).round() as u32);
    let plane = (height * width) as usize;
    let mut out = vec![114.0 / 255.0; 3 * plane];
    for (x, y, p) in src.enumerate_pixels() {
        let (tx, ty) = (x + left, y + top);
        if tx < width && ty < height {
            let i = (ty * width + tx) as usize;
            for c in 0..3 {
                out[c * plane + i] = p[c] as f32 / 255.0;
            }
        }
    }
    (
        out,
        Placement {
            gain: r,
            pad_x: left as f64,
            pad_y: top as f64,
            width: w0,
            height: h0,
        },
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_wide_image_is_centred_with_grey_bars() {
        let img = RgbImage::from_pixel(64, 32, image::Rgb([255, 0, 0]));
        let (data, p) = letterbox(&img, 64, 64, false);
        assert_eq!((p.gain, p.pad_x, p.pad_y), (1.0, 0.0, 16.0));
        assert!((data[0] - 114.0 / 255.0).abs() < 1e-6, "top bar is grey");
        assert_eq!(data[20 * 64], 1.0, "red channel inside");
        assert_eq!(
            p.to_original([0.0, 16.0, 64.0, 48.0]),
            [0.0, 0.0, 64.0, 32.0]
        );
    }

    #[test]
    fn a_large_image_is_shrunk_and_a_small_one_is_not_enlarged() {
        let big = RgbImage::new(256, 128);
        let (_, p) = letterbox(&big, 64, 64, false);
        assert_eq!((p.gain, p.pad_y), (0.25, 16.0));
        let small = RgbImage::new(32, 32);
        let (_, p) = letterbox(&small, 64, 64, false);
        assert_eq!((p.gain, p.pad_x, p.pad_y), (1.0, 16.0, 16.0));
    }
}
