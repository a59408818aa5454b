//! The object store: uploads, artifacts and checkpoints.

use std::path::{Path, PathBuf};
use std::pin::Pin;

use bytes::Bytes;
use futures_util::Stream;

use crate::StoreError;

/// A stream of body chunks, as uploads arrive and downloads leave.
pub type ByteStream<'a> = Pin<Box<dyn Stream<Item = Result<Bytes, std::io::Error>> + Send + 'a>>;

/// A stored object: content-addressed by its SHA-256.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StoredObject {
    /// Lower-case hex SHA-256 of the content, also its key.
    pub sha256: String,
    /// Bytes.
    pub size: u64,
}

/// An upload streamed and hashed into the object store's staging area, not yet
/// visible under its key.
#[derive(Debug)]
pub struct Staged {
    /// The content's address and size.
    pub object: StoredObject,
    /// Where the backend keeps it until [`ObjectStore::commit`].
    pub token: String,
}

/// Blob storage: uploads and artifacts content-addressed by SHA-256, and named
/// objects that are replaced as they change (training checkpoints).
///
/// Writing is two-phase so that the caller can record a reference to the content in
/// the same critical section in which the content becomes visible (see
/// [`crate::content`]); otherwise a delete of the same content by someone
/// else could remove it between the two.
#[async_trait::async_trait]
pub trait ObjectStore: Send + Sync {
    /// Streams `body` into the staging area while hashing it; fails (keeping
    /// nothing) once it exceeds `limit` bytes.
    async fn stage(&self, body: ByteStream<'_>, limit: u64) -> Result<Staged, StoreError>;
    /// Makes staged content visible under its SHA-256 (identical content is kept
    /// once).
    async fn commit(&self, staged: Staged) -> Result<StoredObject, StoreError>;
    /// Drops staged content that will not be committed.
    async fn discard(&self, staged: Staged);
    /// The content of an object as a stream, or `None` when there is no such key.
    async fn get(&self, key: &str) -> Result<Option<ByteStream<'static>>, StoreError>;
    /// Removes an object (absent keys are fine).
    async fn delete(&self, key: &str) -> Result<(), StoreError>;
    /// Every key in the store (for the start-up sweep of unreferenced content).
    async fn keys(&self) -> Result<Vec<String>, StoreError>;
    /// A local file holding the object, for readers that need one (the graph
    /// reader); remote stores download it into `scratch`.
    async fn local_file(&self, key: &str, scratch: &Path) -> Result<PathBuf, StoreError>;
    /// Saves the file at `file` as the named object `name`, replacing what was there
    /// in one step (a reader sees the old object or the new one, never a mix).
    async fn put_named(&self, name: &str, file: &Path) -> Result<(), StoreError>;
    /// Copies the named object into the file `dest`; `false` when there is none.
    async fn get_named(&self, name: &str, dest: &Path) -> Result<bool, StoreError>;
    /// Removes a named object (absent names are fine).
    async fn delete_named(&self, name: &str) -> Result<(), StoreError>;
    /// The names of the named objects that start with `prefix`.
    async fn named(&self, prefix: &str) -> Result<Vec<String>, StoreError>;
    /// Whether the store can be reached now (for readiness checks).
    async fn ping(&self) -> Result<(), StoreError>;
}

/// The next chunk of an upload's body, counted into `size`: the client's error as
/// the store's, or [`StoreError::TooLarge`] once the body passes `limit`.
pub(crate) fn next_chunk(
    chunk: Result<Bytes, std::io::Error>,
    size: &mut u64,
    limit: u64,
) -> Result<Bytes, StoreError> {
    let chunk = chunk.map_err(|e| match e.kind() {
        std::io::ErrorKind::TimedOut => StoreError::Stalled(e.to_string()),
        _ => StoreError::Body(e.to_string()),
    })?;
    *size += chunk.len() as u64;
    if *size > limit {
        return Err(StoreError::TooLarge { limit });
    }
    Ok(chunk)
}

/// Longest name of a named object.
pub const MAX_NAME_LEN: usize = 200;

/// Checks a named object's name: parts of letters, digits, `.`, `_` and `-`
/// separated by `/`, none of them `.` or `..`, so that no backend can be led outside
/// its space.
pub fn check_name(name: &str) -> Result<(), StoreError> {
    let part_ok = |p: &str| {
        !p.is_empty()
            && p != "."
            && p != ".."
            && p.bytes()
                .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'_' | b'-'))
    };
    if name.len() <= MAX_NAME_LEN && name.split('/').all(part_ok) {
        Ok(())
    } else {
        Err(StoreError::InvalidName(name.to_string()))
    }
}
