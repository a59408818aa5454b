//! The pruning methods and the choices that shape how they prune and train.

use serde::{Deserialize, Serialize};

/// A pruning method: how channel groups are chosen, and whether the network trains.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[cfg_attr(feature = "cli", derive(clap::ValueEnum))]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[serde(rename_all = "lowercase")]
pub enum Method {
    /// One-shot: remove the filters with the smallest L2 norm per FLOP; with
    /// training data, then fine-tune.
    L1,
    /// Masked training with gradual pruning and regrowing (needs training data).
    Effp,
    /// Soft filter pruning: zero the weakest filters, keep training them, choose
    /// again every epoch (needs training data).
    Sfp,
    /// Hard pruning in stages with fine-tuning between them (needs training data).
    Progressive,
    /// A random mask of the target's size, then fine-tuning (needs training data).
    Random,
    /// Torch-Pruning's recipe: the same share of every layer by group L2 norm, in
    /// stages with fine-tuning between them (needs training data).
    Uniform,
}

/// The share of its channels every feature map keeps under EFFP unless told
/// otherwise: ranked across the whole network, EFFP otherwise empties whole layers
/// of a converged detector at low targets (docs/benchmarks.md).
pub const EFFP_MIN_FRACTION: f64 = 0.25;

/// The share of the steps in which EFFP's masks change when it learns from labels,
/// unless told otherwise: settling the mask early and training the final structure
/// for the rest of the run kept 0.765 mAP50-95 against 0.720 at 0.7 on the
/// published YOLOv8n width, three seeds each (docs/benchmarks.md).
pub const EFFP_PRUNE_SHARE: f64 = 0.3;

/// What a method does where a request leaves its scope, criterion and schedule open.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct MethodDefaults {
    /// Where removed groups compete.
    pub scope: Scope,
    /// How EFFP ranks active groups.
    pub criterion: Criterion,
    /// Share of the steps in which masks change.
    pub prune_share: f64,
}

impl Method {
    /// Every method, in the order they are documented.
    pub const ALL: [Method; 6] = [
        Method::L1,
        Method::Effp,
        Method::Sfp,
        Method::Progressive,
        Method::Random,
        Method::Uniform,
    ];

    /// The method's name, as requests and reports spell it.
    pub fn as_str(self) -> &'static str {
        match self {
            Method::L1 => "l1",
            Method::Effp => "effp",
            Method::Sfp => "sfp",
            Method::Progressive => "progressive",
            Method::Random => "random",
            Method::Uniform => "uniform",
        }
    }

    /// The method used when none is named: EFFP when there are images to train on,
    /// one-shot L1 when there are none.
    pub fn default_for(has_data: bool) -> Method {
        if has_data { Method::Effp } else { Method::L1 }
    }

    /// Whether the method cannot run without training images.
    pub fn needs_data(self) -> bool {
        self != Method::L1
    }

    /// The method's own floor on the share of channels a feature map keeps.
    pub fn default_min_fraction(self) -> f64 {
        match self {
            Method::Effp => EFFP_MIN_FRACTION,
            _ => 0.0,
        }
    }

    /// The method's own scope, criterion and share of pruning steps. EFFP's depend on
    /// whether the run learns from labels: with them it prunes within each layer by
    /// the first-order criterion and settles its mask in the first 30% of the steps
    /// (ranked across the network it thinned the deep layers a detector needs and
    /// varied far more from seed to seed); from distillation alone, whose gradients
    /// vanish while the student still equals the original, it ranks across the
    /// network by the curvature estimate over 70% of the steps, which kept 0.05–0.16
    /// more mAP50-95 label-free (docs/benchmarks.md).
    pub fn defaults(self, labelled: bool) -> MethodDefaults {
        let staged = MethodDefaults {
            scope: Scope::Global,
            criterion: Criterion::Curvature,
            prune_share: crate::settings::DEFAULT_PRUNE_SHARE,
        };
        match self {
            Method::Effp if labelled => MethodDefaults {
                scope: Scope::Layer,
                criterion: Criterion::Taylor,
                prune_share: EFFP_PRUNE_SHARE,
            },
            Method::Uniform => MethodDefaults {
                scope: Scope::Layer,
                ..staged
            },
            _ => staged,
        }
    }

    /// Where the method's removed groups compete: the scope asked for, else the
    /// method's own ([`Method::defaults`]), or why the asked scope does not fit the
    /// method.
    pub fn scope(self, asked: Option<Scope>, labelled: bool) -> Result<Scope, String> {
        match (self, asked) {
            (Method::Uniform, Some(Scope::Global)) => Err(
                "global does not fit method uniform, which prunes the same share of every \
                 layer: leave the scope out, or use method progressive with scope global"
                    .into(),
            ),
            (_, asked) => Ok(asked.unwrap_or(self.defaults(labelled).scope)),
        }
    }
}

/// Where the groups a pruning step removes compete with each other.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "cli", derive(clap::ValueEnum))]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[serde(rename_all = "lowercase")]
pub enum Scope {
    /// Across the whole network, by importance per MAC: layers end up thinned by
    /// different amounts.
    Global,
    /// Within each layer: every layer loses the same share of its channels (the
    /// least important first), the share chosen so that the target holds
    /// (Torch-Pruning's default and Li et al.'s recipe).
    Layer,
}

/// How the importance of an active group is judged when EFFP prunes.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "cli", derive(clap::ValueEnum))]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[serde(rename_all = "lowercase")]
pub enum Criterion {
    /// Second-order estimate of the loss increase when the group's gate closes (gate
    /// gradients and Gauss-Newton curvature), informative even while the student
    /// still equals the teacher.
    Curvature,
    /// First-order Taylor estimate of the loss increase (squared gate gradients),
    /// averaged over the steps between updates: with the labels and per-layer
    /// pruning it kept the most accuracy of the three (docs/benchmarks.md).
    Taylor,
    /// Filter norm relative to the largest in the layer.
    Magnitude,
}

impl Criterion {
    /// The criterion's name, as requests and reports spell it.
    pub fn as_str(self) -> &'static str {
        match self {
            Criterion::Curvature => "curvature",
            Criterion::Taylor => "taylor",
            Criterion::Magnitude => "magnitude",
        }
    }
}

/// Where EFFP's mask starts.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[cfg_attr(feature = "cli", derive(clap::ValueEnum))]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[serde(rename_all = "lowercase")]
pub enum Start {
    /// Every channel on: the FLOPs budget falls to the target over the pruning
    /// phase.
    #[default]
    Full,
    /// At the target from the first step: the filter-norm ranking chooses the first
    /// mask (as `l1` does), then regrowing and pruning trade channels at the
    /// target's cost for the pruning phase. In 1000-step runs on the published
    /// YOLOv8n width it kept 0.02–0.09 more mAP50-95; on a small detector at 0.3
    /// FLOPs and in short runs it kept far less (docs/benchmarks.md).
    Target,
}

/// What the steps after the pruning phase train.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[cfg_attr(feature = "cli", derive(clap::ValueEnum))]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[serde(rename_all = "lowercase")]
pub enum FineTune {
    /// The network with its switched-off groups removed (weights and optimiser
    /// state sliced alike): the same steps on a smaller network, so faster.
    #[default]
    Compacted,
    /// The full-size network with its gates closed, as in the pruning phase.
    Masked,
}

impl FineTune {
    /// The mode's name, as requests and reports spell it.
    pub fn as_str(self) -> &'static str {
        match self {
            FineTune::Compacted => "compacted",
            FineTune::Masked => "masked",
        }
    }
}

/// Which tensors the pruned student is taught to reproduce. Unless a run names
/// one: `foreground` for a model with a YOLOv8-style head, `heads` otherwise.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "cli", derive(clap::ValueEnum))]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[serde(rename_all = "lowercase")]
pub enum Distill {
    /// The outputs and the raw outputs of the prediction layers (the last
    /// convolutions of the head, before decoding squashes or rescales them).
    Heads,
    /// The graph's outputs only.
    Outputs,
    /// As `heads`, and the feature maps the detection head reads (the neck's
    /// outputs, one per level), channel by channel. Needs a YOLOv8-style head.
    Neck,
    /// The outputs, and the head's predictions as a detector's distributions: per
    /// anchor, the divergence of each box side's bins (softened by a temperature)
    /// weighted by the original's confidence there, and of the class
    /// probabilities. Needs a YOLOv8-style head.
    Foreground,
}

impl Distill {
    /// The choice's name, as requests and reports spell it.
    pub fn as_str(self) -> &'static str {
        match self {
            Distill::Heads => "heads",
            Distill::Outputs => "outputs",
            Distill::Neck => "neck",
            Distill::Foreground => "foreground",
        }
    }
}
