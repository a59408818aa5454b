//! EFFP: one short masked-training stage in which filters are switched off gradually
//! toward the FLOPs target and the most useful switched-off ones are switched back on.
//!
//! The student always runs with its mask, so its output is the output of the smaller
//! network it will become; it learns from the frozen original (the teacher) with a
//! scale-free distillation loss. Every `interval` steps the mask moves toward that
//! moment's budget: first a decaying fraction of switched-off groups whose gate
//! gradient promises the largest loss drop is revived, then the least important
//! active groups (filter norm per layer per FLOP, on the live weights) are switched
//! off until the budget holds again. Masked filters keep their weights, so a revived
//! filter resumes where it stopped. After the pruning phase the mask is fixed and the
//! student fine-tunes.

use effp_graph::channels::cost::ActiveChannels;
use effp_graph::channels::{ChannelAnalysis, Mask};
use effp_graph::ir::{Model, NodeId, Op};
use serde::Serialize;
use tch::{Device, Kind, Tensor};

use super::optim::AdamW;
use super::schedule::{budget, learning_rate, regrow_fraction};
use crate::data::Sample;
use crate::data::augment::Augment;
use crate::data::loader::{LoaderOptions, epoch};
use crate::error::EngineError;
use crate::prune::{L1Options, PruneError, Target, importance_from_norms, select};
use crate::runtime::Network;

/// EFFP's settings.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct EffpOptions {
    /// Optimiser steps in all (pruning phase plus fine-tuning).
    pub steps: usize,
    /// Share of the steps that prune and regrow; the rest fine-tune with fixed masks.
    pub prune_share: f64,
    /// Steps between mask updates.
    pub interval: usize,
    /// Fraction of switched-off groups considered for regrowing at the start
    /// (decays to zero); 0 disables regrowing.
    pub regrow: f64,
    /// Peak learning rate.
    pub lr: f64,
    /// Decoupled weight decay.
    pub weight_decay: f64,
    /// Warm-up steps.
    pub warmup: usize,
    /// Images per step.
    pub batch: usize,
    /// Shuffle/augmentation seed.
    pub seed: u64,
    /// Augmentations of the training images.
    pub augment: Option<Augment>,
    /// Per-layer limits of the pruning step.
    pub limits: L1Options,
}

impl Default for EffpOptions {
    fn default() -> Self {
        Self {
            steps: 300,
            prune_share: 0.7,
            interval: 5,
            regrow: 0.3,
            lr: 1e-3,
            weight_decay: 5e-4,
            warmup: 10,
            batch: 8,
            seed: 0,
            augment: Some(Augment::default()),
            limits: L1Options::default(),
        }
    }
}

/// One step of the training curve.
#[derive(Debug, Clone, Serialize)]
pub struct StepRecord {
    /// Step number (0-based).
    pub step: usize,
    /// Distillation loss.
    pub loss: f64,
    /// FLOPs of the masked network over the original's.
    pub flops_ratio: f64,
    /// Budget at this step, as a fraction of the original FLOPs.
    pub budget: f64,
    /// Groups switched on.
    pub active_groups: usize,
    /// Groups revived so far.
    pub regrown: usize,
    /// Groups switched off so far (counting every switch-off).
    pub pruned: usize,
}

/// The outcome of an EFFP run.
#[derive(Debug)]
pub struct EffpRun {
    /// The final mask.
    pub mask: Mask,
    /// The model with the student's trained weights (masked filters included).
    pub model: Model,
    /// Every step's record.
    pub history: Vec<StepRecord>,
}

/// Runs EFFP on `model` (shapes inferred) with the groups of `analysis`, training on
/// `samples`, until its masked FLOPs meet `target` (a FLOPs ratio).
pub fn run(
    model: &Model,
    analysis: &ChannelAnalysis,
    samples: &[Sample],
    target: Target,
    options: &EffpOptions,
    device: Device,
    mut progress: impl FnMut(&StepRecord),
) -> Result<EffpRun, EngineError> {
    target.validate().map_err(prune_error)?;
    let Target::FlopsRatio(goal) = target else {
        return Err(EngineError::Input(
            "EFFP takes its target as a FLOPs ratio".into(),
        ));
    };
    if samples.is_empty() {
        return Err(EngineError::Input("EFFP needs training images".into()));
    }
    let g = &model.graph;
    let imgsz = g
        .inputs
        .first()
        .and_then(|io| g.shape(io.value))
        .and_then(|s| s.get(2))
        .copied()
        .unwrap_or(640) as u32;
    let teacher = Network::new(model, device)?;
    let student = Network::new(model, device)?.with_gates(analysis);
    let mut optimizer = AdamW::new(
        student
            .trainable()
            .into_iter()
            .map(Tensor::shallow_clone)
            .collect(),
        options.weight_decay,
    );
    let groups = analysis.groups.len();
    let mut mask = Mask::all_active(groups);
    let mut gates = Tensor::ones([groups as i64], (Kind::Float, device)).set_requires_grad(true);
    // Running mean of −∂loss/∂gate: how much switching a group (back) on would help.
    let mut benefit = Tensor::zeros([groups as i64], (Kind::Float, device));
    let original = ActiveChannels::all(g, analysis).cost();
    let prune_steps = ((options.steps as f64 * options.prune_share).round() as usize).max(1);
    let loader = LoaderOptions {
        batch: options.batch,
        imgsz,
        seed: options.seed,
        augment: options.augment,
    };
    let (mut regrown, mut pruned) = (0usize, 0usize);
    let mut history = Vec::with_capacity(options.steps);
    let mut batches = epoch(samples, loader, 0);
    let mut epochs = 0u64;
    for step in 0..options.steps {
        let batch = match batches.next() {
            Some(b) => b?,
            None => {
                epochs += 1;
                batches = epoch(samples, loader, epochs);
                batches
                    .next()
                    .ok_or_else(|| EngineError::Input("no training batch".into()))??
            }
        };
        let x = batch.images.to_device(device);
        let targets = tch::no_grad(|| teacher.forward(&[x.shallow_clone()], None))?;
        let outputs = student.forward(&[x], Some(&gates))?;
        let loss = distillation_loss(&outputs, &targets);
        optimizer.zero_grad();
        gates.zero_grad();
        loss.backward();
        tch::no_grad(|| {
            let grad = gates.grad();
            if grad.defined() {
                benefit = &benefit * 0.9 - grad * 0.1;
            }
        });
        let lr = learning_rate(step, options.steps, options.warmup, options.lr);
        optimizer
            .step(lr)
            .map_err(|e| EngineError::Input(e.to_string()))?;

        let budget_now = budget(step, prune_steps, goal);
        if step < prune_steps && step % options.interval.max(1) == options.interval.max(1) - 1 {
            let fraction = regrow_fraction(step, prune_steps, options.regrow);
            let revived = regrow(&mut mask, &benefit, fraction)?;
            regrown += revived.len();
            let mut importance = live_importance(&student, analysis);
            // Revived groups are traded for weaker active ones, not pruned again at once
            // (they were off precisely because this criterion ranked them low).
            for &g in &revived {
                importance[g] = f64::INFINITY;
            }
            let limit = (budget_now * original.flops() as f64).floor() as u64;
            let before = mask.pruned();
            let (next, _) = select(
                g,
                analysis,
                &importance,
                &mask,
                |c| c.flops() <= limit,
                options.limits,
            );
            pruned += next.pruned().saturating_sub(before);
            mask = next;
            tch::no_grad(|| {
                let values = student
                    .gate_map()
                    .expect("gates were added")
                    .gates_for(&mask, device);
                gates.copy_(&values);
            });
        }
        let flops = ActiveChannels::for_mask(g, analysis, &mask).cost().flops();
        let record = StepRecord {
            step,
            loss: loss.double_value(&[]),
            flops_ratio: flops as f64 / original.flops().max(1) as f64,
            budget: budget_now,
            active_groups: groups - mask.pruned(),
            regrown,
            pruned,
        };
        progress(&record);
        history.push(record);
    }
    Ok(EffpRun {
        mask,
        model: student.export()?,
        history,
    })
}

/// Scale-free distillation: for every output and every channel of it (axis 1), the
/// squared error over the teacher's mean square, averaged over channels and summed
/// over outputs. Per channel, because detectors put box coordinates in pixels and
/// class scores in [0, 1] in one tensor: normalised as a whole, the boxes would drown
/// the scores.
pub fn distillation_loss(student: &[Tensor], teacher: &[Tensor]) -> Tensor {
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
            let power = t.square().mean_dim(dims.as_slice(), false, Kind::Float) + 1e-12;
            (error / power).mean(Kind::Float)
        })
        .fold(
            Tensor::zeros([], (Kind::Float, student[0].device())),
            |acc, l| acc + l,
        )
}

/// Switches on the `fraction` of switched-off groups with the largest benefit and
/// returns them.
fn regrow(mask: &mut Mask, benefit: &Tensor, fraction: f64) -> Result<Vec<usize>, EngineError> {
    let off: Vec<usize> = (0..mask.len()).filter(|&g| !mask.is_active(g)).collect();
    let count = (off.len() as f64 * fraction).floor() as usize;
    if count == 0 {
        return Ok(Vec::new());
    }
    let scores = Vec::<f32>::try_from(benefit.to_device(Device::Cpu))
        .map_err(|e| EngineError::Input(e.to_string()))?;
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

/// Group importance from the student's current filters.
fn live_importance(net: &Network, analysis: &ChannelAnalysis) -> Vec<f64> {
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

fn prune_error(e: PruneError) -> EngineError {
    EngineError::Input(e.to_string())
}
