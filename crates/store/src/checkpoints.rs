//! Where a job's training state is kept between attempts: a named object per job in
//! the object store, so that whichever worker claims the job next can resume it.

use std::path::Path;
use std::sync::Arc;

use crate::{ObjectStore, StoreError};

/// The checkpoints of running jobs, in an object store.
#[derive(Clone)]
pub struct Checkpoints {
    objects: Arc<dyn ObjectStore>,
}

const PREFIX: &str = "checkpoints/";
const SUFFIX: &str = ".ckpt";

impl Checkpoints {
    /// The checkpoints kept in `objects`.
    pub fn new(objects: Arc<dyn ObjectStore>) -> Self {
        Self { objects }
    }

    fn name(job_id: &str) -> String {
        format!("{PREFIX}{job_id}{SUFFIX}")
    }

    /// Saves the checkpoint file of a job (replacing the previous one).
    pub async fn save(&self, job_id: &str, file: &Path) -> Result<(), StoreError> {
        self.objects.put_named(&Self::name(job_id), file).await
    }

    /// Copies a job's last checkpoint into `dest`; `false` when it has none.
    pub async fn fetch(&self, job_id: &str, dest: &Path) -> Result<bool, StoreError> {
        self.objects.get_named(&Self::name(job_id), dest).await
    }

    /// Forgets a job's checkpoint (it ended).
    pub async fn remove(&self, job_id: &str) -> Result<(), StoreError> {
        self.objects.delete_named(&Self::name(job_id)).await
    }

    /// The jobs that have a checkpoint.
    pub async fn jobs(&self) -> Result<Vec<String>, StoreError> {
        Ok(self
            .objects
            .named(PREFIX)
            .await?
            .into_iter()
            .filter_map(|n| {
                n.strip_prefix(PREFIX)
                    .and_then(|n| n.strip_suffix(SUFFIX))
                    .map(str::to_string)
            })
            .collect())
    }
}
