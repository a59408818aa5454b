//! `effp prune`: choose channel groups to remove and write the smaller model.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

use anyhow::Context;
use clap::{Args, ValueEnum};
use effp_engine::data::archive::ArchiveLimits;
use effp_engine::data::dataset::Dataset;
use effp_engine::eval::run::{EvalOptions, evaluate_network};
use effp_engine::prune::{L1Options, Scope, Target, l1_mask};
use effp_engine::runtime::{DeviceChoice, Network};
use effp_engine::train::checkpoint::Checkpoint;
use effp_engine::train::distill::Distill;
use effp_engine::train::session::{
    Control, Criterion, FineTune, Method as TrainMethod, PhaseSeconds, Problem, StepRecord,
    TrainOptions, TrainRun,
};
use effp_engine::verify::{EQUIVALENCE_TOLERANCE, Equivalence, equivalence};
use effp_graph::channels::{ChannelAnalysis, CompactionReport, compact};
use effp_graph::cost::graph_cost;
use effp_graph::ir::Model;
use effp_graph::shape::InputSize;
use indicatif::{ProgressBar, ProgressStyle};
use serde::Serialize;

use super::table::{si, thousands};

/// Pruning methods available from the command line.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Method {
    /// One-shot: remove the filters with the smallest L2 norm per FLOP; with --data,
    /// then fine-tune for --steps.
    L1,
    /// Masked training with gradual pruning and regrowing (needs --data).
    Effp,
    /// Soft filter pruning: zero the weakest filters, keep training them, choose again
    /// every epoch (needs --data).
    Sfp,
    /// Hard pruning in --stages stages with fine-tuning between them (needs --data).
    Progressive,
    /// A random mask of the target's size, then fine-tuning (needs --data).
    Random,
    /// Torch-Pruning's recipe: the same share of every layer by group L2 norm, in
    /// --stages stages with fine-tuning between them (needs --data).
    Uniform,
}

impl Method {
    fn trained(self) -> TrainMethod {
        match self {
            Method::L1 => TrainMethod::L1,
            Method::Effp => TrainMethod::Effp,
            Method::Sfp => TrainMethod::Sfp,
            Method::Progressive => TrainMethod::Progressive,
            Method::Random => TrainMethod::Random,
            Method::Uniform => TrainMethod::Uniform,
        }
    }
}

/// Arguments of `effp prune`.
#[derive(Debug, Args)]
#[command(group(clap::ArgGroup::new("target").required(true).args(["target_flops", "target_params"])))]
pub struct PruneArgs {
    /// The ONNX model to prune.
    pub model: PathBuf,
    /// Pruning method (default: effp with --data, else l1).
    #[arg(long, value_enum)]
    pub method: Option<Method>,
    /// FLOPs to keep: a ratio of the original (e.g. 0.5) or an absolute count (e.g. 4.2e9).
    #[arg(long, value_name = "R|FLOPS")]
    pub target_flops: Option<f64>,
    /// Parameters to keep, as a ratio of the original (e.g. 0.5).
    #[arg(long, value_name = "R")]
    pub target_params: Option<f64>,
    /// Where to write the pruned ONNX model.
    #[arg(long, short)]
    pub out: PathBuf,
    /// Where to write the JSON report (per-layer channels and kept indices, curve).
    #[arg(long)]
    pub report: Option<PathBuf>,
    /// Channels every feature map keeps at least.
    #[arg(long, default_value_t = 1, value_parser = clap::value_parser!(u32).range(1..))]
    pub min_channels: u32,
    /// Fraction of its channels every feature map keeps at least, in [0, 1). Default:
    /// 0.25 for effp (ranked across the network, it would otherwise empty whole
    /// layers at low targets), 0 for the other methods.
    #[arg(long)]
    pub min_fraction: Option<f64>,
    /// Remove channels in multiples of this per layer (8 suits CPU kernels and TensorRT).
    #[arg(long, default_value_t = 1, value_parser = clap::value_parser!(u32).range(1..=256))]
    pub round_to: u32,
    /// Groups go in order of importance / MACs^E: 1 = importance per FLOP, 0 = cost
    /// ignored.
    #[arg(long, value_name = "E", default_value_t = 1.0)]
    pub cost_exponent: f64,
    /// MACs charged per feature-map element a channel group occupies when groups are
    /// ranked (default 0: FLOPs alone). Above 0, channels of high-resolution feature
    /// maps count as dearer than their FLOPs, so that CPU latency falls closer to
    /// the FLOPs; the target stays in FLOPs.
    #[arg(long, value_name = "MACS", default_value_t = 0.0)]
    pub activation_cost: f64,
    /// Where removed groups compete: across the network (global, by importance per
    /// MAC) or within each layer (layer: every layer loses the same share). Default:
    /// layer for uniform, global for the others.
    #[arg(long, value_enum)]
    pub scope: Option<ScopeArg>,
    /// Image input size as HxW; defaults to the size the model declares. Required for
    /// a model with free input sizes (a dynamic-shape export), which is pruned and
    /// trained at this size and keeps its free sizes in the written file.
    #[arg(long, value_name = "HxW", allow_hyphen_values = true)]
    pub input_size: Option<InputSize>,
    /// Where to train and check: auto (CUDA when available), cpu, cuda, cuda:N.
    #[arg(long, default_value = "auto")]
    pub device: DeviceChoice,
    /// Skip checking that the pruned model computes what the masked original computes.
    #[arg(long)]
    pub no_verify: bool,
    /// Images from the model's domain (YOLO or COCO layout, folder or archive): the
    /// training images, and the labels for mAP before/after.
    #[arg(long)]
    pub data: Option<PathBuf>,
    #[command(flatten)]
    pub training: TrainingArgs,
}

impl PruneArgs {
    /// The method: the one asked for, or EFFP when there are images to train on and
    /// one-shot L1 when there are none.
    pub fn method(&self) -> Method {
        self.method.unwrap_or(if self.data.is_some() {
            Method::Effp
        } else {
            Method::L1
        })
    }
}

/// Settings of the trained methods.
#[derive(Debug, Args)]
pub struct TrainingArgs {
    /// Optimiser steps in all, pruning phase and fine-tuning (0 with l1: no fine-tuning).
    #[arg(long, default_value_t = 300)]
    pub steps: usize,
    /// Share of the steps in which masks change; the rest fine-tune the final mask.
    #[arg(long, default_value_t = 0.7)]
    pub prune_share: f64,
    /// effp: steps between mask updates.
    #[arg(long, default_value_t = 5, value_parser = clap::value_parser!(u64).range(1..))]
    pub interval: u64,
    /// effp: initial fraction of switched-off groups considered for regrowing (0 = off).
    #[arg(long, default_value_t = 0.3)]
    pub regrow: f64,
    /// effp: how active groups are ranked for pruning.
    #[arg(long, value_enum, default_value = "curvature")]
    pub criterion: CriterionArg,
    /// progressive, uniform: number of prune-then-fine-tune stages.
    #[arg(long, default_value_t = 4, value_parser = clap::value_parser!(u64).range(1..))]
    pub stages: u64,
    /// What the student learns to reproduce: the outputs, or also the prediction layers.
    #[arg(long, value_enum, default_value = "heads")]
    pub distill: DistillArg,
    /// Images per step.
    #[arg(long, default_value_t = 8, value_parser = clap::value_parser!(u64).range(1..))]
    pub batch: u64,
    /// Weight of YOLOv8's detection loss on the labels (per image) beside the
    /// distillation loss, when the training images have labels; 0: learn from the
    /// original's outputs alone.
    #[arg(long, default_value_t = effp_engine::train::session::DEFAULT_LABEL_WEIGHT)]
    pub label_weight: f64,
    /// What the steps after the pruning phase train: the compacted network (faster,
    /// same result) or the masked full-size one.
    #[arg(long, value_enum, default_value = "compacted")]
    pub fine_tune: FineTuneArg,
    /// Probability that a training image is a mosaic of four, as Ultralytics' trainer
    /// makes them (it uses 1; the last tenth of the steps trains without); 0: none.
    #[arg(long, default_value_t = effp_engine::data::augment::DEFAULT_MOSAIC)]
    pub mosaic: f64,
    /// Peak learning rate (AdamW, warm-up then cosine).
    #[arg(long, default_value_t = 1e-3)]
    pub lr: f64,
    /// Seed for shuffling, augmentation and random masks.
    #[arg(long, default_value_t = 0)]
    pub seed: u64,
    /// Where the training state is saved (default: the output path + .ckpt).
    #[arg(long)]
    pub checkpoint: Option<PathBuf>,
    /// Steps between checkpoints (0: only on Ctrl-C).
    #[arg(long, default_value_t = 50)]
    pub checkpoint_every: usize,
    /// Continue an interrupted run from its checkpoint (same model and settings).
    #[arg(long, value_name = "CKPT")]
    pub resume: Option<PathBuf>,
}

/// Selection scopes, as spelled on the command line.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum ScopeArg {
    /// Groups compete across the whole network by importance per MAC.
    Global,
    /// Every layer loses the same share of its channels.
    Layer,
}

/// The scope a method selects in: the one asked for, or the method's own.
pub fn scope_for(method: Method, asked: Option<ScopeArg>) -> anyhow::Result<Scope> {
    match (method, asked) {
        (Method::Uniform, Some(ScopeArg::Global)) => anyhow::bail!(
            "--method uniform prunes the same share of every layer: drop --scope global, or use \
             --method progressive --scope global"
        ),
        (Method::Uniform, _) | (_, Some(ScopeArg::Layer)) => Ok(Scope::Layer),
        (_, _) => Ok(Scope::Global),
    }
}

/// Pruning criteria, as spelled on the command line.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum CriterionArg {
    /// Second-order estimate of the loss increase (gate gradients and curvature).
    Curvature,
    /// First-order Taylor estimate of the loss increase (gate gradients).
    Taylor,
    /// Filter norm relative to the layer's largest.
    Magnitude,
}

/// Fine-tuning modes, as spelled on the command line.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum FineTuneArg {
    /// Remove the switched-off groups when the pruning phase ends, then train.
    Compacted,
    /// Keep training the full-size network with its gates closed.
    Masked,
}

/// Distillation targets, as spelled on the command line.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum DistillArg {
    /// The outputs and the prediction layers' raw outputs.
    Heads,
    /// The outputs only.
    Outputs,
}

/// Identifier of the report layout.
pub const PRUNE_REPORT_SCHEMA: &str = "effp.prune-report/v1";

/// The JSON report of a pruning run.
#[derive(Debug, Serialize)]
pub struct PruneReport {
    schema: &'static str,
    method: Method,
    /// Where removed groups competed (global or per layer).
    scope: Scope,
    /// The share of its channels every feature map kept at least.
    min_fraction: f64,
    /// MACs charged per feature-map element in the ranking (0: FLOPs alone).
    activation_cost: f64,
    target: serde_json::Value,
    pub(crate) before: Totals,
    pub(crate) after: Totals,
    pub(crate) flops_ratio: f64,
    pub(crate) params_ratio: f64,
    groups_total: usize,
    equivalence: Option<Equivalence>,
    /// mAP of the original and of the pruned model on the data's validation split.
    #[serde(skip_serializing_if = "Option::is_none")]
    accuracy: Option<Accuracy>,
    /// Settings and totals of the training, for the trained methods.
    #[serde(skip_serializing_if = "Option::is_none")]
    training: Option<TrainingSummary>,
    /// Loss, FLOPs, budget and mask changes over the steps.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    curve: Vec<StepRecord>,
    /// What the user should know about the result (one-shot pruning recovers
    /// nothing of what the removed filters did).
    #[serde(skip_serializing_if = "Option::is_none")]
    note: Option<String>,
    /// Seconds from start to the written model.
    wall_seconds: f64,
    compaction: CompactionReport,
}

#[derive(Debug, Serialize)]
struct Accuracy {
    split: String,
    before: Scores,
    after: Scores,
}

#[derive(Debug, Serialize)]
struct Scores {
    map50_95: f64,
    map50: f64,
}

#[derive(Debug, Serialize)]
pub(crate) struct Totals {
    pub(crate) flops: u64,
    pub(crate) params: u64,
}

/// Runs the command: prunes, prints a summary; Ctrl-C checkpoints a training run.
pub fn run(args: &PruneArgs) -> anyhow::Result<u8> {
    let cancel = Arc::new(AtomicBool::new(false));
    {
        let cancel = Arc::clone(&cancel);
        // A second Ctrl-C while the checkpoint is written is ignored on purpose:
        // the state must reach the disk whole.
        ctrlc::set_handler(move || cancel.store(true, Ordering::SeqCst))
            .context("cannot install the Ctrl-C handler")?;
    }
    let report = execute(args, &cancel, &mut |_| {})?;
    print_summary(&report, args);
    Ok(0)
}

/// Prunes as `args` say and writes the model (and the report when asked); `cancel`
/// stops a training run at the next step (after a checkpoint); `on_step` sees every
/// training step. The service's worker runs jobs through this too.
pub fn execute(
    args: &PruneArgs,
    cancel: &AtomicBool,
    on_step: &mut dyn FnMut(&StepRecord),
) -> anyhow::Result<PruneReport> {
    let target = match (args.target_flops, args.target_params) {
        (Some(r), _) if r < 1.0 => Target::FlopsRatio(r),
        (Some(f), _) => Target::Flops(f as u64),
        (None, Some(r)) => Target::ParamsRatio(r),
        (None, None) => unreachable!("clap requires a target"),
    };
    if !(0.0..=2.0).contains(&args.cost_exponent) {
        anyhow::bail!(
            "--cost-exponent must be in [0, 2], got {}",
            args.cost_exponent
        );
    }
    if !(0.0..=1e6).contains(&args.activation_cost) {
        anyhow::bail!(
            "--activation-cost must be in [0, 1e6] MACs per element, got {}",
            args.activation_cost
        );
    }
    let min_fraction = args
        .min_fraction
        .unwrap_or_else(|| args.method().trained().default_min_fraction());
    if !(0.0..1.0).contains(&min_fraction) {
        anyhow::bail!("--min-fraction must be in [0, 1), got {min_fraction}");
    }
    let (model, _) = effp_graph::analyse_file(&args.model, args.input_size)
        .with_context(|| format!("cannot prune '{}'", args.model.display()))?;
    effp_graph::require_supported(&model)
        .with_context(|| format!("cannot prune '{}'", args.model.display()))?;
    let analysis = ChannelAnalysis::new(&model.graph)
        .with_context(|| format!("cannot prune '{}'", args.model.display()))?;
    let options = L1Options {
        min_channels: args.min_channels as usize,
        min_fraction,
        round_to: args.round_to as usize,
        cost_exponent: args.cost_exponent,
        activation_cost: args.activation_cost,
        scope: scope_for(args.method(), args.scope)?,
    };
    let started = std::time::Instant::now();
    let device = args.device.resolve()?;
    let scratch = tempfile::tempdir().context("cannot create a scratch folder")?;
    let dataset = match &args.data {
        Some(path) => Some(
            effp_engine::data::dataset::open(path, scratch.path(), ArchiveLimits::default())
                .with_context(|| format!("cannot read the dataset '{}'", path.display()))?,
        ),
        None => None,
    };
    let trains = args.method() != Method::L1 || (dataset.is_some() && args.training.steps > 0);
    let (trained, mask, curve, training, compacted) = if trains {
        let Some(ds) = &dataset else {
            anyhow::bail!(
                "--method {} trains on images from the model's domain: pass --data DIR|ARCHIVE",
                args.method()
                    .to_possible_value()
                    .expect("no skipped variants")
                    .get_name()
            );
        };
        let problem = Problem {
            model: &model,
            analysis: &analysis,
            samples: ds.split("train")?,
            target,
        };
        let (run, summary) = train(args, &problem, options, device, cancel, on_step)?;
        (
            run.model,
            run.mask,
            run.history,
            Some(summary),
            run.compacted,
        )
    } else {
        (
            model.clone(),
            l1_mask(&model.graph, &analysis, target, options)?,
            Vec::new(),
            None,
            None,
        )
    };
    let model_before = model;
    let (pruned, compaction, checked) = match compacted {
        // Fine-tuning trained the compacted network; it was checked against the
        // masked student when it was cut.
        Some(e) => {
            let (_, compaction) = compact(&model_before, &analysis, &mask)?;
            (trained, compaction, Some(e))
        }
        None => {
            let (pruned, compaction) = compact(&trained, &analysis, &mask)?;
            let checked = verified(&trained, &analysis, &mask, &pruned, device, args.no_verify)?;
            (pruned, compaction, checked)
        }
    };
    effp_graph::onnx::save_file(&pruned, &args.out)?;
    let accuracy = match &dataset {
        Some(ds)
            if ds
                .splits
                .get("val")
                .is_some_and(|v| v.iter().any(|s| !s.labels.is_empty())) =>
        {
            Some(Accuracy {
                split: "val".into(),
                before: score(&model_before, ds, device)?,
                after: score(&pruned, ds, device)?,
            })
        }
        _ => None,
    };

    let before = graph_cost(&model_before.graph);
    let after = graph_cost(&pruned.graph);
    let report = PruneReport {
        schema: PRUNE_REPORT_SCHEMA,
        method: args.method(),
        scope: options.scope,
        min_fraction: options.min_fraction,
        activation_cost: options.activation_cost,
        target: match target {
            Target::FlopsRatio(r) => serde_json::json!({ "flops_ratio": r }),
            Target::Flops(f) => serde_json::json!({ "flops": f }),
            Target::ParamsRatio(r) => serde_json::json!({ "params_ratio": r }),
        },
        before: Totals {
            flops: before.flops(),
            params: before.params,
        },
        after: Totals {
            flops: after.flops(),
            params: after.params,
        },
        flops_ratio: after.flops() as f64 / before.flops().max(1) as f64,
        params_ratio: after.params as f64 / before.params.max(1) as f64,
        groups_total: analysis.groups.len(),
        equivalence: checked,
        accuracy,
        training: training.map(|mut t| {
            if let Some(last) = curve.last() {
                t.regrown = last.regrown;
                t.pruned = last.pruned;
            }
            t
        }),
        curve,
        note: (!trains).then(|| {
            "one-shot pruning without training: accuracy was not recovered after the filters were removed; \
             give images from the model's domain (--data, or a dataset for a job) to train with effp"
                .to_string()
        }),
        wall_seconds: started.elapsed().as_secs_f64(),
        compaction,
    };
    if let Some(path) = &args.report {
        std::fs::write(path, serde_json::to_string_pretty(&report)?)
            .with_context(|| format!("cannot write the report to '{}'", path.display()))?;
    }
    Ok(report)
}

/// The few lines `effp prune` prints when it is done.
fn print_summary(report: &PruneReport, args: &PruneArgs) {
    println!(
        "pruned {} of {} channel groups ({} layers changed)",
        report.compaction.groups_removed,
        report.groups_total,
        report.compaction.layers.len()
    );
    println!(
        "FLOPs   {} → {} ({:.1}%)",
        si(report.before.flops),
        si(report.after.flops),
        100.0 * report.flops_ratio
    );
    println!(
        "params  {} → {} ({:.1}%)",
        thousands(report.before.params),
        thousands(report.after.params),
        100.0 * report.params_ratio
    );
    if let Some(a) = &report.accuracy {
        println!(
            "mAP50-95 {:.4} → {:.4}, mAP50 {:.4} → {:.4} ({} split)",
            a.before.map50_95, a.after.map50_95, a.before.map50, a.after.map50, a.split
        );
    }
    if let Some(e) = &report.equivalence {
        println!(
            "checked masked == compacted on {} ({:.1e} relative)",
            e.device, e.max_relative_error
        );
    }
    if let Some(note) = &report.note {
        println!("note    {note}");
    }
    println!("wrote   {}", args.out.display());
}

/// mAP of a model on the dataset's validation split.
fn score(model: &Model, ds: &Dataset, device: effp_engine::tch::Device) -> anyhow::Result<Scores> {
    let net = Network::new(model, device)?;
    let report = evaluate_network(
        &net,
        ds.split("val")?,
        ds.names.len(),
        &EvalOptions::default(),
        |_| {},
    )?;
    Ok(Scores {
        map50_95: report.metrics.map50_95,
        map50: report.metrics.map50,
    })
}

/// Exit status of a run stopped with Ctrl-C (after saving its checkpoint).
pub const EXIT_INTERRUPTED: u8 = 130;

/// How a trained run was set up, for the report.
#[derive(Debug, Serialize)]
struct TrainingSummary {
    steps: usize,
    prune_share: f64,
    interval: u64,
    regrow: f64,
    criterion: &'static str,
    stages: u64,
    distill: &'static str,
    batch: u64,
    lr: f64,
    seed: u64,
    device: String,
    resumed_from_step: Option<usize>,
    regrown: usize,
    pruned: usize,
    label_weight: f64,
    /// Probability of a mosaic per training image.
    mosaic: f64,
    /// Whether the run learnt from the labels, and if not, why not.
    labels: effp_engine::train::session::LabelUse,
    /// What the fine-tuning phase trained.
    fine_tune: FineTune,
    /// Wall time of the pruning and the fine-tuning phase (of this process, when
    /// resumed).
    seconds: PhaseSeconds,
}

/// Checks (unless told not to) that the compacted model computes what the masked one
/// computes, and refuses to go on when it does not.
fn verified(
    masked: &effp_graph::ir::Model,
    analysis: &ChannelAnalysis,
    mask: &effp_graph::channels::Mask,
    pruned: &effp_graph::ir::Model,
    device: effp_engine::tch::Device,
    skip: bool,
) -> anyhow::Result<Option<Equivalence>> {
    if skip {
        return Ok(None);
    }
    let e = equivalence(masked, analysis, mask, pruned, device, 2)?;
    if e.max_relative_error > EQUIVALENCE_TOLERANCE {
        anyhow::bail!(
            "the compacted model differs from the masked original by {:.2e} (relative), more than {EQUIVALENCE_TOLERANCE:e}; \
             nothing was written. This is a bug in effp: please report it with the model",
            e.max_relative_error
        );
    }
    Ok(Some(e))
}

/// Trains with the chosen method, showing a progress bar, saving checkpoints, and
/// stopping cleanly (checkpoint first) on Ctrl-C.
fn train(
    args: &PruneArgs,
    problem: &Problem<'_>,
    limits: L1Options,
    device: effp_engine::tch::Device,
    cancel: &AtomicBool,
    on_step: &mut dyn FnMut(&StepRecord),
) -> anyhow::Result<(TrainRun, TrainingSummary)> {
    let t = &args.training;
    if !(0.0..=1.0).contains(&t.mosaic) {
        anyhow::bail!("--mosaic must be in [0, 1], got {}", t.mosaic);
    }
    if !(0.0..=1.0).contains(&t.regrow) {
        anyhow::bail!("--regrow must be in [0, 1], got {}", t.regrow);
    }
    if !(t.prune_share > 0.0 && t.prune_share <= 1.0) {
        anyhow::bail!("--prune-share must be in (0, 1], got {}", t.prune_share);
    }
    if !(t.lr > 0.0 && t.lr.is_finite()) {
        anyhow::bail!("--lr must be a positive number, got {}", t.lr);
    }
    let options = TrainOptions {
        method: args.method().trained(),
        steps: t.steps,
        prune_share: t.prune_share,
        interval: t.interval as usize,
        regrow: t.regrow,
        criterion: match t.criterion {
            CriterionArg::Curvature => Criterion::Curvature,
            CriterionArg::Taylor => Criterion::Taylor,
            CriterionArg::Magnitude => Criterion::Magnitude,
        },
        stages: t.stages as usize,
        distill: match t.distill {
            DistillArg::Heads => Distill::Heads,
            DistillArg::Outputs => Distill::Outputs,
        },
        batch: t.batch as usize,
        lr: t.lr,
        seed: t.seed,
        limits,
        label_weight: t.label_weight,
        augment: Some(effp_engine::data::augment::Augment {
            mosaic: t.mosaic,
            ..Default::default()
        }),
        fine_tune: match t.fine_tune {
            FineTuneArg::Compacted => FineTune::Compacted,
            FineTuneArg::Masked => FineTune::Masked,
        },
        ..TrainOptions::default()
    };
    let checkpoint = t.checkpoint.clone().unwrap_or_else(|| {
        let mut p = args.out.as_os_str().to_owned();
        p.push(".ckpt");
        PathBuf::from(p)
    });
    let resume = match &t.resume {
        Some(path) => Some(Checkpoint::load(path)?),
        None => None,
    };
    let resumed_from_step = resume.as_ref().map(Checkpoint::step);
    let control = Control {
        checkpoint: Some(checkpoint.clone()),
        every: t.checkpoint_every,
        cancel: Some(cancel),
        resume,
        fingerprint: fingerprint(&args.model, args.input_size)?,
    };
    let bar = ProgressBar::new(t.steps as u64);
    bar.set_style(
        ProgressStyle::with_template("{spinner} {prefix} {bar:25} {pos}/{len} {msg} eta {eta}")
            .expect("a valid template"),
    );
    bar.set_prefix(
        args.method()
            .to_possible_value()
            .expect("no skipped variants")
            .get_name()
            .to_string(),
    );
    if let Some(step) = resumed_from_step {
        bar.set_position(step as u64);
    }
    let result = effp_engine::train::session::train(problem, &options, device, control, |r| {
        on_step(r);
        bar.set_position(r.step as u64 + 1);
        bar.set_message(format!(
            "loss {:.4} FLOPs {:.3}/{:.3} active {} regrown {}",
            r.loss, r.flops_ratio, r.budget, r.active_groups, r.regrown
        ));
    });
    bar.finish_and_clear();
    let run = match result {
        Ok(run) => run,
        Err(effp_engine::EngineError::Cancelled(c)) => {
            return Err(Interrupted(c.to_string()).into());
        }
        Err(e) => return Err(e.into()),
    };
    if t.checkpoint.is_none() {
        // The default checkpoint only serves this run; an explicit one is the user's.
        let _ = std::fs::remove_file(&checkpoint);
    }
    let summary = TrainingSummary {
        steps: t.steps,
        prune_share: t.prune_share,
        interval: t.interval,
        regrow: t.regrow,
        criterion: match t.criterion {
            CriterionArg::Curvature => "curvature",
            CriterionArg::Taylor => "taylor",
            CriterionArg::Magnitude => "magnitude",
        },
        stages: t.stages,
        distill: match t.distill {
            DistillArg::Heads => "heads",
            DistillArg::Outputs => "outputs",
        },
        batch: t.batch,
        lr: t.lr,
        seed: t.seed,
        device: format!("{device:?}").to_lowercase(),
        resumed_from_step,
        regrown: 0,
        pruned: 0,
        label_weight: t.label_weight,
        mosaic: t.mosaic,
        labels: run.labels.clone(),
        fine_tune: options.fine_tune,
        seconds: run.seconds,
    };
    Ok((run, summary))
}

/// A run stopped by Ctrl-C; `main` turns it into exit status 130.
#[derive(Debug, thiserror::Error)]
#[error("{0}")]
pub struct Interrupted(String);

/// Identifies the model a checkpoint belongs to: the file's SHA-256 and the input size.
fn fingerprint(path: &Path, size: Option<InputSize>) -> anyhow::Result<String> {
    use sha2::Digest;
    let mut file =
        std::fs::File::open(path).with_context(|| format!("cannot read '{}'", path.display()))?;
    let mut hasher = sha2::Sha256::new();
    std::io::copy(&mut file, &mut hasher)
        .with_context(|| format!("cannot read '{}'", path.display()))?;
    Ok(format!("sha256:{:x} input {size:?}", hasher.finalize()))
}
