//! The files a job produces, by content: what the worker records when a job ends and
//! what clients list and download.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

/// The pruned model's artifact name.
pub const PRUNED_MODEL: &str = "pruned.onnx";
/// The prune report's artifact name ([`crate::report::PruneReport`] as JSON).
pub const PRUNE_REPORT: &str = "report.json";

/// Where a stored file is: its content address and size. Clients download it as
/// `/v1/jobs/{id}/artifacts/{name}` and can check the bytes against `sha256`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct ArtifactRef {
    /// Lower-case hex SHA-256 of the content (also the download's ETag).
    pub sha256: String,
    /// Bytes.
    pub size: u64,
}

/// A job's artifacts by name (empty until it succeeds).
pub type Artifacts = BTreeMap<String, ArtifactRef>;
