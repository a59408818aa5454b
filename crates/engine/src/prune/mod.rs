//! Pruning targets and methods that choose which channel groups to switch off.

mod l1;
mod target;

pub use l1::{L1Options, l1_mask};
pub use target::{PruneError, Target};
