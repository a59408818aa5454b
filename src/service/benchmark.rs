//! Device benchmarks of a job's models, as the API and the workers queue them.

use effp_protocol::artifact::PRUNED_MODEL;
use effp_protocol::{BenchmarkRequest, JobSpec};
use effp_store::{BenchmarkRecord, Benchmarks, JobRecord, JobStore, StoreError};

/// Queues a benchmark of `job`'s original and pruned model; `None` when there is
/// nothing to compare (the job stored no pruned model, or its model was deleted).
pub async fn queue_benchmark(
    benchmarks: &dyn Benchmarks,
    jobs: &dyn JobStore,
    job: &JobRecord,
    request: BenchmarkRequest,
    claim_within: std::time::Duration,
) -> Result<Option<BenchmarkRecord>, StoreError> {
    let (Ok(spec), Some(pruned)) = (
        serde_json::from_value::<JobSpec>(job.spec.clone()),
        job.artifacts.get(PRUNED_MODEL),
    ) else {
        return Ok(None);
    };
    let Some(model) = jobs.model(&job.tenant, &spec.model).await? else {
        return Ok(None);
    };
    let record = BenchmarkRecord::queued(
        format!("bm_{}", uuid::Uuid::new_v4().simple()),
        (&job.id, &job.tenant),
        request,
        (model.sha256, model.size),
        (pruned.sha256.clone(), pruned.size),
        claim_within,
    );
    benchmarks.insert_benchmark(&record).await?;
    Ok(Some(record))
}
