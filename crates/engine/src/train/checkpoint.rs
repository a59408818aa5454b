//! A training run's complete state in one file, so that an interrupted run continues
//! exactly where it stopped.
//!
//! The file is libtorch's multi-tensor format: the weights, the optimiser's moments
//! and the criterion statistics as tensors, and everything else (step, mask, loader
//! position, counters, curve, settings) as one JSON document stored in a byte tensor.
//! It is written to a temporary file beside the target and renamed over it, so a
//! crash while saving leaves the previous checkpoint intact.

use std::collections::HashMap;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};
use tch::{Device, Kind, Tensor};

use super::session::StepRecord;

/// Identifier of the checkpoint layout.
pub const CHECKPOINT_SCHEMA: &str = "effp.checkpoint/v1";

const STATE: &str = "state.json";

/// Why a checkpoint could not be written, read or used.
#[derive(Debug, thiserror::Error)]
pub enum CheckpointError {
    /// Reading or writing the file failed.
    #[error("checkpoint '{path}': {reason}")]
    Io {
        /// The file.
        path: PathBuf,
        /// What went wrong.
        reason: String,
    },
    /// The file is not a checkpoint of this layout.
    #[error("'{path}' is not an effp checkpoint ({reason}); pass the file written by --checkpoint")]
    Invalid {
        /// The file.
        path: PathBuf,
        /// What is wrong with it.
        reason: String,
    },
    /// The checkpoint belongs to another model or other settings.
    #[error(
        "the checkpoint was made with different {what}: it has {saved}, this run has {now}; \
         resume with the same model and settings, or start afresh without --resume"
    )]
    Mismatch {
        /// What differs.
        what: &'static str,
        /// The checkpoint's value.
        saved: String,
        /// This run's value.
        now: String,
    },
}

/// Everything of a run's state that is not a tensor.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub(crate) struct Progress {
    pub schema: String,
    /// Identifies the model (and input size) the run prunes.
    pub fingerprint: String,
    /// The run's settings, as their debug text.
    pub settings: String,
    /// The next step to run.
    pub step: usize,
    /// The loader's epoch and how many of its batches were consumed.
    pub epoch: u64,
    pub batches_in_epoch: usize,
    /// Active flag of every group.
    pub mask: Vec<bool>,
    pub regrown: usize,
    pub pruned: usize,
    pub optimizer_steps: i32,
    pub history: Vec<StepRecord>,
}

/// A saved training state.
#[derive(Debug)]
pub struct Checkpoint {
    pub(crate) progress: Progress,
    pub(crate) tensors: HashMap<String, Tensor>,
}

impl Checkpoint {
    /// Reads a checkpoint written by a training run.
    pub fn load(path: &Path) -> Result<Self, CheckpointError> {
        if !path.is_file() {
            return Err(CheckpointError::Io {
                path: path.into(),
                reason: "no such file".into(),
            });
        }
        let invalid = |reason: String| CheckpointError::Invalid {
            path: path.into(),
            reason,
        };
        let entries = Tensor::load_multi_with_device(path, Device::Cpu)
            .map_err(|e| invalid(first_line(&e.to_string())))?;
        let mut tensors: HashMap<String, Tensor> = entries.into_iter().collect();
        let state = tensors
            .remove(STATE)
            .ok_or_else(|| invalid("it has no state record".into()))?;
        let bytes =
            Vec::<u8>::try_from(&state.to_kind(Kind::Uint8)).map_err(|e| invalid(e.to_string()))?;
        let progress: Progress =
            serde_json::from_slice(&bytes).map_err(|e| invalid(format!("bad state: {e}")))?;
        if progress.schema != CHECKPOINT_SCHEMA {
            return Err(invalid(format!(
                "layout '{}', this effp reads '{CHECKPOINT_SCHEMA}'",
                progress.schema
            )));
        }
        Ok(Self { progress, tensors })
    }

    /// Writes the checkpoint atomically (temporary file, then rename).
    pub(crate) fn save(&self, path: &Path) -> Result<(), CheckpointError> {
        let io = |reason: String| CheckpointError::Io {
            path: path.into(),
            reason,
        };
        let json = serde_json::to_vec(&self.progress).map_err(|e| io(e.to_string()))?;
        let state = Tensor::from_slice(&json);
        let mut named: Vec<(&str, &Tensor)> = vec![(STATE, &state)];
        let mut keys: Vec<&String> = self.tensors.keys().collect();
        keys.sort();
        for k in keys {
            named.push((k.as_str(), &self.tensors[k]));
        }
        let mut tmp = path.as_os_str().to_owned();
        tmp.push(".partial");
        let tmp = PathBuf::from(tmp);
        Tensor::save_multi(&named, &tmp).map_err(|e| io(first_line(&e.to_string())))?;
        std::fs::rename(&tmp, path).map_err(|e| io(e.to_string()))
    }

    /// The step the run continues from.
    pub fn step(&self) -> usize {
        self.progress.step
    }

    /// A tensor by name, or an error naming the file's defect.
    pub(crate) fn tensor(&self, name: &str) -> Result<&Tensor, CheckpointError> {
        self.tensors
            .get(name)
            .ok_or_else(|| CheckpointError::Invalid {
                path: PathBuf::new(),
                reason: format!("tensor '{name}' is missing"),
            })
    }
}

fn first_line(text: &str) -> String {
    text.lines().next().unwrap_or(text).to_string()
}
