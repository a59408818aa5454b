//! What a user asks pruning to reach.

use effp_graph::cost::NodeCost;
use effp_protocol::TargetSpec;

/// A pruning target.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Target {
    /// Keep at most this fraction of the original FLOPs (0 < r < 1).
    FlopsRatio(f64),
    /// Keep at most this many FLOPs.
    Flops(u64),
    /// Keep at most this fraction of the original parameters (0 < r < 1).
    ParamsRatio(f64),
}

impl Target {
    /// The target a job request names, if it names exactly one.
    pub fn from_spec(spec: &TargetSpec) -> Option<Target> {
        match (spec.flops_ratio, spec.flops, spec.params_ratio) {
            (Some(r), None, None) => Some(Target::FlopsRatio(r)),
            (None, Some(f), None) => Some(Target::Flops(f)),
            (None, None, Some(r)) => Some(Target::ParamsRatio(r)),
            _ => None,
        }
    }

    /// The target as a job request spells it.
    pub fn to_json(self) -> serde_json::Value {
        match self {
            Target::FlopsRatio(r) => serde_json::json!({ "flops_ratio": r }),
            Target::Flops(f) => serde_json::json!({ "flops": f }),
            Target::ParamsRatio(r) => serde_json::json!({ "params_ratio": r }),
        }
    }

    /// Whether a cost meets the target, given the original cost.
    pub fn is_met(&self, original: NodeCost, now: NodeCost) -> bool {
        match *self {
            Target::FlopsRatio(r) => now.flops() as f64 <= r * original.flops() as f64,
            Target::Flops(f) => now.flops() <= f,
            Target::ParamsRatio(r) => now.params as f64 <= r * original.params as f64,
        }
    }

    /// Checks the numbers make sense before any work is done.
    pub fn validate(&self) -> Result<(), PruneError> {
        match *self {
            Target::FlopsRatio(r) | Target::ParamsRatio(r) if !(r > 0.0 && r < 1.0) => {
                Err(PruneError::InvalidTarget(format!(
                    "a ratio must be between 0 and 1 (exclusive), got {r}"
                )))
            }
            Target::Flops(0) => Err(PruneError::InvalidTarget(
                "absolute FLOPs must be positive".into(),
            )),
            _ => Ok(()),
        }
    }
}

impl std::fmt::Display for Target {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Target::FlopsRatio(r) => write!(f, "{r} of the FLOPs"),
            Target::Flops(v) => write!(f, "{v} FLOPs"),
            Target::ParamsRatio(r) => write!(f, "{r} of the parameters"),
        }
    }
}

/// Why pruning could not be done.
#[derive(Debug, thiserror::Error)]
pub enum PruneError {
    /// The target is malformed.
    #[error("invalid target: {0}")]
    InvalidTarget(String),
    /// Even with every prunable group off (within the per-layer minimum) the target is
    /// not met.
    #[error(
        "the target ({target}) cannot be reached: with every prunable channel group removed \
         (keeping at least {min_channels} channel(s) per layer) the model still has {best_flops} FLOPs \
         and {best_params} parameters; choose a larger target or a smaller minimum per layer"
    )]
    Unreachable {
        /// The requested target.
        target: Target,
        /// Fewest FLOPs reachable.
        best_flops: u64,
        /// Fewest parameters reachable.
        best_params: u64,
        /// The per-layer minimum in force.
        min_channels: usize,
    },
    /// The graph itself is at fault.
    #[error(transparent)]
    Graph(#[from] effp_graph::GraphError),
}
