//! Where effp keeps things: the job store (models, datasets, jobs and their events),
//! the work queue and the object store, as traits, with the embedded backends
//! (SQLite and a local directory) and the distributed ones (Redis for jobs and the
//! queue, S3 for objects).
//! The API and the worker program against the traits; which backend runs is
//! configuration.
//!
//! Knows nothing of tch or HTTP.

mod benchmarks;
pub mod checkpoints;
pub mod content;
mod error;
mod jobs;
pub mod local;
mod notifications;
mod objects;
pub mod process_dir;
mod queue;
mod records;
pub mod redis;
pub mod s3;
pub mod sqlite;

pub use benchmarks::{BenchmarkRecord, Benchmarks, expired_message};
pub use checkpoints::Checkpoints;
pub use content::Content;
pub use error::StoreError;
pub use jobs::{ActiveLimits, JobStore};
pub use notifications::{
    NotificationState, NotificationStatus, Notifications, NotifyOutcome, notify_url,
};
pub use objects::{ByteStream, MAX_NAME_LEN, ObjectStore, Staged, StoredObject, check_name};
pub use queue::Queue;
pub use records::{DatasetRecord, JobEvent, JobRecord, ModelRecord};

/// Now as an RFC 3339 timestamp (what records show) and as Unix milliseconds (what
/// leases compare).
pub fn now() -> (String, i64) {
    let t = std::time::SystemTime::now();
    let ms = t
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as i64);
    (humantime::format_rfc3339_millis(t).to_string(), ms)
}
