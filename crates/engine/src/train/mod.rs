//! Training with masks: the optimiser, the schedules, and EFFP's prune/regrow loop.

pub mod effp;
pub mod optim;
pub mod schedule;
