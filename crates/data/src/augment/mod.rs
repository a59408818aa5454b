//! Training augmentations as Ultralytics applies them to YOLO training images: mosaic,
//! random scale and translation, HSV colour jitter and horizontal flips.

mod affine;
mod hsv;
mod mosaic;

pub use affine::{Affine, affine};
pub use hsv::{HsvGains, jitter_hsv};
pub use mosaic::{Tile, mosaic};

use image::RgbImage;

use super::dataset::Label;

/// Augmentation strengths. The defaults are Ultralytics' training defaults (scale 0.5,
/// translate 0.1, HSV 0.015/0.7/0.4, flip 0.5) except mosaic, which is off: effp's
/// runs fine-tune a trained detector for a few epochs, and there mosaics cost accuracy
/// (docs/benchmarks.md). When on, it is switched off for the last tenth of the run, as
/// Ultralytics does for its last 10 of 100 epochs.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Augment {
    /// Probability of a horizontal flip.
    pub flip: f64,
    /// Scale is drawn from [1 − scale, 1 + scale].
    pub scale: f64,
    /// Shift is drawn from ±translate × output size, per axis.
    pub translate: f64,
    /// Colour jitter.
    pub hsv: HsvGains,
    /// Probability that an image is a mosaic of itself and three random others.
    pub mosaic: f64,
    /// Share of the training steps, at the end of the run, trained without mosaic
    /// (whole epochs: an epoch that starts before that point keeps it).
    pub close_mosaic: f64,
}

pub use effp_protocol::settings::DEFAULT_MOSAIC;

impl Default for Augment {
    fn default() -> Self {
        Self {
            flip: 0.5,
            scale: 0.5,
            translate: 0.1,
            hsv: HsvGains::default(),
            mosaic: DEFAULT_MOSAIC,
            close_mosaic: 0.1,
        }
    }
}

impl Augment {
    /// The epochs, counted from 0, that may use mosaic in a run of `steps` steps with
    /// `batches_per_epoch` batches each: those that start before the closing share.
    pub fn mosaic_epochs(&self, steps: usize, batches_per_epoch: usize) -> u64 {
        if self.mosaic <= 0.0 {
            return 0;
        }
        let open = steps - ((self.close_mosaic.clamp(0.0, 1.0) * steps as f64).round() as usize);
        open.div_ceil(batches_per_epoch.max(1)) as u64
    }
}

/// An image and its labels, in pixels of that image.
#[derive(Debug, Clone)]
pub struct Labelled {
    /// The pixels.
    pub image: RgbImage,
    /// The objects: class and corners (x1, y1, x2, y2) in pixels.
    pub boxes: Vec<(usize, [f64; 4])>,
}

impl Labelled {
    /// Converts normalised labels to pixel boxes of `image`.
    pub fn new(image: RgbImage, labels: &[Label]) -> Self {
        let (w, h) = image.dimensions();
        let boxes = labels
            .iter()
            .map(|l| (l.class, l.to_pixels(w, h)))
            .collect();
        Self { image, boxes }
    }

    /// The labels normalised to the image again.
    pub fn labels(&self) -> Vec<Label> {
        let (w, h) = self.image.dimensions();
        let (wf, hf) = (w as f64, h as f64);
        self.boxes
            .iter()
            .map(|&(class, b)| Label {
                class,
                cx: ((b[0] + b[2]) / 2.0 / wf) as f32,
                cy: ((b[1] + b[3]) / 2.0 / hf) as f32,
                w: ((b[2] - b[0]) / wf) as f32,
                h: ((b[3] - b[1]) / hf) as f32,
            })
            .collect()
    }

    /// Mirrors the image and its boxes left to right.
    pub fn flip(&mut self) {
        image::imageops::flip_horizontal_in_place(&mut self.image);
        let w = self.image.width() as f64;
        for (_, b) in &mut self.boxes {
            *b = [w - b[2], b[1], w - b[0], b[3]];
        }
    }
}

/// Augments one training sample: a mosaic of it and `others` when given, cropped to
/// `size × size`, or the image alone at its own size (it is letterboxed afterwards);
/// then colour jitter and a flip. `uniform` draws numbers in [0, 1).
pub fn augment(
    first: Labelled,
    others: Option<[Labelled; 3]>,
    size: u32,
    a: &Augment,
    mut uniform: impl FnMut() -> f64,
) -> Labelled {
    let mut out = match others {
        Some([b, c, d]) => {
            let centre = [
                size as f64 * (0.5 + uniform()),
                size as f64 * (0.5 + uniform()),
            ];
            let tiles = [first, b, c, d].map(|t| Tile::fit(t, size));
            affine(
                &mosaic(tiles, size, centre),
                (size, size),
                &Affine::draw(a, &mut uniform),
            )
        }
        None => {
            let (w, h) = first.image.dimensions();
            affine(&first, (w, h), &Affine::draw(a, &mut uniform))
        }
    };
    if a.hsv.any() {
        jitter_hsv(&mut out.image, &a.hsv.draw(&mut uniform));
    }
    if uniform() < a.flip {
        out.flip();
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use image::Rgb;
    use proptest::prelude::*;

    const COLOURS: [[u8; 3]; 4] = [[250, 0, 0], [0, 250, 0], [0, 0, 250], [250, 250, 0]];

    /// A grey 64 × 64 image with one solid object of class `class` at `at` (x, y, w, h).
    fn scene(class: usize, at: [u32; 4]) -> Labelled {
        let mut image = RgbImage::from_pixel(64, 64, Rgb([114, 114, 114]));
        for y in at[1]..at[1] + at[3] {
            for x in at[0]..at[0] + at[2] {
                image.put_pixel(x, y, Rgb(COLOURS[class]));
            }
        }
        let b = [at[0], at[1], at[0] + at[2], at[1] + at[3]].map(f64::from);
        Labelled {
            image,
            boxes: vec![(class, b)],
        }
    }

    fn nearest_colour(p: [u8; 3]) -> Option<usize> {
        let d = |c: [u8; 3]| -> i32 { (0..3).map(|i| (p[i] as i32 - c[i] as i32).pow(2)).sum() };
        let grey = d([114, 114, 114]);
        (0..4)
            .filter(|&k| d(COLOURS[k]) < grey)
            .min_by_key(|&k| d(COLOURS[k]))
    }

    proptest! {
        /// Whatever is drawn, every box lies inside the output and its centre shows its
        /// own object: pixels and labels move together through mosaic, zoom, shift and flip.
        #[test]
        fn boxes_follow_their_objects(
            draws in proptest::collection::vec(0.0f64..1.0, 12),
            places in proptest::collection::vec((0u32..40, 0u32..40, 16u32..24, 16u32..24), 4),
            use_mosaic: bool,
        ) {
            let scenes: Vec<Labelled> = places
                .iter()
                .enumerate()
                .map(|(k, &(x, y, w, h))| scene(k, [x, y, w, h]))
                .collect();
            let a = Augment { hsv: HsvGains { h: 0.0, s: 0.0, v: 0.0 }, ..Augment::default() };
            let others = use_mosaic
                .then(|| [scenes[1].clone(), scenes[2].clone(), scenes[3].clone()]);
            let mut it = draws.into_iter();
            let out = augment(scenes[0].clone(), others, 64, &a, || it.next().unwrap());
            prop_assert_eq!(out.image.dimensions(), (64, 64));
            for (class, b) in &out.boxes {
                prop_assert!(b[0] >= 0.0 && b[1] >= 0.0 && b[2] <= 64.0 && b[3] <= 64.0);
                let (x, y) = (((b[0] + b[2]) / 2.0) as u32, ((b[1] + b[3]) / 2.0) as u32);
                let seen = nearest_colour(out.image.get_pixel(x, y).0);
                prop_assert_eq!(seen, Some(*class), "box {:?}", b);
            }
            if !use_mosaic {
                prop_assert!(out.boxes.iter().all(|(c, _)| *c == 0));
            }
        }
    }

    #[test]
    fn mosaic_is_closed_for_the_last_share_in_whole_epochs() {
        let a = Augment {
            mosaic: 1.0,
            ..Augment::default()
        };
        // 100 steps, 10 per epoch: steps 0..90 open, so epochs 0..9.
        assert_eq!(a.mosaic_epochs(100, 10), 9);
        // 100 steps, 12 per epoch: epoch 7 starts at step 84 < 90 and keeps mosaic.
        assert_eq!(a.mosaic_epochs(100, 12), 8);
        let off = Augment { mosaic: 0.0, ..a };
        assert_eq!(off.mosaic_epochs(100, 10), 0);
        let never_closed = Augment {
            close_mosaic: 0.0,
            ..a
        };
        assert_eq!(never_closed.mosaic_epochs(100, 10), 10);
    }
}
