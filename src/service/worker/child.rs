//! What the service and a job's worker process say to each other. The service starts
//! one `effp run-job` process per job (see [`super::run_job`]), so that whatever the job
//! does to its process (an abort in native code, running out of memory) ends that job
//! and not the service.
//!
//! The parent hands it a [`JobRun`] file; the child writes `pruned.onnx` and
//! `report.json` into the run's work folder and reports on standard output, one JSON
//! object a line ([`ChildMessage`]). SIGTERM or Ctrl-C stop a training run after its
//! current step with a checkpoint (exit status 130).

use std::path::{Path, PathBuf};

use effp_data::archive::ArchiveLimits;
use effp_protocol::artifact::{PRUNE_REPORT, PRUNED_MODEL};
use effp_protocol::report::StepRecord;
use serde::{Deserialize, Serialize};

use crate::service::api::jobs::JobSpec;

/// Everything a worker process needs to run one job.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct JobRun {
    /// The validated request.
    pub spec: JobSpec,
    /// The model file.
    pub model: PathBuf,
    /// The dataset archive, if the job has one.
    pub data: Option<PathBuf>,
    /// Where `pruned.onnx` and `report.json` are written (and datasets unpacked).
    pub work: PathBuf,
    /// The job's training checkpoint.
    pub checkpoint: PathBuf,
    /// Steps between checkpoints.
    pub checkpoint_every: usize,
    /// Whether to continue from `checkpoint`.
    pub resume: bool,
    /// Limits on what the dataset archive may unpack to (the service's, as its
    /// upload check applied them).
    #[serde(default)]
    pub archive_limits: ArchiveLimits,
}

/// What a worker process reports, one JSON object per line of its standard output.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum ChildMessage {
    /// A training step ended.
    Step(StepRecord),
    /// The run failed: what to tell the client.
    Error(String),
    /// The checkpoint file now holds the state before `step`: the service copies it
    /// to the object store, so that a later attempt (this worker's or another's)
    /// resumes from there.
    Saved {
        /// The step a resumed run starts at.
        step: usize,
    },
}

/// The outputs of a run in its work folder.
pub fn pruned_path(work: &Path) -> PathBuf {
    work.join(PRUNED_MODEL)
}

/// The report of a run in its work folder.
pub fn report_path(work: &Path) -> PathBuf {
    work.join(PRUNE_REPORT)
}
