//! Training with masks: the loop all trained methods share, EFFP's prune/regrow
//! update and the baselines', the distillation loss, YOLOv8's labelled detection
//! loss and the head it reads, the optimiser, the schedules, and checkpoints.

mod assign;
pub(crate) mod baselines;
mod boxes;
pub mod checkpoint;
pub mod curvature;
pub mod detection_loss;
pub mod distill;
pub(crate) mod effp;
pub mod fixed;
pub mod head;
pub mod optim;
pub mod schedule;
pub mod session;
