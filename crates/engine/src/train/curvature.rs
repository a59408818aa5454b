//! How much the distillation loss would rise if a group's gate closed, to second
//! order: the diagonal of the loss's Gauss-Newton curvature with respect to the gates.
//!
//! At the start of training the student equals the teacher, the loss and every
//! gradient are zero, and a first-order criterion ranks all groups equal. The
//! curvature is not zero there: it says how strongly each group moves the outputs
//! the student must reproduce. It is estimated with a random probe (Hutchinson):
//! for P = Σ w·r·s with r random signs (±1, independent) and s the student's
//! distilled tensors, the squared gate gradient of P has the Gauss-Newton diagonal as
//! its expectation. The signs come from the crate's own seeded generator, not
//! libtorch's global one, which every thread of a process shares: a probe must not
//! depend on what else runs at the same time.

use effp_graph::channels::ChannelAnalysis;
use effp_graph::ir::{Model, ValueId};
use tch::{Kind, Tensor};

use super::distill::{Distill, DistillTargets};
use super::effp::{curvature_importance, to_vec};
use crate::data::rng::SplitMix;
use crate::error::EngineError;
use crate::runtime::Network;

/// What EFFP's curvature criterion predicts, at the start of training, for switching
/// off each group of `analysis` alone: the rise of the distillation loss (toward the
/// original's outputs, and the tapped values `distill` names, each compared as a
/// squared error per channel) on the
/// images `x`, as the criterion ranks groups before its first mask update. The
/// student still equals the original there, so the first-order term is zero and the
/// estimate is half the curvature along the group's gate, averaged over `probes`
/// random probes drawn from `seed` (one is what a training step uses; more lower the
/// probe noise). One entry per group, on the device of `x`.
pub fn predicted_loss_increase(
    model: &Model,
    analysis: &ChannelAnalysis,
    x: &Tensor,
    distill: Distill,
    probes: usize,
    seed: u64,
) -> Result<Vec<f64>, EngineError> {
    let device = x.device();
    let student = Network::new(model, device)?.with_gates(analysis);
    let taps = DistillTargets::resolve(distill, &model.graph, analysis)?.taps();
    let groups = analysis.groups.len() as i64;
    let gates = Tensor::ones([groups], (Kind::Float, device)).set_requires_grad(true);
    let probes = probes.max(1);
    let mut curvature = Tensor::zeros([groups], (Kind::Float, device));
    for k in 0..probes {
        let probe_seed = (seed ^ (k as u64).wrapping_mul(0x9e37_79b9_7f4a_7c15)) as i64;
        curvature += gate_curvature(&student, &taps, x, &gates, probe_seed)?;
    }
    curvature /= probes as f64;
    to_vec(&curvature_importance(&curvature.zeros_like(), &curvature))
}

/// One probe's estimate of the curvature diagonal (one entry per group) on `x`,
/// with probe noise drawn from `seed`. Leaves gradients in the student's weights,
/// which the next optimiser step clears.
pub(crate) fn gate_curvature(
    student: &Network,
    taps: &[ValueId],
    x: &Tensor,
    gates: &Tensor,
    seed: i64,
) -> Result<Tensor, EngineError> {
    let (out, tapped) = student.forward_tapped(&[x.shallow_clone()], Some(gates), taps)?;
    let all: Vec<Tensor> = out.into_iter().chain(tapped).collect();
    let count = all.len().max(1) as f64;
    let mut rng = SplitMix(seed as u64);
    let mut terms = Vec::with_capacity(all.len());
    for s in &all {
        if s.dim() < 2 {
            continue;
        }
        let dims: Vec<i64> = (0..s.dim() as i64).filter(|&d| d != 1).collect();
        let channels = s.size()[1];
        let per_channel = (s.numel() as i64 / channels.max(1)).max(1);
        // The loss weighs each channel's squared error by 1 / (elements · spread);
        // the same spread as the loss (of the student, which tracks the teacher).
        let spread = tch::no_grad(|| {
            s.var_dim(dims.as_slice(), false, false)
                + s.square().mean_dim(dims.as_slice(), false, Kind::Float) * 1e-6
                + 1e-12
        });
        let mut shape = vec![1i64; s.dim()];
        shape[1] = channels;
        let weight = (spread * (count * channels as f64 * per_channel as f64) / 2.0)
            .reciprocal()
            .sqrt()
            .reshape(&shape);
        let noise = random_signs(&mut rng, s);
        terms.push((s * noise * weight).sum(Kind::Float));
    }
    if terms.is_empty() {
        return Ok(gates.zeros_like().detach());
    }
    let probe = Tensor::stack(&terms, 0).sum(Kind::Float);
    let mut g = gates.shallow_clone();
    g.zero_grad();
    probe.backward();
    let grad = gates.grad();
    let curvature = if grad.defined() {
        grad.square()
    } else {
        gates.zeros_like()
    };
    g.zero_grad();
    Ok(curvature.detach())
}

/// A tensor shaped like `like` (on its device) of independent random signs ±1.
fn random_signs(rng: &mut SplitMix, like: &Tensor) -> Tensor {
    let n = like.numel();
    let mut signs = Vec::with_capacity(n);
    while signs.len() < n {
        let bits = rng.next_u64();
        let take = (n - signs.len()).min(64);
        signs.extend((0..take).map(|i| if bits >> i & 1 == 1 { 1.0f32 } else { -1.0 }));
    }
    Tensor::from_slice(&signs)
        .reshape(like.size())
        .to_device(like.device())
}
