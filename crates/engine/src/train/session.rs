//! The masked training loop every trained method shares: the student runs with its
//! mask and learns from the frozen original; the method decides, between optimiser
//! steps, how the mask moves toward the budget. Same data, loss, optimiser and step
//! budget for every method, so their results compare.

use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, Ordering};

use effp_graph::channels::cost::ActiveChannels;
use effp_graph::channels::{ChannelAnalysis, Mask, compact};
use effp_graph::cost::NodeCost;
use effp_graph::ir::{Model, ValueId};

use tch::{Device, Kind, Tensor};

use super::checkpoint::{CHECKPOINT_SCHEMA, Checkpoint, CheckpointError, Progress};
use super::curvature::gate_curvature;
use super::detection_loss::detection_loss;
use super::distill::{Distill, DistillTargets};
use super::fixed::fixed_projections;
use super::head::{DetectionHead, find_detection_head};
use super::optim::AdamW;
use super::schedule::learning_rate;
use super::{baselines, effp};
use crate::data::Sample;
use crate::data::augment::Augment;
use crate::data::loader::{LoaderOptions, TrainBatch, epoch};
use crate::error::EngineError;
use crate::prune::{L1Options, Target};
use crate::runtime::Network;
use crate::verify::Equivalence;
use effp_protocol::TrainingSpec;

pub use effp_protocol::method::EFFP_MIN_FRACTION;
pub use effp_protocol::report::{LabelUse, PhaseSeconds, StepRecord};
pub use effp_protocol::settings::DEFAULT_LABEL_WEIGHT;
pub use effp_protocol::{Criterion, FineTune, Method, Start};

/// The settings of a training run.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct TrainOptions {
    /// The method.
    pub method: Method,
    /// Optimiser steps in all (pruning phase plus fine-tuning).
    pub steps: usize,
    /// Share of the steps in which the mask may change; the rest fine-tune it.
    pub prune_share: f64,
    /// Steps between mask updates (EFFP).
    pub interval: usize,
    /// Fraction of switched-off groups considered for regrowing at the start
    /// (decays to zero); 0 disables regrowing (EFFP).
    pub regrow: f64,
    /// Importance of active groups when pruning (EFFP).
    pub criterion: Criterion,
    /// Where the mask starts (EFFP).
    pub start: Start,
    /// Pruning stages (progressive).
    pub stages: usize,
    /// What the student is taught to reproduce; `None`: the model's default
    /// ([`DistillTargets::default_for`]).
    pub distill: Option<Distill>,
    /// Peak learning rate.
    pub lr: f64,
    /// Decoupled weight decay.
    pub weight_decay: f64,
    /// Warm-up steps.
    pub warmup: usize,
    /// Images per step.
    pub batch: usize,
    /// Seed of shuffling, augmentation and random masks.
    pub seed: u64,
    /// Augmentations of the training images.
    pub augment: Option<Augment>,
    /// Per-layer limits of every pruning step.
    pub limits: L1Options,
    /// Weight of YOLOv8's labelled detection loss (per image) beside the
    /// distillation loss when the training images have labels; 0 learns from the
    /// original's outputs alone.
    pub label_weight: f64,
    /// What the fine-tuning phase trains: the compacted network or the masked one.
    pub fine_tune: FineTune,
}

impl TrainOptions {
    /// The engine's settings for `method` from a run's training settings and the
    /// per-layer limits of its pruning steps; `labelled`: whether it learns from
    /// labels, which EFFP's defaults follow.
    pub fn new(method: Method, spec: &TrainingSpec, limits: L1Options, labelled: bool) -> Self {
        Self {
            method,
            steps: spec.steps as usize,
            prune_share: spec.prune_share_for(method, labelled),
            interval: spec.interval as usize,
            regrow: spec.regrow,
            criterion: spec.criterion_for(method, labelled),
            start: spec.start,
            stages: spec.stages as usize,
            distill: spec.distill,
            lr: spec.lr,
            weight_decay: 5e-4,
            warmup: 10,
            batch: spec.batch as usize,
            seed: spec.seed,
            augment: Some(Augment {
                mosaic: spec.mosaic,
                ..Augment::default()
            }),
            limits,
            label_weight: spec.label_weight,
            fine_tune: spec.fine_tune,
        }
    }
}

impl Default for TrainOptions {
    fn default() -> Self {
        Self::new(
            Method::Effp,
            &TrainingSpec::default(),
            L1Options::default(),
            true,
        )
    }
}

/// Where and when a run saves its state, and how it is told to stop.
#[derive(Debug, Default)]
pub struct Control<'a> {
    /// Where checkpoints go; `None` saves none.
    pub checkpoint: Option<PathBuf>,
    /// Steps between checkpoints (0: only when cancelled).
    pub every: usize,
    /// Set from outside (Ctrl-C, a cancelled job) to stop after the current step.
    pub cancel: Option<&'a AtomicBool>,
    /// A checkpoint to continue from.
    pub resume: Option<Checkpoint>,
    /// Identifies the model being pruned; a checkpoint of another model is refused.
    pub fingerprint: String,
}

/// The outcome of a training run.
#[derive(Debug)]
pub struct TrainRun {
    /// The final mask.
    pub mask: Mask,
    /// The model with the student's trained weights (masked filters included).
    pub model: Model,
    /// Every step's record.
    pub history: Vec<StepRecord>,
    /// Whether it learnt from the labels too, and if not, why not.
    pub labels: LabelUse,
    /// What the student was taught to reproduce.
    pub distill: Distill,
    /// When `model` is already compacted (the fine-tuning trained the compacted
    /// network): how closely the compaction reproduced the masked student.
    pub compacted: Option<Equivalence>,
    /// Wall time of each phase in this process (a resumed run counts its own part).
    pub seconds: PhaseSeconds,
}

/// The fine-tuning phase's network when it is compacted.
struct Compacted {
    net: Network,
    equivalence: Equivalence,
}

/// The student with the switched-off groups of `mask` removed, its weights and the
/// optimiser's moments sliced alike, after checking that it computes what the masked
/// student computes; returns it with an optimiser that continues where `optimizer`
/// stopped.
fn compact_student(
    student: &Network,
    optimizer: &AdamW,
    analysis: &ChannelAnalysis,
    mask: &Mask,
    weight_decay: f64,
) -> Result<(Compacted, AdamW), EngineError> {
    let device = student.device();
    let weights = student.export()?;
    let (model, _) = compact(&weights, analysis, mask)?;
    let equivalence = crate::verify::equivalence(&weights, analysis, mask, &model, device, 2)?;
    if equivalence.max_relative_error > crate::verify::EQUIVALENCE_TOLERANCE {
        return Err(EngineError::Input(format!(
            "the compacted student differs from the masked one by {:.2e} (relative) before fine-tuning; \
             this is a bug in effp: please report it with the model, and fine-tune the masked network meanwhile",
            equivalence.max_relative_error
        )));
    }
    let net = Network::new(&model, device)?.frozen(&fixed_projections(&model.graph));
    let (m, v): (Vec<&Tensor>, Vec<&Tensor>) = optimizer.moments().unzip();
    let slice = |values: &[&Tensor]| -> Result<Vec<Tensor>, EngineError> {
        let (sliced, _) = compact(&student.export_values(values)?, analysis, mask)?;
        net.trainable_in(&sliced)
    };
    let params = net
        .trainable()
        .into_iter()
        .map(Tensor::shallow_clone)
        .collect();
    let mut next = AdamW::new(params, weight_decay);
    next.set_state(slice(&m)?, slice(&v)?, optimizer.steps());
    Ok((Compacted { net, equivalence }, next))
}

/// Whether a run with label weight `weight` on `samples` learns from their labels.
pub fn learns_from_labels(
    graph: &effp_graph::ir::Graph,
    analysis: &ChannelAnalysis,
    samples: &[Sample],
    weight: f64,
) -> bool {
    label_plan(graph, analysis, samples, weight).1 == LabelUse::Yes
}

/// Whether (and with which head) a run can learn from labels.
fn label_plan(
    graph: &effp_graph::ir::Graph,
    analysis: &ChannelAnalysis,
    samples: &[Sample],
    weight: f64,
) -> (Option<DetectionHead>, LabelUse) {
    let no = |reason: &str| {
        (
            None,
            LabelUse::No {
                reason: reason.into(),
            },
        )
    };
    if weight <= 0.0 {
        return no(
            "the label weight is 0 (label-free: the student learns from the original's outputs)",
        );
    }
    if samples.iter().all(|s| s.labels.is_empty()) {
        return no("the training images have no labels");
    }
    match find_detection_head(graph, analysis) {
        Ok(head) => (Some(head), LabelUse::Yes),
        Err(e) => no(&format!("the labelled loss needs a YOLOv8-style head: {e}")),
    }
}

/// The error a cancelled run ends with, after saving its checkpoint.
#[derive(Debug, thiserror::Error)]
#[error("training was cancelled before step {step}{}", .checkpoint.as_ref().map(|p| format!("; its state is in '{}': continue with --resume {}", p.display(), p.display())).unwrap_or_default())]
pub struct Cancelled {
    /// The first step not run.
    pub step: usize,
    /// Where the state was saved.
    pub checkpoint: Option<PathBuf>,
}

/// The budget a run's mask must meet: which quantity, its original amount, the goal.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Budget {
    pub by_params: bool,
    pub original: NodeCost,
    /// Fraction of the original to keep at the end.
    pub goal: f64,
}

impl Budget {
    fn new(target: Target, original: NodeCost) -> Result<Self, EngineError> {
        target
            .validate()
            .map_err(|e| EngineError::Input(e.to_string()))?;
        let (by_params, goal) = match target {
            Target::FlopsRatio(r) => (false, r),
            Target::Flops(f) => (false, f as f64 / original.flops().max(1) as f64),
            Target::ParamsRatio(r) => (true, r),
        };
        if goal >= 1.0 {
            return Err(EngineError::Input(format!(
                "the target ({}) is not below the model's {} ({}): nothing to prune",
                match target {
                    Target::Flops(f) => f.to_string(),
                    _ => goal.to_string(),
                },
                if by_params { "parameters" } else { "FLOPs" },
                if by_params {
                    original.params
                } else {
                    original.flops()
                }
            )));
        }
        Ok(Self {
            by_params,
            original,
            goal,
        })
    }

    /// Whether `cost` is within `ratio` of the original.
    pub fn holds(&self, cost: NodeCost, ratio: f64) -> bool {
        if self.by_params {
            cost.params as f64 <= (ratio * self.original.params as f64).floor()
        } else {
            cost.flops() as f64 <= (ratio * self.original.flops() as f64).floor()
        }
    }
}

/// What a method may look at when it moves the mask.
pub(crate) struct MaskContext<'a> {
    pub model: &'a Model,
    pub analysis: &'a ChannelAnalysis,
    pub student: &'a Network,
    pub options: &'a TrainOptions,
    pub budget: Budget,
    /// Running mean of −∂loss/∂gate: how much switching a group on would help.
    pub benefit: Tensor,
    /// Running mean of (∂loss/∂gate)²: how much switching a group off would hurt.
    pub sensitivity: Tensor,
    /// Running mean of the loss curvature along each gate (estimated at mask updates).
    pub curvature: Tensor,
    /// Steps of the pruning phase.
    pub prune_steps: usize,
    /// Whether the loader has just started a new epoch.
    pub new_epoch: bool,
}

/// What a method did to the mask.
#[derive(Debug, Default)]
pub(crate) struct MaskChange {
    pub mask: Option<Mask>,
    pub regrown: usize,
    pub pruned: usize,
}

/// What a run prunes: the model (shapes inferred), its channel groups, the images it
/// trains on, and the target its mask must meet.
#[derive(Debug, Clone, Copy)]
pub struct Problem<'a> {
    /// The model.
    pub model: &'a Model,
    /// The channel groups of its graph.
    pub analysis: &'a ChannelAnalysis,
    /// Training images.
    pub samples: &'a [Sample],
    /// The target.
    pub target: Target,
}

/// What a training run tells its caller as it goes.
#[derive(Debug, Clone, Copy)]
pub enum TrainEvent<'a> {
    /// A step ended.
    Step(&'a StepRecord),
    /// The checkpoint (at [`Control::checkpoint`]) now holds the state before `step`:
    /// a caller that keeps checkpoints elsewhere can copy it.
    Saved {
        /// The step a run resumed from it starts at.
        step: usize,
    },
}

/// Runs `options.method` on a problem: trains the student on its images until the
/// mask meets its target, then fine-tunes.
pub fn train(
    problem: &Problem<'_>,
    options: &TrainOptions,
    device: Device,
    mut control: Control<'_>,
    mut progress: impl FnMut(TrainEvent<'_>),
) -> Result<TrainRun, EngineError> {
    let Problem {
        model,
        analysis,
        samples,
        target,
    } = *problem;
    if samples.is_empty() {
        return Err(EngineError::Input(
            "training needs images: the dataset's training split is empty".into(),
        ));
    }
    if options.steps == 0 {
        return Err(EngineError::Input(
            "training needs at least one step".into(),
        ));
    }
    let g = &model.graph;
    let original = ActiveChannels::all(g, analysis).cost();
    let budget = Budget::new(target, original)?;
    let imgsz = g
        .inputs
        .first()
        .and_then(|io| g.shape(io.value))
        .and_then(|s| s.get(2))
        .copied()
        .unwrap_or(640) as u32;
    let teacher = Network::new(model, device)?;
    let student = Network::new(model, device)?
        .with_gates(analysis)
        .frozen(&fixed_projections(g));
    let distill = options
        .distill
        .unwrap_or_else(|| DistillTargets::default_for(g, analysis));
    let mut distilled = DistillTargets::resolve(distill, g, analysis)?;
    let taps = distilled.taps();
    let (head, labels_used) = label_plan(g, analysis, samples, options.label_weight);
    let params: Vec<Tensor> = student
        .trainable()
        .into_iter()
        .map(Tensor::shallow_clone)
        .collect();
    let mut optimizer = AdamW::new(params, options.weight_decay);
    let groups = analysis.groups.len();
    let gate_map = student.gate_map().expect("gates were added");
    let mut gates = Tensor::ones([groups as i64], (Kind::Float, device)).set_requires_grad(true);
    let mut benefit = Tensor::zeros([groups as i64], (Kind::Float, device));
    let mut sensitivity = Tensor::zeros([groups as i64], (Kind::Float, device));
    let mut curvature = Tensor::zeros([groups as i64], (Kind::Float, device));
    let prune_steps =
        ((options.steps as f64 * options.prune_share).round() as usize).clamp(1, options.steps);
    let batches_per_epoch = samples.len().div_ceil(options.batch.max(1));
    let loader = LoaderOptions {
        batch: options.batch,
        imgsz,
        seed: options.seed,
        augment: options.augment,
        mosaic_epochs: options
            .augment
            .map_or(0, |a| a.mosaic_epochs(options.steps, batches_per_epoch)),
    };
    let settings = format!("{options:?} target {target:?}");
    let mut state = Progress {
        schema: CHECKPOINT_SCHEMA.into(),
        fingerprint: control.fingerprint.clone(),
        settings: settings.clone(),
        step: 0,
        epoch: 0,
        batches_in_epoch: 0,
        mask: vec![true; groups],
        regrown: 0,
        pruned: 0,
        optimizer_steps: 0,
        history: Vec::with_capacity(options.steps),
    };

    // The fine-tuning phase trains the compacted student from its first step on.
    let compacting = options.fine_tune == FineTune::Compacted && prune_steps < options.steps;
    let mut compacted: Option<Compacted> = None;
    if let Some(saved) = control.resume.take() {
        if compacting && saved.progress.step > prune_steps {
            // Saved by the compacted student: rebuild its shape, then load it.
            let mask = Mask::from_flags(saved.progress.mask.clone());
            let (c, next) =
                compact_student(&student, &optimizer, analysis, &mask, options.weight_decay)?;
            compacted = Some(c);
            optimizer = next;
        }
        restore(
            &saved,
            &mut state,
            &mut optimizer,
            [&mut benefit, &mut sensitivity, &mut curvature],
        )
        .map_err(|e| EngineError::Input(e.to_string()))?;
    }
    let mut mask = Mask::from_flags(state.mask.clone());
    // Shares the statistics' storage: they are updated in place below.
    let mut ctx = MaskContext {
        model,
        analysis,
        student: &student,
        options,
        budget,
        benefit: benefit.shallow_clone(),
        sensitivity: sensitivity.shallow_clone(),
        curvature: curvature.shallow_clone(),
        prune_steps,
        new_epoch: true,
    };
    if state.step == 0
        && let Some(first) = baselines::initial_mask(&ctx)?
    {
        state.pruned += first.pruned();
        mask = first;
    }
    let soft = |step: usize| options.method == Method::Sfp && step < prune_steps;
    // A resumed run's weights are restored as they were: nothing to zero again.
    let resumed = state.step > 0;
    set_gates(
        &gates,
        gate_map.gates_for(&mask, device),
        &student,
        soft(state.step),
        !resumed,
    )?;
    distilled = distilled.for_mask(analysis, &mask, compacted.is_some());

    let mut batches = skip(epoch(samples, loader, state.epoch), state.batches_in_epoch)?;
    let mut seconds = PhaseSeconds::default();
    for step in state.step..options.steps {
        let started = std::time::Instant::now();
        if control.cancel.is_some_and(|c| c.load(Ordering::SeqCst)) {
            state.step = step;
            let path = control.checkpoint.clone();
            if let Some(p) = &path {
                let stats = [&benefit, &sensitivity, &curvature];
                let net = compacted.as_ref().map_or(&student, |c| &c.net);
                save(p, &mut state, &mask, net, &optimizer, stats)?;
                progress(TrainEvent::Saved { step });
            }
            return Err(EngineError::Cancelled(Cancelled {
                step,
                checkpoint: path,
            }));
        }
        if compacting && step == prune_steps && compacted.is_none() {
            let (c, next) =
                compact_student(&student, &optimizer, analysis, &mask, options.weight_decay)?;
            compacted = Some(c);
            optimizer = next;
            distilled = distilled.for_mask(analysis, &mask, true);
        }
        let net = compacted.as_ref().map_or(&student, |c| &c.net);
        let mut new_epoch = false;
        let batch: TrainBatch = match batches.next() {
            Some(b) => b?,
            None => {
                state.epoch += 1;
                state.batches_in_epoch = 0;
                new_epoch = true;
                batches = Box::new(epoch(samples, loader, state.epoch));
                batches
                    .next()
                    .ok_or_else(|| EngineError::Input("no training batch".into()))??
            }
        };
        state.batches_in_epoch += 1;
        let x = batch.images.to_device(device);
        let batch_x = x.shallow_clone();
        let lr = learning_rate(step, options.steps, options.warmup, options.lr);
        let gating = compacted.is_none().then_some(Gating {
            gates: &gates,
            benefit: &mut benefit,
            sensitivity: &mut sensitivity,
        });
        let targets = batch.targets.to_device(device);
        let labelled = head.as_ref().map(|head| Labelled {
            head,
            targets: &targets,
            weight: options.label_weight,
        });
        let loss = distill_step(
            &teacher,
            net,
            &distilled,
            &x,
            &mut optimizer,
            lr,
            gating,
            labelled,
        )?;

        let mut budget_now = budget.goal;
        if step < prune_steps
            && options.method == Method::Effp
            && options.criterion == Criterion::Curvature
            && effp::updates_at(step, options.interval, prune_steps)
        {
            // Several probes for the first estimate, then a running mean.
            let first = step + 1 == options.interval.max(1).min(prune_steps);
            let probes = if first { 4 } else { 1 };
            let mut estimate = Tensor::zeros([groups as i64], (Kind::Float, device));
            for k in 0..probes {
                let seed = (options.seed as i64) ^ ((step * 8 + k) as i64);
                estimate += gate_curvature(&student, &taps, &batch_x, &gates, seed)?;
            }
            estimate /= probes as f64;
            let keep = if first { 0.0 } else { 0.5 };
            tch::no_grad(|| {
                let _ = curvature
                    .g_mul_scalar_(keep)
                    .g_add_(&(estimate * (1.0 - keep)));
            });
        }
        if step < prune_steps {
            ctx.new_epoch = new_epoch;
            budget_now = baselines::budget_at(&ctx, step);
            let change = match options.method {
                Method::Effp => effp::update(&ctx, &mask, step)?,
                Method::Progressive | Method::Uniform => {
                    baselines::progressive_update(&ctx, &mask, step)
                }
                Method::Sfp => baselines::sfp_update(&ctx, &mask, step + 1),
                Method::L1 | Method::Random => MaskChange::default(),
            };
            state.regrown += change.regrown;
            state.pruned += change.pruned;
            if let Some(next) = change.mask {
                mask = next;
                distilled = distilled.for_mask(analysis, &mask, false);
                // Soft-pruned groups are zeroed when chosen and then train on until
                // the next choice.
                set_gates(
                    &gates,
                    gate_map.gates_for(&mask, device),
                    &student,
                    soft(step + 1),
                    true,
                )?;
            }
            if step + 1 == prune_steps && soft(step) {
                // The pruning phase ends: the last soft choice becomes real gates.
                set_gates(
                    &gates,
                    gate_map.gates_for(&mask, device),
                    &student,
                    false,
                    false,
                )?;
            }
        }
        let flops = ActiveChannels::for_mask(g, analysis, &mask).cost().flops();
        let record = StepRecord {
            step,
            loss: loss.distill,
            detection_loss: loss.detection,
            flops_ratio: flops as f64 / original.flops().max(1) as f64,
            budget: budget_now,
            active_groups: groups - mask.pruned(),
            regrown: state.regrown,
            pruned: state.pruned,
        };
        progress(TrainEvent::Step(&record));
        state.history.push(record);
        state.step = step + 1;
        if let Some(p) = &control.checkpoint
            && control.every > 0
            && state.step.is_multiple_of(control.every)
            && state.step < options.steps
        {
            let stats = [&benefit, &sensitivity, &curvature];
            save(p, &mut state, &mask, net, &optimizer, stats)?;
            progress(TrainEvent::Saved { step: state.step });
        }
        let took = started.elapsed().as_secs_f64();
        if step < prune_steps {
            seconds.pruning += took;
        } else {
            seconds.fine_tuning += took;
        }
    }
    // The gates also carry gradients for the criteria; the exported student does not.
    let _ = gates.detach_();
    Ok(TrainRun {
        mask,
        model: match &compacted {
            Some(c) => c.net.export()?,
            None => student.export()?,
        },
        history: state.history,
        labels: labels_used,
        distill,
        compacted: compacted.map(|c| c.equivalence),
        seconds,
    })
}

/// The gates of a masked step and the gate-gradient statistics it updates.
pub struct Gating<'a> {
    /// One gate per group (requires grad).
    pub gates: &'a Tensor,
    /// Running mean of −∂loss/∂gate.
    pub benefit: &'a mut Tensor,
    /// Running mean of (∂loss/∂gate)².
    pub sensitivity: &'a mut Tensor,
}

/// The labels of a step and what turns the student's head into YOLOv8's detection
/// loss.
pub struct Labelled<'a> {
    /// The head the loss reads (its taps follow the distillation taps).
    pub head: &'a DetectionHead,
    /// The batch's targets (`[M, 6]`, as the loader makes them).
    pub targets: &'a Tensor,
    /// Weight of the detection loss (per image) beside the distillation loss.
    pub weight: f64,
}

/// What one step's losses came to.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct StepLoss {
    /// The distillation loss.
    pub distill: f64,
    /// The detection loss per image (box + cls + dfl, Ultralytics' gains), when the
    /// step had labels.
    pub detection: Option<f64>,
}

/// One optimiser step of `student` toward `teacher` on the images `x`, masked when
/// `gating` is given (the unit the training loop repeats, and what the gate-overhead
/// benchmark times with and without gates). With `labels`, the step also minimises
/// YOLOv8's detection loss on them. Returns the losses before the step.
#[allow(clippy::too_many_arguments)]
pub fn distill_step(
    teacher: &Network,
    student: &Network,
    targets: &DistillTargets,
    x: &Tensor,
    optimizer: &mut AdamW,
    lr: f64,
    gating: Option<Gating<'_>>,
    labels: Option<Labelled<'_>>,
) -> Result<StepLoss, EngineError> {
    let taps = targets.taps();
    let (t_out, t_taps) =
        tch::no_grad(|| teacher.forward_tapped(&[x.shallow_clone()], None, &taps))?;
    let student_taps: Vec<ValueId> = match &labels {
        Some(l) => taps.iter().copied().chain(l.head.taps()).collect(),
        None => taps.to_vec(),
    };
    let (s_out, mut s_taps) = student.forward_tapped(
        &[x.shallow_clone()],
        gating.as_ref().map(|g| g.gates),
        &student_taps,
    )?;
    let head_maps = s_taps.split_off(taps.len());
    let outputs = s_out.len();
    let student_all: Vec<Tensor> = s_out.into_iter().chain(s_taps).collect();
    let teacher_all: Vec<Tensor> = t_out.into_iter().chain(t_taps).collect();
    let distill = targets.loss(outputs, &student_all, &teacher_all);
    let mut step = StepLoss {
        distill: distill.double_value(&[]),
        detection: None,
    };
    let loss = match labels {
        Some(l) => {
            let levels = l.head.head_levels(&head_maps)?;
            let d = detection_loss(&levels, l.targets, l.head.image_size, &l.head.loss_config())?;
            let images = x.size()[0].max(1) as f64;
            let per_image = d.total / images;
            step.detection = Some(per_image.double_value(&[]));
            distill + per_image * l.weight
        }
        None => distill,
    };
    optimizer.zero_grad();
    if let Some(g) = &gating {
        let mut gates = g.gates.shallow_clone();
        gates.zero_grad();
    }
    loss.backward();
    if let Some(g) = gating {
        tch::no_grad(|| {
            let grad = g.gates.grad();
            if grad.defined() {
                let _ = g.benefit.g_mul_scalar_(0.9).g_sub_(&(&grad * 0.1));
                let _ = g
                    .sensitivity
                    .g_mul_scalar_(0.9)
                    .g_add_(&(grad.square() * 0.1));
            }
        });
    }
    optimizer
        .step(lr)
        .map_err(|e| EngineError::Input(e.to_string()))?;
    Ok(step)
}

/// Puts a mask's values into the gate vector. Soft masks leave every gate open and
/// (when `zero`) zero the switched-off groups' weights instead.
fn set_gates(
    gates: &Tensor,
    values: Tensor,
    student: &Network,
    soft: bool,
    zero: bool,
) -> Result<(), EngineError> {
    if soft && zero {
        student.zero_gated_columns(&values)?;
    }
    let values = if soft { values.ones_like() } else { values };
    tch::no_grad(|| {
        let mut g = gates.shallow_clone();
        g.copy_(&values);
    });
    Ok(())
}

type Batches = Box<dyn Iterator<Item = Result<TrainBatch, crate::data::DataError>>>;

/// The loader's batches after the first `n` (a resumed run continues mid-epoch).
fn skip(
    batches: impl Iterator<Item = Result<TrainBatch, crate::data::DataError>> + 'static,
    n: usize,
) -> Result<Batches, EngineError> {
    let mut batches: Batches = Box::new(batches);
    for _ in 0..n {
        if let Some(b) = batches.next() {
            b?;
        }
    }
    Ok(batches)
}

/// Names of the per-group statistics in a checkpoint, in the order they are passed.
const STATISTICS: [&str; 3] = ["benefit", "sensitivity", "curvature"];

fn flags(mask: &Mask) -> Vec<bool> {
    (0..mask.len()).map(|g| mask.is_active(g)).collect()
}

/// Records the mask in the state and writes the checkpoint.
fn save(
    path: &std::path::Path,
    state: &mut Progress,
    mask: &Mask,
    student: &Network,
    optimizer: &AdamW,
    statistics: [&Tensor; 3],
) -> Result<(), EngineError> {
    state.mask = flags(mask);
    snapshot(state, student, optimizer, statistics)
        .save(path)
        .map_err(|e| EngineError::Input(e.to_string()))
}

fn snapshot(
    state: &Progress,
    student: &Network,
    optimizer: &AdamW,
    statistics: [&Tensor; 3],
) -> Checkpoint {
    let mut tensors = std::collections::HashMap::new();
    let cpu = |t: &Tensor| t.detach().to_device(Device::Cpu).copy();
    for (i, w) in student.trainable().into_iter().enumerate() {
        tensors.insert(format!("weight.{i}"), cpu(w));
    }
    for (i, (m, v)) in optimizer.moments().enumerate() {
        tensors.insert(format!("adam.m.{i}"), cpu(m));
        tensors.insert(format!("adam.v.{i}"), cpu(v));
    }
    for (name, t) in STATISTICS.iter().zip(statistics) {
        tensors.insert((*name).into(), cpu(t));
    }
    let mut progress = state.clone();
    progress.optimizer_steps = optimizer.steps();
    Checkpoint { progress, tensors }
}

/// Loads a checkpoint's state into a freshly built run, after checking it belongs to
/// the same model and settings.
fn restore(
    saved: &Checkpoint,
    state: &mut Progress,
    optimizer: &mut AdamW,
    statistics: [&mut Tensor; 3],
) -> Result<(), CheckpointError> {
    let p = &saved.progress;
    if p.fingerprint != state.fingerprint {
        return Err(CheckpointError::Mismatch {
            what: "model",
            saved: p.fingerprint.clone(),
            now: state.fingerprint.clone(),
        });
    }
    if p.settings != state.settings {
        return Err(CheckpointError::Mismatch {
            what: "settings",
            saved: p.settings.clone(),
            now: state.settings.clone(),
        });
    }
    if p.mask.len() != state.mask.len() {
        return Err(CheckpointError::Mismatch {
            what: "channel groups",
            saved: p.mask.len().to_string(),
            now: state.mask.len().to_string(),
        });
    }
    let copy = |dst: &Tensor, name: &str| -> Result<(), CheckpointError> {
        let src = saved.tensor(name)?;
        if src.size() != dst.size() {
            return Err(CheckpointError::Mismatch {
                what: "tensor shapes",
                saved: format!("{name} {:?}", src.size()),
                now: format!("{:?}", dst.size()),
            });
        }
        tch::no_grad(|| {
            let mut d = dst.shallow_clone();
            d.copy_(src);
        });
        Ok(())
    };
    for (i, (w, (m, v))) in optimizer.params_and_moments().enumerate() {
        copy(w, &format!("weight.{i}"))?;
        copy(m, &format!("adam.m.{i}"))?;
        copy(v, &format!("adam.v.{i}"))?;
    }
    for (name, t) in STATISTICS.iter().zip(statistics) {
        copy(t, name)?;
    }
    optimizer.set_steps(p.optimizer_steps);
    *state = p.clone();
    Ok(())
}
