//! What can go wrong in a store.

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
    /// A named object's name that no backend may use.
    #[error(
        "'{0}' is not a valid object name: use parts of letters, digits, '.', '_' and '-' separated by '/'"
    )]
    InvalidName(String),
    /// Another process already uses a store that serves one process only.
    #[error(
        "the database '{0}' is in use by another effp process: the embedded store serves one process; \
         stop the other one, or give this one its own data directory"
    )]
    InUse(String),
    /// A worker's claim on a job was taken over: its lease ran out and another
    /// claim got the job.
    #[error(
        "the claim on job {job} (attempt {attempt}) was taken over after its lease ran out; this worker must stop it"
    )]
    LeaseLost {
        /// The job.
        job: String,
        /// The attempt number of the lost claim.
        attempt: u32,
    },
    /// A tenant's models and datasets would pass its storage limit.
    #[error("the tenant keeps {used} bytes; with {size} more it would pass its limit of {limit}")]
    QuotaExceeded {
        /// Bytes the tenant keeps now.
        used: u64,
        /// The size of what was to be added.
        size: u64,
        /// The tenant's limit.
        limit: u64,
    },
    /// A tenant's queued and running jobs would pass its limits with one more.
    #[error(
        "the tenant has {jobs} queued or running jobs asking for {steps} training steps; \
         one more of {requested} steps would pass its limits ({limits:?})"
    )]
    TooManyActive {
        /// Jobs queued or running now.
        jobs: u64,
        /// Training steps they ask for.
        steps: u64,
        /// Training steps the refused job asked for.
        requested: u64,
        /// The tenant's limits.
        limits: crate::ActiveLimits,
    },
    /// A distributed backend cannot be reached now (connection refused or dropped,
    /// a timeout): the same call may succeed later.
    #[error("storage is unavailable: {0}")]
    Unavailable(String),
    /// The backend failed (disk, database).
    #[error("storage failed: {0}")]
    Backend(String),
}
