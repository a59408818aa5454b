//! Where the service keeps things, behind traits so that the embedded backends
//! (SQLite, a local directory) and the distributed ones can be swapped by
//! configuration without the API knowing.

pub mod local;
pub mod sqlite;

use std::path::PathBuf;
use std::pin::Pin;

use bytes::Bytes;
use futures_util::Stream;
use serde::Serialize;

/// A stream of body chunks, as uploads arrive and downloads leave.
pub type ByteStream = Pin<Box<dyn Stream<Item = Result<Bytes, std::io::Error>> + Send>>;

/// What can go wrong in a backend.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    /// The upload is larger than allowed.
    #[error("the upload is larger than the limit of {limit} bytes")]
    TooLarge {
        /// The limit.
        limit: u64,
    },
    /// The client's body broke off or could not be read.
    #[error("the upload could not be read: {0}")]
    Body(String),
    /// The backend failed (disk, database).
    #[error("storage failed: {0}")]
    Backend(String),
}

/// A stored object: content-addressed by its SHA-256.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StoredObject {
    /// Lower-case hex SHA-256 of the content, also its key.
    pub sha256: String,
    /// Bytes.
    pub size: u64,
}

/// Blob storage for uploads and artifacts.
#[async_trait::async_trait]
pub trait ObjectStore: Send + Sync {
    /// Streams `body` in while hashing it; fails (keeping nothing) once it exceeds
    /// `limit` bytes. Identical content is stored once.
    async fn put(&self, body: ByteStream, limit: u64) -> Result<StoredObject, StoreError>;
    /// The content of an object as a stream, or `None` when there is no such key.
    async fn get(&self, key: &str) -> Result<Option<ByteStream>, StoreError>;
    /// Removes an object (absent keys are fine).
    async fn delete(&self, key: &str) -> Result<(), StoreError>;
    /// A local file holding the object, for readers that need one (the graph
    /// reader); remote stores download it into `scratch`.
    async fn local_file(&self, key: &str, scratch: &std::path::Path)
    -> Result<PathBuf, StoreError>;
}

/// A model a tenant uploaded.
#[derive(Debug, Clone, Serialize, PartialEq)]
pub struct ModelRecord {
    /// Identifier (`mdl_…`).
    pub id: String,
    /// The owning tenant (not shown to clients).
    #[serde(skip)]
    pub tenant: String,
    /// The name given at upload (file name or `?name=`).
    pub name: String,
    /// SHA-256 of the file.
    pub sha256: String,
    /// Bytes.
    pub size: u64,
    /// RFC 3339 time of the upload.
    pub created_at: String,
    /// `effp inspect --json` of the file (schema effp.inspect/v1) without the
    /// per-node list.
    pub inspect: serde_json::Value,
}

/// Metadata of the service's resources (models now; datasets and jobs as they land).
#[async_trait::async_trait]
pub trait JobStore: Send + Sync {
    /// Records a model.
    async fn insert_model(&self, model: &ModelRecord) -> Result<(), StoreError>;
    /// A tenant's model by id.
    async fn model(&self, tenant: &str, id: &str) -> Result<Option<ModelRecord>, StoreError>;
    /// A tenant's model with this content, if it uploaded it before.
    async fn model_by_hash(
        &self,
        tenant: &str,
        sha256: &str,
    ) -> Result<Option<ModelRecord>, StoreError>;
    /// A tenant's models, newest first, `limit` from `offset`.
    async fn models(
        &self,
        tenant: &str,
        limit: u32,
        offset: u32,
    ) -> Result<Vec<ModelRecord>, StoreError>;
    /// Removes a tenant's model; returns it when it existed.
    async fn delete_model(&self, tenant: &str, id: &str)
    -> Result<Option<ModelRecord>, StoreError>;
    /// How many records (any tenant) still refer to this content.
    async fn references(&self, sha256: &str) -> Result<u64, StoreError>;
    /// Whether the store answers.
    async fn ping(&self) -> Result<(), StoreError>;
}
