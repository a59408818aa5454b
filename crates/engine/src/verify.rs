//! Checks that a compacted model computes what the masked original computes.

use effp_graph::channels::{ChannelAnalysis, Mask};
use effp_graph::ir::Model;
use tch::{Device, Kind, Tensor};

use crate::error::EngineError;
use crate::runtime::Network;

pub use effp_protocol::report::Equivalence;

/// How far `actual` is from `expected`, relative per channel (axis 1): the largest
/// |actual − expected| of a channel over the largest |expected| of that channel
/// (floored at 1e-4 of the tensor's largest value, so that a channel of zeros does
/// not turn float noise into a large ratio), the worst channel counting. Detectors
/// put box pixels and class scores in one tensor: relative to the tensor's largest
/// value, a 0.1 error in a score would hide behind pixel coordinates in the hundreds.
pub fn channel_relative_error(actual: &Tensor, expected: &Tensor) -> f64 {
    let (a, e) = (actual.to_kind(Kind::Double), expected.to_kind(Kind::Double));
    let overall = e.abs().max().double_value(&[]);
    let floor = (overall * 1e-4).max(1e-12);
    if e.dim() < 2 {
        return (&a - &e).abs().max().double_value(&[]) / overall.max(floor);
    }
    let channels = e.size()[1];
    let per_channel = |t: &Tensor| t.transpose(0, 1).reshape([channels, -1]);
    let diff = per_channel(&(&a - &e)).abs().amax([1], false);
    let scale = per_channel(&e).abs().amax([1], false).clamp_min(floor);
    (diff / scale).max().double_value(&[])
}

/// Largest relative difference (per output channel) between a masked network and its
/// compaction that is accepted: both compute the same sums in another order.
pub const EQUIVALENCE_TOLERANCE: f64 = 1e-4;

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
    let masked = Network::new(original, device)?
        .with_gates(analysis)
        .precise();
    let small = Network::new(compacted, device)?.precise();
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
    if a.len() != b.len() {
        return Err(EngineError::Input(format!(
            "the compacted model has {} outputs, the original {}",
            b.len(),
            a.len()
        )));
    }
    let mut worst = 0.0f64;
    for (index, (p, q)) in a.iter().zip(&b).enumerate() {
        if p.size() != q.size() {
            return Err(EngineError::Input(format!(
                "output #{index} of the compacted model has shape {:?}, the original's {:?}",
                q.size(),
                p.size()
            )));
        }
        worst = worst.max(channel_relative_error(p, q));
    }
    Ok(Equivalence {
        max_relative_error: worst,
        batch,
        device: format!("{device:?}").to_lowercase(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_score_error_is_not_hidden_by_large_box_coordinates() {
        // [1, 4 + 2, 3]: boxes in pixels (up to 640), two class scores in [0, 1].
        let expected = Tensor::from_slice(&[
            320.0f32, 100.0, 640.0, 300.0, 50.0, 20.0, 40.0, 60.0, 80.0, 60.0, 10.0, 30.0, 0.9,
            0.1, 0.5, 0.2, 0.8, 0.3,
        ])
        .reshape([1, 6, 3]);
        let mut actual = expected.copy();
        let _ = actual.get(0).get(4).get(0).fill_(0.8);
        let e = channel_relative_error(&actual, &expected);
        assert!((e - 0.1 / 0.9).abs() < 1e-6, "{e}");
        // Over the whole tensor the same error would read 0.1 / 640.
        let whole = (&actual - &expected).abs().max().double_value(&[]) / 640.0;
        assert!(whole < 2e-4 && e > 500.0 * whole);
        assert_eq!(channel_relative_error(&expected, &expected), 0.0);
        // A channel of zeros compares against the floor, not against zero.
        let zeros = Tensor::zeros([1, 2, 4], (Kind::Float, Device::Cpu));
        let _ = actual.zero_();
        assert_eq!(channel_relative_error(&zeros, &zeros), 0.0);
    }
}
