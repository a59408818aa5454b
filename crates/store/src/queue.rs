//! The work queue workers claim jobs from.

use effp_protocol::{Artifacts, JobState};
use std::time::Duration;

use crate::{JobRecord, StoreError};

/// The work queue: jobs are claimed with a lease that the worker renews; a job whose
/// lease runs out (its worker died, or lost touch) goes to the next claim, up to a
/// limit of attempts. Waking idle workers and noticing expired leases are the
/// backend's business: a worker claims, and when there was nothing, waits with
/// [`Queue::wait_for_work`].
///
/// A claim is fenced by its attempt number (`JobRecord::attempts` as the claim
/// returned it): every later call of the worker passes it, and once the job has
/// been claimed again (the worker's lease ran out) the old worker's calls fail with
/// [`StoreError::LeaseLost`] and change nothing, so no job is ever driven by two
/// workers.
#[async_trait::async_trait]
pub trait Queue: Send + Sync {
    /// Claims the oldest claimable job for `lease`; jobs out of attempts fail.
    async fn claim(
        &self,
        lease: Duration,
        max_attempts: u32,
    ) -> Result<Option<JobRecord>, StoreError>;
    /// Returns when a claim may find work: a job was queued or put back, a running
    /// job's lease ran out, or `timeout` passed (whichever is first). May return
    /// early; the claim that follows then finds nothing.
    async fn wait_for_work(&self, timeout: Duration);
    /// Renews a running job's lease; returns whether cancellation was asked for.
    async fn heartbeat(&self, id: &str, attempt: u32, lease: Duration) -> Result<bool, StoreError>;
    /// Records a running job's phase, progress and metrics: a `progress` event, or a
    /// `benchmark` event in phase `benchmark` (its metrics carry the benchmark).
    async fn report(
        &self,
        id: &str,
        attempt: u32,
        phase: &str,
        progress: f64,
        metrics: &serde_json::Value,
    ) -> Result<(), StoreError>;
    /// Puts a running job back in the queue without counting the attempt (the
    /// service is shutting down; its checkpoint lets the next claim resume it).
    async fn release(&self, id: &str, attempt: u32) -> Result<(), StoreError>;
    /// Puts a running job whose worker process died back in the queue, counting the
    /// attempt; once it has had `max_attempts` it fails with `reason`.
    async fn retry(
        &self,
        id: &str,
        attempt: u32,
        reason: &str,
        max_attempts: u32,
    ) -> Result<(), StoreError>;
    /// Ends a job: its final state, error and artifacts.
    async fn finish(
        &self,
        id: &str,
        attempt: u32,
        state: JobState,
        error: Option<&str>,
        artifacts: &Artifacts,
    ) -> Result<(), StoreError>;
    /// Jobs waiting to be claimed.
    async fn depth(&self) -> Result<u64, StoreError>;
}
