//! The records the job store keeps: models, datasets, jobs and their events.

use effp_protocol::{Artifacts, JobState};
use serde::{Deserialize, Serialize};

/// A model a tenant uploaded.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct ModelRecord {
    /// Identifier (`mdl_…`).
    pub id: String,
    /// The owning tenant (not shown to clients).
    #[serde(skip)]
    #[cfg_attr(feature = "openapi", schema(ignore))]
    pub tenant: String,
    /// The name given at upload (file name or `?name=`).
    pub name: String,
    /// SHA-256 of the file.
    pub sha256: String,
    /// Bytes.
    pub size: u64,
    /// RFC 3339 time of the upload.
    pub created_at: String,
    /// `effp inspect --json` of the file (schema effp.inspect/v1) without the
    /// per-node list. `free_input_size` is true for a model with free input sizes
    /// (a dynamic-shape export): it is then inspected at 640x640 and jobs on it give
    /// `input_size`.
    #[cfg_attr(feature = "openapi", schema(value_type = Object))]
    pub inspect: serde_json::Value,
}

/// A dataset (an archive of images and labels) a tenant uploaded.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct DatasetRecord {
    /// Identifier (`ds_…`).
    pub id: String,
    /// The owning tenant (not shown to clients).
    #[serde(skip)]
    #[cfg_attr(feature = "openapi", schema(ignore))]
    pub tenant: String,
    /// The name given at upload (file name or `?name=`).
    pub name: String,
    /// SHA-256 of the archive.
    pub sha256: String,
    /// Bytes of the archive.
    pub size: u64,
    /// RFC 3339 time of the upload.
    pub created_at: String,
    /// What the archive holds: layout (yolo or coco), class names, and per split
    /// the number of images, labelled objects and background images.
    #[cfg_attr(feature = "openapi", schema(value_type = Object))]
    pub summary: serde_json::Value,
}

/// A pruning job and everything known about it so far.
#[derive(Debug, Clone, Serialize, PartialEq)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct JobRecord {
    /// Identifier (`job_…`).
    pub id: String,
    /// The owning tenant (not shown to clients).
    #[serde(skip)]
    #[cfg_attr(feature = "openapi", schema(ignore))]
    pub tenant: String,
    /// The validated request.
    #[cfg_attr(feature = "openapi", schema(value_type = effp_protocol::JobSpec))]
    pub spec: serde_json::Value,
    /// Where the job is in its life.
    pub state: JobState,
    /// What a running job is doing (analyse, prune, verify, store, done).
    pub phase: String,
    /// Fraction done, 0 to 1.
    pub progress: f64,
    /// Results so far (FLOPs and parameters before/after, ratios).
    #[cfg_attr(feature = "openapi", schema(value_type = Object))]
    pub metrics: serde_json::Value,
    /// Artifact name → SHA-256 and size.
    #[cfg_attr(feature = "openapi", schema(value_type = HashMap<String, effp_protocol::ArtifactRef>))]
    pub artifacts: Artifacts,
    /// Why it failed.
    pub error: Option<String>,
    /// Times a worker claimed it.
    pub attempts: u32,
    /// Whether cancellation was asked for.
    pub cancel_requested: bool,
    /// The client's Idempotency-Key.
    #[serde(skip)]
    #[cfg_attr(feature = "openapi", schema(ignore))]
    pub idempotency_key: Option<String>,
    /// RFC 3339 times.
    pub created_at: String,
    /// RFC 3339 times.
    pub updated_at: String,
    /// Where the job's `notify` notification stands (shown by the API; the stores
    /// keep it apart, see [`crate::Notifications`]).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub notification: Option<crate::NotificationStatus>,
    /// The job's device benchmarks, oldest first (shown by the API; the stores keep
    /// them apart, see [`crate::Benchmarks`]).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub benchmarks: Vec<effp_protocol::BenchmarkView>,
}

impl JobRecord {
    /// A new job of a tenant, waiting in the queue, created now.
    pub fn queued(
        id: String,
        tenant: String,
        spec: serde_json::Value,
        idempotency_key: Option<String>,
    ) -> Self {
        let (ts, _) = crate::now();
        Self {
            id,
            tenant,
            spec,
            state: JobState::Queued,
            phase: "queued".into(),
            progress: 0.0,
            metrics: serde_json::json!({}),
            artifacts: Artifacts::new(),
            error: None,
            attempts: 0,
            cancel_requested: false,
            idempotency_key,
            created_at: ts.clone(),
            updated_at: ts,
            notification: None,
            benchmarks: Vec::new(),
        }
    }
}

/// Something that happened to a job, in order: what `GET /v1/jobs/{id}/events`
/// streams.
#[derive(Debug, Clone, Serialize, PartialEq)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct JobEvent {
    /// Position in the job's history (the SSE event id).
    pub seq: i64,
    /// `state` for a change of state, `progress` for phase and metrics, `benchmark`
    /// for a change of the device benchmark the job waits for.
    pub kind: String,
    /// The job's state, phase, progress, metrics, artifacts and error at that moment.
    #[cfg_attr(feature = "openapi", schema(value_type = Object))]
    pub data: serde_json::Value,
}
