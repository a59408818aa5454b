//! The SQLite queue as workers use it: claims, leases that run out, waking idle
//! workers, attempts, and the one-process rule of the embedded store.

use std::sync::Arc;
use std::time::{Duration, Instant};

use effp_protocol::JobState;
use effp_store::sqlite::SqliteStore;
use effp_store::{JobRecord, JobStore, Queue, StoreError};

const LONG: Duration = Duration::from_secs(600);

fn job(id: &str) -> JobRecord {
    JobRecord::queued(id.into(), "tenant".into(), serde_json::json!({}), None)
}

fn open(dir: &tempfile::TempDir) -> SqliteStore {
    SqliteStore::open(&dir.path().join("effp.sqlite3")).unwrap()
}

async fn state(store: &SqliteStore, id: &str) -> JobRecord {
    store.job("tenant", id).await.unwrap().unwrap()
}

#[tokio::test]
async fn a_job_is_claimed_once_while_its_lease_lasts() {
    let dir = tempfile::tempdir().unwrap();
    let store = open(&dir);
    assert!(store.claim(LONG, 3).await.unwrap().is_none());
    store.insert_job(&job("job_a")).await.unwrap();
    let claimed = store.claim(LONG, 3).await.unwrap().unwrap();
    assert_eq!((claimed.id.as_str(), claimed.attempts), ("job_a", 1));
    assert_eq!(claimed.state, JobState::Running);
    assert!(store.claim(LONG, 3).await.unwrap().is_none());
}

#[tokio::test]
async fn an_idle_worker_wakes_when_a_job_is_queued() {
    let dir = tempfile::tempdir().unwrap();
    let store = Arc::new(open(&dir));
    let waiter = {
        let store = Arc::clone(&store);
        tokio::spawn(async move {
            let started = Instant::now();
            store.wait_for_work(LONG).await;
            started.elapsed()
        })
    };
    tokio::time::sleep(Duration::from_millis(200)).await;
    assert!(
        !waiter.is_finished(),
        "the wait returned with nothing queued"
    );
    store.insert_job(&job("job_a")).await.unwrap();
    let waited = tokio::time::timeout(Duration::from_secs(30), waiter)
        .await
        .expect("the idle worker was not woken by the new job")
        .unwrap();
    assert!(waited < LONG);
}

#[tokio::test]
async fn a_job_queued_between_a_claim_and_the_wait_is_not_missed() {
    let dir = tempfile::tempdir().unwrap();
    let store = open(&dir);
    assert!(store.claim(LONG, 3).await.unwrap().is_none());
    store.insert_job(&job("job_a")).await.unwrap();
    tokio::time::timeout(Duration::from_secs(30), store.wait_for_work(LONG))
        .await
        .expect("the wake-up before the wait was lost");
    assert!(store.claim(LONG, 3).await.unwrap().is_some());
}

#[tokio::test]
async fn a_lease_that_runs_out_wakes_a_worker_and_the_job_is_claimed_again() {
    let dir = tempfile::tempdir().unwrap();
    let store = open(&dir);
    store.insert_job(&job("job_a")).await.unwrap();
    // Drain the wake-up of the insert.
    store.wait_for_work(Duration::ZERO).await;
    let first = store
        .claim(Duration::from_millis(300), 3)
        .await
        .unwrap()
        .unwrap();
    assert_eq!(first.attempts, 1);
    // The worker holding it dies: no heartbeat. An idle worker learns of the
    // expiry from the queue, not from a notification.
    tokio::time::timeout(Duration::from_secs(30), store.wait_for_work(LONG))
        .await
        .expect("the wait did not end when the lease ran out");
    let again = store.claim(LONG, 3).await.unwrap().unwrap();
    assert_eq!((again.id.as_str(), again.attempts), ("job_a", 2));
}

#[tokio::test]
async fn heartbeats_keep_the_lease_and_carry_the_cancellation() {
    let dir = tempfile::tempdir().unwrap();
    let store = open(&dir);
    store.insert_job(&job("job_a")).await.unwrap();
    let lease = Duration::from_millis(400);
    store.claim(lease, 3).await.unwrap().unwrap();
    for _ in 0..6 {
        tokio::time::sleep(Duration::from_millis(150)).await;
        assert!(!store.heartbeat("job_a", lease).await.unwrap());
        assert!(store.claim(lease, 3).await.unwrap().is_none());
    }
    store.cancel_job("tenant", "job_a").await.unwrap();
    assert!(store.heartbeat("job_a", lease).await.unwrap());
}

#[tokio::test]
async fn a_job_whose_workers_keep_dying_fails_after_its_attempts() {
    let dir = tempfile::tempdir().unwrap();
    let store = open(&dir);
    store.insert_job(&job("job_a")).await.unwrap();
    let short = Duration::from_millis(50);
    for attempt in 1..=2 {
        let claimed = store.claim(short, 2).await.unwrap().unwrap();
        assert_eq!(claimed.attempts, attempt);
        tokio::time::sleep(Duration::from_millis(120)).await;
    }
    assert!(store.claim(short, 2).await.unwrap().is_none());
    let failed = state(&store, "job_a").await;
    assert_eq!(failed.state, JobState::Failed);
    assert!(
        failed.error.as_deref().unwrap().contains("started 2 times"),
        "{failed:?}"
    );
}

#[tokio::test]
async fn release_gives_the_attempt_back_and_retry_spends_it() {
    let dir = tempfile::tempdir().unwrap();
    let store = open(&dir);
    store.insert_job(&job("job_a")).await.unwrap();
    store.wait_for_work(Duration::ZERO).await;
    store.claim(LONG, 2).await.unwrap().unwrap();
    store.release("job_a").await.unwrap();
    let released = state(&store, "job_a").await;
    assert_eq!((released.state, released.attempts), (JobState::Queued, 0));
    // Each put-back wakes idle workers.
    tokio::time::timeout(Duration::from_secs(30), store.wait_for_work(LONG))
        .await
        .expect("a released job did not wake a worker");

    store.claim(LONG, 2).await.unwrap().unwrap();
    store.retry("job_a", "killed", 2).await.unwrap();
    assert_eq!(state(&store, "job_a").await.state, JobState::Queued);
    store.claim(LONG, 2).await.unwrap().unwrap();
    store.retry("job_a", "killed again", 2).await.unwrap();
    let failed = state(&store, "job_a").await;
    assert_eq!(failed.state, JobState::Failed);
    assert!(failed.error.unwrap().ends_with("killed again"));
}

#[tokio::test]
async fn the_database_serves_one_process_and_the_next_one_recovers_its_jobs() {
    let dir = tempfile::tempdir().unwrap();
    let store = open(&dir);
    store.insert_job(&job("job_a")).await.unwrap();
    store.insert_job(&job("job_b")).await.unwrap();
    store.claim(LONG, 3).await.unwrap().unwrap();
    match SqliteStore::open(&dir.path().join("effp.sqlite3")) {
        Err(e @ StoreError::InUse(_)) => {
            assert!(e.to_string().contains("another effp process"), "{e}")
        }
        other => panic!("a second open was not refused: {other:?}"),
    }
    // The process ends with a job running (its lease far from over)…
    drop(store);
    // …and the next one may claim it at once: nobody else can be running it.
    let next = open(&dir);
    assert_eq!(next.recovered(), 1);
    let claimed = next.claim(LONG, 3).await.unwrap().unwrap();
    assert_eq!((claimed.id.as_str(), claimed.attempts), ("job_a", 2));
    let queued = next.claim(LONG, 3).await.unwrap().unwrap();
    assert_eq!(queued.id, "job_b");
}

#[tokio::test]
async fn a_finished_job_keeps_its_state_and_artifacts() {
    let dir = tempfile::tempdir().unwrap();
    let store = open(&dir);
    store.insert_job(&job("job_a")).await.unwrap();
    store.claim(LONG, 3).await.unwrap().unwrap();
    let mut artifacts = effp_protocol::Artifacts::new();
    artifacts.insert(
        effp_protocol::artifact::PRUNED_MODEL.into(),
        effp_protocol::ArtifactRef {
            sha256: "ab".repeat(32),
            size: 1234,
        },
    );
    store
        .finish("job_a", JobState::Succeeded, None, &artifacts)
        .await
        .unwrap();
    let done = state(&store, "job_a").await;
    assert_eq!((done.state, done.progress), (JobState::Succeeded, 1.0));
    assert_eq!(done.artifacts, artifacts);
    // Its content is referenced: the start-up recount keeps it.
    let referenced = store.recount_objects().await.unwrap();
    assert!(referenced.contains(&"ab".repeat(32)));
    // Nothing is left to claim, and ended jobs are reported as such.
    assert!(store.claim(LONG, 3).await.unwrap().is_none());
    assert_eq!(
        store
            .ended_jobs(&["job_a".into(), "job_x".into()])
            .await
            .unwrap(),
        ["job_a", "job_x"]
    );
}
