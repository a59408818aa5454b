//! The object stores, local directory and S3 (a real `s3s-fs` server): content
//! addressing, the upload limit, multipart uploads, SHA-256 checks on download,
//! named objects and the checkpoints kept as named objects.

use std::path::Path;
use std::sync::Arc;

use bytes::Bytes;
use effp_store::local::LocalObjects;
use effp_store::s3::{MIN_PART_SIZE, S3Config, S3Objects};
use effp_store::{ByteStream, Checkpoints, ObjectStore, StoreError, check_name};
use effp_testkit::servers::S3Server;
use futures_util::StreamExt;
use proptest::prelude::*;
use sha2::{Digest, Sha256};

fn body(bytes: Vec<u8>, chunk: usize) -> ByteStream<'static> {
    let chunks: Vec<Result<Bytes, std::io::Error>> = bytes
        .chunks(chunk.max(1))
        .map(|c| Ok(Bytes::copy_from_slice(c)))
        .collect();
    Box::pin(futures_util::stream::iter(chunks))
}

/// The object's bytes, or the error its stream ended with.
async fn read(objects: &dyn ObjectStore, key: &str) -> Option<Result<Vec<u8>, std::io::Error>> {
    let mut stream = objects.get(key).await.unwrap()?;
    let mut out = Vec::new();
    while let Some(chunk) = stream.next().await {
        match chunk {
            Ok(c) => out.extend_from_slice(&c),
            Err(e) => return Some(Err(e)),
        }
    }
    Some(Ok(out))
}

fn runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap()
}

/// A store in S3 on `server`, under its own `prefix`.
async fn s3(server: &S3Server, prefix: &str) -> S3Objects {
    S3Objects::open(&config(server, prefix)).await.unwrap()
}

fn config(server: &S3Server, prefix: &str) -> S3Config {
    S3Config {
        bucket: S3Server::BUCKET.into(),
        prefix: prefix.into(),
        endpoint: Some(server.endpoint()),
        region: Some("us-east-1".into()),
        path_style: true,
        access_key_id: Some(S3Server::ACCESS_KEY.into()),
        secret_access_key: Some(S3Server::SECRET_KEY.into()),
        part_size: MIN_PART_SIZE,
    }
}

/// Every file under `dir`, relative to it.
fn files_under(dir: &Path) -> Vec<String> {
    let mut out = Vec::new();
    let mut pending = vec![dir.to_path_buf()];
    while let Some(d) = pending.pop() {
        for entry in std::fs::read_dir(&d).into_iter().flatten().flatten() {
            let path = entry.path();
            if path.is_dir() {
                pending.push(path);
            } else {
                out.push(path.strip_prefix(dir).unwrap().display().to_string());
            }
        }
    }
    out.sort();
    out
}

/// Stores `bytes` arriving in `chunk`-sized pieces within `limit` and checks that they
/// come back under their SHA-256; then that one byte less of limit keeps nothing.
async fn round_trip(
    objects: &dyn ObjectStore,
    bytes: &[u8],
    chunk: usize,
    slack: u64,
) -> Result<(), TestCaseError> {
    let size = bytes.len() as u64;
    let staged = objects
        .stage(body(bytes.to_vec(), chunk), size + slack)
        .await
        .unwrap();
    let stored = objects.commit(staged).await.unwrap();
    prop_assert_eq!(&stored.sha256, &format!("{:x}", Sha256::digest(bytes)));
    prop_assert_eq!(stored.size, size);
    prop_assert_eq!(
        read(objects, &stored.sha256).await.map(Result::unwrap),
        Some(bytes.to_vec())
    );
    prop_assert_eq!(objects.keys().await.unwrap(), vec![stored.sha256.clone()]);
    if size > 0 {
        let refused = objects.stage(body(bytes.to_vec(), chunk), size - 1).await;
        let too_large = matches!(refused, Err(StoreError::TooLarge { .. }));
        prop_assert!(too_large, "over the limit: {:?}", refused.map(|s| s.object));
    }
    Ok(())
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(48))]

    /// Whatever the content and however it arrives, it is stored under its SHA-256
    /// and read back unchanged; over the limit, nothing is kept.
    #[test]
    fn content_is_stored_under_its_sha256(
        bytes in proptest::collection::vec(any::<u8>(), 0..4096),
        chunk in 1usize..700,
        slack in 0u64..3,
    ) {
        let dir = tempfile::tempdir().unwrap();
        let objects = LocalObjects::open(dir.path()).unwrap();
        runtime().block_on(round_trip(&objects, &bytes, chunk, slack))?;
        let partial = std::fs::read_dir(dir.path().join("partial").join(std::process::id().to_string()))
            .unwrap()
            .count();
        prop_assert_eq!(partial, 0, "a refused upload left its part behind");
    }

    /// A name is accepted only when every part is plain, so that no name reaches
    /// outside the store's space.
    #[test]
    fn names_never_leave_the_store(parts in proptest::collection::vec("[a-z.]{0,3}|\\.\\.|[A-Za-z0-9_-]{1,8}", 1..5)) {
        let name = parts.join("/");
        let plain = parts.iter().all(|p| !p.is_empty() && p != "." && p != "..");
        prop_assert_eq!(check_name(&name).is_ok(), plain, "{}", name);
    }
}

#[test]
fn s3_content_is_stored_under_its_sha256_in_one_put_or_in_parts() {
    let server = S3Server::start();
    let case = std::sync::atomic::AtomicUsize::new(0);
    // Sizes around S3's part size: one PUT below it, multipart uploads at and above
    // it, with the last part short or empty.
    let sizes = prop_oneof![
        0usize..4096,
        Just(MIN_PART_SIZE - 1),
        Just(MIN_PART_SIZE),
        Just(2 * MIN_PART_SIZE + 12_345),
    ];
    let mut runner = proptest::test_runner::TestRunner::new(ProptestConfig::with_cases(10));
    runner
        .run(
            &(sizes, 1usize..1_500_000, 0u64..3, any::<u8>()),
            |(size, chunk, slack, seed)| {
                let bytes: Vec<u8> = (0..size)
                    .map(|i| (i as u8).wrapping_mul(31) ^ seed)
                    .collect();
                let n = case.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                runtime().block_on(async {
                    let objects = s3(&server, &format!("case{n}")).await;
                    round_trip(&objects, &bytes, chunk, slack).await
                })?;
                // Neither the committed upload nor the refused one left anything in staging.
                let left: Vec<String> = files_under(&server.bucket_dir().join(format!("case{n}")))
                    .into_iter()
                    .filter(|f| f.starts_with("staging"))
                    .collect();
                prop_assert!(left.is_empty(), "left in staging: {left:?}");
                Ok(())
            },
        )
        .unwrap();
}

#[tokio::test]
async fn s3_identical_content_is_kept_once_and_deleted_by_key() {
    let server = S3Server::start();
    let objects = s3(&server, "dedup").await;
    let mut keys = Vec::new();
    for _ in 0..2 {
        let staged = objects
            .stage(body(b"same bytes".to_vec(), 3), 100)
            .await
            .unwrap();
        keys.push(objects.commit(staged).await.unwrap().sha256);
    }
    assert_eq!(keys[0], keys[1]);
    assert_eq!(objects.keys().await.unwrap(), [keys[0].clone()]);
    let dir = tempfile::tempdir().unwrap();
    let local = objects.local_file(&keys[0], dir.path()).await.unwrap();
    assert_eq!(std::fs::read(local).unwrap(), b"same bytes");
    objects.delete(&keys[0]).await.unwrap();
    objects.delete(&keys[0]).await.unwrap();
    assert!(objects.get(&keys[0]).await.unwrap().is_none());
    assert!(objects.keys().await.unwrap().is_empty());
    // A key that is not a SHA-256 names nothing.
    assert!(objects.get("../named/x").await.unwrap().is_none());
}

#[tokio::test]
async fn s3_a_damaged_object_fails_its_sha256_check_on_download() {
    let server = S3Server::start();
    let objects = s3(&server, "damage").await;
    let staged = objects
        .stage(body(vec![7u8; 10_000], 999), 1 << 20)
        .await
        .unwrap();
    let key = objects.commit(staged).await.unwrap().sha256;
    let file = server.bucket_dir().join("damage/objects").join(&key);
    let mut bytes = std::fs::read(&file).unwrap();
    bytes[5_000] ^= 1;
    std::fs::write(&file, &bytes).unwrap();

    let err = read(&objects, &key).await.unwrap().unwrap_err();
    assert_eq!(err.kind(), std::io::ErrorKind::InvalidData);
    assert!(
        err.to_string().contains("failed its SHA-256 check"),
        "{err}"
    );
    let dir = tempfile::tempdir().unwrap();
    let refused = objects.local_file(&key, dir.path()).await.unwrap_err();
    assert!(refused.to_string().contains("SHA-256"), "{refused}");
    assert!(
        files_under(dir.path()).is_empty(),
        "a damaged download was kept"
    );
}

#[tokio::test]
async fn s3_a_missing_bucket_wrong_keys_or_a_stopped_server_are_clear_errors() {
    let mut server = S3Server::start();
    let mut missing = config(&server, "");
    missing.bucket = "no-such-bucket".into();
    let e = S3Objects::open(&missing).await.unwrap_err().to_string();
    assert!(
        e.contains("cannot reach the S3 bucket 'no-such-bucket'"),
        "{e}"
    );
    let mut wrong = config(&server, "");
    wrong.secret_access_key = Some("not-the-secret".into());
    let e = S3Objects::open(&wrong).await.unwrap_err().to_string();
    assert!(e.contains("cannot reach the S3 bucket"), "{e}");
    let mut small = config(&server, "");
    small.part_size = 1024;
    let e = S3Objects::open(&small).await.unwrap_err().to_string();
    assert!(e.contains("below S3's minimum"), "{e}");

    let objects = s3(&server, "stop").await;
    server.stop();
    let e = objects.stage(body(vec![1; 10], 10), 100).await.unwrap_err();
    assert!(matches!(e, StoreError::Unavailable(_)), "{e:?}");
    server.restart();
    let staged = objects.stage(body(vec![1; 10], 10), 100).await.unwrap();
    objects.commit(staged).await.unwrap();
}

async fn named_objects_scenario(objects: &dyn ObjectStore, dir: &Path) {
    let file = dir.join("file");
    let out = dir.join("out");
    assert!(!objects.get_named("checkpoints/a", &out).await.unwrap());
    std::fs::write(&file, b"first").unwrap();
    objects.put_named("checkpoints/a", &file).await.unwrap();
    std::fs::write(&file, b"second").unwrap();
    objects.put_named("checkpoints/a", &file).await.unwrap();
    objects.put_named("other/b", &file).await.unwrap();
    assert!(objects.get_named("checkpoints/a", &out).await.unwrap());
    assert_eq!(std::fs::read(&out).unwrap(), b"second");
    assert_eq!(
        objects.named("checkpoints/").await.unwrap(),
        ["checkpoints/a"]
    );
    objects.delete_named("checkpoints/a").await.unwrap();
    objects.delete_named("checkpoints/a").await.unwrap();
    assert!(!objects.get_named("checkpoints/a", &out).await.unwrap());
    assert_eq!(objects.named("").await.unwrap(), ["other/b"]);
    // Named objects are not content: the start-up sweep of content never sees them.
    assert!(objects.keys().await.unwrap().is_empty());
    for bad in ["../escape", "/absolute", "a//b", "", "a/./b"] {
        assert!(
            matches!(
                objects.put_named(bad, &file).await,
                Err(StoreError::InvalidName(_))
            ),
            "{bad:?} was accepted"
        );
    }
    assert!(!dir.join("escape").exists());
}

async fn checkpoints_scenario(objects: Arc<dyn ObjectStore>, dir: &Path) {
    let checkpoints = Checkpoints::new(objects);
    let file = dir.join("run.ckpt");
    // Larger than a part: checkpoints go up in parts too.
    let state: Vec<u8> = (0..MIN_PART_SIZE + 4321).map(|i| (i % 251) as u8).collect();
    std::fs::write(&file, &state).unwrap();
    checkpoints.save("job_a", &file).await.unwrap();
    checkpoints.save("job_b", &file).await.unwrap();
    let mut jobs = checkpoints.jobs().await.unwrap();
    jobs.sort();
    assert_eq!(jobs, ["job_a", "job_b"]);
    let fetched = dir.join("fetched.ckpt");
    assert!(checkpoints.fetch("job_a", &fetched).await.unwrap());
    assert_eq!(std::fs::read(&fetched).unwrap(), state);
    checkpoints.remove("job_a").await.unwrap();
    assert!(!checkpoints.fetch("job_a", &fetched).await.unwrap());
    assert_eq!(checkpoints.jobs().await.unwrap(), ["job_b"]);
}

#[tokio::test]
async fn named_objects_are_replaced_listed_and_removed() {
    let dir = tempfile::tempdir().unwrap();
    let local = LocalObjects::open(&dir.path().join("store")).unwrap();
    named_objects_scenario(&local, dir.path()).await;

    let server = S3Server::start();
    let dir = tempfile::tempdir().unwrap();
    named_objects_scenario(&s3(&server, "named").await, dir.path()).await;
}

#[tokio::test]
async fn checkpoints_are_kept_per_job_until_removed() {
    let dir = tempfile::tempdir().unwrap();
    let local = Arc::new(LocalObjects::open(&dir.path().join("store")).unwrap());
    checkpoints_scenario(local, dir.path()).await;

    let server = S3Server::start();
    let dir = tempfile::tempdir().unwrap();
    checkpoints_scenario(Arc::new(s3(&server, "ckpt").await), dir.path()).await;
}
