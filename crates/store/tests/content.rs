//! Shared content across processes: the lock on one content (both backends), and two
//! replicas on one real Redis and one real S3 server racing an upload against the
//! delete of the same bytes.

mod backends;

use std::sync::Arc;
use std::time::Duration;

use backends::Store;
use bytes::Bytes;
use effp_store::redis::RedisStore;
use effp_store::s3::{MIN_PART_SIZE, S3Config, S3Objects};
use effp_store::{ByteStream, Content, JobStore, ObjectStore};
use effp_testkit::servers::{RedisServer, S3Server};
use futures_util::StreamExt;
use proptest::prelude::*;

const LONG: Duration = Duration::from_secs(600);

async fn a_lock_on_content_has_one_holder_until_given_back_or_run_out(store: Arc<dyn Store>) {
    let sha = "a".repeat(64);
    let other = "b".repeat(64);
    assert!(store.try_lock_object(&sha, "one", LONG).await.unwrap());
    assert!(!store.try_lock_object(&sha, "two", LONG).await.unwrap());
    assert!(
        !store.try_lock_object(&sha, "one", LONG).await.unwrap(),
        "a lock is not taken twice, even by its holder"
    );
    assert!(store.try_lock_object(&other, "two", LONG).await.unwrap());
    // Only the holder renews or gives it back.
    assert!(!store.renew_object_lock(&sha, "two", LONG).await.unwrap());
    store.unlock_object(&sha, "two").await.unwrap();
    assert!(!store.try_lock_object(&sha, "three", LONG).await.unwrap());
    assert!(store.renew_object_lock(&sha, "one", LONG).await.unwrap());
    store.unlock_object(&sha, "one").await.unwrap();
    assert!(store.try_lock_object(&sha, "three", LONG).await.unwrap());
    assert!(!store.renew_object_lock(&sha, "one", LONG).await.unwrap());

    // A holder that stops renewing loses the lock when its lease runs out; renewing
    // keeps it past the first lease.
    let short = Duration::from_millis(400);
    let dying = "c".repeat(64);
    assert!(store.try_lock_object(&dying, "gone", short).await.unwrap());
    let kept = "d".repeat(64);
    assert!(store.try_lock_object(&kept, "alive", short).await.unwrap());
    for _ in 0..3 {
        tokio::time::sleep(short / 2).await;
        assert!(
            store
                .renew_object_lock(&kept, "alive", short)
                .await
                .unwrap()
        );
    }
    assert!(!store.try_lock_object(&kept, "next", short).await.unwrap());
    assert!(
        store.try_lock_object(&dying, "next", short).await.unwrap(),
        "a lease that ran out frees the lock"
    );
    assert!(
        !store
            .renew_object_lock(&dying, "gone", short)
            .await
            .unwrap()
    );
}

macro_rules! on_backend {
    ($backend:ident, $open:path) => {
        mod $backend {
            use super::*;
            #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn a_lock_on_content_has_one_holder_until_given_back_or_run_out() {
                let backend = $open().await;
                super::a_lock_on_content_has_one_holder_until_given_back_or_run_out(
                    backend.store(),
                )
                .await;
            }
        }
    };
}

on_backend!(sqlite, backends::sqlite);
on_backend!(redis, backends::redis);

/// One step of a lock's life, by one of three holders.
#[derive(Clone, Debug)]
enum Step {
    Lock(usize),
    Renew(usize),
    Unlock(usize),
}

fn step() -> impl Strategy<Value = Step> {
    prop_oneof![
        (0..3usize).prop_map(Step::Lock),
        (0..3usize).prop_map(Step::Renew),
        (0..3usize).prop_map(Step::Unlock),
    ]
}

/// Runs `steps` on the store and on a model (at most one holder, only it renews or
/// unlocks) and says where they first disagree.
async fn follows_the_model(store: &dyn Store, sha: &str, steps: &[Step]) -> Result<(), String> {
    let mut holder: Option<usize> = None;
    for (i, s) in steps.iter().enumerate() {
        match *s {
            Step::Lock(h) => {
                let got = store
                    .try_lock_object(sha, &h.to_string(), LONG)
                    .await
                    .unwrap();
                if got != holder.is_none() {
                    return Err(format!(
                        "step {i} {s:?}: lock gave {got}, held by {holder:?}"
                    ));
                }
                if got {
                    holder = Some(h);
                }
            }
            Step::Renew(h) => {
                let got = store
                    .renew_object_lock(sha, &h.to_string(), LONG)
                    .await
                    .unwrap();
                if got != (holder == Some(h)) {
                    return Err(format!(
                        "step {i} {s:?}: renew gave {got}, held by {holder:?}"
                    ));
                }
            }
            Step::Unlock(h) => {
                store.unlock_object(sha, &h.to_string()).await.unwrap();
                if holder == Some(h) {
                    holder = None;
                }
            }
        }
    }
    Ok(())
}

#[test]
fn the_lock_on_content_follows_its_model_on_both_backends() {
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    let (sqlite, redis) =
        runtime.block_on(async { (backends::sqlite().await, backends::redis().await) });
    let case = std::sync::atomic::AtomicU64::new(0);
    proptest!(ProptestConfig::with_cases(64), |(steps in prop::collection::vec(step(), 1..24))| {
        // Each case on content of its own, so that no lock is left from the last one.
        let sha = format!("{:064x}", case.fetch_add(1, std::sync::atomic::Ordering::Relaxed));
        for backend in [&sqlite, &redis] {
            let outcome = runtime.block_on(follows_the_model(backend.store().as_ref(), &sha, &steps));
            prop_assert!(outcome.is_ok(), "{}", outcome.unwrap_err());
        }
    });
}

/// One API replica's view of the distributed stores: its own connections to Redis
/// and S3, as a separate process has.
async fn replica(redis: &RedisServer, s3: &S3Server) -> (Content, Arc<dyn ObjectStore>) {
    let jobs: Arc<dyn JobStore> =
        Arc::new(RedisStore::connect(&redis.url(), "effp").await.unwrap());
    let objects: Arc<dyn ObjectStore> = Arc::new(
        S3Objects::open(&S3Config {
            bucket: S3Server::BUCKET.into(),
            prefix: "effp/".into(),
            endpoint: Some(s3.endpoint()),
            region: Some("us-east-1".into()),
            path_style: true,
            access_key_id: Some(S3Server::ACCESS_KEY.into()),
            secret_access_key: Some(S3Server::SECRET_KEY.into()),
            part_size: MIN_PART_SIZE,
        })
        .await
        .unwrap(),
    );
    (Content::new(Arc::clone(&objects), jobs), objects)
}

fn body(bytes: &[u8]) -> ByteStream<'static> {
    let chunk = Bytes::copy_from_slice(bytes);
    Box::pin(futures_util::stream::iter([Ok(chunk)]))
}

async fn read(objects: &dyn ObjectStore, key: &str) -> Option<Vec<u8>> {
    let mut stream = objects.get(key).await.unwrap()?;
    let mut out = Vec::new();
    while let Some(chunk) = stream.next().await {
        out.extend_from_slice(&chunk.unwrap());
    }
    Some(out)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn an_upload_on_one_replica_racing_the_last_delete_on_another_keeps_its_content() {
    let redis = RedisServer::start();
    let s3 = S3Server::start();
    let (deleting, _) = replica(&redis, &s3).await;
    let (uploading, objects) = replica(&redis, &s3).await;
    let bytes: Vec<u8> = (0..64 * 1024u32).map(|i| (i * 7 + 3) as u8).collect();
    for round in 0..120 {
        let first = deleting.store(body(&bytes), u64::MAX).await.unwrap();
        // The release starts at a different point of the upload each round, so that
        // some rounds land between the upload's counting and its commit.
        let delay = Duration::from_micros(250 * (round % 40));
        let (released, second) = tokio::join!(
            async {
                tokio::time::sleep(delay).await;
                deleting.release(&first.sha256).await
            },
            uploading.store(body(&bytes), u64::MAX)
        );
        released.unwrap();
        let second = second.unwrap();
        assert_eq!(
            read(objects.as_ref(), &second.sha256).await.as_deref(),
            Some(bytes.as_slice()),
            "round {round}: the upload holds a reference, so its content must be there"
        );
        uploading.release(&second.sha256).await.unwrap();
        assert!(
            read(objects.as_ref(), &second.sha256).await.is_none(),
            "round {round}: the last release deletes the content"
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn content_a_crashed_holder_left_locked_is_free_again_when_its_lease_runs_out() {
    let redis = RedisServer::start();
    let s3 = S3Server::start();
    let (content, objects) = replica(&redis, &s3).await;
    let bytes = b"locked content".to_vec();
    let stored = content.store(body(&bytes), u64::MAX).await.unwrap();
    // Another process took the lock and died: the release waits for its lease.
    let store = RedisStore::connect(&redis.url(), "effp").await.unwrap();
    let lease = Duration::from_secs(2);
    assert!(
        store
            .try_lock_object(&stored.sha256, "dead", lease)
            .await
            .unwrap()
    );
    let started = std::time::Instant::now();
    content.release(&stored.sha256).await.unwrap();
    assert!(
        started.elapsed() >= lease - Duration::from_millis(100),
        "the release went ahead while another holder had the lock"
    );
    assert!(read(objects.as_ref(), &stored.sha256).await.is_none());
}
