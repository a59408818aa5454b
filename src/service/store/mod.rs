//! Where the service keeps things, behind traits so that the embedded backends
//! (SQLite, a local directory) and the distributed ones can be swapped by
//! configuration without the API knowing.

pub mod local;
pub mod sqlite;

use effp_protocol::JobState;
use std::path::PathBuf;
use std::pin::Pin;

use bytes::Bytes;
use futures_util::Stream;
use serde::Serialize;

/// A stream of body chunks, as uploads arrive and downloads leave.
pub type ByteStream<'a> = Pin<Box<dyn Stream<Item = Result<Bytes, std::io::Error>> + Send + 'a>>;

/// What can go wrong in a backend.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    /// The upload is larger than allowed.
    #[error("the upload is larger than the limit of {limit} bytes")]
    TooLarge {
        /// The limit.
        limit: u64,
    },
    /// The client's body broke off or could not be read.
    #[error("the upload could not be read: {0}")]
    Body(String),
    /// The client stopped sending the upload.
    #[error("the upload stalled: {0}")]
    Stalled(String),
    /// The backend failed (disk, database).
    #[error("storage failed: {0}")]
    Backend(String),
}

/// A stored object: content-addressed by its SHA-256.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StoredObject {
    /// Lower-case hex SHA-256 of the content, also its key.
    pub sha256: String,
    /// Bytes.
    pub size: u64,
}

/// An upload streamed and hashed into the object store's staging area, not yet
/// visible under its key.
#[derive(Debug)]
pub struct Staged {
    /// The content's address and size.
    pub object: StoredObject,
    /// Where the backend keeps it until [`ObjectStore::commit`].
    pub token: String,
}

/// Blob storage for uploads and artifacts, content-addressed by SHA-256.
///
/// Writing is two-phase so that the caller can record a reference to the content in
/// the same critical section in which the content becomes visible (see
/// [`crate::service::content`]); otherwise a delete of the same content by someone
/// else could remove it between the two.
#[async_trait::async_trait]
pub trait ObjectStore: Send + Sync {
    /// Streams `body` into the staging area while hashing it; fails (keeping
    /// nothing) once it exceeds `limit` bytes.
    async fn stage(&self, body: ByteStream<'_>, limit: u64) -> Result<Staged, StoreError>;
    /// Makes staged content visible under its SHA-256 (identical content is kept
    /// once).
    async fn commit(&self, staged: Staged) -> Result<StoredObject, StoreError>;
    /// Drops staged content that will not be committed.
    async fn discard(&self, staged: Staged);
    /// The content of an object as a stream, or `None` when there is no such key.
    async fn get(&self, key: &str) -> Result<Option<ByteStream<'static>>, StoreError>;
    /// Removes an object (absent keys are fine).
    async fn delete(&self, key: &str) -> Result<(), StoreError>;
    /// Every key in the store (for the start-up sweep of unreferenced content).
    async fn keys(&self) -> Result<Vec<String>, StoreError>;
    /// A local file holding the object, for readers that need one (the graph
    /// reader); remote stores download it into `scratch`.
    async fn local_file(&self, key: &str, scratch: &std::path::Path)
    -> Result<PathBuf, StoreError>;
}

/// A model a tenant uploaded.
#[derive(Debug, Clone, Serialize, PartialEq, utoipa::ToSchema)]
pub struct ModelRecord {
    /// Identifier (`mdl_…`).
    pub id: String,
    /// The owning tenant (not shown to clients).
    #[serde(skip)]
    #[schema(ignore)]
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
    #[schema(value_type = Object)]
    pub inspect: serde_json::Value,
}

/// A dataset (an archive of images and labels) a tenant uploaded.
#[derive(Debug, Clone, Serialize, PartialEq, utoipa::ToSchema)]
pub struct DatasetRecord {
    /// Identifier (`ds_…`).
    pub id: String,
    /// The owning tenant (not shown to clients).
    #[serde(skip)]
    #[schema(ignore)]
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
    #[schema(value_type = Object)]
    pub summary: serde_json::Value,
}

/// A pruning job and everything known about it so far.
#[derive(Debug, Clone, Serialize, PartialEq, utoipa::ToSchema)]
pub struct JobRecord {
    /// Identifier (`job_…`).
    pub id: String,
    /// The owning tenant (not shown to clients).
    #[serde(skip)]
    #[schema(ignore)]
    pub tenant: String,
    /// The validated request.
    #[schema(value_type = crate::service::api::jobs::JobSpec)]
    pub spec: serde_json::Value,
    /// Where the job is in its life.
    pub state: JobState,
    /// What a running job is doing (analyse, prune, verify, store, done).
    pub phase: String,
    /// Fraction done, 0 to 1.
    pub progress: f64,
    /// Results so far (FLOPs and parameters before/after, ratios).
    #[schema(value_type = Object)]
    pub metrics: serde_json::Value,
    /// Artifact name → SHA-256 and size.
    #[schema(value_type = Object)]
    pub artifacts: serde_json::Value,
    /// Why it failed.
    pub error: Option<String>,
    /// Times a worker claimed it.
    pub attempts: u32,
    /// Whether cancellation was asked for.
    pub cancel_requested: bool,
    /// The client's Idempotency-Key.
    #[serde(skip)]
    #[schema(ignore)]
    pub idempotency_key: Option<String>,
    /// RFC 3339 times.
    pub created_at: String,
    /// RFC 3339 times.
    pub updated_at: String,
}

/// Something that happened to a job, in order: what `GET /v1/jobs/{id}/events`
/// streams.
#[derive(Debug, Clone, Serialize, PartialEq, utoipa::ToSchema)]
pub struct JobEvent {
    /// Position in the job's history (the SSE event id).
    pub seq: i64,
    /// `state` for a change of state, `progress` for phase and metrics.
    pub kind: String,
    /// The job's state, phase, progress, metrics, artifacts and error at that moment.
    #[schema(value_type = Object)]
    pub data: serde_json::Value,
}

/// The work queue: jobs are claimed with a lease that the worker renews; a job whose
/// lease runs out goes to the next claim, up to a limit of attempts.
#[async_trait::async_trait]
pub trait Queue: Send + Sync {
    /// Claims the oldest claimable job for `lease`; jobs out of attempts fail.
    async fn claim(
        &self,
        lease: std::time::Duration,
        max_attempts: u32,
    ) -> Result<Option<JobRecord>, StoreError>;
    /// Renews a running job's lease; returns whether cancellation was asked for.
    async fn heartbeat(&self, id: &str, lease: std::time::Duration) -> Result<bool, StoreError>;
    /// Records a running job's phase, progress and metrics.
    async fn report(
        &self,
        id: &str,
        phase: &str,
        progress: f64,
        metrics: &serde_json::Value,
    ) -> Result<(), StoreError>;
    /// Puts a running job back in the queue without counting the attempt (the
    /// service is shutting down; its checkpoint lets the next claim resume it).
    async fn release(&self, id: &str) -> Result<(), StoreError>;
    /// Puts a running job whose worker process died back in the queue, counting the
    /// attempt; once it has had `max_attempts` it fails with `reason`.
    async fn retry(&self, id: &str, reason: &str, max_attempts: u32) -> Result<(), StoreError>;
    /// Makes the jobs a previous process left running claimable at once (the
    /// embedded store has one process, so nobody else can be running them).
    async fn recover_abandoned(&self) -> Result<u64, StoreError>;
    /// Ends a job: its final state, error and artifacts.
    async fn finish(
        &self,
        id: &str,
        state: JobState,
        error: Option<&str>,
        artifacts: &serde_json::Value,
    ) -> Result<(), StoreError>;
    /// Jobs waiting to be claimed.
    async fn depth(&self) -> Result<u64, StoreError>;
}

/// Metadata of the service's resources: models, datasets and jobs.
#[async_trait::async_trait]
pub trait JobStore: Send + Sync {
    /// Records a model, unless the tenant already has one with the same content:
    /// then that one is returned and nothing is written.
    async fn insert_model(&self, model: &ModelRecord) -> Result<Option<ModelRecord>, StoreError>;
    /// A tenant's model by id.
    async fn model(&self, tenant: &str, id: &str) -> Result<Option<ModelRecord>, StoreError>;
    /// A tenant's model with this content, if it uploaded it before.
    async fn model_by_hash(
        &self,
        tenant: &str,
        sha256: &str,
    ) -> Result<Option<ModelRecord>, StoreError>;
    /// A tenant's models, newest first, `limit` from `offset`.
    async fn models(
        &self,
        tenant: &str,
        limit: u32,
        offset: u32,
    ) -> Result<Vec<ModelRecord>, StoreError>;
    /// Removes a tenant's model; returns it when it existed.
    async fn delete_model(&self, tenant: &str, id: &str)
    -> Result<Option<ModelRecord>, StoreError>;
    /// Records a dataset, unless the tenant already has one with the same content:
    /// then that one is returned and nothing is written.
    async fn insert_dataset(
        &self,
        dataset: &DatasetRecord,
    ) -> Result<Option<DatasetRecord>, StoreError>;
    /// A tenant's dataset by id.
    async fn dataset(&self, tenant: &str, id: &str) -> Result<Option<DatasetRecord>, StoreError>;
    /// A tenant's dataset with this content, if it uploaded it before.
    async fn dataset_by_hash(
        &self,
        tenant: &str,
        sha256: &str,
    ) -> Result<Option<DatasetRecord>, StoreError>;
    /// A tenant's datasets, newest first, `limit` from `offset`.
    async fn datasets(
        &self,
        tenant: &str,
        limit: u32,
        offset: u32,
    ) -> Result<Vec<DatasetRecord>, StoreError>;
    /// Removes a tenant's dataset; returns it when it existed.
    async fn delete_dataset(
        &self,
        tenant: &str,
        id: &str,
    ) -> Result<Option<DatasetRecord>, StoreError>;
    /// Counts one more reference to stored content (an upload in progress, then the
    /// record it becomes).
    async fn hold_object(&self, sha256: &str, size: u64) -> Result<(), StoreError>;
    /// Counts one reference less; returns whether none is left (the content may go).
    async fn drop_object(&self, sha256: &str) -> Result<bool, StoreError>;
    /// Recounts every reference from the records (models, datasets, job artifacts),
    /// forgetting references of uploads a crash cut short; returns the content still
    /// referenced. Runs at start-up, before anything else uses the store.
    async fn recount_objects(&self) -> Result<std::collections::HashSet<String>, StoreError>;
    /// Bytes of models and datasets a tenant keeps.
    async fn stored_bytes(&self, tenant: &str) -> Result<u64, StoreError>;
    /// A tenant's queued or running jobs and the training steps they ask for.
    async fn active_load(&self, tenant: &str) -> Result<(u64, u64), StoreError>;
    /// Jobs that have ended (their checkpoints can go).
    async fn ended_jobs(&self, ids: &[String]) -> Result<Vec<String>, StoreError>;
    /// A tenant's queued or running jobs that use this model or dataset.
    async fn active_jobs_using(&self, tenant: &str, id: &str) -> Result<Vec<String>, StoreError>;
    /// Records a new job (queued), unless the tenant already has one with the same
    /// Idempotency-Key: then that one is returned and nothing is written.
    async fn insert_job(&self, job: &JobRecord) -> Result<Option<JobRecord>, StoreError>;
    /// A tenant's job by id.
    async fn job(&self, tenant: &str, id: &str) -> Result<Option<JobRecord>, StoreError>;
    /// The job a tenant created with this Idempotency-Key.
    async fn job_by_key(&self, tenant: &str, key: &str) -> Result<Option<JobRecord>, StoreError>;
    /// A tenant's jobs, newest first, optionally in one state.
    async fn jobs(
        &self,
        tenant: &str,
        state: Option<JobState>,
        limit: u32,
        offset: u32,
    ) -> Result<Vec<JobRecord>, StoreError>;
    /// Asks for cancellation: a queued job is cancelled at once, a running one is
    /// flagged for its worker. Returns the job as it is now.
    async fn cancel_job(&self, tenant: &str, id: &str) -> Result<Option<JobRecord>, StoreError>;
    /// A job's events after `after` (a sequence number), oldest first.
    async fn events(&self, job_id: &str, after: i64) -> Result<Vec<JobEvent>, StoreError>;
    /// Jobs (all tenants) per state.
    async fn job_counts(&self) -> Result<std::collections::HashMap<JobState, u64>, StoreError>;
    /// Whether the store answers.
    async fn ping(&self) -> Result<(), StoreError>;
}
