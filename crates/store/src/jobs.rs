//! The job store: metadata of models, datasets and jobs, and content references.

use effp_protocol::JobState;

use crate::{DatasetRecord, JobEvent, JobRecord, ModelRecord, StoreError};

/// What one tenant may have queued or running at once, checked in one step with
/// recording a job so that concurrent submissions cannot pass it together.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ActiveLimits {
    /// Jobs queued or running.
    pub jobs: u64,
    /// Training steps those jobs ask for, together.
    pub training_steps: u64,
}

impl ActiveLimits {
    /// No limit.
    pub const NONE: Self = Self {
        jobs: u64::MAX,
        training_steps: u64::MAX,
    };
}

/// Metadata of the service's resources: models, datasets and jobs.
#[async_trait::async_trait]
pub trait JobStore: Send + Sync {
    /// Records a model, unless the tenant already has one with the same content:
    /// then that one is returned and nothing is written. Refused with
    /// [`StoreError::QuotaExceeded`] when the tenant's models and datasets would come
    /// to more than `max_stored_bytes`; checked in the same step as the write, so
    /// that concurrent uploads cannot overfill it together.
    async fn insert_model(
        &self,
        model: &ModelRecord,
        max_stored_bytes: u64,
    ) -> Result<Option<ModelRecord>, StoreError>;
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
    /// Records a dataset, as [`JobStore::insert_model`] records a model.
    async fn insert_dataset(
        &self,
        dataset: &DatasetRecord,
        max_stored_bytes: u64,
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
    /// How many references to this content are counted now.
    async fn object_references(&self, sha256: &str) -> Result<u64, StoreError>;
    /// Takes the lock on one content for `holder` until `lease` has passed, unless
    /// another holder has it (then false). Every process sharing the store takes it
    /// before it counts a first reference and makes the content, or drops the last
    /// one and deletes it, so that the two never interleave.
    async fn try_lock_object(
        &self,
        sha256: &str,
        holder: &str,
        lease: std::time::Duration,
    ) -> Result<bool, StoreError>;
    /// Extends `holder`'s lock on the content by `lease`; false when it has lost it.
    async fn renew_object_lock(
        &self,
        sha256: &str,
        holder: &str,
        lease: std::time::Duration,
    ) -> Result<bool, StoreError>;
    /// Gives back `holder`'s lock on the content (nothing when it has lost it).
    async fn unlock_object(&self, sha256: &str, holder: &str) -> Result<(), StoreError>;
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
    /// Idempotency-Key: then that one is returned and nothing is written. Refused
    /// with [`StoreError::TooManyActive`] when the tenant's queued and running jobs
    /// would pass `limits`.
    async fn insert_job(
        &self,
        job: &JobRecord,
        limits: ActiveLimits,
    ) -> Result<Option<JobRecord>, StoreError>;
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
