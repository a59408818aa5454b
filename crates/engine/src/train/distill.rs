//! What the student learns from: the frozen original's outputs, compared with a loss
//! that has no scale of its own.

use effp_graph::channels::ChannelAnalysis;
use effp_graph::ir::{Graph, Op, ValueId};
use tch::{Kind, Tensor};

pub use effp_protocol::Distill;

/// The prediction layers' outputs: values made by a convolution or Gemm that reads
/// prunable channels but whose own channels cannot be pruned (they are what the
/// decoder interprets: box distributions, class logits).
pub fn prediction_taps(graph: &Graph, analysis: &ChannelAnalysis) -> Vec<ValueId> {
    graph
        .nodes
        .iter()
        .filter(|n| matches!(n.op, Op::Conv(_) | Op::ConvTranspose(_) | Op::Gemm { .. }))
        .filter_map(|n| {
            let x = n.input(0)?;
            let y = *n.outputs.first()?;
            let reads_prunable =
                (0..analysis.channels(x)?).any(|c| analysis.group_of(x, c).is_some());
            let frozen = (0..analysis.channels(y)?).all(|c| analysis.group_of(y, c).is_none());
            (reads_prunable && frozen).then_some(y)
        })
        .collect()
}

/// Scale-free distillation: for every tensor pair and every channel of it (axis 1),
/// the mean squared error over the teacher's variance in that channel, averaged over
/// channels and over tensors. Per channel, because detectors put box coordinates in
/// pixels and class scores in [0, 1] in one tensor: normalised as a whole, the boxes
/// would drown the scores. Over the variance rather than the mean square, because an
/// offset the channel always carries (a coordinate's mean position, a logit's
/// background level) says nothing about how precisely it must be matched.
pub fn distillation_loss(student: &[Tensor], teacher: &[Tensor]) -> Tensor {
    let device = student
        .first()
        .map_or(tch::Device::Cpu, |t: &Tensor| t.device());
    let count = student.len().max(1) as f64;
    student
        .iter()
        .zip(teacher)
        .map(|(s, t)| {
            if t.dim() < 2 {
                return (s - t).square().mean(Kind::Float) / (t.square().mean(Kind::Float) + 1e-12);
            }
            let dims: Vec<i64> = (0..t.dim() as i64).filter(|&d| d != 1).collect();
            let error = (s - t)
                .square()
                .mean_dim(dims.as_slice(), false, Kind::Float);
            let spread = t.var_dim(dims.as_slice(), false, false)
                + t.square().mean_dim(dims.as_slice(), false, Kind::Float) * 1e-6
                + 1e-12;
            (error / spread).mean(Kind::Float)
        })
        .fold(Tensor::zeros([], (Kind::Float, device)), |acc, l| acc + l)
        / count
}
