//! The queue as workers use it, on every backend: claims, leases that run out,
//! waking idle workers, attempts, fencing of lost claims; and the one-process rule of
//! the embedded store.

mod backends;

use std::sync::Arc;
use std::time::{Duration, Instant};

use backends::Store;
use effp_protocol::JobState;
use effp_store::sqlite::SqliteStore;
use effp_store::{ActiveLimits, JobRecord, NotificationState, NotifyOutcome, Queue, StoreError};

const LONG: Duration = Duration::from_secs(600);

fn job(id: &str) -> JobRecord {
    JobRecord::queued(id.into(), "tenant".into(), serde_json::json!({}), None)
}

/// Records `job` with no limits on the tenant's active jobs.
async fn insert(store: &dyn Store, job: &JobRecord) {
    store.insert_job(job, ActiveLimits::NONE).await.unwrap();
}

async fn state(store: &dyn Store, id: &str) -> JobRecord {
    store.job("tenant", id).await.unwrap().unwrap()
}

fn lost<T: std::fmt::Debug>(outcome: Result<T, StoreError>) -> bool {
    matches!(outcome, Err(StoreError::LeaseLost { .. }))
}

async fn a_job_is_claimed_once_while_its_lease_lasts(store: Arc<dyn Store>) {
    assert!(store.claim(LONG, 3).await.unwrap().is_none());
    insert(store.as_ref(), &job("job_a")).await;
    let claimed = store.claim(LONG, 3).await.unwrap().unwrap();
    assert_eq!((claimed.id.as_str(), claimed.attempts), ("job_a", 1));
    assert_eq!(claimed.state, JobState::Running);
    assert!(store.claim(LONG, 3).await.unwrap().is_none());
    assert_eq!(store.depth().await.unwrap(), 0);
}

async fn an_idle_worker_wakes_when_a_job_is_queued(store: Arc<dyn Store>) {
    let waiter = {
        let store = Arc::clone(&store);
        tokio::spawn(async move {
            let started = Instant::now();
            store.wait_for_work(LONG).await;
            started.elapsed()
        })
    };
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert!(
        !waiter.is_finished(),
        "the wait returned with nothing queued"
    );
    insert(store.as_ref(), &job("job_a")).await;
    let waited = tokio::time::timeout(Duration::from_secs(30), waiter)
        .await
        .expect("the idle worker was not woken by the new job")
        .unwrap();
    assert!(waited < LONG);
}

async fn a_job_queued_between_a_claim_and_the_wait_is_not_missed(store: Arc<dyn Store>) {
    assert!(store.claim(LONG, 3).await.unwrap().is_none());
    insert(store.as_ref(), &job("job_a")).await;
    tokio::time::timeout(Duration::from_secs(30), store.wait_for_work(LONG))
        .await
        .expect("the wake-up before the wait was lost");
    assert!(store.claim(LONG, 3).await.unwrap().is_some());
}

async fn a_lease_that_runs_out_wakes_a_worker_and_the_job_is_claimed_again(store: Arc<dyn Store>) {
    insert(store.as_ref(), &job("job_a")).await;
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

async fn a_worker_whose_claim_was_taken_over_changes_nothing(store: Arc<dyn Store>) {
    insert(store.as_ref(), &job("job_a")).await;
    let first = store
        .claim(Duration::from_millis(100), 3)
        .await
        .unwrap()
        .unwrap();
    tokio::time::sleep(Duration::from_millis(250)).await;
    let second = store.claim(LONG, 3).await.unwrap().unwrap();
    assert_eq!(second.attempts, first.attempts + 1);
    // The first worker wakes up late: every call of its claim is refused.
    let old = first.attempts;
    assert!(lost(store.heartbeat("job_a", old, LONG).await));
    assert!(lost(
        store
            .report("job_a", old, "train", 0.5, &serde_json::json!({"step": 1}))
            .await
    ));
    assert!(lost(
        store
            .finish(
                "job_a",
                old,
                JobState::Failed,
                Some("stale"),
                &Default::default()
            )
            .await
    ));
    assert!(lost(store.release("job_a", old).await));
    assert!(lost(store.retry("job_a", old, "stale", 3).await));
    let now = state(&*store, "job_a").await;
    assert_eq!((now.state, now.attempts), (JobState::Running, 2));
    assert!(now.error.is_none() && now.metrics == serde_json::json!({}));
    // The holder's calls work.
    assert!(
        !store
            .heartbeat("job_a", second.attempts, LONG)
            .await
            .unwrap()
    );
    store
        .finish(
            "job_a",
            second.attempts,
            JobState::Succeeded,
            None,
            &Default::default(),
        )
        .await
        .unwrap();
    assert_eq!(state(&*store, "job_a").await.state, JobState::Succeeded);
}

async fn heartbeats_keep_the_lease_and_carry_the_cancellation(store: Arc<dyn Store>) {
    insert(store.as_ref(), &job("job_a")).await;
    let lease = Duration::from_millis(400);
    store.claim(lease, 3).await.unwrap().unwrap();
    for _ in 0..6 {
        tokio::time::sleep(Duration::from_millis(150)).await;
        assert!(!store.heartbeat("job_a", 1, lease).await.unwrap());
        assert!(store.claim(lease, 3).await.unwrap().is_none());
    }
    store.cancel_job("tenant", "job_a").await.unwrap();
    assert!(store.heartbeat("job_a", 1, lease).await.unwrap());
}

async fn a_job_whose_workers_keep_dying_fails_after_its_attempts(store: Arc<dyn Store>) {
    insert(store.as_ref(), &job("job_a")).await;
    let short = Duration::from_millis(50);
    for attempt in 1..=2 {
        let claimed = store.claim(short, 2).await.unwrap().unwrap();
        assert_eq!(claimed.attempts, attempt);
        tokio::time::sleep(Duration::from_millis(120)).await;
    }
    assert!(store.claim(short, 2).await.unwrap().is_none());
    let failed = state(&*store, "job_a").await;
    assert_eq!(failed.state, JobState::Failed);
    assert!(
        failed.error.as_deref().unwrap().contains("started 2 times"),
        "{failed:?}"
    );
}

async fn release_gives_the_attempt_back_and_retry_spends_it(store: Arc<dyn Store>) {
    insert(store.as_ref(), &job("job_a")).await;
    store.wait_for_work(Duration::ZERO).await;
    store.claim(LONG, 2).await.unwrap().unwrap();
    store.release("job_a", 1).await.unwrap();
    let released = state(&*store, "job_a").await;
    assert_eq!((released.state, released.attempts), (JobState::Queued, 0));
    assert_eq!(store.depth().await.unwrap(), 1);
    // Each put-back wakes idle workers.
    tokio::time::timeout(Duration::from_secs(30), store.wait_for_work(LONG))
        .await
        .expect("a released job did not wake a worker");

    store.claim(LONG, 2).await.unwrap().unwrap();
    store.retry("job_a", 1, "killed", 2).await.unwrap();
    assert_eq!(state(&*store, "job_a").await.state, JobState::Queued);
    store.claim(LONG, 2).await.unwrap().unwrap();
    store.retry("job_a", 2, "killed again", 2).await.unwrap();
    let failed = state(&*store, "job_a").await;
    assert_eq!(failed.state, JobState::Failed);
    assert!(failed.error.unwrap().ends_with("killed again"));
}

async fn a_finished_job_keeps_its_state_and_artifacts(store: Arc<dyn Store>) {
    insert(store.as_ref(), &job("job_a")).await;
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
        .finish("job_a", 1, JobState::Succeeded, None, &artifacts)
        .await
        .unwrap();
    let done = state(&*store, "job_a").await;
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
    // Its history: queued, running, succeeded, in order.
    let events = store.events("job_a", 0).await.unwrap();
    let states: Vec<_> = events.iter().map(|e| e.data["state"].clone()).collect();
    assert_eq!(states, ["queued", "running", "succeeded"]);
    assert!(events.windows(2).all(|w| w[0].seq < w[1].seq));
    let later = store.events("job_a", events[0].seq).await.unwrap();
    assert_eq!(later, events[1..]);
    // Any id a client sends is answered: past the end there is nothing.
    for after in [i64::MAX, i64::MAX - 1, i64::MIN, -1] {
        let rest = store.events("job_a", after).await.unwrap();
        assert_eq!(rest.len(), if after < 0 { 3 } else { 0 }, "after {after}");
    }
}

async fn a_cancelled_queued_job_is_never_claimed(store: Arc<dyn Store>) {
    insert(store.as_ref(), &job("job_a")).await;
    insert(store.as_ref(), &job("job_b")).await;
    let cancelled = store.cancel_job("tenant", "job_a").await.unwrap().unwrap();
    assert_eq!(cancelled.state, JobState::Cancelled);
    assert!(store.cancel_job("other", "job_b").await.unwrap().is_none());
    let claimed = store.claim(LONG, 3).await.unwrap().unwrap();
    assert_eq!(claimed.id, "job_b");
    assert!(store.claim(LONG, 3).await.unwrap().is_none());
    let counts = store.job_counts().await.unwrap();
    assert_eq!(counts.get(&JobState::Cancelled), Some(&1));
    assert_eq!(counts.get(&JobState::Running), Some(&1));
}

async fn a_tenant_with_many_queued_jobs_does_not_hold_back_another(store: Arc<dyn Store>) {
    for i in 0..5 {
        let mut j = job(&format!("job_a{i}"));
        j.tenant = "busy".into();
        insert(store.as_ref(), &j).await;
        tokio::time::sleep(Duration::from_millis(2)).await;
    }
    let mut other = job("job_b");
    other.tenant = "quiet".into();
    insert(store.as_ref(), &other).await;
    let first = store.claim(LONG, 3).await.unwrap().unwrap();
    assert_eq!(first.id, "job_a0");
    // The busy tenant has a job running; the quiet one none: it goes next.
    let second = store.claim(LONG, 3).await.unwrap().unwrap();
    assert_eq!(second.id, "job_b");
    let third = store.claim(LONG, 3).await.unwrap().unwrap();
    assert_eq!(third.id, "job_a1");
}

async fn listings_are_newest_first_per_tenant_and_state(store: Arc<dyn Store>) {
    for i in 0..4 {
        store
            .insert_job(&job(&format!("job_{i}")), ActiveLimits::NONE)
            .await
            .unwrap();
        tokio::time::sleep(Duration::from_millis(3)).await;
    }
    let mut foreign = job("job_f");
    foreign.tenant = "other".into();
    insert(store.as_ref(), &foreign).await;
    let ids = |jobs: Vec<JobRecord>| jobs.into_iter().map(|j| j.id).collect::<Vec<_>>();
    assert_eq!(
        ids(store.jobs("tenant", None, 10, 0).await.unwrap()),
        ["job_3", "job_2", "job_1", "job_0"]
    );
    assert_eq!(
        ids(store.jobs("tenant", None, 2, 1).await.unwrap()),
        ["job_2", "job_1"]
    );
    store.claim(LONG, 3).await.unwrap().unwrap();
    assert_eq!(
        ids(store
            .jobs("tenant", Some(JobState::Running), 10, 0)
            .await
            .unwrap()),
        ["job_0"]
    );
    assert_eq!(
        ids(store
            .jobs("tenant", Some(JobState::Queued), 10, 0)
            .await
            .unwrap()),
        ["job_3", "job_2", "job_1"]
    );
    assert!(store.job("other", "job_0").await.unwrap().is_none());
    assert_eq!(store.active_load("tenant").await.unwrap().0, 4);
    // An Idempotency-Key gives one job per tenant.
    let mut keyed = job("job_k1");
    keyed.idempotency_key = Some("key-1".into());
    assert!(
        store
            .insert_job(&keyed, ActiveLimits::NONE)
            .await
            .unwrap()
            .is_none()
    );
    let mut again = job("job_k2");
    again.idempotency_key = Some("key-1".into());
    let existing = store
        .insert_job(&again, ActiveLimits::NONE)
        .await
        .unwrap()
        .unwrap();
    assert_eq!(existing.id, "job_k1");
    assert!(store.job("tenant", "job_k2").await.unwrap().is_none());
    assert_eq!(
        store
            .job_by_key("tenant", "key-1")
            .await
            .unwrap()
            .unwrap()
            .id,
        "job_k1"
    );
}

/// Runs each scenario on a fresh store of one backend.
async fn a_job_past_the_tenants_limits_is_refused_even_when_submitted_at_once(
    store: Arc<dyn Store>,
) {
    let limits = ActiveLimits {
        jobs: 3,
        training_steps: 1000,
    };
    let job = |id: &str, tenant: &str, steps: u64, key: Option<&str>| {
        JobRecord::queued(
            id.into(),
            tenant.into(),
            serde_json::json!({"model": "mdl_1", "training": {"steps": steps}}),
            key.map(str::to_string),
        )
    };
    assert!(
        store
            .insert_job(&job("job_a", "t", 600, Some("k")), limits)
            .await
            .unwrap()
            .is_none()
    );
    // Steps: 600 + 401 would pass 1000.
    match store
        .insert_job(&job("job_b", "t", 401, None), limits)
        .await
    {
        Err(StoreError::TooManyActive {
            jobs,
            steps,
            requested,
            limits: l,
        }) => {
            assert_eq!((jobs, steps, requested, l), (1, 600, 401, limits))
        }
        other => panic!("600 + 401 steps under a limit of 1000: {other:?}"),
    }
    assert!(
        store
            .insert_job(&job("job_c", "t", 400, None), limits)
            .await
            .unwrap()
            .is_none()
    );
    assert!(
        store
            .insert_job(&job("job_d", "t", 0, None), limits)
            .await
            .unwrap()
            .is_none()
    );
    // Jobs: a fourth is refused; a retry with the key of an active job gets that job.
    assert!(matches!(
        store.insert_job(&job("job_e", "t", 0, None), limits).await,
        Err(StoreError::TooManyActive { jobs: 3, .. })
    ));
    let again = store
        .insert_job(&job("job_f", "t", 600, Some("k")), limits)
        .await
        .unwrap();
    assert_eq!(again.map(|j| j.id).as_deref(), Some("job_a"));
    assert!(store.job("t", "job_e").await.unwrap().is_none());
    // An ended job makes room.
    store.cancel_job("t", "job_d").await.unwrap();
    assert!(
        store
            .insert_job(&job("job_g", "t", 0, None), limits)
            .await
            .unwrap()
            .is_none()
    );

    // Many submissions at once, each fitting alone: exactly the limit is kept.
    let inserts = (0..16).map(|i| {
        let store = Arc::clone(&store);
        tokio::spawn(async move {
            store
                .insert_job(&job(&format!("job_r{i}"), "u", 10, None), limits)
                .await
        })
    });
    let mut kept = 0;
    for insert in inserts {
        match insert.await.unwrap() {
            Ok(None) => kept += 1,
            Err(StoreError::TooManyActive { .. }) => {}
            other => panic!("{other:?}"),
        }
    }
    assert_eq!(kept, 3);
    assert_eq!(store.active_load("u").await.unwrap(), (3, 30));
}

async fn a_tenants_load_counts_its_active_jobs_and_their_steps(store: Arc<dyn Store>) {
    let spec = |model: &str, dataset: &str, steps: u64| serde_json::json!({"model": model, "dataset": dataset, "training": {"steps": steps}});
    let jobs = [
        ("job_a", spec("mdl_1", "ds_1", 100)),
        ("job_b", spec("mdl_2", "ds_1", 250)),
        ("job_c", spec("mdl_1", "ds_2", 7)),
    ];
    for (id, spec) in &jobs {
        let record = JobRecord::queued((*id).into(), "tenant".into(), spec.clone(), None);
        insert(store.as_ref(), &record).await;
    }
    let other = JobRecord::queued(
        "job_o".into(),
        "other".into(),
        spec("mdl_1", "ds_1", 1000),
        None,
    );
    insert(store.as_ref(), &other).await;
    assert_eq!(store.active_load("tenant").await.unwrap(), (3, 357));
    let mut using = store.active_jobs_using("tenant", "mdl_1").await.unwrap();
    using.sort();
    assert_eq!(using, ["job_a", "job_c"]);
    let mut using = store.active_jobs_using("tenant", "ds_1").await.unwrap();
    using.sort();
    assert_eq!(using, ["job_a", "job_b"]);
    // An ended job no longer counts, and is reported as ended.
    store.cancel_job("tenant", "job_b").await.unwrap();
    assert_eq!(store.active_load("tenant").await.unwrap(), (2, 107));
    assert_eq!(
        store.active_jobs_using("tenant", "ds_1").await.unwrap(),
        ["job_a"]
    );
    assert_eq!(
        store
            .ended_jobs(&["job_a".into(), "job_b".into(), "job_c".into()])
            .await
            .unwrap(),
        ["job_b"]
    );
    assert_eq!(store.active_load("nobody").await.unwrap(), (0, 0));
}

/// The number of the try a claim of job `id`'s notification gets, if it gets one.
async fn try_number(store: &dyn Store, id: &str, lease: Duration) -> Option<u32> {
    store
        .claim_notification(id, lease)
        .await
        .unwrap()
        .map(|(_, n)| n)
}

async fn a_notification_is_due_once_its_job_ends_and_is_taken_by_one_process_at_a_time(
    store: Arc<dyn Store>,
) {
    let notified = |id: &str| {
        JobRecord::queued(
            id.into(),
            "tenant".into(),
            serde_json::json!({"notify": format!("https://hooks.example.com/{id}")}),
            None,
        )
    };
    insert(store.as_ref(), &notified("job_a")).await;
    insert(store.as_ref(), &notified("job_b")).await;
    insert(store.as_ref(), &job("job_c")).await;
    assert!(store.notification("job_c").await.unwrap().is_none());
    let pending = store.notification("job_a").await.unwrap().unwrap();
    assert_eq!(pending.url, "https://hooks.example.com/job_a");
    assert_eq!(
        (pending.state, pending.attempts),
        (NotificationState::Pending, 0)
    );
    // Not due while the job is active.
    assert!(store.due_notifications(10).await.unwrap().is_empty());
    assert_eq!(try_number(&*store, "job_a", LONG).await, None);

    store.claim(LONG, 3).await.unwrap().unwrap();
    store
        .finish("job_a", 1, JobState::Succeeded, None, &Default::default())
        .await
        .unwrap();
    store.cancel_job("tenant", "job_b").await.unwrap();
    let mut due = store.due_notifications(10).await.unwrap();
    due.sort();
    assert_eq!(due, ["job_a", "job_b"]);

    // One process takes it; nobody else can while its lease lasts.
    let (taken, attempt) = store
        .claim_notification("job_a", LONG)
        .await
        .unwrap()
        .unwrap();
    assert_eq!(
        (taken.id.as_str(), taken.state, attempt),
        ("job_a", JobState::Succeeded, 1)
    );
    assert_eq!(try_number(&*store, "job_a", LONG).await, None);
    assert_eq!(store.due_notifications(10).await.unwrap(), ["job_b"]);
    // A failed try comes back when its retry is due.
    store
        .notification_outcome(
            "job_a",
            NotifyOutcome::Retry {
                at_ms: effp_store::now().1 - 1,
                error: "502".into(),
            },
        )
        .await
        .unwrap();
    let (_, attempt) = store
        .claim_notification("job_a", LONG)
        .await
        .unwrap()
        .unwrap();
    assert_eq!(attempt, 2);
    store
        .notification_outcome("job_a", NotifyOutcome::Delivered)
        .await
        .unwrap();
    let delivered = store.notification("job_a").await.unwrap().unwrap();
    assert_eq!(
        (delivered.state, delivered.attempts, delivered.last_error),
        (NotificationState::Delivered, 2, None)
    );
    assert!(
        store
            .claim_notification("job_a", Duration::ZERO)
            .await
            .unwrap()
            .is_none()
    );

    // A process that took it and died: once its lease runs out another takes it.
    let short = Duration::from_millis(50);
    assert_eq!(try_number(&*store, "job_b", short).await, Some(1));
    assert_eq!(try_number(&*store, "job_b", short).await, None);
    tokio::time::sleep(Duration::from_millis(120)).await;
    assert_eq!(try_number(&*store, "job_b", short).await, Some(2));
    store
        .notification_outcome(
            "job_b",
            NotifyOutcome::Failed {
                error: "refused".into(),
            },
        )
        .await
        .unwrap();
    let failed = store.notification("job_b").await.unwrap().unwrap();
    assert_eq!(
        (failed.state, failed.last_error.as_deref()),
        (NotificationState::Failed, Some("refused"))
    );
    assert!(store.due_notifications(10).await.unwrap().is_empty());
}

macro_rules! on_backend {
    ($backend:ident, $open:path) => {
        mod $backend {
            use super::*;
            on_backend!(@tests $open;
                a_job_is_claimed_once_while_its_lease_lasts,
                an_idle_worker_wakes_when_a_job_is_queued,
                a_job_queued_between_a_claim_and_the_wait_is_not_missed,
                a_lease_that_runs_out_wakes_a_worker_and_the_job_is_claimed_again,
                a_worker_whose_claim_was_taken_over_changes_nothing,
                heartbeats_keep_the_lease_and_carry_the_cancellation,
                a_job_whose_workers_keep_dying_fails_after_its_attempts,
                release_gives_the_attempt_back_and_retry_spends_it,
                a_finished_job_keeps_its_state_and_artifacts,
                a_cancelled_queued_job_is_never_claimed,
                a_tenant_with_many_queued_jobs_does_not_hold_back_another,
                listings_are_newest_first_per_tenant_and_state,
                a_tenants_load_counts_its_active_jobs_and_their_steps,
                a_job_past_the_tenants_limits_is_refused_even_when_submitted_at_once,
                a_notification_is_due_once_its_job_ends_and_is_taken_by_one_process_at_a_time,
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

#[tokio::test]
async fn the_database_serves_one_process_and_the_next_one_recovers_its_jobs() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("effp.sqlite3");
    let store = SqliteStore::open(&path).unwrap();
    insert(&store, &job("job_a")).await;
    insert(&store, &job("job_b")).await;
    store.claim(LONG, 3).await.unwrap().unwrap();
    match SqliteStore::open(&path) {
        Err(e @ StoreError::InUse(_)) => {
            assert!(e.to_string().contains("another effp process"), "{e}")
        }
        other => panic!("a second open was not refused: {other:?}"),
    }
    // The process ends with a job running (its lease far from over)…
    drop(store);
    // …and the next one may claim it at once: nobody else can be running it.
    let next = SqliteStore::open(&path).unwrap();
    assert_eq!(next.recovered(), 1);
    let claimed = next.claim(LONG, 3).await.unwrap().unwrap();
    assert_eq!((claimed.id.as_str(), claimed.attempts), ("job_a", 2));
    let queued = next.claim(LONG, 3).await.unwrap().unwrap();
    assert_eq!(queued.id, "job_b");
}
