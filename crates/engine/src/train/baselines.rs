//! The budgets and mask updates of the baseline methods (and the budget EFFP follows),
//! run through the same training loop as EFFP so that they compare at equal cost.

use std::collections::HashMap;

use effp_graph::channels::{ChannelAnalysis, Mask};
use effp_graph::ir::{NodeId, Op};
use tch::{Device, Kind};

use super::effp::live_importance;
use super::schedule::budget;
use super::session::{MaskChange, MaskContext, Method, Start};
use crate::data::rng::SplitMix;
use crate::error::EngineError;
use crate::prune::{Scope, select};
use crate::runtime::Network;

/// The budget (fraction of the original) a method's mask must meet after `step`.
pub(crate) fn budget_at(ctx: &MaskContext<'_>, step: usize) -> f64 {
    let goal = ctx.budget.goal;
    match ctx.options.method {
        // The last step of the pruning phase meets the target whatever the ramp.
        Method::Effp if step + 1 >= ctx.prune_steps => goal,
        Method::Effp if ctx.options.start == Start::Target => goal,
        Method::Effp => budget(step, ctx.prune_steps, goal),
        Method::Progressive | Method::Uniform => {
            let stages = ctx.options.stages.max(1);
            let done = stage_of(step, ctx.prune_steps, stages) + 1;
            1.0 - (1.0 - goal) * done as f64 / stages as f64
        }
        Method::L1 | Method::Random | Method::Sfp => goal,
    }
}

/// The stage (0-based) a step of the pruning phase belongs to.
fn stage_of(step: usize, prune_steps: usize, stages: usize) -> usize {
    (step * stages / prune_steps.max(1)).min(stages - 1)
}

/// The mask training starts from: the target's mask for one-shot methods (l1,
/// random), SFP's first choice and EFFP started at the target; everything on for
/// the gradual ones.
pub(crate) fn initial_mask(ctx: &MaskContext<'_>) -> Result<Option<Mask>, EngineError> {
    let importance = match ctx.options.method {
        Method::L1 | Method::Sfp => live_importance(ctx.student, ctx.analysis),
        Method::Effp if ctx.options.start == Start::Target => {
            live_importance(ctx.student, ctx.analysis)
        }
        Method::Random => {
            let mut rng = SplitMix(ctx.options.seed ^ 0x005e_ed0f_7a4d_0e11);
            (0..ctx.analysis.groups.len()).map(|_| rng.unit()).collect()
        }
        Method::Effp | Method::Progressive | Method::Uniform => return Ok(None),
    };
    // Random order, not random-per-FLOP: scale by the cost so that `select`'s
    // division by it leaves a uniform ranking.
    let importance: Vec<f64> = if ctx.options.method == Method::Random {
        importance
            .iter()
            .zip(&ctx.analysis.groups)
            .map(|(r, g)| r * ctx.options.limits.ranking_cost([g]))
            .collect()
    } else {
        importance
    };
    let mask = select_to(
        ctx,
        &importance,
        &Mask::all_active(ctx.analysis.groups.len()),
        ctx.budget.goal,
    );
    if !ctx.budget.holds(mask.1, ctx.budget.goal) {
        return Err(EngineError::Input(format!(
            "the target cannot be reached within the per-layer limits (the smallest mask keeps {:.3} of the original); \
             lower --min-channels or --min-fraction, or choose a higher target",
            if ctx.budget.by_params {
                mask.1.params as f64 / ctx.budget.original.params.max(1) as f64
            } else {
                mask.1.flops() as f64 / ctx.budget.original.flops().max(1) as f64
            }
        )));
    }
    Ok(Some(mask.0))
}

/// Progressive pruning: at the first step of every stage, switch off the weakest
/// active groups (live filter norms) down to that stage's budget.
pub(crate) fn progressive_update(ctx: &MaskContext<'_>, mask: &Mask, step: usize) -> MaskChange {
    let stages = ctx.options.stages.max(1);
    let starts_stage = step == 0
        || stage_of(step, ctx.prune_steps, stages) != stage_of(step - 1, ctx.prune_steps, stages);
    if !starts_stage {
        return MaskChange::default();
    }
    let importance = if ctx.options.method == Method::Uniform {
        group_norms(ctx.student, ctx.analysis)
    } else {
        live_importance(ctx.student, ctx.analysis)
    };
    let (next, _) = select_to(ctx, &importance, mask, budget_at(ctx, step));
    MaskChange {
        pruned: next.pruned().saturating_sub(mask.pruned()),
        regrown: 0,
        mask: Some(next),
    }
}

/// Soft filter pruning: at every new epoch, choose again among all groups by their
/// live filter norms (zeroed filters that training grew back can return).
pub(crate) fn sfp_update(ctx: &MaskContext<'_>, mask: &Mask, _next_step: usize) -> MaskChange {
    if !ctx.new_epoch {
        return MaskChange::default();
    }
    let importance = live_importance(ctx.student, ctx.analysis);
    let all = Mask::all_active(mask.len());
    let (next, _) = select_to(ctx, &importance, &all, ctx.budget.goal);
    let regrown = (0..mask.len())
        .filter(|&g| !mask.is_active(g) && next.is_active(g))
        .count();
    let pruned = (0..mask.len())
        .filter(|&g| mask.is_active(g) && !next.is_active(g))
        .count();
    MaskChange {
        mask: Some(next),
        regrown,
        pruned,
    }
}

fn select_to(
    ctx: &MaskContext<'_>,
    importance: &[f64],
    start: &Mask,
    ratio: f64,
) -> (Mask, effp_graph::cost::NodeCost) {
    let mut limits = ctx.options.limits;
    if ctx.options.method == Method::Uniform {
        limits.scope = Scope::Layer;
    }
    select(
        &ctx.model.graph,
        ctx.analysis,
        importance,
        start,
        |c| ctx.budget.holds(c, ratio),
        limits,
    )
}

/// Torch-Pruning's group L2 importance from the student's live weights: the squared
/// norms of a group's producer filters and of its consumers' weight columns, summed.
/// Only compared within a layer, whose groups share producers and consumers, so no
/// normalisation is needed.
pub(crate) fn group_norms(net: &Network, analysis: &ChannelAnalysis) -> Vec<f64> {
    let graph = &net.model().graph;
    // Squared norms of every weight a group reads: (node, whether its output channels).
    let mut norms: HashMap<(NodeId, bool), Vec<f64>> = HashMap::new();
    for group in &analysis.groups {
        let sides = group.producers.iter().map(|&(n, _)| (n, true));
        for (node, output) in sides.chain(group.consumers.iter().map(|&(n, _)| (n, false))) {
            norms.entry((node, output)).or_insert_with(|| {
                let axis = match (&graph.node(node).op, output) {
                    (Op::ConvTranspose(_) | Op::Gemm { trans_b: false, .. }, true) => 1,
                    (_, true) => 0,
                    (Op::ConvTranspose(_) | Op::Gemm { trans_b: false, .. }, false) => 0,
                    (_, false) => 1,
                };
                squared_norms(net, node, axis)
            });
        }
    }
    let norm = |node: NodeId, output: bool, channel: usize| {
        norms[&(node, output)].get(channel).copied().unwrap_or(0.0)
    };
    analysis
        .groups
        .iter()
        .map(|group| {
            let produced: f64 = group.producers.iter().map(|&(n, c)| norm(n, true, c)).sum();
            let consumed: f64 = group
                .consumers
                .iter()
                .map(|&(n, c)| norm(n, false, c))
                .sum();
            produced + consumed
        })
        .collect()
}

/// Squared L2 norm of every slice of a node's weight along `axis`.
fn squared_norms(net: &Network, node: NodeId, axis: i64) -> Vec<f64> {
    let Some(w) = net
        .model()
        .graph
        .node(node)
        .input(1)
        .and_then(|v| net.constant(v))
    else {
        return Vec::new();
    };
    let dims: Vec<i64> = (0..w.dim() as i64).filter(|&d| d != axis).collect();
    let sums = tch::no_grad(|| {
        w.square()
            .sum_dim_intlist(dims.as_slice(), false, Kind::Double)
    });
    Vec::<f64>::try_from(sums.to_device(Device::Cpu)).unwrap_or_default()
}
