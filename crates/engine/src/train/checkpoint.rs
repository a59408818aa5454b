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

#[cfg(test)]
mod tests {
    use proptest::prelude::*;

    use super::*;

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(32))]

        /// Whatever a run saves, loading gives back bit for bit.
        #[test]
        fn a_saved_checkpoint_loads_back_identically(
            step in 0usize..100_000,
            epoch in 0u64..1000,
            mask in prop::collection::vec(any::<bool>(), 0..300),
            weights in prop::collection::vec(prop::collection::vec(-1e6f32..1e6, 1..64), 1..6),
            losses in prop::collection::vec(0.0f64..1e3, 0..20),
        ) {
            let history = losses
                .iter()
                .enumerate()
                .map(|(i, &loss)| StepRecord {
                    step: i,
                    loss,
                    flops_ratio: 0.5,
                    budget: 0.6,
                    active_groups: i * 3,
                    regrown: i,
                    pruned: 2 * i,
                    detection_loss: (i % 2 == 0).then_some(loss * 3.0),
                })
                .collect();
            let progress = Progress {
                schema: CHECKPOINT_SCHEMA.into(),
                fingerprint: "sha256:ab input None".into(),
                settings: "TrainOptions { .. }".into(),
                step,
                epoch,
                batches_in_epoch: step % 7,
                mask,
                regrown: 3,
                pruned: 9,
                optimizer_steps: step as i32,
                history,
            };
            let tensors: HashMap<String, Tensor> = weights
                .iter()
                .enumerate()
                .map(|(i, w)| (format!("weight.{i}"), Tensor::from_slice(w)))
                .collect();
            let dir = tempfile::tempdir().unwrap();
            let path = dir.path().join("run.ckpt");
            Checkpoint { progress: progress.clone(), tensors }.save(&path).unwrap();
            let back = Checkpoint::load(&path).unwrap();
            prop_assert_eq!(
                serde_json::to_string(&back.progress).unwrap(),
                serde_json::to_string(&progress).unwrap()
            );
            for (i, w) in weights.iter().enumerate() {
                let t = back.tensor(&format!("weight.{i}")).unwrap();
                prop_assert_eq!(Vec::<f32>::try_from(t).unwrap(), w.clone());
            }
            prop_assert!(!dir.path().join("run.ckpt.partial").exists());
        }
    }
}
