//! The local object store: content addressing, the upload limit, named objects and
//! the checkpoints kept as named objects.

use std::sync::Arc;

use bytes::Bytes;
use effp_store::local::LocalObjects;
use effp_store::{ByteStream, Checkpoints, ObjectStore, StoreError, check_name};
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

async fn read(objects: &LocalObjects, key: &str) -> Option<Vec<u8>> {
    let mut stream = objects.get(key).await.unwrap()?;
    let mut out = Vec::new();
    while let Some(chunk) = stream.next().await {
        out.extend_from_slice(&chunk.unwrap());
    }
    Some(out)
}

fn runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap()
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
        let size = bytes.len() as u64;
        runtime().block_on(async {
            let staged = objects.stage(body(bytes.clone(), chunk), size + slack).await.unwrap();
            let stored = objects.commit(staged).await.unwrap();
            prop_assert_eq!(&stored.sha256, &format!("{:x}", Sha256::digest(&bytes)));
            prop_assert_eq!(stored.size, size);
            prop_assert_eq!(read(&objects, &stored.sha256).await, Some(bytes.clone()));
            prop_assert_eq!(objects.keys().await.unwrap(), vec![stored.sha256.clone()]);
            if size > 0 {
                let refused = objects.stage(body(bytes.clone(), chunk), size - 1).await;
                let too_large = matches!(refused, Err(StoreError::TooLarge { .. }));
                prop_assert!(too_large, "over the limit: {:?}", refused.map(|s| s.object));
                let partial = std::fs::read_dir(dir.path().join("partial").join(std::process::id().to_string()))
                    .unwrap()
                    .count();
                prop_assert_eq!(partial, 0, "a refused upload left its part behind");
            }
            Ok(())
        })?;
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

#[tokio::test]
async fn named_objects_are_replaced_listed_and_removed() {
    let dir = tempfile::tempdir().unwrap();
    let objects = LocalObjects::open(&dir.path().join("store")).unwrap();
    let file = dir.path().join("file");
    let out = dir.path().join("out");
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
    assert!(!dir.path().join("escape").exists());
}

#[tokio::test]
async fn checkpoints_are_kept_per_job_until_removed() {
    let dir = tempfile::tempdir().unwrap();
    let objects: Arc<dyn ObjectStore> =
        Arc::new(LocalObjects::open(&dir.path().join("store")).unwrap());
    let checkpoints = Checkpoints::new(objects);
    let file = dir.path().join("run.ckpt");
    std::fs::write(&file, b"state at step 25").unwrap();
    checkpoints.save("job_a", &file).await.unwrap();
    checkpoints.save("job_b", &file).await.unwrap();
    let mut jobs = checkpoints.jobs().await.unwrap();
    jobs.sort();
    assert_eq!(jobs, ["job_a", "job_b"]);
    let fetched = dir.path().join("fetched.ckpt");
    assert!(checkpoints.fetch("job_a", &fetched).await.unwrap());
    assert_eq!(std::fs::read(&fetched).unwrap(), b"state at step 25");
    checkpoints.remove("job_a").await.unwrap();
    assert!(!checkpoints.fetch("job_a", &fetched).await.unwrap());
    assert_eq!(checkpoints.jobs().await.unwrap(), ["job_b"]);
}
