//! Pruning targets and methods that choose which channel groups to switch off.

mod l1;
mod per_layer;
mod target;

pub use l1::{L1Options, Scope, importance_from_norms, l1_mask, select};
pub use target::{PruneError, Target};
