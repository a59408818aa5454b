//! `effp prune`: choose channel groups to remove and write the smaller model.

use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

use anyhow::Context;
use clap::Args;
use effp_engine::data::archive::ArchiveLimits;
use effp_engine::pipeline::{self, PipelineError, PruneEnv, PruneJob, PruneReport, TrainEvent};
use effp_engine::prune::Target;
use effp_engine::runtime::DeviceChoice;
use effp_graph::shape::InputSize;
use effp_protocol::{Method, PruneOptions, TrainingSpec};
use indicatif::{ProgressBar, ProgressStyle};

use super::table::{si, thousands};

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
    #[command(flatten)]
    pub options: PruneOptions,
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
        self.method
            .unwrap_or_else(|| Method::default_for(self.data.is_some()))
    }
}

/// Settings of the trained methods.
#[derive(Debug, Args)]
pub struct TrainingArgs {
    #[command(flatten)]
    pub spec: TrainingSpec,
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

impl PruneArgs {
    /// The pruning job these flags describe.
    pub fn job(&self) -> PruneJob {
        let target = match (self.target_flops, self.target_params) {
            (Some(r), _) if r < 1.0 => Target::FlopsRatio(r),
            (Some(f), _) => Target::Flops(f as u64),
            (None, Some(r)) => Target::ParamsRatio(r),
            (None, None) => unreachable!("clap requires a target"),
        };
        PruneJob {
            model: self.model.clone(),
            method: self.method(),
            target,
            options: self.options.clone(),
            training: self.training.spec.clone(),
            input_size: self.input_size,
            device: self.device,
            data: self.data.clone(),
            out: self.out.clone(),
            report: self.report.clone(),
            verify: !self.no_verify,
        }
    }
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
    let scratch = tempfile::tempdir().context("cannot create a scratch folder")?;
    let env = PruneEnv {
        scratch: scratch.path().to_path_buf(),
        archive_limits: ArchiveLimits::default(),
        checkpoint: args.training.checkpoint.clone(),
        checkpoint_every: args.training.checkpoint_every,
        resume: args.training.resume.clone(),
    };
    let job = args.job();
    let bar = ProgressBar::hidden();
    bar.set_length(u64::from(job.training.steps));
    bar.set_style(
        ProgressStyle::with_template("{spinner} {prefix} {bar:25} {pos}/{len} {msg} eta {eta}")
            .expect("a valid template"),
    );
    bar.set_prefix(job.method.as_str());
    let outcome = pipeline::run(&job, &env, &cancel, &mut |event| {
        let TrainEvent::Step(r) = event else {
            return;
        };
        if bar.is_hidden() {
            // Shown once training starts: one-shot pruning has no steps to count.
            bar.set_draw_target(indicatif::ProgressDrawTarget::stderr());
        }
        bar.set_position(r.step as u64 + 1);
        bar.set_message(format!(
            "loss {:.4} FLOPs {:.3}/{:.3} active {} regrown {}",
            r.loss, r.flops_ratio, r.budget, r.active_groups, r.regrown
        ));
    });
    bar.finish_and_clear();
    let report = outcome.map_err(cli_error)?;
    print_summary(&report, args);
    Ok(0)
}

/// The pipeline's error as the command line words it: settings by their flags, a
/// cancelled run as [`Interrupted`].
fn cli_error(e: PipelineError) -> anyhow::Error {
    match e {
        PipelineError::Invalid(errors) => {
            let lines: Vec<String> = errors
                .iter()
                .map(|e| format!("{} {}", e.flag(), e.message))
                .collect();
            anyhow::anyhow!("{}", lines.join("; "))
        }
        PipelineError::NeedsData(method) => anyhow::anyhow!(
            "--method {} trains on images from the model's domain: pass --data DIR|ARCHIVE",
            method.as_str()
        ),
        PipelineError::Cancelled(c) => Interrupted(c).into(),
        other => other.into(),
    }
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

/// A run stopped by Ctrl-C; `main` turns it into exit status 130.
#[derive(Debug, thiserror::Error)]
#[error("{0}")]
pub struct Interrupted(String);
