//! Benchmark tasks as agents use them, on every backend: claims by device kind in
//! order, leases that run out and go to another agent, fencing of lost claims,
//! expiry of unclaimed tasks, and tasks that keep losing their agents.

mod backends;

use std::sync::Arc;
use std::time::Duration;

use backends::Store;
use effp_protocol::benchmark::{DeviceFacts, ModelTiming, Percentiles, Runner};
use effp_protocol::{BenchmarkRequest, BenchmarkResult, BenchmarkState, Precision};
use effp_store::{BenchmarkRecord, StoreError};

const LONG: Duration = Duration::from_secs(600);

fn task(id: &str, job: &str, device: &str, claim_within: Duration) -> BenchmarkRecord {
    BenchmarkRecord::queued(
        id.into(),
        (job, "tenant"),
        BenchmarkRequest {
            device: device.into(),
            precision: Precision::Fp16,
            iterations: 10,
        },
        ("a".repeat(64), 100),
        ("b".repeat(64), 50),
        claim_within,
    )
}

fn result(original_ms: f64, pruned_ms: f64) -> BenchmarkResult {
    let timing = |ms: f64| {
        let p = Percentiles::of(&[ms]).unwrap();
        ModelTiming {
            compute: p,
            end_to_end: p,
            throughput_per_s: 1000.0 / ms,
        }
    };
    BenchmarkResult {
        request: BenchmarkRequest {
            device: "cpu".into(),
            precision: Precision::Fp16,
            iterations: 10,
        },
        runner: Runner::Cpu,
        precision: Precision::Fp32,
        device: DeviceFacts {
            kind: "cpu".into(),
            ..DeviceFacts::default()
        },
        original: timing(original_ms),
        pruned: timing(pruned_ms),
    }
}

fn lost<T: std::fmt::Debug>(outcome: Result<T, StoreError>) -> bool {
    matches!(outcome, Err(StoreError::LeaseLost { .. }))
}

async fn tasks_are_claimed_by_kind_in_order_once(store: Arc<dyn Store>) {
    store
        .insert_benchmark(&task("bm_1", "job_a", "cpu", LONG))
        .await
        .unwrap();
    store
        .insert_benchmark(&task("bm_2", "job_a", "jetson-xavier-nx", LONG))
        .await
        .unwrap();
    store
        .insert_benchmark(&task("bm_3", "job_b", "cpu", LONG))
        .await
        .unwrap();
    let jetson = store
        .claim_benchmark("jetson-xavier-nx", "nx-1", LONG, 3)
        .await
        .unwrap()
        .unwrap();
    assert_eq!((jetson.id.as_str(), jetson.attempts), ("bm_2", 1));
    assert_eq!(jetson.state, BenchmarkState::Running);
    assert_eq!(jetson.agent.as_deref(), Some("nx-1"));
    assert_eq!(jetson.pruned, ("b".repeat(64), 50));
    assert!(
        store
            .claim_benchmark("jetson-xavier-nx", "nx-2", LONG, 3)
            .await
            .unwrap()
            .is_none()
    );
    let first = store
        .claim_benchmark("cpu", "cpu-1", LONG, 3)
        .await
        .unwrap()
        .unwrap();
    let second = store
        .claim_benchmark("cpu", "cpu-2", LONG, 3)
        .await
        .unwrap()
        .unwrap();
    assert_eq!((first.id.as_str(), second.id.as_str()), ("bm_1", "bm_3"));
    assert!(
        store
            .claim_benchmark("cpu", "cpu-3", LONG, 3)
            .await
            .unwrap()
            .is_none()
    );
    let of_a: Vec<_> = store
        .job_benchmarks("job_a")
        .await
        .unwrap()
        .into_iter()
        .map(|b| b.id)
        .collect();
    assert_eq!(of_a, ["bm_1", "bm_2"]);
    assert!(store.job_benchmarks("job_c").await.unwrap().is_empty());
}

async fn a_result_lands_once_and_only_from_the_holder(store: Arc<dyn Store>) {
    store
        .insert_benchmark(&task("bm_1", "job_a", "cpu", LONG))
        .await
        .unwrap();
    let held = store
        .claim_benchmark("cpu", "cpu-1", LONG, 3)
        .await
        .unwrap()
        .unwrap();
    // Another agent, or the holder with another attempt, changes nothing.
    assert!(lost(
        store
            .finish_benchmark("bm_1", "cpu-2", 1, Ok(result(2.0, 1.0)))
            .await
    ));
    assert!(lost(
        store
            .finish_benchmark("bm_1", "cpu-1", 2, Ok(result(2.0, 1.0)))
            .await
    ));
    assert!(lost(store.renew_benchmark("bm_1", "cpu-2", 1, LONG).await));
    assert!(lost(
        store
            .finish_benchmark("bm_9", "cpu-1", 1, Ok(result(2.0, 1.0)))
            .await
    ));
    store
        .renew_benchmark("bm_1", "cpu-1", held.attempts, LONG)
        .await
        .unwrap();
    store
        .finish_benchmark("bm_1", "cpu-1", held.attempts, Ok(result(2.0, 0.5)))
        .await
        .unwrap();
    let done = store.benchmark("bm_1").await.unwrap().unwrap();
    assert_eq!(done.state, BenchmarkState::Succeeded);
    assert_eq!(done.result, Some(result(2.0, 0.5)));
    assert_eq!(done.view().speedup, Some(4.0));
    // Ended: a second report, a renewal and a claim all find nothing.
    assert!(lost(
        store
            .finish_benchmark("bm_1", "cpu-1", held.attempts, Err("late".into()))
            .await
    ));
    assert!(lost(
        store
            .renew_benchmark("bm_1", "cpu-1", held.attempts, LONG)
            .await
    ));
    assert!(
        store
            .claim_benchmark("cpu", "cpu-1", LONG, 3)
            .await
            .unwrap()
            .is_none()
    );
    // A failure is kept with its message.
    store
        .insert_benchmark(&task("bm_2", "job_a", "cpu", LONG))
        .await
        .unwrap();
    let held = store
        .claim_benchmark("cpu", "cpu-1", LONG, 3)
        .await
        .unwrap()
        .unwrap();
    store
        .finish_benchmark(
            "bm_2",
            "cpu-1",
            held.attempts,
            Err("Unsupported ONNX op: NonZero".into()),
        )
        .await
        .unwrap();
    let failed = store.benchmark("bm_2").await.unwrap().unwrap();
    assert_eq!(failed.state, BenchmarkState::Failed);
    assert_eq!(
        failed.error.as_deref(),
        Some("Unsupported ONNX op: NonZero")
    );
    assert!(failed.result.is_none());
}

async fn a_lease_that_runs_out_goes_to_another_agent_and_fences_the_first(store: Arc<dyn Store>) {
    store
        .insert_benchmark(&task("bm_1", "job_a", "cpu", LONG))
        .await
        .unwrap();
    let first = store
        .claim_benchmark("cpu", "cpu-1", Duration::from_millis(200), 3)
        .await
        .unwrap()
        .unwrap();
    assert!(
        store
            .claim_benchmark("cpu", "cpu-2", LONG, 3)
            .await
            .unwrap()
            .is_none()
    );
    tokio::time::sleep(Duration::from_millis(400)).await;
    let second = store
        .claim_benchmark("cpu", "cpu-2", LONG, 3)
        .await
        .unwrap()
        .unwrap();
    assert_eq!((second.id.as_str(), second.attempts), ("bm_1", 2));
    assert!(lost(
        store
            .renew_benchmark("bm_1", "cpu-1", first.attempts, LONG)
            .await
    ));
    assert!(lost(
        store
            .finish_benchmark("bm_1", "cpu-1", first.attempts, Ok(result(2.0, 1.0)))
            .await
    ));
    store
        .finish_benchmark("bm_1", "cpu-2", 2, Ok(result(3.0, 1.0)))
        .await
        .unwrap();
    assert_eq!(
        store.benchmark("bm_1").await.unwrap().unwrap().result,
        Some(result(3.0, 1.0))
    );
}

async fn a_task_nobody_claims_in_time_expires(store: Arc<dyn Store>) {
    store
        .insert_benchmark(&task(
            "bm_1",
            "job_a",
            "jetson-xavier-nx",
            Duration::from_millis(200),
        ))
        .await
        .unwrap();
    store
        .insert_benchmark(&task(
            "bm_2",
            "job_b",
            "jetson-xavier-nx",
            Duration::from_millis(200),
        ))
        .await
        .unwrap();
    assert!(
        !store.expire_benchmark("bm_1").await.unwrap(),
        "expired before its time"
    );
    tokio::time::sleep(Duration::from_millis(400)).await;
    assert!(store.expire_benchmark("bm_1").await.unwrap());
    assert!(
        !store.expire_benchmark("bm_1").await.unwrap(),
        "expired twice"
    );
    let expired = store.benchmark("bm_1").await.unwrap().unwrap();
    assert_eq!(expired.state, BenchmarkState::Expired);
    assert!(expired.error.unwrap().contains("--device jetson-xavier-nx"));
    // A claim after the deadline finds nothing and expires the rest on its way.
    assert!(
        store
            .claim_benchmark("jetson-xavier-nx", "nx-1", LONG, 3)
            .await
            .unwrap()
            .is_none()
    );
    assert_eq!(
        store.benchmark("bm_2").await.unwrap().unwrap().state,
        BenchmarkState::Expired
    );
    // A claimed task does not expire.
    store
        .insert_benchmark(&task("bm_3", "job_c", "cpu", Duration::from_millis(200)))
        .await
        .unwrap();
    store
        .claim_benchmark("cpu", "cpu-1", LONG, 3)
        .await
        .unwrap()
        .unwrap();
    tokio::time::sleep(Duration::from_millis(400)).await;
    assert!(!store.expire_benchmark("bm_3").await.unwrap());
    assert_eq!(
        store.benchmark("bm_3").await.unwrap().unwrap().state,
        BenchmarkState::Running
    );
}

async fn a_task_whose_agents_keep_dying_fails_after_its_attempts(store: Arc<dyn Store>) {
    store
        .insert_benchmark(&task("bm_1", "job_a", "cpu", LONG))
        .await
        .unwrap();
    let short = Duration::from_millis(100);
    for attempt in 1..=2 {
        let held = store
            .claim_benchmark("cpu", "cpu-1", short, 2)
            .await
            .unwrap()
            .unwrap();
        assert_eq!(held.attempts, attempt);
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
    assert!(
        store
            .claim_benchmark("cpu", "cpu-1", short, 2)
            .await
            .unwrap()
            .is_none()
    );
    let failed = store.benchmark("bm_1").await.unwrap().unwrap();
    assert_eq!(failed.state, BenchmarkState::Failed);
    assert!(failed.error.unwrap().contains("stopped answering 2 times"));
}

async fn concurrent_claims_take_each_task_once(store: Arc<dyn Store>) {
    for i in 0..6 {
        store
            .insert_benchmark(&task(&format!("bm_{i}"), "job_a", "cpu", LONG))
            .await
            .unwrap();
    }
    let claims = (0..12).map(|i| {
        let store = Arc::clone(&store);
        tokio::spawn(async move {
            store
                .claim_benchmark("cpu", &format!("cpu-{i}"), LONG, 3)
                .await
                .unwrap()
                .map(|b| b.id)
        })
    });
    let mut taken: Vec<String> = futures_util::future::join_all(claims)
        .await
        .into_iter()
        .filter_map(|r| r.unwrap())
        .collect();
    taken.sort();
    assert_eq!(taken, (0..6).map(|i| format!("bm_{i}")).collect::<Vec<_>>());
}

macro_rules! on_backend {
    ($backend:ident, $open:path) => {
        mod $backend {
            use super::*;
            on_backend!(@tests $open;
                tasks_are_claimed_by_kind_in_order_once,
                a_result_lands_once_and_only_from_the_holder,
                a_lease_that_runs_out_goes_to_another_agent_and_fences_the_first,
                a_task_nobody_claims_in_time_expires,
                a_task_whose_agents_keep_dying_fails_after_its_attempts,
                concurrent_claims_take_each_task_once,
            );
        }
    };
    (@tests $open:path; $($name:ident),* $(,)?) => {
        $(
            #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn $name() {
                let backend = $open().await;
                super::$name(backend.store()).await;
            }
        )*
    };
}

on_backend!(sqlite, backends::sqlite);
on_backend!(redis, backends::redis);
