//! EFFP's mask update: a step of gradual pruning with regrowing.
//!
//! Every `interval` steps of the pruning phase the mask moves toward that moment's
//! budget (see [`super::schedule::budget`]): first a decaying fraction of the
//! switched-off groups whose gate gradient promises the largest loss drop is
//! revived, then the least important active groups per FLOP are switched off until
//! the budget holds again, the revived ones exempt (they were off precisely because
//! the criterion ranked them low, so this trades them for weaker ones). Masked
//! filters keep their weights, so a revived filter resumes where it stopped.

use effp_graph::channels::{ChannelAnalysis, Mask};
use effp_graph::ir::{NodeId, Op};
use tch::{Device, Kind, Tensor};

use super::schedule::regrow_fraction;
use super::session::{Criterion, MaskChange, MaskContext};
use crate::error::EngineError;
use crate::prune::{importance_from_norms, select};
use crate::runtime::Network;

/// The mask after step `step`, when it is a step that updates it.
pub(crate) fn update(
    ctx: &MaskContext<'_>,
    mask: &Mask,
    step: usize,
) -> Result<MaskChange, EngineError> {
    if !updates_at(step, ctx.options.interval, ctx.prune_steps) {
        return Ok(MaskChange::default());
    }
    let mut mask = mask.clone();
    let fraction = regrow_fraction(step, ctx.prune_steps, ctx.options.regrow);
    let revived = regrow(&mut mask, &ctx.benefit, fraction)?;
    let mut importance = match ctx.options.criterion {
        Criterion::Magnitude => live_importance(ctx.student, ctx.analysis),
        Criterion::Taylor => to_vec(&ctx.sensitivity)?,
        Criterion::Curvature => to_vec(&curvature_importance(&ctx.benefit, &ctx.curvature))?,
    };
    for &g in &revived {
        importance[g] = f64::INFINITY;
    }
    let budget = super::baselines::budget_at(ctx, step);
    let before = mask.pruned();
    let (next, _) = select(
        &ctx.model.graph,
        ctx.analysis,
        &importance,
        &mask,
        |c| ctx.budget.holds(c, budget),
        ctx.options.limits,
    );
    Ok(MaskChange {
        pruned: next.pruned().saturating_sub(before),
        regrown: revived.len(),
        mask: Some(next),
    })
}

/// The loss increase the curvature criterion predicts for closing each gate (never
/// below zero): closing moves a gate by −1, so Δloss ≈ −∂loss/∂g + ½·curvature, and
/// `benefit` is −∂loss/∂g.
pub(crate) fn curvature_importance(benefit: &Tensor, curvature: &Tensor) -> Tensor {
    (benefit + curvature * 0.5).clamp_min(0.0)
}

/// Whether EFFP moves the mask after `step`: every `interval` steps, and after the
/// last step of the pruning phase, whose budget is the target (so that a short run
/// still ends at the target).
pub(crate) fn updates_at(step: usize, interval: usize, prune_steps: usize) -> bool {
    let interval = interval.max(1);
    step % interval == interval - 1 || step + 1 == prune_steps
}

/// Switches on the `fraction` of switched-off groups with the largest positive
/// benefit and returns them.
fn regrow(mask: &mut Mask, benefit: &Tensor, fraction: f64) -> Result<Vec<usize>, EngineError> {
    let off: Vec<usize> = (0..mask.len()).filter(|&g| !mask.is_active(g)).collect();
    let count = (off.len() as f64 * fraction).floor() as usize;
    if count == 0 {
        return Ok(Vec::new());
    }
    let scores = to_vec(benefit)?;
    let mut ranked = off;
    ranked.sort_by(|&a, &b| scores[b].total_cmp(&scores[a]));
    let revived: Vec<usize> = ranked
        .into_iter()
        .take(count)
        .filter(|&g| scores[g] > 0.0)
        .collect();
    for &g in &revived {
        mask.set(g, true);
    }
    Ok(revived)
}

/// A per-group statistic as host numbers.
pub(crate) fn to_vec(t: &Tensor) -> Result<Vec<f64>, EngineError> {
    Vec::<f64>::try_from(t.to_device(Device::Cpu).to_kind(Kind::Double))
        .map_err(|e| EngineError::Input(e.to_string()))
}

/// Group importance from the student's current filter norms.
pub(crate) fn live_importance(net: &Network, analysis: &ChannelAnalysis) -> Vec<f64> {
    let g = &net.model().graph;
    importance_from_norms(analysis, |id: NodeId| {
        let node = g.node(id);
        let Some(w) = node.input(1).and_then(|v| net.constant(v)) else {
            return Vec::new();
        };
        let out_axis = match &node.op {
            Op::ConvTranspose(_) | Op::Gemm { trans_b: false, .. } => 1,
            _ => 0,
        };
        let dims: Vec<i64> = (0..w.dim() as i64).filter(|&d| d != out_axis).collect();
        let norms = tch::no_grad(|| {
            w.square()
                .sum_dim_intlist(dims.as_slice(), false, Kind::Float)
                .sqrt()
        });
        Vec::<f32>::try_from(norms.to_device(Device::Cpu))
            .map(|v| v.into_iter().map(f64::from).collect())
            .unwrap_or_default()
    })
}
