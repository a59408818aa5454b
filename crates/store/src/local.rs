//! The embedded object store: a directory of files named by their SHA-256, and one
//! of named objects.

use std::path::{Path, PathBuf};

use futures_util::StreamExt;
use sha2::{Digest, Sha256};
use tokio::io::AsyncWriteExt;

use crate::{ByteStream, ObjectStore, Staged, StoreError, StoredObject, check_name};

/// Objects under `root/objects`, named objects under `root/named`, uploads in
/// progress under `root/partial/<process>`. Several processes on one machine (API
/// replicas and workers) may share the directory.
#[derive(Debug, Clone)]
pub struct LocalObjects {
    root: PathBuf,
    /// This process's folder for uploads in progress.
    partial: PathBuf,
}

impl LocalObjects {
    /// Opens (creating) the store in `root`; uploads that processes which have
    /// ended left half-written are removed.
    pub fn open(root: &Path) -> Result<Self, StoreError> {
        let backend = |e: std::io::Error| StoreError::Backend(format!("{}: {e}", root.display()));
        std::fs::create_dir_all(root.join("objects")).map_err(backend)?;
        std::fs::create_dir_all(root.join("named")).map_err(backend)?;
        let partial = crate::process_dir::claim(&root.join("partial")).map_err(backend)?;
        Ok(Self {
            root: root.into(),
            partial,
        })
    }

    fn named_path(&self, name: &str) -> Result<PathBuf, StoreError> {
        check_name(name)?;
        Ok(self.root.join("named").join(name))
    }

    fn partial_path(&self) -> PathBuf {
        self.partial.join(format!("{:016x}", rand_suffix()))
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
        let partial = self.partial_path();
        let mut file = tokio::fs::File::create(&partial).await.map_err(backend)?;
        let mut hasher = Sha256::new();
        let mut size = 0u64;
        let outcome: Result<(), StoreError> = async {
            while let Some(chunk) = body.next().await {
                let chunk = crate::objects::next_chunk(chunk, &mut size, limit)?;
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

    async fn put_named(&self, name: &str, file: &Path) -> Result<(), StoreError> {
        let target = self.named_path(name)?;
        let backend = |e: std::io::Error| StoreError::Backend(format!("{name}: {e}"));
        if let Some(parent) = target.parent() {
            tokio::fs::create_dir_all(parent).await.map_err(backend)?;
        }
        // Copied aside first and renamed over the target: a crash leaves the old
        // object whole.
        let partial = self.partial_path();
        if let Err(e) = tokio::fs::copy(file, &partial).await {
            let _ = tokio::fs::remove_file(&partial).await;
            return Err(backend(e));
        }
        tokio::fs::rename(&partial, &target).await.map_err(backend)
    }

    async fn get_named(&self, name: &str, dest: &Path) -> Result<bool, StoreError> {
        let source = self.named_path(name)?;
        match tokio::fs::copy(&source, dest).await {
            Ok(_) => Ok(true),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(false),
            Err(e) => Err(StoreError::Backend(format!("{name}: {e}"))),
        }
    }

    async fn delete_named(&self, name: &str) -> Result<(), StoreError> {
        match tokio::fs::remove_file(self.named_path(name)?).await {
            Err(e) if e.kind() != std::io::ErrorKind::NotFound => {
                Err(StoreError::Backend(format!("{name}: {e}")))
            }
            _ => Ok(()),
        }
    }

    async fn ping(&self) -> Result<(), StoreError> {
        match tokio::fs::metadata(self.root.join("objects")).await {
            Ok(m) if m.is_dir() => Ok(()),
            Ok(_) => Err(StoreError::Backend(
                "the objects folder is not a directory".into(),
            )),
            Err(e) => Err(StoreError::Backend(format!("{}: {e}", self.root.display()))),
        }
    }

    async fn named(&self, prefix: &str) -> Result<Vec<String>, StoreError> {
        let root = self.root.join("named");
        tokio::task::spawn_blocking(move || walk_named(&root))
            .await
            .map_err(|e| StoreError::Backend(e.to_string()))?
            .map(|names| {
                names
                    .into_iter()
                    .filter(|n| n.starts_with(prefix))
                    .collect()
            })
    }
}

/// The names of the files under `root`, as paths relative to it with `/` between
/// parts.
fn walk_named(root: &Path) -> Result<Vec<String>, StoreError> {
    let mut names = Vec::new();
    let mut pending = vec![root.to_path_buf()];
    while let Some(dir) = pending.pop() {
        let entries = std::fs::read_dir(&dir)
            .map_err(|e| StoreError::Backend(format!("{}: {e}", dir.display())))?;
        for entry in entries.flatten() {
            let path = entry.path();
            if path.is_dir() {
                pending.push(path);
            } else if let Ok(relative) = path.strip_prefix(root)
                && let Some(name) = relative.to_str()
            {
                names.push(name.replace(std::path::MAIN_SEPARATOR, "/"));
            }
        }
    }
    names.sort();
    Ok(names)
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
