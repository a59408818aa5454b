//! Per-tenant quotas: jobs waiting or running, training steps they ask for, and
//! bytes of models and datasets kept, so that one tenant cannot crowd out the rest.

use axum::http::StatusCode;
use effp_store::ActiveLimits;

use super::AppState;
use super::api::jobs::{JobSpec, field, invalid};
use super::problem::Problem;

/// What one tenant may hold at once (`EFFP_MAX_*`).
#[derive(Debug, Clone, Copy)]
pub struct Quotas {
    /// Jobs queued or running.
    pub jobs: u64,
    /// Training steps of the jobs queued or running, together; also the most one
    /// job may ask for.
    pub training_steps: u64,
    /// Bytes of models and datasets kept.
    pub stored_bytes: u64,
}

impl Quotas {
    /// The limits on a tenant's queued and running jobs.
    pub fn active(&self) -> ActiveLimits {
        ActiveLimits {
            jobs: self.jobs,
            training_steps: self.training_steps,
        }
    }
}

/// Seconds a client refused for a full queue is told to wait.
const RETRY_AFTER_SECS: u64 = 30;

/// Refuses a job over the tenant's quotas: 422 when the job alone asks for more
/// steps than a tenant may have, 429 (with `Retry-After`) when the tenant's queue is
/// full for now.
pub async fn check_job(state: &AppState, tenant: &str, spec: &JobSpec) -> Result<(), Problem> {
    let q = state.quotas;
    let steps = u64::from(spec.training.steps);
    if steps > q.training_steps {
        return Err(invalid(vec![field(
            "/training/steps",
            format!(
                "{steps} steps is more than a tenant may queue ({} steps, EFFP_MAX_TRAINING_STEPS)",
                q.training_steps
            ),
        )]));
    }
    let (jobs, queued_steps) = state.jobs.active_load(tenant).await?;
    let limits = q.active();
    if jobs >= limits.jobs || queued_steps.saturating_add(steps) > limits.training_steps {
        return Err(queue_full(jobs, queued_steps, steps, limits));
    }
    Ok(())
}

/// 429 (with `Retry-After`) for a tenant whose `jobs` queued or running jobs, asking
/// for `steps` training steps, leave no room under `limits` for one more of
/// `requested` steps. Jobs are checked against the limits before a submission is
/// looked at further and again, in one step with recording the job, when it is
/// recorded: concurrent submissions cannot pass them together.
pub fn queue_full(jobs: u64, steps: u64, requested: u64, limits: ActiveLimits) -> Problem {
    let detail = if jobs >= limits.jobs {
        format!(
            "this tenant already has {jobs} queued or running jobs, the most it may have (EFFP_MAX_QUEUED_JOBS); \
             submit again when some have ended"
        )
    } else {
        format!(
            "this tenant's queued and running jobs ask for {steps} training steps; {requested} more would pass \
             its limit of {} (EFFP_MAX_TRAINING_STEPS); submit again when some have ended",
            limits.training_steps
        )
    };
    let mut p = Problem::new(StatusCode::TOO_MANY_REQUESTS, "quota-exceeded", detail);
    p.retry_after = Some(RETRY_AFTER_SECS);
    p
}

/// How many more bytes the tenant may store, or 413 when its storage is full (or
/// an upload declaring `declared` bytes would overfill it).
pub async fn upload_room(
    state: &AppState,
    tenant: &str,
    declared: Option<u64>,
) -> Result<u64, Problem> {
    let used = state.jobs.stored_bytes(tenant).await?;
    let room = state.quotas.stored_bytes.saturating_sub(used);
    if room == 0 || declared.is_some_and(|n| n > room) {
        return Err(storage_full(used, None, state.quotas.stored_bytes));
    }
    Ok(room)
}

/// 413 for a tenant whose models and datasets keep `used` bytes of its `limit`, and
/// an upload of `size` more (when known) that does not fit. Uploads are counted
/// against the limit before they are read and again, in one step with the write,
/// when they are recorded: concurrent uploads cannot overfill it together.
pub fn storage_full(used: u64, size: Option<u64>, limit: u64) -> Problem {
    let upload = size.map_or(String::new(), |n| {
        format!(" and this upload of {n} bytes does not fit")
    });
    Problem::new(
        StatusCode::PAYLOAD_TOO_LARGE,
        "quota-exceeded",
        format!(
            "this tenant keeps {used} bytes of models and datasets{upload}; its limit is {limit} \
             (EFFP_MAX_STORED_BYTES): delete some before uploading more"
        ),
    )
}
