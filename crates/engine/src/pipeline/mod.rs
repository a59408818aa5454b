//! The one pruning pipeline every front end runs: `effp prune` builds a
//! [`PruneJob`] from its flags, the service's worker from a job request. It loads and
//! analyses the model, trains (or prunes one-shot), compacts, checks the compacted
//! model against the masked one, scores both on the data and writes the model and
//! its report.

use std::path::{Path, PathBuf};
use std::sync::atomic::AtomicBool;
use std::time::Instant;

use effp_graph::channels::{ChannelAnalysis, compact};
use effp_graph::cost::graph_cost;
use effp_graph::ir::Model;
use effp_graph::shape::InputSize;
use effp_protocol::{DeviceChoice, FieldError, Method, PruneOptions, TrainingSpec};

pub use effp_protocol::report::{
    Accuracy, PRUNE_REPORT_SCHEMA, PruneReport, Scores, Totals, TrainingSummary,
};

use crate::EngineError;
use crate::data::archive::ArchiveLimits;
use crate::data::dataset::Dataset;
use crate::eval::decode::detect_layout;
use crate::eval::run::{EvalOptions, evaluate_network};
use crate::prune::{L1Options, PruneError, Target, l1_mask};
use crate::runtime::{Network, resolve_device};
use crate::train::checkpoint::{Checkpoint, CheckpointError};
pub use crate::train::session::TrainEvent;
use crate::train::session::{Control, Problem, TrainOptions, TrainRun, learns_from_labels, train};
use crate::verify::{EQUIVALENCE_TOLERANCE, equivalence};

/// What to prune, to what, and how.
#[derive(Debug, Clone)]
pub struct PruneJob {
    /// The ONNX model to prune.
    pub model: PathBuf,
    /// The method.
    pub method: Method,
    /// What to reach.
    pub target: Target,
    /// Per-layer limits and the ranking's cost.
    pub options: PruneOptions,
    /// Schedule and optimiser settings of the trained methods.
    pub training: TrainingSpec,
    /// The size to analyse, train and check at (required for free input sizes).
    pub input_size: Option<InputSize>,
    /// Where to train and check.
    pub device: DeviceChoice,
    /// Images from the model's domain (folder or archive): training images, and the
    /// labels for mAP before and after.
    pub data: Option<PathBuf>,
    /// Where the pruned model is written.
    pub out: PathBuf,
    /// Where the JSON report is written, if anywhere.
    pub report: Option<PathBuf>,
    /// Whether to check the compacted model against the masked original.
    pub verify: bool,
}

/// Where and within what limits a job runs.
#[derive(Debug, Clone)]
pub struct PruneEnv {
    /// Scratch space (a dataset archive is unpacked below it).
    pub scratch: PathBuf,
    /// Limits on what a dataset archive may unpack to.
    pub archive_limits: ArchiveLimits,
    /// Where the training state is saved and kept; `None`: next to the output,
    /// removed once the run ends.
    pub checkpoint: Option<PathBuf>,
    /// Steps between checkpoints (0: only when cancelled).
    pub checkpoint_every: usize,
    /// A checkpoint to continue from (same model and settings).
    pub resume: Option<PathBuf>,
}

/// Why a pruning run did not write its model.
#[derive(Debug, thiserror::Error)]
pub enum PipelineError {
    /// Settings out of range, or not fitting the method.
    #[error("invalid settings: {}", describe(.0))]
    Invalid(Vec<FieldError>),
    /// The method trains, and no images were given.
    #[error(
        "method {} trains on images from the model's domain: give training data (a dataset \
         folder or archive)", .0.as_str()
    )]
    NeedsData(Method),
    /// The model cannot be read, analysed or run.
    #[error("cannot prune '{}': {source}", path.display())]
    Model {
        /// The model file.
        path: PathBuf,
        /// What was wrong.
        source: Box<effp_graph::GraphError>,
    },
    /// The dataset cannot be read.
    #[error("cannot read the dataset '{}': {source}", path.display())]
    Dataset {
        /// The dataset folder or archive.
        path: PathBuf,
        /// What was wrong.
        source: crate::data::DataError,
    },
    /// The checkpoint to resume from cannot be used.
    #[error(transparent)]
    Checkpoint(#[from] CheckpointError),
    /// The target cannot be reached.
    #[error(transparent)]
    Prune(#[from] PruneError),
    /// The compacted model does not compute what the masked one does.
    #[error(
        "the compacted model differs from the masked original by {0:.2e} (relative), more than \
         {EQUIVALENCE_TOLERANCE:e}; nothing was written. This is a bug in effp: please report it \
         with the model"
    )]
    NotEquivalent(f64),
    /// A file could not be read or written.
    #[error("cannot {action} '{}': {source}", path.display())]
    Io {
        /// What was being done.
        action: &'static str,
        /// The file.
        path: PathBuf,
        /// What the system said.
        source: std::io::Error,
    },
    /// The run was cancelled; its state was saved where the message says.
    #[error("{0}")]
    Cancelled(String),
    /// Running or training the network failed.
    #[error(transparent)]
    Engine(EngineError),
    /// The graph could not be compacted or written.
    #[error(transparent)]
    Graph(Box<effp_graph::GraphError>),
}

impl From<effp_graph::GraphError> for PipelineError {
    fn from(e: effp_graph::GraphError) -> Self {
        PipelineError::Graph(Box::new(e))
    }
}

impl From<EngineError> for PipelineError {
    fn from(e: EngineError) -> Self {
        match e {
            EngineError::Cancelled(c) => PipelineError::Cancelled(c.to_string()),
            other => PipelineError::Engine(other),
        }
    }
}

impl From<crate::data::DataError> for PipelineError {
    fn from(e: crate::data::DataError) -> Self {
        PipelineError::Engine(EngineError::Data(e))
    }
}

fn describe(errors: &[FieldError]) -> String {
    errors
        .iter()
        .map(|e| format!("{}: {}", e.path, e.message))
        .collect::<Vec<_>>()
        .join("; ")
}

/// The note of a run that removed filters without training.
const ONE_SHOT_NOTE: &str = "one-shot pruning without training: accuracy was not recovered after \
     the filters were removed; give images from the model's domain (--data, or a dataset for a \
     job) to train with effp";

/// Below this share of the original's mAP50-95 a trained run's report says that the
/// accuracy was not recovered.
pub const RECOVERED_SHARE: f64 = 0.5;

/// The note of a trained run whose pruned model kept less than [`RECOVERED_SHARE`]
/// of the original's mAP50-95: said, so that a collapsed model is not taken for a
/// result.
fn unrecovered_note(accuracy: &Accuracy, steps: u32) -> Option<String> {
    let (before, after) = (accuracy.before.map50_95, accuracy.after.map50_95);
    (before > 0.0 && after < RECOVERED_SHARE * before).then(|| {
        format!(
            "the pruned model keeps only {:.0}% of the original's mAP50-95 ({before:.4} → \
             {after:.4}): {steps} training steps did not recover the accuracy at this target; \
             train longer (steps, e.g. three times as many) or ask for a milder target",
            100.0 * after / before
        )
    })
}

/// Runs a pruning job: writes the pruned model (and the report when asked) and
/// returns the report. `cancel` stops a training run after the current step (its
/// checkpoint saved); `on_event` sees every training step and every checkpoint
/// written.
pub fn run(
    job: &PruneJob,
    env: &PruneEnv,
    cancel: &AtomicBool,
    on_event: &mut dyn FnMut(TrainEvent<'_>),
) -> Result<PruneReport, PipelineError> {
    let method = job.method;
    let mut errors = job.options.errors(method);
    errors.extend(job.training.errors());
    if !errors.is_empty() {
        return Err(PipelineError::Invalid(errors));
    }
    let model_error = |source| PipelineError::Model {
        path: job.model.clone(),
        source: Box::new(source),
    };
    let (model, _) = effp_graph::analyse_file(&job.model, job.input_size).map_err(model_error)?;
    effp_graph::require_supported(&model).map_err(model_error)?;
    let analysis = ChannelAnalysis::new(&model.graph).map_err(model_error)?;
    let started = Instant::now();
    let device = resolve_device(job.device)?;
    let dataset = match &job.data {
        Some(path) => Some(
            crate::data::dataset::open(path, &env.scratch, env.archive_limits).map_err(
                |source| PipelineError::Dataset {
                    path: path.clone(),
                    source,
                },
            )?,
        ),
        None => None,
    };
    if let (Some(ds), Some(path)) = (&dataset, &job.data) {
        check_scorable(&model, ds, path)?;
    }
    let trains = method.needs_data() || (dataset.is_some() && job.training.steps > 0);
    // EFFP's defaults follow whether the run learns from labels.
    let labelled = match &dataset {
        Some(ds) if trains => learns_from_labels(
            &model.graph,
            &analysis,
            ds.split("train")?,
            job.training.label_weight,
        ),
        _ => false,
    };
    let limits = L1Options::new(&job.options, method, labelled);
    let (trained, mask, curve, training, compacted) = if trains {
        let Some(ds) = &dataset else {
            return Err(PipelineError::NeedsData(method));
        };
        let problem = Problem {
            model: &model,
            analysis: &analysis,
            samples: ds.split("train")?,
            target: job.target,
        };
        let options = TrainOptions::new(method, &job.training, limits, labelled);
        let (run, summary) = train_job(job, env, &problem, options, device, cancel, on_event)?;
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
            l1_mask(&model.graph, &analysis, job.target, limits)?,
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
            let checked = if job.verify {
                let e = equivalence(&trained, &analysis, &mask, &pruned, device, 2)?;
                if e.max_relative_error > EQUIVALENCE_TOLERANCE {
                    return Err(PipelineError::NotEquivalent(e.max_relative_error));
                }
                Some(e)
            } else {
                None
            };
            (pruned, compaction, checked)
        }
    };
    effp_graph::onnx::save_file(&pruned, &job.out)?;
    let accuracy = match &dataset {
        Some(ds) if scores_on(ds) => Some(Accuracy {
            split: "val".into(),
            before: score(&model_before, ds, device)?,
            after: score(&pruned, ds, device)?,
        }),
        _ => None,
    };

    let note = if trains {
        accuracy
            .as_ref()
            .and_then(|a| unrecovered_note(a, job.training.steps))
    } else {
        Some(ONE_SHOT_NOTE.to_string())
    };
    let before = graph_cost(&model_before.graph);
    let after = graph_cost(&pruned.graph);
    let report = PruneReport {
        schema: PRUNE_REPORT_SCHEMA.into(),
        method,
        scope: limits.scope,
        min_fraction: limits.min_fraction,
        activation_cost: limits.activation_cost,
        target: job.target.to_json(),
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
        note,
        wall_seconds: started.elapsed().as_secs_f64(),
        compaction,
    };
    if let Some(path) = &job.report {
        let text = serde_json::to_string_pretty(&report).map_err(|e| PipelineError::Io {
            action: "encode the report for",
            path: path.clone(),
            source: e.into(),
        })?;
        std::fs::write(path, text).map_err(|source| PipelineError::Io {
            action: "write the report to",
            path: path.clone(),
            source,
        })?;
    }
    Ok(report)
}

/// Trains with the job's method, saving checkpoints and stopping cleanly
/// (checkpoint first) when cancelled.
fn train_job(
    job: &PruneJob,
    env: &PruneEnv,
    problem: &Problem<'_>,
    options: TrainOptions,
    device: tch::Device,
    cancel: &AtomicBool,
    on_event: &mut dyn FnMut(TrainEvent<'_>),
) -> Result<(TrainRun, TrainingSummary), PipelineError> {
    let spec = &job.training;
    let checkpoint = env.checkpoint.clone().unwrap_or_else(|| {
        let mut p = job.out.as_os_str().to_owned();
        p.push(".ckpt");
        PathBuf::from(p)
    });
    let resume = match &env.resume {
        Some(path) => Some(Checkpoint::load(path)?),
        None => None,
    };
    let resumed_from_step = resume.as_ref().map(Checkpoint::step);
    let control = Control {
        checkpoint: Some(checkpoint.clone()),
        every: env.checkpoint_every,
        cancel: Some(cancel),
        resume,
        fingerprint: fingerprint(&job.model, job.input_size)?,
    };
    let run = train(problem, &options, device, control, on_event)?;
    if env.checkpoint.is_none() {
        // The default checkpoint only serves this run; an explicit one is the caller's.
        let _ = std::fs::remove_file(&checkpoint);
    }
    let summary = TrainingSummary {
        steps: spec.steps,
        prune_share: options.prune_share,
        interval: spec.interval,
        regrow: spec.regrow,
        criterion: options.criterion,
        start: options.start,
        stages: spec.stages,
        distill: run.distill,
        batch: spec.batch,
        lr: spec.lr,
        seed: spec.seed,
        device: format!("{device:?}").to_lowercase(),
        resumed_from_step,
        regrown: 0,
        pruned: 0,
        label_weight: spec.label_weight,
        mosaic: spec.mosaic,
        labels: run.labels.clone(),
        fine_tune: options.fine_tune,
        seconds: run.seconds,
    };
    Ok((run, summary))
}

/// Whether the run scores mAP on the dataset: its validation split has labels.
fn scores_on(ds: &Dataset) -> bool {
    ds.splits
        .get("val")
        .is_some_and(|v| v.iter().any(|s| !s.labels.is_empty()))
}

/// Refuses, before any training, a dataset whose classes the model's output cannot
/// be decoded for: the run would only fail when scoring, after the work was done.
fn check_scorable(model: &Model, ds: &Dataset, path: &Path) -> Result<(), PipelineError> {
    let Some(shape) = model
        .graph
        .outputs
        .first()
        .and_then(|o| model.graph.shape(o.value))
    else {
        return Ok(());
    };
    if !scores_on(ds) {
        return Ok(());
    }
    detect_layout(shape, ds.names.len())
        .map(|_| ())
        .map_err(|why| {
            PipelineError::Engine(EngineError::Input(format!(
                "the dataset '{}' does not fit the model ({} classes): {why}; nothing was trained",
                path.display(),
                ds.names.len()
            )))
        })
}

/// mAP of a model on the dataset's validation split.
fn score(model: &Model, ds: &Dataset, device: tch::Device) -> Result<Scores, PipelineError> {
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

/// Identifies the model a checkpoint belongs to: the file's SHA-256 and the input size.
fn fingerprint(path: &Path, size: Option<InputSize>) -> Result<String, PipelineError> {
    use sha2::Digest;
    let io = |source| PipelineError::Io {
        action: "read",
        path: path.to_path_buf(),
        source,
    };
    let mut file = std::fs::File::open(path).map_err(io)?;
    let mut hasher = sha2::Sha256::new();
    std::io::copy(&mut file, &mut hasher).map_err(io)?;
    Ok(format!("sha256:{:x} input {size:?}", hasher.finalize()))
}
