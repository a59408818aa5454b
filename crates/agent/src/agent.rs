//! The agent's loop: claim a task (a long poll), handle it, claim again; one task at
//! a time, until asked to stop.

use std::path::PathBuf;

use effp_protocol::ClaimRequest;

use crate::backoff::Backoff;
use crate::client::{Client, ClientError};
use crate::facts;
use crate::flag::Flag;
use crate::runner::Runner;
use crate::settings::Settings;
use crate::task::{self, TaskContext, TaskError, TaskOutcome};

/// Why the agent stopped on its own.
#[derive(Debug, thiserror::Error)]
pub enum AgentError {
    /// The server refused the key, or the claim itself (nothing a retry mends).
    #[error(transparent)]
    Client(ClientError),
    /// A task could not go on.
    #[error(transparent)]
    Task(#[from] TaskError),
    /// The work folder could not be made.
    #[error("cannot create the work folder {}: {source}; check --work-dir", path.display())]
    WorkDir {
        /// The folder.
        path: PathBuf,
        /// What went wrong.
        source: std::io::Error,
    },
}

/// What the agent did before it stopped.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Summary {
    /// Tasks measured and reported.
    pub measured: usize,
    /// Tasks whose failure was reported.
    pub failed: usize,
    /// Tasks given up because their lease was lost.
    pub abandoned: usize,
}

/// Where task folders go: the given folder, or a temporary one removed on exit.
enum WorkRoot {
    Given(PathBuf),
    Temporary(tempfile::TempDir),
}

impl WorkRoot {
    fn path(&self) -> &std::path::Path {
        match self {
            Self::Given(path) => path,
            Self::Temporary(dir) => dir.path(),
        }
    }
}

/// A configured agent.
pub struct Agent {
    settings: Settings,
    client: Client,
    runner: Box<dyn Runner>,
    work_root: WorkRoot,
    shutdown: Flag,
}

impl Agent {
    /// An agent for `settings` measuring with `runner`; it stops after its current
    /// task once `shutdown` is raised.
    pub fn new(
        settings: Settings,
        runner: Box<dyn Runner>,
        shutdown: Flag,
    ) -> Result<Self, AgentError> {
        let work_root = match &settings.work_dir {
            Some(path) => {
                std::fs::create_dir_all(path).map_err(|source| AgentError::WorkDir {
                    path: path.clone(),
                    source,
                })?;
                WorkRoot::Given(path.clone())
            }
            None => WorkRoot::Temporary(
                tempfile::Builder::new()
                    .prefix("effp-agent-")
                    .tempdir()
                    .map_err(|source| AgentError::WorkDir {
                        path: std::env::temp_dir(),
                        source,
                    })?,
            ),
        };
        let client = Client::new(&settings.server_base(), settings.key.clone());
        Ok(Self {
            settings,
            client,
            runner,
            work_root,
            shutdown,
        })
    }

    /// Claims and handles tasks until `shutdown` is raised (or, with `--once`, after
    /// the first task). Connection failures are retried with backoff; a refused key
    /// ends it.
    pub fn run(&self) -> Result<Summary, AgentError> {
        let name = self.settings.agent_name();
        let mut summary = Summary::default();
        let mut backoff = Backoff::default();
        tracing::info!(
            agent = %name,
            device = %self.settings.device,
            server = %self.settings.server_base(),
            runner = ?self.runner.kind(),
            work_dir = %self.work_root.path().display(),
            "effp-agent started"
        );
        while !self.shutdown.is_raised() {
            let mut facts = facts::gather(&self.settings.device);
            if facts.tensorrt.is_none() {
                facts.tensorrt = self.runner.tensorrt_version();
            }
            let request = ClaimRequest {
                agent: name.clone(),
                facts,
                wait_s: self.settings.poll_wait_s,
            };
            match self.client.claim(&request) {
                Ok(None) => {
                    backoff = Backoff::default();
                    tracing::debug!("no task");
                }
                Ok(Some(task)) => {
                    backoff = Backoff::default();
                    tracing::info!(
                        task = %task.id,
                        job = %task.job,
                        attempt = task.attempt,
                        precision = ?task.request.precision,
                        iterations = task.request.iterations,
                        "claimed a benchmark"
                    );
                    if task.request.device != self.settings.device {
                        tracing::warn!(task = %task.id, asked = %task.request.device, "the task is for another device kind");
                    }
                    let ctx = TaskContext {
                        client: &self.client,
                        runner: self.runner.as_ref(),
                        kind: &self.settings.device,
                        work_root: self.work_root.path(),
                    };
                    match task::handle(&ctx, &task)? {
                        TaskOutcome::Measured => {
                            summary.measured += 1;
                            tracing::info!(task = %task.id, "reported the measurement");
                        }
                        TaskOutcome::Failed(error) => {
                            summary.failed += 1;
                            tracing::warn!(task = %task.id, %error, "reported a failure");
                        }
                        TaskOutcome::Abandoned => {
                            summary.abandoned += 1;
                            tracing::warn!(task = %task.id, "abandoned: the lease is lost");
                        }
                        TaskOutcome::ReportRefused(error) => {
                            summary.failed += 1;
                            tracing::error!(task = %task.id, %error, "the server refused the report");
                        }
                    }
                    if self.settings.once {
                        break;
                    }
                }
                Err(e) if e.is_retryable() => {
                    let delay = backoff.next_delay();
                    tracing::warn!(error = %e, retry_in_s = delay.as_secs(), "claim failed");
                    if self.shutdown.wait(delay) {
                        break;
                    }
                }
                Err(e) => return Err(AgentError::Client(e)),
            }
        }
        tracing::info!(
            measured = summary.measured,
            failed = summary.failed,
            abandoned = summary.abandoned,
            "effp-agent stopped"
        );
        Ok(summary)
    }
}
