//! The settings of a pruning run, with their one set of defaults and range checks:
//! the job request's `options` and `training`, and `effp prune`'s flags.

use serde::{Deserialize, Serialize};

use crate::field::FieldError;
use crate::method::{Criterion, Distill, FineTune, Method, Scope, Start};

/// Optimiser steps in all, unless told otherwise.
pub const DEFAULT_STEPS: u32 = 300;
/// Share of the steps in which masks change, unless told otherwise, for every
/// method but EFFP with labels (see `Method::defaults`).
pub const DEFAULT_PRUNE_SHARE: f64 = 0.7;
/// Steps between EFFP's mask updates, unless told otherwise.
pub const DEFAULT_INTERVAL: u32 = 5;
/// Initial fraction of switched-off groups EFFP considers for regrowing.
pub const DEFAULT_REGROW: f64 = 0.3;
/// Prune-then-fine-tune stages of the staged methods.
pub const DEFAULT_STAGES: u32 = 4;
/// Images per step.
pub const DEFAULT_BATCH: u32 = 8;
/// Peak learning rate of AdamW.
pub const DEFAULT_LR: f64 = 1e-3;
/// How much the labelled detection loss weighs beside the distillation loss (per
/// image). On the fixture detector at 0.5 FLOPs and 1000 steps, EFFP kept 0.459
/// mAP50-95 with the labels at weight 1 against 0.424 from distillation alone
/// (docs/benchmarks.md).
pub const DEFAULT_LABEL_WEIGHT: f64 = 1.0;
/// Probability that a training image is a mosaic of four. Off: mosaics cost
/// accuracy on the short runs pruning makes (docs/benchmarks.md).
pub const DEFAULT_MOSAIC: f64 = 0.0;
/// Most optimiser steps a run may ask for.
pub const MAX_STEPS: u32 = 1_000_000;
/// Most images per step.
pub const MAX_BATCH: u32 = 1024;

/// Schedule and optimiser settings of the trained methods (ignored by `l1` without
/// training data).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[cfg_attr(feature = "cli", derive(clap::Args))]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[serde(default, deny_unknown_fields)]
pub struct TrainingSpec {
    /// Optimiser steps in all, pruning phase and fine-tuning (0 with l1: no
    /// fine-tuning).
    #[cfg_attr(feature = "cli", arg(long, default_value_t = DEFAULT_STEPS))]
    #[cfg_attr(feature = "openapi", schema(maximum = 1000000))]
    pub steps: u32,
    /// Share of the steps in which masks change, in (0, 1]; the rest fine-tune the
    /// final mask. Default: 0.3 for effp learning from labels, else 0.7.
    #[cfg_attr(feature = "cli", arg(long))]
    #[cfg_attr(feature = "openapi", schema(exclusive_minimum = 0.0, maximum = 1.0))]
    #[serde(skip_serializing_if = "Option::is_none")]
    pub prune_share: Option<f64>,
    /// effp: steps between mask updates.
    #[cfg_attr(feature = "cli", arg(long, default_value_t = DEFAULT_INTERVAL, value_parser = clap::value_parser!(u32).range(1..)))]
    #[cfg_attr(feature = "openapi", schema(minimum = 1))]
    pub interval: u32,
    /// effp: initial fraction of switched-off groups considered for regrowing, in
    /// [0, 1] (decays to zero; 0 turns regrowing off).
    #[cfg_attr(feature = "cli", arg(long, default_value_t = DEFAULT_REGROW))]
    #[cfg_attr(feature = "openapi", schema(minimum = 0.0, maximum = 1.0))]
    pub regrow: f64,
    /// effp: how active groups are ranked for pruning. Default: taylor when it
    /// learns from labels, curvature label-free.
    #[cfg_attr(feature = "cli", arg(long, value_enum))]
    #[serde(skip_serializing_if = "Option::is_none")]
    pub criterion: Option<Criterion>,
    /// effp: where the mask starts: every channel on with the budget falling to the
    /// target, or at the target from the first step (filter-norm ranking), trading
    /// channels there.
    #[cfg_attr(feature = "cli", arg(long, value_enum, default_value_t = Start::default()))]
    pub start: Start,
    /// progressive, uniform: number of prune-then-fine-tune stages.
    #[cfg_attr(feature = "cli", arg(long, default_value_t = DEFAULT_STAGES, value_parser = clap::value_parser!(u32).range(1..)))]
    #[cfg_attr(feature = "openapi", schema(minimum = 1))]
    pub stages: u32,
    /// What the student learns to reproduce: the outputs, also the prediction
    /// layers, also the neck's feature maps, or the head as box and class
    /// distributions weighted by the original's confidence. Default: foreground
    /// for a model with a YOLOv8-style head, heads otherwise.
    #[cfg_attr(feature = "cli", arg(long, value_enum))]
    #[serde(skip_serializing_if = "Option::is_none")]
    pub distill: Option<Distill>,
    /// Images per step, in 1..=1024.
    #[cfg_attr(feature = "cli", arg(long, default_value_t = DEFAULT_BATCH, value_parser = clap::value_parser!(u32).range(1..)))]
    #[cfg_attr(feature = "openapi", schema(minimum = 1, maximum = 1024))]
    pub batch: u32,
    /// Peak learning rate of AdamW (warm-up, then cosine), in (0, 1].
    #[cfg_attr(feature = "cli", arg(long, default_value_t = DEFAULT_LR))]
    #[cfg_attr(feature = "openapi", schema(exclusive_minimum = 0.0, maximum = 1.0))]
    pub lr: f64,
    /// Seed for shuffling, augmentation and random masks.
    #[cfg_attr(feature = "cli", arg(long, default_value_t = 0))]
    pub seed: u64,
    /// Weight of YOLOv8's detection loss on the labels (per image) beside the
    /// distillation loss, when the training images have labels, in [0, 100]; 0: the
    /// student learns from the original's outputs alone.
    #[cfg_attr(feature = "cli", arg(long, default_value_t = DEFAULT_LABEL_WEIGHT))]
    #[cfg_attr(feature = "openapi", schema(minimum = 0.0, maximum = 100.0))]
    pub label_weight: f64,
    /// Probability that a training image is a mosaic of four, as Ultralytics'
    /// trainer makes them (it uses 1; the last tenth of the steps trains without),
    /// in [0, 1].
    #[cfg_attr(feature = "cli", arg(long, default_value_t = DEFAULT_MOSAIC))]
    #[cfg_attr(feature = "openapi", schema(minimum = 0.0, maximum = 1.0))]
    pub mosaic: f64,
    /// What the steps after the pruning phase train: the compacted network (faster,
    /// same result) or the masked full-size one.
    #[cfg_attr(feature = "cli", arg(long, value_enum, default_value_t = FineTune::default()))]
    pub fine_tune: FineTune,
}

impl Default for TrainingSpec {
    fn default() -> Self {
        Self {
            steps: DEFAULT_STEPS,
            prune_share: None,
            interval: DEFAULT_INTERVAL,
            regrow: DEFAULT_REGROW,
            criterion: None,
            start: Start::default(),
            stages: DEFAULT_STAGES,
            distill: None,
            batch: DEFAULT_BATCH,
            lr: DEFAULT_LR,
            seed: 0,
            label_weight: DEFAULT_LABEL_WEIGHT,
            mosaic: DEFAULT_MOSAIC,
            fine_tune: FineTune::default(),
        }
    }
}

impl TrainingSpec {
    /// The share of the steps in which `method`'s masks change: the one asked for,
    /// or the method's own (`labelled`: whether the run learns from labels).
    pub fn prune_share_for(&self, method: Method, labelled: bool) -> f64 {
        self.prune_share
            .unwrap_or_else(|| method.defaults(labelled).prune_share)
    }

    /// How EFFP ranks groups: the criterion asked for, or the method's own.
    pub fn criterion_for(&self, method: Method, labelled: bool) -> Criterion {
        self.criterion
            .unwrap_or_else(|| method.defaults(labelled).criterion)
    }

    /// Every out-of-range setting, by its path in a job request.
    pub fn errors(&self) -> Vec<FieldError> {
        let mut errors = Vec::new();
        let mut check = |ok: bool, name: &str, range: &str, value: &dyn std::fmt::Display| {
            if !ok {
                errors.push(FieldError::new(
                    &format!("/training/{name}"),
                    format!("must be in {range}, got {value}"),
                ));
            }
        };
        check(self.steps <= MAX_STEPS, "steps", "0..=1000000", &self.steps);
        if let Some(share) = self.prune_share {
            check(share > 0.0 && share <= 1.0, "prune_share", "(0, 1]", &share);
        }
        check(self.interval >= 1, "interval", "1..", &self.interval);
        check(
            (0.0..=1.0).contains(&self.regrow),
            "regrow",
            "[0, 1]",
            &self.regrow,
        );
        check(self.stages >= 1, "stages", "1..", &self.stages);
        check(
            (1..=MAX_BATCH).contains(&self.batch),
            "batch",
            "1..=1024",
            &self.batch,
        );
        check(self.lr > 0.0 && self.lr <= 1.0, "lr", "(0, 1]", &self.lr);
        check(
            (0.0..=100.0).contains(&self.label_weight),
            "label_weight",
            "[0, 100]",
            &self.label_weight,
        );
        check(
            (0.0..=1.0).contains(&self.mosaic),
            "mosaic",
            "[0, 1]",
            &self.mosaic,
        );
        errors
    }
}

/// Most MACs a feature-map element may be charged in the ranking.
pub const MAX_ACTIVATION_COST: f64 = 1e6;

/// Limits on how far pruning may thin any one layer, and how groups are ranked.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[cfg_attr(feature = "cli", derive(clap::Args))]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[serde(default, deny_unknown_fields)]
pub struct PruneOptions {
    /// Channels every feature map keeps at least.
    #[cfg_attr(feature = "cli", arg(long, default_value_t = 1, value_parser = clap::value_parser!(u32).range(1..)))]
    #[cfg_attr(feature = "openapi", schema(minimum = 1))]
    pub min_channels: u32,
    /// Fraction of its channels every feature map keeps at least, in [0, 1).
    /// Default: 0.25 for effp (ranked across the network, it would otherwise empty
    /// whole layers at low targets), 0 for the other methods.
    #[cfg_attr(feature = "cli", arg(long))]
    #[cfg_attr(feature = "openapi", schema(minimum = 0.0, exclusive_maximum = 1.0))]
    #[serde(skip_serializing_if = "Option::is_none")]
    pub min_fraction: Option<f64>,
    /// Remove channels in multiples of this per layer, in 1..=256 (8 suits CPU
    /// kernels and TensorRT).
    #[cfg_attr(feature = "cli", arg(long, default_value_t = 1, value_parser = clap::value_parser!(u32).range(1..=256)))]
    #[cfg_attr(feature = "openapi", schema(minimum = 1, maximum = 256))]
    pub round_to: u32,
    /// Groups go in order of importance / cost^E, in [0, 2]: 1 = importance per
    /// FLOP, 0 = cost ignored.
    #[cfg_attr(feature = "cli", arg(long, value_name = "E", default_value_t = 1.0))]
    #[cfg_attr(feature = "openapi", schema(minimum = 0.0, maximum = 2.0))]
    pub cost_exponent: f64,
    /// MACs charged per feature-map element a channel group occupies when groups
    /// are ranked, in [0, 1e6] (0: FLOPs alone). Above 0, channels of
    /// high-resolution feature maps count as dearer than their FLOPs, so that CPU
    /// latency falls closer to the FLOPs; the target stays in FLOPs.
    #[cfg_attr(feature = "cli", arg(long, value_name = "MACS", default_value_t = 0.0))]
    #[cfg_attr(feature = "openapi", schema(minimum = 0.0, maximum = 1000000.0))]
    pub activation_cost: f64,
    /// Where removed groups compete: across the network (global, by importance per
    /// MAC) or within each layer (layer: every layer loses the same share).
    /// Default: layer for uniform and for effp learning from labels, else global.
    #[cfg_attr(feature = "cli", arg(long, value_enum))]
    #[serde(skip_serializing_if = "Option::is_none")]
    pub scope: Option<Scope>,
}

impl Default for PruneOptions {
    fn default() -> Self {
        Self {
            min_channels: 1,
            min_fraction: None,
            round_to: 1,
            cost_exponent: 1.0,
            activation_cost: 0.0,
            scope: None,
        }
    }
}

impl PruneOptions {
    /// The share of its channels every feature map keeps under `method`.
    pub fn min_fraction_for(&self, method: Method) -> f64 {
        self.min_fraction
            .unwrap_or_else(|| method.default_min_fraction())
    }

    /// Every out-of-range setting, and a scope the method cannot use, by its path in
    /// a job request.
    pub fn errors(&self, method: Method) -> Vec<FieldError> {
        let mut errors = Vec::new();
        if self.min_channels == 0 {
            errors.push(FieldError::new(
                "/options/min_channels",
                "must be at least 1, got 0",
            ));
        }
        if let Some(f) = self.min_fraction
            && !(0.0..1.0).contains(&f)
        {
            errors.push(FieldError::new(
                "/options/min_fraction",
                format!("must be in [0, 1), got {f}"),
            ));
        }
        if !(1..=256).contains(&self.round_to) {
            errors.push(FieldError::new(
                "/options/round_to",
                format!("must be in 1..=256, got {}", self.round_to),
            ));
        }
        if !(0.0..=2.0).contains(&self.cost_exponent) {
            errors.push(FieldError::new(
                "/options/cost_exponent",
                format!("must be in [0, 2], got {}", self.cost_exponent),
            ));
        }
        if !(0.0..=MAX_ACTIVATION_COST).contains(&self.activation_cost) {
            errors.push(FieldError::new(
                "/options/activation_cost",
                format!(
                    "must be in [0, 1e6] MACs per feature-map element, got {}",
                    self.activation_cost
                ),
            ));
        }
        if let Err(why) = method.scope(self.scope, true) {
            errors.push(FieldError::new("/options/scope", why));
        }
        errors
    }
}
