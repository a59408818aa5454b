//! Stored content with reference counts: what uploads, records and artifacts share.
//!
//! Identical content is stored once and shared by every record that names it (any
//! tenant). Making content visible and counting the reference to it happen in one
//! critical section, and so do dropping the last reference and deleting the
//! content, so that an upload racing a delete of the same bytes never ends up with
//! a record whose file is gone.

use std::sync::Arc;

use crate::{ByteStream, JobStore, ObjectStore, StoreError, StoredObject};

/// The object store and the reference counts kept in the job store, used together.
#[derive(Clone)]
pub struct Content {
    objects: Arc<dyn ObjectStore>,
    jobs: Arc<dyn JobStore>,
    /// Serialises "commit + hold" against "drop + delete" (both are short).
    gate: Arc<tokio::sync::Mutex<()>>,
}

impl Content {
    /// Content over these stores.
    pub fn new(objects: Arc<dyn ObjectStore>, jobs: Arc<dyn JobStore>) -> Self {
        Self {
            objects,
            jobs,
            gate: Arc::new(tokio::sync::Mutex::new(())),
        }
    }

    /// Streams `body` in (at most `limit` bytes) and holds one reference to it, which
    /// the caller hands to a record or gives back with [`Content::release`].
    pub async fn store(
        &self,
        body: ByteStream<'_>,
        limit: u64,
    ) -> Result<StoredObject, StoreError> {
        let staged = self.objects.stage(body, limit).await?;
        let _gate = self.gate.lock().await;
        let object = staged.object.clone();
        if let Err(e) = self.jobs.hold_object(&object.sha256, object.size).await {
            self.objects.discard(staged).await;
            return Err(e);
        }
        if let Err(e) = self.objects.commit(staged).await {
            let _ = self.jobs.drop_object(&object.sha256).await;
            return Err(e);
        }
        Ok(object)
    }

    /// Gives back one reference; the content goes with the last one.
    pub async fn release(&self, sha256: &str) -> Result<(), StoreError> {
        let _gate = self.gate.lock().await;
        if self.jobs.drop_object(sha256).await? {
            self.objects.delete(sha256).await?;
        }
        Ok(())
    }

    /// At start-up: recounts references from the records and deletes content that
    /// nothing refers to (uploads a crash cut short, files of deleted records).
    /// Returns how many objects were deleted.
    pub async fn sweep(&self) -> Result<usize, StoreError> {
        let _gate = self.gate.lock().await;
        let referenced = self.jobs.recount_objects().await?;
        let mut removed = 0;
        for key in self.objects.keys().await? {
            if !referenced.contains(&key) {
                self.objects.delete(&key).await?;
                removed += 1;
            }
        }
        Ok(removed)
    }
}
