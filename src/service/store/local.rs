//! The embedded object store: a directory of files named by their SHA-256.

use std::path::{Path, PathBuf};

use futures_util::StreamExt;
use sha2::{Digest, Sha256};
use tokio::io::AsyncWriteExt;

use super::{ByteStream, ObjectStore, Staged, StoreError, StoredObject};

/// Objects under `root/objects`, uploads in progress under `root/partial`.
#[derive(Debug, Clone)]
pub struct LocalObjects {
    root: PathBuf,
}

impl LocalObjects {
    /// Opens (creating) the store in `root`; uploads a crash left half-written are
    /// removed.
    pub fn open(root: &Path) -> Result<Self, StoreError> {
        let backend = |e: std::io::Error| StoreError::Backend(format!("{}: {e}", root.display()));
        std::fs::create_dir_all(root.join("objects")).map_err(backend)?;
        let _ = std::fs::remove_dir_all(root.join("partial"));
        std::fs::create_dir_all(root.join("partial")).map_err(backend)?;
        Ok(Self { root: root.into() })
    }

    fn path(&self, key: &str) -> Option<PathBuf> {
        let valid = key.len() == 64 && key.bytes().all(|b| b.is_ascii_hexdigit());
        valid.then(|| self.root.join("objects").join(key))
    }
}

#[async_trait::async_trait]
impl ObjectStore for LocalObjects {
    async fn stage(&self, mut body: ByteStream<'_>, limit: u64) -> Result<Staged, StoreError> {
        let backend = |e: std::io::Error| StoreError::Backend(e.to_string());
        let partial = self
            .root
            .join("partial")
            .join(format!("{:016x}", rand_suffix()));
        let mut file = tokio::fs::File::create(&partial).await.map_err(backend)?;
        let mut hasher = Sha256::new();
        let mut size = 0u64;
        let outcome: Result<(), StoreError> = async {
            while let Some(chunk) = body.next().await {
                let chunk = chunk.map_err(|e| match e.kind() {
                    std::io::ErrorKind::TimedOut => StoreError::Stalled(e.to_string()),
                    _ => StoreError::Body(e.to_string()),
                })?;
                size += chunk.len() as u64;
                if size > limit {
                    return Err(StoreError::TooLarge { limit });
                }
                hasher.update(&chunk);
                file.write_all(&chunk).await.map_err(backend)?;
            }
            file.flush().await.map_err(backend)?;
            Ok(())
        }
        .await;
        drop(file);
        if let Err(e) = outcome {
            let _ = tokio::fs::remove_file(&partial).await;
            return Err(e);
        }
        Ok(Staged {
            object: StoredObject {
                sha256: format!("{:x}", hasher.finalize()),
                size,
            },
            token: partial.display().to_string(),
        })
    }

    async fn commit(&self, staged: Staged) -> Result<StoredObject, StoreError> {
        let target = self.root.join("objects").join(&staged.object.sha256);
        // Renaming over an existing object replaces it with identical bytes.
        tokio::fs::rename(&staged.token, &target)
            .await
            .map_err(|e| StoreError::Backend(e.to_string()))?;
        Ok(staged.object)
    }

    async fn discard(&self, staged: Staged) {
        let _ = tokio::fs::remove_file(&staged.token).await;
    }

    async fn keys(&self) -> Result<Vec<String>, StoreError> {
        let mut keys = Vec::new();
        let mut dir = tokio::fs::read_dir(self.root.join("objects"))
            .await
            .map_err(|e| StoreError::Backend(e.to_string()))?;
        while let Some(entry) = dir
            .next_entry()
            .await
            .map_err(|e| StoreError::Backend(e.to_string()))?
        {
            if let Some(name) = entry.file_name().to_str()
                && self.path(name).is_some()
            {
                keys.push(name.to_string());
            }
        }
        Ok(keys)
    }

    async fn get(&self, key: &str) -> Result<Option<ByteStream<'static>>, StoreError> {
        let Some(path) = self.path(key) else {
            return Ok(None);
        };
        match tokio::fs::File::open(&path).await {
            Ok(file) => Ok(Some(Box::pin(tokio_util::io::ReaderStream::new(file)))),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
            Err(e) => Err(StoreError::Backend(e.to_string())),
        }
    }

    async fn delete(&self, key: &str) -> Result<(), StoreError> {
        let Some(path) = self.path(key) else {
            return Ok(());
        };
        match tokio::fs::remove_file(&path).await {
            Err(e) if e.kind() != std::io::ErrorKind::NotFound => {
                Err(StoreError::Backend(e.to_string()))
            }
            _ => Ok(()),
        }
    }

    async fn local_file(&self, key: &str, _scratch: &Path) -> Result<PathBuf, StoreError> {
        self.path(key)
            .filter(|p| p.is_file())
            .ok_or_else(|| StoreError::Backend(format!("object {key} is missing")))
    }
}

/// A name for an upload in progress that no concurrent upload shares.
fn rand_suffix() -> u64 {
    use std::sync::atomic::{AtomicU64, Ordering};
    static NEXT: AtomicU64 = AtomicU64::new(0);
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_nanos() as u64);
    nanos ^ NEXT.fetch_add(1, Ordering::Relaxed).rotate_left(32) ^ u64::from(std::process::id())
}
