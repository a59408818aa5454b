//! Training batches: shuffled, optionally augmented, letterboxed and stacked into tch
//! tensors on a background thread while the previous batch trains.

use std::sync::mpsc;

use tch::Tensor;

use super::augment::{Augment, Labelled, augment};
use super::dataset::Sample;
use super::letterbox::letterbox;
use super::rng::SplitMix;
use super::{DataError, read_rgb};

/// How batches are made.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct LoaderOptions {
    /// Images per batch (the last batch may be smaller).
    pub batch: usize,
    /// Square input size.
    pub imgsz: u32,
    /// Shuffle and augmentation seed; with the epoch number it fixes the order.
    pub seed: u64,
    /// Augmentations, or `None` for plain letterboxing.
    pub augment: Option<Augment>,
    /// Epochs from this one on make no mosaics (see [`Augment::mosaic_epochs`]).
    pub mosaic_epochs: u64,
}

impl LoaderOptions {
    /// Batches of the images as they are (letterboxed, not augmented).
    pub fn plain(batch: usize, imgsz: u32, seed: u64) -> Self {
        Self {
            batch,
            imgsz,
            seed,
            augment: None,
            mosaic_epochs: 0,
        }
    }
}

/// One batch: images `[B, 3, S, S]` in [0, 1] and targets `[M, 6]` rows of
/// (image index in batch, class, cx, cy, w, h) normalised to the input.
#[derive(Debug)]
pub struct TrainBatch {
    /// The images.
    pub images: Tensor,
    /// The labels.
    pub targets: Tensor,
}

/// The batches of one epoch, prepared two ahead on a background thread.
pub fn epoch(
    samples: &[Sample],
    options: LoaderOptions,
    epoch: u64,
) -> impl Iterator<Item = Result<TrainBatch, DataError>> + use<> {
    let samples = samples.to_vec();
    let (tx, rx) = mpsc::sync_channel(2);
    std::thread::spawn(move || {
        let mut rng = SplitMix(options.seed ^ epoch.wrapping_mul(0x9e37_79b9_7f4a_7c15));
        let mut order: Vec<usize> = (0..samples.len()).collect();
        for i in (1..order.len()).rev() {
            order.swap(i, (rng.next_u64() % (i as u64 + 1)) as usize);
        }
        for chunk in order.chunks(options.batch.max(1)) {
            let mosaic = epoch < options.mosaic_epochs;
            let batch = make_batch(&samples, chunk, &options, mosaic, &mut rng);
            let failed = batch.is_err();
            if tx.send(batch).is_err() || failed {
                break;
            }
        }
    });
    rx.into_iter()
}

fn make_batch(
    samples: &[Sample],
    chunk: &[usize],
    o: &LoaderOptions,
    mosaic: bool,
    rng: &mut SplitMix,
) -> Result<TrainBatch, DataError> {
    let s = o.imgsz;
    let mut pixels = Vec::with_capacity(chunk.len() * 3 * (s * s) as usize);
    let mut targets: Vec<f32> = Vec::new();
    for (b, &i) in chunk.iter().enumerate() {
        let sample = &samples[i];
        let img = read_rgb(&sample.image)?;
        let (img, labels) = match &o.augment {
            Some(a) => {
                let others = if mosaic && rng.unit() < a.mosaic {
                    let mut load = || -> Result<Labelled, DataError> {
                        let other = &samples[rng.below(samples.len())];
                        Ok(Labelled::new(read_rgb(&other.image)?, &other.labels))
                    };
                    Some([load()?, load()?, load()?])
                } else {
                    None
                };
                let out = augment(Labelled::new(img, &sample.labels), others, s, a, || {
                    rng.unit()
                });
                let labels = out.labels();
                (out.image, labels)
            }
            None => (img, sample.labels.clone()),
        };
        let (data, place) = letterbox(&img, s, s, true);
        pixels.extend_from_slice(&data);
        for l in labels {
            let p = l.to_pixels(place.width, place.height);
            let x1 = p[0] * place.gain + place.pad_x;
            let y1 = p[1] * place.gain + place.pad_y;
            let x2 = p[2] * place.gain + place.pad_x;
            let y2 = p[3] * place.gain + place.pad_y;
            let sf = s as f64;
            targets.extend_from_slice(&[
                b as f32,
                l.class as f32,
                ((x1 + x2) / 2.0 / sf) as f32,
                ((y1 + y2) / 2.0 / sf) as f32,
                ((x2 - x1) / sf) as f32,
                ((y2 - y1) / sf) as f32,
            ]);
        }
    }
    let n = chunk.len() as i64;
    Ok(TrainBatch {
        images: Tensor::from_slice(&pixels).reshape([n, 3, s as i64, s as i64]),
        targets: Tensor::from_slice(&targets).reshape([-1, 6]),
    })
}
