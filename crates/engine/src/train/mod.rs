//! Training with masks: the loop all trained methods share, EFFP's prune/regrow
//! update and the baselines', the distillation loss, the optimiser, the schedules,
//! and checkpoints.

pub(crate) mod baselines;
pub mod checkpoint;
mod curvature;
pub mod distill;
pub(crate) mod effp;
pub mod optim;
pub mod schedule;
pub mod session;
