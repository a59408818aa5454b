//! Evaluating a network on a dataset split: load, letterbox, run, decode, score.

use std::sync::mpsc;
use std::time::Instant;

use serde::Serialize;
use tch::{Kind, Tensor};

use super::decode::{Layout, NmsOptions, decode_image, detect_layout};
use super::map::{Detection, GroundTruth, MapReport, evaluate};
use crate::data::letterbox::{Placement, letterbox};
use crate::data::{DataError, Sample};
use crate::error::EngineError;
use crate::runtime::Network;

/// How to evaluate.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct EvalOptions {
    /// Images per forward pass.
    pub batch: usize,
    /// Output layout; detected from the output shape when `None`.
    pub layout: Option<Layout>,
    /// NMS settings.
    pub nms: NmsOptions,
}

impl Default for EvalOptions {
    fn default() -> Self {
        Self {
            batch: 8,
            layout: None,
            nms: NmsOptions::default(),
        }
    }
}

/// The outcome of an evaluation.
#[derive(Debug, Clone, Serialize)]
pub struct EvalReport {
    /// Images evaluated.
    pub images: usize,
    /// Labelled objects (crowd regions not counted).
    pub instances: usize,
    /// Input size (height, width) the images were letterboxed to.
    pub input_size: [u32; 2],
    /// The decoder used.
    pub layout: Layout,
    /// The scores.
    pub metrics: MapReport,
    /// Wall time in seconds (loading, preprocessing, inference, NMS, scoring).
    pub seconds: f64,
    /// Throughput.
    pub images_per_second: f64,
}

struct Batch {
    start: usize,
    data: Vec<f32>,
    placements: Vec<Placement>,
}

/// Runs `net` over `samples` and scores its detections against their labels.
/// `progress` is called with the number of images done after every batch.
pub fn evaluate_network(
    net: &Network,
    samples: &[Sample],
    classes: usize,
    options: &EvalOptions,
    mut progress: impl FnMut(usize),
) -> Result<EvalReport, EngineError> {
    let started = Instant::now();
    let g = &net.model().graph;
    let input = g
        .inputs
        .first()
        .ok_or_else(|| EngineError::Input("the model has no input".into()))?;
    let shape = g.shape(input.value).unwrap_or(&[]);
    let [_, 3, h, w] = shape else {
        return Err(EngineError::Input(format!(
            "the model's input {shape:?} is not an N×3×H×W image"
        )));
    };
    let (h, w) = (*h as u32, *w as u32);
    let batch = options.batch.max(1);
    let (tx, rx) = mpsc::sync_channel::<Result<Batch, DataError>>(2);
    let mut layout = options.layout;
    let mut detections = Vec::new();
    let mut labels = Vec::new();
    std::thread::scope(|scope| -> Result<(), EngineError> {
        // Decode and letterbox the next batches while the network runs this one.
        scope.spawn(move || {
            for (k, chunk) in samples.chunks(batch).enumerate() {
                let loaded = load_batch(chunk, k * batch, h, w);
                let failed = loaded.is_err();
                if tx.send(loaded).is_err() || failed {
                    break;
                }
            }
        });
        for received in rx {
            let b = received?;
            let n = b.placements.len();
            let x = Tensor::from_slice(&b.data).reshape([n as i64, 3, h as i64, w as i64]);
            let y = tch::no_grad(|| net.forward(&[x], None))?.remove(0);
            let out_shape: Vec<usize> = y.size().iter().map(|&d| d as usize).collect();
            let chosen = match layout {
                Some(l) => l,
                None => detect_layout(&out_shape, classes).map_err(EngineError::Input)?,
            };
            layout = Some(chosen);
            let anchors = match chosen {
                Layout::Ultralytics => out_shape[2],
                Layout::Yolov5 => out_shape[1],
            };
            let values = Vec::<f32>::try_from(y.to_kind(Kind::Float).flatten(0, -1))
                .map_err(|e| EngineError::Input(e.to_string()))?;
            let per_image = values.len() / n;
            for (i, placement) in b.placements.iter().enumerate() {
                let image = b.start + i;
                let slice = &values[i * per_image..(i + 1) * per_image];
                for c in decode_image(slice, anchors, classes, chosen, &options.nms) {
                    detections.push(Detection {
                        image,
                        class: c.class,
                        bbox: placement.to_original(c.bbox),
                        score: c.score as f64,
                    });
                }
                let sample = &samples[image];
                let regions = sample.labels.iter().map(|l| (l, false));
                for (l, crowd) in regions.chain(sample.crowd.iter().map(|l| (l, true))) {
                    labels.push(GroundTruth {
                        image,
                        class: l.class,
                        bbox: l.to_pixels(placement.width, placement.height),
                        crowd,
                    });
                }
            }
            progress(b.start + n);
        }
        Ok(())
    })?;
    let metrics = evaluate(&labels, &detections, samples.len(), classes);
    let seconds = started.elapsed().as_secs_f64();
    Ok(EvalReport {
        images: samples.len(),
        instances: labels.iter().filter(|l| !l.crowd).count(),
        input_size: [h, w],
        layout: layout.unwrap_or(Layout::Ultralytics),
        metrics,
        seconds,
        images_per_second: samples.len() as f64 / seconds.max(1e-9),
    })
}

fn load_batch(chunk: &[Sample], start: usize, h: u32, w: u32) -> Result<Batch, DataError> {
    let mut data = Vec::with_capacity(chunk.len() * 3 * (h * w) as usize);
    let mut placements = Vec::with_capacity(chunk.len());
    for sample in chunk {
        let img = crate::data::read_rgb(&sample.image)?;
        let (pixels, placement) = letterbox(&img, h, w, false);
        data.extend_from_slice(&pixels);
        placements.push(placement);
    }
    Ok(Batch {
        start,
        data,
        placements,
    })
}
