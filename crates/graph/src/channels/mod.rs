//! Channel dependency analysis, masks over its groups, and physical compaction.

mod analysis;
mod compact;
pub mod cost;
mod shape_reads;
mod union_find;

pub use analysis::{Channel, ChannelAnalysis, FrozenClass, PrunableGroup};
pub use compact::{CompactionReport, LayerChange, compact, gate};

/// Which prunable groups are switched on.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Mask {
    active: Vec<bool>,
}

impl Mask {
    /// Every group on.
    pub fn all_active(groups: usize) -> Self {
        Self {
            active: vec![true; groups],
        }
    }

    /// A mask from one flag per group.
    pub fn from_flags(active: Vec<bool>) -> Self {
        Self { active }
    }

    /// Whether a group is on.
    pub fn is_active(&self, group: usize) -> bool {
        self.active[group]
    }

    /// Switches a group on or off.
    pub fn set(&mut self, group: usize, on: bool) {
        self.active[group] = on;
    }

    /// Number of groups.
    pub fn len(&self) -> usize {
        self.active.len()
    }

    /// Whether there are no groups.
    pub fn is_empty(&self) -> bool {
        self.active.is_empty()
    }

    /// Number of groups switched off.
    pub fn pruned(&self) -> usize {
        self.active.iter().filter(|a| !**a).count()
    }
}
