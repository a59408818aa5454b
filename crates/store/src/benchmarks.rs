//! Device benchmarks: tasks that benchmark agents claim by device kind, hold with a
//! lease they renew, and end with a result or an error.

use std::time::Duration;

use effp_protocol::{BenchmarkRequest, BenchmarkResult, BenchmarkState, BenchmarkView};

use crate::StoreError;

/// A benchmark of a job's original and pruned model, as the stores keep it.
#[derive(Debug, Clone, PartialEq)]
pub struct BenchmarkRecord {
    /// Identifier (`bm_…`).
    pub id: String,
    /// The job whose models it measures.
    pub job_id: String,
    /// The job's tenant.
    pub tenant: String,
    /// What to measure; `request.device` is the kind of agent that may claim it.
    pub request: BenchmarkRequest,
    /// Where it stands.
    pub state: BenchmarkState,
    /// Claims so far; the current claim's number fences the agent holding it.
    pub attempts: u32,
    /// The agent holding it (or that held it last).
    pub agent: Option<String>,
    /// RFC 3339 time it was asked for.
    pub created_at: String,
    /// Unix milliseconds after which a task no agent claimed expires.
    pub claim_by_ms: i64,
    /// Unix milliseconds the current claim's lease runs until.
    pub lease_until_ms: i64,
    /// Stored content of the original model, and its bytes.
    pub original: (String, u64),
    /// Stored content of the pruned model, and its bytes.
    pub pruned: (String, u64),
    /// What was measured.
    pub result: Option<BenchmarkResult>,
    /// Why it failed or expired.
    pub error: Option<String>,
}

impl BenchmarkRecord {
    /// A new task for `job_id`'s models, waiting for an agent until `claim_within`
    /// from now.
    pub fn queued(
        id: String,
        (job_id, tenant): (&str, &str),
        request: BenchmarkRequest,
        original: (String, u64),
        pruned: (String, u64),
        claim_within: Duration,
    ) -> Self {
        let (created_at, now) = crate::now();
        Self {
            id,
            job_id: job_id.to_string(),
            tenant: tenant.to_string(),
            request,
            state: BenchmarkState::Queued,
            attempts: 0,
            agent: None,
            created_at,
            claim_by_ms: now + claim_within.as_millis() as i64,
            lease_until_ms: 0,
            original,
            pruned,
            result: None,
            error: None,
        }
    }

    /// The benchmark as the job shows it.
    pub fn view(&self) -> BenchmarkView {
        BenchmarkView {
            id: self.id.clone(),
            request: self.request.clone(),
            state: self.state,
            created_at: self.created_at.clone(),
            attempts: self.attempts,
            speedup: self.result.as_ref().map(BenchmarkResult::speedup),
            result: self.result.clone(),
            error: self.error.clone(),
        }
    }
}

/// Why a queued task expired.
pub fn expired_message(device: &str) -> String {
    format!(
        "no benchmark agent of device kind '{device}' claimed the task in time; start an agent \
         with --device {device}, then ask again with POST /v1/jobs/{{id}}/benchmarks"
    )
}

/// What an ended claim records: the state, the result as JSON, the error.
pub(crate) fn ended(
    outcome: Result<BenchmarkResult, String>,
) -> Result<(BenchmarkState, Option<String>, Option<String>), StoreError> {
    Ok(match outcome {
        Ok(result) => (
            BenchmarkState::Succeeded,
            Some(serde_json::to_string(&result).map_err(|e| StoreError::Backend(e.to_string()))?),
            None,
        ),
        Err(error) => (BenchmarkState::Failed, None, Some(error)),
    })
}

/// A call for claim `attempt` of task `id`, which no longer holds it.
pub(crate) fn lost(id: &str, attempt: u32) -> StoreError {
    StoreError::LeaseLost {
        job: id.to_string(),
        attempt,
    }
}

/// Why a task whose claims kept running out failed.
pub(crate) fn gave_up_message(max_attempts: u32) -> String {
    format!(
        "the agents measuring it stopped answering {max_attempts} times; the models may make \
         the device's runtime crash"
    )
}

/// The benchmark tasks and their leases.
///
/// A claim is fenced by its attempt number, as jobs' claims are: once the lease ran
/// out and another agent claimed the task, the first agent's renewals and reports
/// fail with [`StoreError::LeaseLost`] and change nothing.
#[async_trait::async_trait]
pub trait Benchmarks: Send + Sync {
    /// Records a new task (queued).
    async fn insert_benchmark(&self, benchmark: &BenchmarkRecord) -> Result<(), StoreError>;
    /// A task by id.
    async fn benchmark(&self, id: &str) -> Result<Option<BenchmarkRecord>, StoreError>;
    /// A job's tasks, oldest first.
    async fn job_benchmarks(&self, job_id: &str) -> Result<Vec<BenchmarkRecord>, StoreError>;
    /// Claims for `agent` the oldest task of device kind `kind` that is queued, or
    /// running with its lease run out (its agent died), for `lease`. On the way,
    /// queued tasks past their claim time expire, and a task whose claims ran out
    /// `max_attempts` times fails.
    async fn claim_benchmark(
        &self,
        kind: &str,
        agent: &str,
        lease: Duration,
        max_attempts: u32,
    ) -> Result<Option<BenchmarkRecord>, StoreError>;
    /// Renews the lease of the claim `attempt` of task `id` held by `agent`.
    async fn renew_benchmark(
        &self,
        id: &str,
        agent: &str,
        attempt: u32,
        lease: Duration,
    ) -> Result<(), StoreError>;
    /// Ends the claim `attempt` of task `id` held by `agent` with what it measured
    /// or why it could not.
    async fn finish_benchmark(
        &self,
        id: &str,
        agent: &str,
        attempt: u32,
        outcome: Result<BenchmarkResult, String>,
    ) -> Result<(), StoreError>;
    /// Expires task `id` if it is still queued past its claim time; returns whether
    /// it did.
    async fn expire_benchmark(&self, id: &str) -> Result<bool, StoreError>;
}
