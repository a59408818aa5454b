//! One invalid field of a request, by its JSON pointer.

use serde::{Deserialize, Serialize};

/// What is wrong with one field of a request.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct FieldError {
    /// Where in the request, e.g. `/target/flops_ratio`.
    pub path: String,
    /// What is wrong there.
    pub message: String,
}

impl FieldError {
    /// An error at `path` (a JSON pointer into the job request).
    pub fn new(path: &str, message: impl Into<String>) -> Self {
        Self {
            path: path.into(),
            message: message.into(),
        }
    }

    /// The command-line flag of the same setting: `/training/prune_share` is
    /// `--prune-share`.
    pub fn flag(&self) -> String {
        let name = self.path.rsplit('/').next().unwrap_or_default();
        format!("--{}", name.replace('_', "-"))
    }
}
