//! Checks that a compacted model computes what the masked original computes.

use effp_graph::channels::{ChannelAnalysis, Mask};
use effp_graph::ir::Model;
use serde::Serialize;
use tch::{Device, Kind, Tensor};

use crate::error::EngineError;
use crate::runtime::Network;

/// Outcome of an equivalence check.
#[derive(Debug, Clone, Serialize)]
pub struct Equivalence {
    /// Largest |masked − compacted| over the largest |compacted|, over all outputs.
    pub max_relative_error: f64,
    /// Samples in the random batch.
    pub batch: i64,
    /// Where it ran.
    pub device: String,
}

/// Runs the original model with `mask` as gates and the compacted model on the same
/// random batch (seeded) and compares their outputs.
pub fn equivalence(
    original: &Model,
    analysis: &ChannelAnalysis,
    mask: &Mask,
    compacted: &Model,
    device: Device,
    batch: i64,
) -> Result<Equivalence, EngineError> {
    let masked = Network::new(original, device)?.with_gates(analysis);
    let small = Network::new(compacted, device)?;
    let gates = masked
        .gate_map()
        .expect("gates were added")
        .gates_for(mask, device);
    let g = &original.graph;
    let inputs: Vec<Tensor> = g
        .inputs
        .iter()
        .enumerate()
        .map(|(i, io)| {
            let mut shape: Vec<i64> = g
                .shape(io.value)
                .unwrap_or(&[])
                .iter()
                .map(|&d| d as i64)
                .collect();
            if let Some(b) = shape.first_mut() {
                *b = batch;
            }
            tch::manual_seed(1234 + i as i64);
            Tensor::rand(&shape, (Kind::Float, device))
        })
        .collect();
    let (a, b) = tch::no_grad(|| -> Result<_, EngineError> {
        Ok((
            masked.forward(&inputs, Some(&gates))?,
            small.forward(&inputs, None)?,
        ))
    })?;
    let mut worst = 0.0f64;
    for (p, q) in a.iter().zip(&b) {
        let diff = (p - q).abs().max().double_value(&[]);
        let scale = q.abs().max().double_value(&[]).max(1e-12);
        worst = worst.max(diff / scale);
    }
    Ok(Equivalence {
        max_relative_error: worst,
        batch,
        device: format!("{device:?}").to_lowercase(),
    })
}
