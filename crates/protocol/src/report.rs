//! The JSON report of a pruning run (`effp.prune-report/v1`): what the CLI writes,
//! what a job's `report.json` artifact holds and what the service reads its metrics
//! from.

use effp_graph::channels::CompactionReport;
use serde::{Deserialize, Serialize};

use crate::method::{Criterion, Distill, FineTune, Method, Scope, Start};

/// Identifier of the report layout.
pub const PRUNE_REPORT_SCHEMA: &str = "effp.prune-report/v1";

/// What a pruning run did: costs before and after, accuracy, training and the
/// compaction of every changed layer.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct PruneReport {
    /// [`PRUNE_REPORT_SCHEMA`].
    pub schema: String,
    /// The method that ran.
    pub method: Method,
    /// Where removed groups competed (global or per layer).
    pub scope: Scope,
    /// The share of its channels every feature map kept at least.
    pub min_fraction: f64,
    /// MACs charged per feature-map element in the ranking (0: FLOPs alone).
    pub activation_cost: f64,
    /// The target, as the job request spells it.
    pub target: serde_json::Value,
    /// FLOPs and parameters of the original.
    pub before: Totals,
    /// FLOPs and parameters of the pruned model.
    pub after: Totals,
    /// FLOPs after / before.
    pub flops_ratio: f64,
    /// Parameters after / before.
    pub params_ratio: f64,
    /// Prunable channel groups of the original.
    pub groups_total: usize,
    /// How closely the compacted model reproduces the masked one (when checked).
    pub equivalence: Option<Equivalence>,
    /// mAP of the original and of the pruned model on the data's validation split.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub accuracy: Option<Accuracy>,
    /// Settings and totals of the training, for the trained methods.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub training: Option<TrainingSummary>,
    /// Loss, FLOPs, budget and mask changes over the steps.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub curve: Vec<StepRecord>,
    /// What the user should know about the result (one-shot pruning recovers
    /// nothing of what the removed filters did).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub note: Option<String>,
    /// Seconds from start to the written model.
    pub wall_seconds: f64,
    /// Channels before and after, and the kept indices, of every changed layer.
    pub compaction: CompactionReport,
}

/// mAP before and after on one split.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Accuracy {
    /// The split scored.
    pub split: String,
    /// The original's scores.
    pub before: Scores,
    /// The pruned model's scores.
    pub after: Scores,
}

/// COCO-style mAP of one model.
#[derive(Debug, Clone, Copy, Serialize, Deserialize)]
pub struct Scores {
    /// mAP over IoU 0.50:0.95.
    pub map50_95: f64,
    /// mAP at IoU 0.50.
    pub map50: f64,
}

/// FLOPs and parameters of one model.
#[derive(Debug, Clone, Copy, Serialize, Deserialize)]
pub struct Totals {
    /// Floating-point operations of one forward pass.
    pub flops: u64,
    /// Trainable parameters.
    pub params: u64,
}

/// How a trained run was set up, and what it did.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct TrainingSummary {
    /// Optimiser steps asked for.
    pub steps: u32,
    /// Share of the steps in which masks changed.
    pub prune_share: f64,
    /// Steps between mask updates.
    pub interval: u32,
    /// Initial regrowing fraction.
    pub regrow: f64,
    /// Ranking of active groups.
    pub criterion: Criterion,
    /// Where EFFP's mask started.
    pub start: Start,
    /// Stages of the staged methods.
    pub stages: u32,
    /// What the student reproduced.
    pub distill: Distill,
    /// Images per step.
    pub batch: u32,
    /// Peak learning rate.
    pub lr: f64,
    /// Seed.
    pub seed: u64,
    /// The device trained on.
    pub device: String,
    /// The step a resumed run continued from.
    pub resumed_from_step: Option<usize>,
    /// Groups revived over the run (as of the last step).
    pub regrown: usize,
    /// Groups switched off over the run (as of the last step).
    pub pruned: usize,
    /// Weight of the labelled detection loss.
    pub label_weight: f64,
    /// Probability of a mosaic per training image.
    pub mosaic: f64,
    /// Whether the run learnt from the labels, and if not, why not.
    pub labels: LabelUse,
    /// What the fine-tuning phase trained.
    pub fine_tune: FineTune,
    /// Wall time of the pruning and the fine-tuning phase (of this process, when
    /// resumed).
    pub seconds: PhaseSeconds,
}

/// One step of the training curve.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct StepRecord {
    /// Step number (0-based).
    pub step: usize,
    /// Distillation loss.
    pub loss: f64,
    /// FLOPs of the masked network over the original's.
    pub flops_ratio: f64,
    /// Budget at this step, as a fraction of the original (FLOPs or parameters, as
    /// the target says).
    pub budget: f64,
    /// Groups switched on.
    pub active_groups: usize,
    /// Groups revived so far.
    pub regrown: usize,
    /// Groups switched off so far (counting every switch-off).
    pub pruned: usize,
    /// YOLOv8's detection loss per image on the step's labels, when it trained on
    /// them.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub detection_loss: Option<f64>,
}

/// Wall time of a run's phases.
#[derive(Debug, Clone, Copy, Default, PartialEq, Serialize, Deserialize)]
pub struct PhaseSeconds {
    /// Steps in which the mask could change.
    pub pruning: f64,
    /// Steps that trained the final mask.
    pub fine_tuning: f64,
}

/// Whether a run learnt from the images' labels.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case", tag = "used")]
pub enum LabelUse {
    /// YOLOv8's detection loss on the labels, beside distillation.
    Yes,
    /// Distillation only: why.
    No {
        /// Why the labels were not used.
        reason: String,
    },
}

/// Outcome of an equivalence check.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Equivalence {
    /// Largest difference between masked and compacted outputs, relative per output
    /// channel (the engine's `verify::channel_relative_error`), over all outputs.
    pub max_relative_error: f64,
    /// Samples in the random batch.
    pub batch: i64,
    /// Where it ran.
    pub device: String,
}
