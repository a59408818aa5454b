//! Stored content with reference counts: what uploads, records and artifacts share.
//!
//! Identical content is stored once and shared by every record that names it (any
//! tenant). Making content visible and counting the reference to it happen under one
//! lock on that content, and so do dropping the last reference and deleting the
//! content, so that an upload racing a delete of the same bytes never ends up with a
//! record whose file is gone. The lock lives in the job store, so that it holds
//! between API replicas and workers, not only between the tasks of one process.

use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use crate::{ByteStream, JobStore, ObjectStore, StoreError, StoredObject};

/// How long a lock on content lasts unless its holder renews it: a process that dies
/// holding one blocks that content for at most this long.
const LEASE: Duration = Duration::from_secs(30);
/// How long to wait for a lock on content before giving up with a retryable error.
const WAIT: Duration = Duration::from_secs(300);

/// The object store and the reference counts kept in the job store, used together.
#[derive(Clone)]
pub struct Content {
    objects: Arc<dyn ObjectStore>,
    jobs: Arc<dyn JobStore>,
}

impl Content {
    /// Content over these stores.
    pub fn new(objects: Arc<dyn ObjectStore>, jobs: Arc<dyn JobStore>) -> Self {
        Self { objects, jobs }
    }

    /// Streams `body` in (at most `limit` bytes) and holds one reference to it, which
    /// the caller hands to a record or gives back with [`Content::release`].
    pub async fn store(
        &self,
        body: ByteStream<'_>,
        limit: u64,
    ) -> Result<StoredObject, StoreError> {
        let staged = self.objects.stage(body, limit).await?;
        let object = staged.object.clone();
        let lock = match self.lock(&object.sha256).await {
            Ok(lock) => lock,
            Err(e) => {
                self.objects.discard(staged).await;
                return Err(e);
            }
        };
        lock.run(async {
            if let Err(e) = self.jobs.hold_object(&object.sha256, object.size).await {
                self.objects.discard(staged).await;
                return Err(e);
            }
            if let Err(e) = self.objects.commit(staged).await {
                let _ = self.jobs.drop_object(&object.sha256).await;
                return Err(e);
            }
            Ok(())
        })
        .await?;
        Ok(object)
    }

    /// Gives back one reference; the content goes with the last one.
    pub async fn release(&self, sha256: &str) -> Result<(), StoreError> {
        self.lock(sha256)
            .await?
            .run(async {
                if self.jobs.drop_object(sha256).await? {
                    self.objects.delete(sha256).await?;
                }
                Ok(())
            })
            .await
    }

    /// At start-up: recounts references from the records and deletes content that
    /// nothing refers to (uploads a crash cut short, files of deleted records).
    /// Returns how many objects were deleted.
    pub async fn sweep(&self) -> Result<usize, StoreError> {
        let referenced = self.jobs.recount_objects().await?;
        let mut removed = 0;
        for key in self.objects.keys().await? {
            if referenced.contains(&key) {
                continue;
            }
            // Another process may be storing this content right now: counted again
            // under its lock, it stays.
            let deleted = self
                .lock(&key)
                .await?
                .run(async {
                    if self.jobs.object_references(&key).await? > 0 {
                        return Ok(false);
                    }
                    self.objects.delete(&key).await?;
                    Ok(true)
                })
                .await?;
            removed += usize::from(deleted);
        }
        Ok(removed)
    }

    /// Waits for the lock on one content.
    async fn lock(&self, sha256: &str) -> Result<ContentLock, StoreError> {
        let holder = uuid::Uuid::new_v4().simple().to_string();
        let deadline = tokio::time::Instant::now() + WAIT;
        let mut pause = Duration::from_millis(2);
        while !self.jobs.try_lock_object(sha256, &holder, LEASE).await? {
            if tokio::time::Instant::now() >= deadline {
                return Err(StoreError::Unavailable(format!(
                    "the stored content {sha256} stayed locked by another process for {}s; retry later",
                    WAIT.as_secs()
                )));
            }
            tokio::time::sleep(pause).await;
            pause = (pause * 2).min(Duration::from_millis(50));
        }
        Ok(ContentLock {
            jobs: Arc::clone(&self.jobs),
            sha256: sha256.to_string(),
            holder,
            released: false,
        })
    }
}

/// A lock on one content, held until [`ContentLock::run`] ends or the value is dropped.
struct ContentLock {
    jobs: Arc<dyn JobStore>,
    sha256: String,
    holder: String,
    released: bool,
}

impl ContentLock {
    /// Runs `work` while renewing the lock, then gives the lock back.
    async fn run<T>(
        mut self,
        work: impl Future<Output = Result<T, StoreError>>,
    ) -> Result<T, StoreError> {
        let renew = async {
            loop {
                tokio::time::sleep(LEASE / 3).await;
                match self
                    .jobs
                    .renew_object_lock(&self.sha256, &self.holder, LEASE)
                    .await
                {
                    Ok(true) => {}
                    Ok(false) => {
                        tracing::error!(
                            sha256 = self.sha256,
                            "a lock on stored content ran out while held"
                        );
                        std::future::pending::<()>().await;
                    }
                    Err(e) => {
                        tracing::warn!(sha256 = self.sha256, error = %e, "a lock on stored content was not renewed")
                    }
                }
            }
        };
        let out = tokio::select! {
            out = work => out,
            never = renew => match never {},
        };
        self.released = true;
        if let Err(e) = self.jobs.unlock_object(&self.sha256, &self.holder).await {
            tracing::warn!(sha256 = self.sha256, error = %e, "a lock on stored content was not given back; it runs out by itself");
        }
        out
    }
}

impl Drop for ContentLock {
    fn drop(&mut self) {
        // Dropped mid-work (the request was cancelled): give the lock back at once
        // rather than let others wait for the lease to run out.
        if self.released {
            return;
        }
        if let Ok(runtime) = tokio::runtime::Handle::try_current() {
            let (jobs, sha256, holder) = (
                Arc::clone(&self.jobs),
                std::mem::take(&mut self.sha256),
                std::mem::take(&mut self.holder),
            );
            runtime.spawn(async move {
                let _ = jobs.unlock_object(&sha256, &holder).await;
            });
        }
    }
}
