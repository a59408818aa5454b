//! Models, datasets and content references, on every backend.

mod backends;

use std::sync::Arc;

use backends::Store;
use effp_store::{DatasetRecord, ModelRecord, StoreError};

const NO_LIMIT: u64 = u64::MAX;

fn model(id: &str, tenant: &str, sha: &str, size: u64, at: &str) -> ModelRecord {
    ModelRecord {
        id: id.into(),
        tenant: tenant.into(),
        name: format!("{id}.onnx"),
        sha256: sha.repeat(64 / sha.len()),
        size,
        created_at: at.into(),
        inspect: serde_json::json!({"params": 3, "ops": {"Conv": 2}}),
    }
}

async fn uploads_are_kept_once_per_tenant_and_content(store: Arc<dyn Store>) {
    let a = model("mdl_a", "t1", "a", 100, "2026-11-27T00:00:01.000Z");
    assert!(store.insert_model(&a, NO_LIMIT).await.unwrap().is_none());
    // The same content again: the first record comes back and nothing is written.
    let again = model("mdl_b", "t1", "a", 100, "2026-11-27T00:00:02.000Z");
    assert_eq!(
        store.insert_model(&again, NO_LIMIT).await.unwrap(),
        Some(a.clone())
    );
    // Another tenant's upload of it is its own.
    let other = model("mdl_c", "t2", "a", 100, "2026-11-27T00:00:03.000Z");
    assert!(
        store
            .insert_model(&other, NO_LIMIT)
            .await
            .unwrap()
            .is_none()
    );
    let b = model("mdl_d", "t1", "b", 50, "2026-11-27T00:00:04.000Z");
    assert!(store.insert_model(&b, NO_LIMIT).await.unwrap().is_none());

    assert_eq!(store.model("t1", "mdl_a").await.unwrap(), Some(a.clone()));
    assert!(store.model("t2", "mdl_a").await.unwrap().is_none());
    assert_eq!(
        store.model_by_hash("t1", &b.sha256).await.unwrap(),
        Some(b.clone())
    );
    let ids: Vec<_> = store
        .models("t1", 10, 0)
        .await
        .unwrap()
        .into_iter()
        .map(|m| m.id)
        .collect();
    assert_eq!(ids, ["mdl_d", "mdl_a"]);
    assert_eq!(
        store.models("t1", 1, 1).await.unwrap(),
        std::slice::from_ref(&a)
    );
    assert_eq!(store.stored_bytes("t1").await.unwrap(), 150);

    assert!(store.delete_model("t2", "mdl_a").await.unwrap().is_none());
    assert_eq!(store.delete_model("t1", "mdl_a").await.unwrap(), Some(a));
    assert!(store.model("t1", "mdl_a").await.unwrap().is_none());
    assert_eq!(store.stored_bytes("t1").await.unwrap(), 50);
    // Deleted content may be uploaded again as a new record.
    let back = model("mdl_e", "t1", "a", 100, "2026-11-27T00:00:05.000Z");
    assert!(store.insert_model(&back, NO_LIMIT).await.unwrap().is_none());

    let ds = DatasetRecord {
        id: "ds_a".into(),
        tenant: "t1".into(),
        name: "set.zip".into(),
        sha256: "c".repeat(64),
        size: 7,
        created_at: "2026-11-27T00:00:06.000Z".into(),
        summary: serde_json::json!({"layout": "yolo"}),
    };
    assert!(store.insert_dataset(&ds, NO_LIMIT).await.unwrap().is_none());
    assert_eq!(store.dataset("t1", "ds_a").await.unwrap(), Some(ds.clone()));
    assert_eq!(
        store.datasets("t1", 10, 0).await.unwrap(),
        std::slice::from_ref(&ds)
    );
    assert!(store.dataset("t1", "mdl_d").await.unwrap().is_none());
    assert_eq!(store.delete_dataset("t1", "ds_a").await.unwrap(), Some(ds));
}

async fn content_references_count_up_and_down(store: Arc<dyn Store>) {
    let sha = "d".repeat(64);
    store.hold_object(&sha, 10).await.unwrap();
    store.hold_object(&sha, 10).await.unwrap();
    assert!(!store.drop_object(&sha).await.unwrap());
    assert!(store.drop_object(&sha).await.unwrap(), "the last reference");
    // A record's content is counted by the recount.
    let m = model("mdl_a", "t1", "e", 5, "2026-11-27T00:00:01.000Z");
    store.insert_model(&m, NO_LIMIT).await.unwrap();
    let referenced = store.recount_objects().await.unwrap();
    assert!(referenced.contains(&m.sha256));
    assert!(!referenced.contains(&sha));
}

async fn a_record_that_would_pass_the_storage_limit_is_refused(store: Arc<dyn Store>) {
    let a = model("mdl_a", "t1", "a", 600, "2026-11-27T00:00:01.000Z");
    assert!(store.insert_model(&a, 1000).await.unwrap().is_none());
    let b = model("mdl_b", "t1", "b", 401, "2026-11-27T00:00:02.000Z");
    match store.insert_model(&b, 1000).await {
        Err(StoreError::QuotaExceeded { used, size, limit }) => {
            assert_eq!((used, size, limit), (600, 401, 1000))
        }
        other => panic!("601 + 400 bytes under a 1000-byte limit: {other:?}"),
    }
    assert!(store.model("t1", "mdl_b").await.unwrap().is_none());
    assert_eq!(store.stored_bytes("t1").await.unwrap(), 600);
    // Content the tenant already keeps is answered with its record, full or not.
    let again = model("mdl_c", "t1", "a", 600, "2026-11-27T00:00:03.000Z");
    assert_eq!(store.insert_model(&again, 1000).await.unwrap(), Some(a));
    // Exactly filling it is allowed; datasets count too; other tenants have their own.
    let ds = DatasetRecord {
        id: "ds_a".into(),
        tenant: "t1".into(),
        name: "set.zip".into(),
        sha256: "c".repeat(64),
        size: 400,
        created_at: "2026-11-27T00:00:04.000Z".into(),
        summary: serde_json::json!({"layout": "yolo"}),
    };
    assert!(store.insert_dataset(&ds, 1000).await.unwrap().is_none());
    let one_more = model("mdl_d", "t1", "d", 1, "2026-11-27T00:00:05.000Z");
    assert!(matches!(
        store.insert_model(&one_more, 1000).await,
        Err(StoreError::QuotaExceeded { used: 1000, .. })
    ));
    let other = model("mdl_e", "t2", "b", 1000, "2026-11-27T00:00:06.000Z");
    assert!(store.insert_model(&other, 1000).await.unwrap().is_none());

    // Many different records at once, each fitting alone: together they fill the
    // limit and no more.
    let inserts = (0..16u64).map(|i| {
        let store = Arc::clone(&store);
        tokio::spawn(async move {
            let m = model(
                &format!("mdl_r{i}"),
                "t3",
                &format!("{i:02x}"),
                300,
                "2026-11-27T00:00:07.000Z",
            );
            store.insert_model(&m, 1000).await
        })
    });
    let mut kept = 0;
    for insert in inserts {
        match insert.await.unwrap() {
            Ok(None) => kept += 1,
            Err(StoreError::QuotaExceeded { .. }) => {}
            other => panic!("{other:?}"),
        }
    }
    assert_eq!(kept, 3);
    assert_eq!(store.stored_bytes("t3").await.unwrap(), 900);
}

macro_rules! on_backend {
    ($backend:ident, $open:path) => {
        mod $backend {
            use super::*;
            #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn uploads_are_kept_once_per_tenant_and_content() {
                let backend = $open().await;
                super::uploads_are_kept_once_per_tenant_and_content(backend.store()).await;
            }
            #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn a_record_that_would_pass_the_storage_limit_is_refused() {
                let backend = $open().await;
                super::a_record_that_would_pass_the_storage_limit_is_refused(backend.store()).await;
            }
            #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn content_references_count_up_and_down() {
                let backend = $open().await;
                super::content_references_count_up_and_down(backend.store()).await;
            }
        }
    };
}

on_backend!(sqlite, backends::sqlite);
on_backend!(redis, backends::redis);

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn jobs_survive_a_redis_restart_and_the_store_reconnects() {
    use effp_protocol::JobState;
    use effp_store::{ActiveLimits, JobRecord, JobStore, Queue};
    let mut server = effp_testkit::servers::RedisServer::start();
    let store = effp_store::redis::RedisStore::connect(&server.url(), "effp")
        .await
        .unwrap();
    let job = JobRecord::queued("job_a".into(), "t".into(), serde_json::json!({}), None);
    store.insert_job(&job, ActiveLimits::NONE).await.unwrap();
    let lease = std::time::Duration::from_secs(60);
    store.claim(lease, 3).await.unwrap().unwrap();
    store
        .insert_job(
            &JobRecord::queued("job_b".into(), "t".into(), serde_json::json!({}), None),
            ActiveLimits::NONE,
        )
        .await
        .unwrap();
    server.restart();
    // The first command after the restart may see the broken connection; the next
    // ones go through the reconnected one.
    let mut answer = store.heartbeat("job_a", 1, lease).await;
    for _ in 0..20 {
        if answer.is_ok() {
            break;
        }
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
        answer = store.heartbeat("job_a", 1, lease).await;
    }
    assert!(!answer.unwrap(), "the running job's claim survived");
    let running = store.job("t", "job_a").await.unwrap().unwrap();
    assert_eq!((running.state, running.attempts), (JobState::Running, 1));
    let queued = store.claim(lease, 3).await.unwrap().unwrap();
    assert_eq!(queued.id, "job_b", "the queue survived with its order");
    assert_eq!(store.events("job_a", 0).await.unwrap().len(), 2);
}
