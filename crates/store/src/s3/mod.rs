//! The distributed object store: an S3 bucket (AWS, MinIO, Ceph, s3s …), objects
//! content-addressed by SHA-256 as in the embedded store.
//!
//! Keys under the configured prefix: `objects/<sha256>` for content, `named/<name>`
//! for named objects (checkpoints), `staging/<id>` for uploads not yet committed.
//! Every object carries its SHA-256 as metadata and every download is checked
//! against it.

mod upload;
pub use upload::MIN_PART_SIZE;
mod verify;

use std::path::{Path, PathBuf};

use aws_sdk_s3::Client;
use aws_sdk_s3::config::http::HttpResponse;
use aws_sdk_s3::config::{
    Credentials, Region, RequestChecksumCalculation, ResponseChecksumValidation,
};
use aws_sdk_s3::error::{DisplayErrorContext, SdkError};
use aws_sdk_s3::primitives::ByteStream as S3Body;
use aws_sdk_s3::types::MetadataDirective;
use futures_util::StreamExt;
use tokio::io::AsyncWriteExt;

use crate::{ByteStream, ObjectStore, Staged, StoreError, StoredObject, check_name};

/// The metadata key under which every object keeps its SHA-256.
const SHA256_META: &str = "sha256";

/// Where the bucket is and how to reach it. Credentials not given here come from
/// the standard AWS chain (environment, profile, container or instance roles).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct S3Config {
    /// The bucket, which must exist.
    pub bucket: String,
    /// Prefix of every key, so that several deployments can share a bucket ("" for
    /// none).
    pub prefix: String,
    /// Endpoint of an S3-compatible server (MinIO, Ceph, s3s); AWS's when absent.
    pub endpoint: Option<String>,
    /// Region; the AWS chain's, else `us-east-1`, when absent.
    pub region: Option<String>,
    /// Address buckets by path (`endpoint/bucket/key`) rather than by host name, as
    /// most self-hosted servers need.
    pub path_style: bool,
    /// Access key id; with the secret, used instead of the AWS chain.
    pub access_key_id: Option<String>,
    /// Secret access key.
    pub secret_access_key: Option<String>,
    /// Size of the parts uploads are sent in, which is also the memory an upload in
    /// progress holds (S3 needs at least 5 MiB but for the last part).
    pub part_size: usize,
}

impl Default for S3Config {
    fn default() -> Self {
        Self {
            bucket: String::new(),
            prefix: String::new(),
            endpoint: None,
            region: None,
            path_style: false,
            access_key_id: None,
            secret_access_key: None,
            part_size: DEFAULT_PART_SIZE,
        }
    }
}

/// Default size of an upload's parts: 8 MiB.
pub const DEFAULT_PART_SIZE: usize = 8 << 20;
/// Largest object S3 copies in one request; larger ones are copied in parts.
const MAX_SINGLE_COPY: u64 = 5 << 30;

/// The object store in an S3 bucket.
#[derive(Clone)]
pub struct S3Objects {
    client: Client,
    bucket: String,
    prefix: String,
    part_size: usize,
}

impl std::fmt::Debug for S3Objects {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("S3Objects")
            .field("bucket", &self.bucket)
            .field("prefix", &self.prefix)
            .finish_non_exhaustive()
    }
}

/// A failed S3 call as the store's error, with the service's own message.
fn backend<E>(what: &str, e: SdkError<E, HttpResponse>) -> StoreError
where
    E: std::error::Error + Send + Sync + 'static,
{
    // Unreachable, timed out, or a 5xx (S3's "slow down", a full disk on a
    // self-hosted server): the same call may succeed later.
    let unreachable = match &e {
        SdkError::DispatchFailure(_) | SdkError::TimeoutError(_) | SdkError::ResponseError(_) => {
            true
        }
        SdkError::ServiceError(service) => service.raw().status().is_server_error(),
        _ => false,
    };
    let message = format!("S3 {what}: {}", DisplayErrorContext(e));
    if unreachable {
        StoreError::Unavailable(message)
    } else {
        StoreError::Backend(message)
    }
}

impl S3Objects {
    /// Connects to the bucket and checks that it can be reached.
    pub async fn open(config: &S3Config) -> Result<Self, StoreError> {
        if config.bucket.is_empty() {
            return Err(StoreError::Backend(
                "no S3 bucket is configured: set EFFP_S3_BUCKET".into(),
            ));
        }
        if config.part_size < upload::MIN_PART_SIZE {
            return Err(StoreError::Backend(format!(
                "the S3 part size {} is below S3's minimum of {} bytes",
                config.part_size,
                upload::MIN_PART_SIZE
            )));
        }
        let http = aws_smithy_http_client::Builder::new()
            .tls_provider(aws_smithy_http_client::tls::Provider::Rustls(
                aws_smithy_http_client::tls::rustls_provider::CryptoMode::Ring,
            ))
            .build_https();
        let mut loader =
            aws_config::defaults(aws_config::BehaviorVersion::latest()).http_client(http);
        if let Some(region) = &config.region {
            loader = loader.region(Region::new(region.clone()));
        }
        if let Some(endpoint) = &config.endpoint {
            loader = loader.endpoint_url(endpoint);
        }
        if let (Some(id), Some(secret)) = (&config.access_key_id, &config.secret_access_key) {
            loader = loader.credentials_provider(Credentials::new(id, secret, None, None, "effp"));
        }
        let shared = loader.load().await;
        let mut builder = aws_sdk_s3::config::Builder::from(&shared)
            .force_path_style(config.path_style)
            // Checksums only where S3 demands them: self-hosted servers differ in
            // which of the newer ones they accept, and effp checks SHA-256 itself.
            .request_checksum_calculation(RequestChecksumCalculation::WhenRequired)
            .response_checksum_validation(ResponseChecksumValidation::WhenRequired);
        if shared.region().is_none() {
            builder = builder.region(Region::new("us-east-1"));
        }
        let client = Client::from_conf(builder.build());
        client
            .head_bucket()
            .bucket(&config.bucket)
            .send()
            .await
            .map_err(|e| {
                StoreError::Backend(format!(
                    "cannot reach the S3 bucket '{}'{}: {} (check EFFP_S3_BUCKET, EFFP_S3_ENDPOINT and the credentials)",
                    config.bucket,
                    config
                        .endpoint
                        .as_ref()
                        .map(|e| format!(" at {e}"))
                        .unwrap_or_default(),
                    DisplayErrorContext(e)
                ))
            })?;
        let prefix = config.prefix.trim_matches('/');
        Ok(Self {
            client,
            bucket: config.bucket.clone(),
            prefix: if prefix.is_empty() {
                String::new()
            } else {
                format!("{prefix}/")
            },
            part_size: config.part_size,
        })
    }

    fn object_key(&self, key: &str) -> Option<String> {
        let valid = key.len() == 64 && key.bytes().all(|b| b.is_ascii_hexdigit());
        valid.then(|| format!("{}objects/{key}", self.prefix))
    }

    fn named_key(&self, name: &str) -> Result<String, StoreError> {
        check_name(name)?;
        Ok(format!("{}named/{name}", self.prefix))
    }

    /// The keys under `prefix`, with `prefix` cut off.
    async fn list(&self, prefix: &str) -> Result<Vec<String>, StoreError> {
        let mut pages = self
            .client
            .list_objects_v2()
            .bucket(&self.bucket)
            .prefix(prefix)
            .into_paginator()
            .send();
        let mut keys = Vec::new();
        while let Some(page) = pages.next().await {
            let page = page.map_err(|e| backend("list", e))?;
            keys.extend(
                page.contents()
                    .iter()
                    .filter_map(|o| o.key()?.strip_prefix(prefix).map(str::to_string)),
            );
        }
        keys.sort();
        Ok(keys)
    }

    /// Whether the object at `key` exists.
    async fn exists(&self, key: &str) -> Result<bool, StoreError> {
        match self
            .client
            .head_object()
            .bucket(&self.bucket)
            .key(key)
            .send()
            .await
        {
            Ok(_) => Ok(true),
            Err(e) if e.as_service_error().is_some_and(|s| s.is_not_found()) => Ok(false),
            Err(e) => Err(backend("head", e)),
        }
    }

    /// The object at `key` with the SHA-256 it must have, or `None`.
    async fn open_object(
        &self,
        key: &str,
    ) -> Result<Option<(aws_sdk_s3::operation::get_object::GetObjectOutput, String)>, StoreError>
    {
        match self
            .client
            .get_object()
            .bucket(&self.bucket)
            .key(key)
            .send()
            .await
        {
            Ok(out) => {
                let Some(sha) = out.metadata().and_then(|m| m.get(SHA256_META)).cloned() else {
                    return Err(StoreError::Backend(format!(
                        "S3 object {key} has no recorded SHA-256: it was not stored by effp"
                    )));
                };
                Ok(Some((out, sha)))
            }
            Err(e) if e.as_service_error().is_some_and(|s| s.is_no_such_key()) => Ok(None),
            Err(e) => Err(backend("get", e)),
        }
    }

    /// Downloads the object at `key` into `dest` (written aside and renamed), checking
    /// its SHA-256; `false` when there is no such object.
    async fn download(&self, key: &str, dest: &Path) -> Result<bool, StoreError> {
        let Some((out, sha)) = self.open_object(key).await? else {
            return Ok(false);
        };
        let io = |e: std::io::Error| StoreError::Backend(format!("{}: {e}", dest.display()));
        let mut partial = dest.as_os_str().to_owned();
        partial.push(".partial");
        let partial = PathBuf::from(partial);
        let mut body = verify::checked(key.to_string(), sha, reader_stream(out.body));
        let mut file = tokio::fs::File::create(&partial).await.map_err(io)?;
        let outcome: Result<(), StoreError> = async {
            while let Some(chunk) = body.next().await {
                let chunk = chunk.map_err(|e| StoreError::Backend(format!("S3 get {key}: {e}")))?;
                file.write_all(&chunk).await.map_err(io)?;
            }
            file.flush().await.map_err(io)
        }
        .await;
        drop(file);
        match outcome {
            Ok(()) => tokio::fs::rename(&partial, dest)
                .await
                .map_err(io)
                .map(|()| true),
            Err(e) => {
                let _ = tokio::fs::remove_file(&partial).await;
                Err(e)
            }
        }
    }

    /// Copies `from` to `to` with `sha` as its recorded SHA-256.
    async fn copy(&self, from: &str, to: &str, size: u64, sha: &str) -> Result<(), StoreError> {
        if size > MAX_SINGLE_COPY {
            return upload::copy_in_parts(self, from, to, size, sha).await;
        }
        self.client
            .copy_object()
            .bucket(&self.bucket)
            .copy_source(format!("{}/{from}", self.bucket))
            .key(to)
            .metadata_directive(MetadataDirective::Replace)
            .metadata(SHA256_META, sha)
            .send()
            .await
            .map_err(|e| backend("copy", e))?;
        Ok(())
    }

    async fn delete_key(&self, key: &str) -> Result<(), StoreError> {
        self.client
            .delete_object()
            .bucket(&self.bucket)
            .key(key)
            .send()
            .await
            .map_err(|e| backend("delete", e))?;
        Ok(())
    }
}

/// The lower-case hex SHA-256 of a file.
async fn hash_file(path: &Path) -> std::io::Result<String> {
    let path = path.to_path_buf();
    tokio::task::spawn_blocking(move || {
        use sha2::{Digest, Sha256};
        let mut hasher = Sha256::new();
        std::io::copy(&mut std::fs::File::open(path)?, &mut hasher)?;
        Ok(format!("{:x}", hasher.finalize()))
    })
    .await
    .map_err(std::io::Error::other)?
}

/// An S3 body as a stream of chunks.
fn reader_stream(body: S3Body) -> ByteStream<'static> {
    Box::pin(tokio_util::io::ReaderStream::new(body.into_async_read()))
}

#[async_trait::async_trait]
impl ObjectStore for S3Objects {
    async fn stage(&self, body: ByteStream<'_>, limit: u64) -> Result<Staged, StoreError> {
        let key = format!("{}staging/{}", self.prefix, upload::staging_id());
        let object = upload::stream_to(self, &key, body, limit, None).await?;
        Ok(Staged { object, token: key })
    }

    async fn commit(&self, staged: Staged) -> Result<StoredObject, StoreError> {
        let Staged { object, token } = staged;
        let target = self
            .object_key(&object.sha256)
            .ok_or_else(|| StoreError::Backend(format!("bad content key {}", object.sha256)))?;
        // Identical content is kept once: the copy is only made when it is new.
        if !self.exists(&target).await? {
            self.copy(&token, &target, object.size, &object.sha256)
                .await?;
        }
        if let Err(e) = self.delete_key(&token).await {
            tracing::warn!(key = token, error = %e, "a committed upload's staging copy was not removed");
        }
        Ok(object)
    }

    async fn discard(&self, staged: Staged) {
        if let Err(e) = self.delete_key(&staged.token).await {
            tracing::warn!(key = staged.token, error = %e, "a discarded upload was not removed");
        }
    }

    async fn get(&self, key: &str) -> Result<Option<ByteStream<'static>>, StoreError> {
        let Some(s3_key) = self.object_key(key) else {
            return Ok(None);
        };
        Ok(self
            .open_object(&s3_key)
            .await?
            .map(|(out, sha)| verify::checked(key.to_string(), sha, reader_stream(out.body))))
    }

    async fn delete(&self, key: &str) -> Result<(), StoreError> {
        match self.object_key(key) {
            Some(s3_key) => self.delete_key(&s3_key).await,
            None => Ok(()),
        }
    }

    async fn keys(&self) -> Result<Vec<String>, StoreError> {
        let keys = self.list(&format!("{}objects/", self.prefix)).await?;
        Ok(keys
            .into_iter()
            .filter(|k| self.object_key(k).is_some())
            .collect())
    }

    async fn local_file(&self, key: &str, scratch: &Path) -> Result<PathBuf, StoreError> {
        let s3_key = self
            .object_key(key)
            .ok_or_else(|| StoreError::Backend(format!("object {key} is missing")))?;
        tokio::fs::create_dir_all(scratch)
            .await
            .map_err(|e| StoreError::Backend(format!("{}: {e}", scratch.display())))?;
        let dest = scratch.join(key);
        if self.download(&s3_key, &dest).await? {
            Ok(dest)
        } else {
            Err(StoreError::Backend(format!("object {key} is missing")))
        }
    }

    async fn put_named(&self, name: &str, file: &Path) -> Result<(), StoreError> {
        let key = self.named_key(name)?;
        let io = |e: std::io::Error| StoreError::Backend(format!("{}: {e}", file.display()));
        // Hashed first so that the SHA-256 goes up with the object; a single or a
        // completed multipart upload replaces the old object in one step.
        let sha = hash_file(file).await.map_err(io)?;
        let handle = tokio::fs::File::open(file).await.map_err(io)?;
        let body: ByteStream<'static> = Box::pin(tokio_util::io::ReaderStream::new(handle));
        upload::stream_to(self, &key, body, u64::MAX, Some(&sha)).await?;
        Ok(())
    }

    async fn get_named(&self, name: &str, dest: &Path) -> Result<bool, StoreError> {
        let key = self.named_key(name)?;
        self.download(&key, dest).await
    }

    async fn delete_named(&self, name: &str) -> Result<(), StoreError> {
        let key = self.named_key(name)?;
        self.delete_key(&key).await
    }

    async fn ping(&self) -> Result<(), StoreError> {
        self.client
            .head_bucket()
            .bucket(&self.bucket)
            .send()
            .await
            .map_err(|e| backend("head bucket", e))?;
        Ok(())
    }

    async fn named(&self, prefix: &str) -> Result<Vec<String>, StoreError> {
        let root = format!("{}named/", self.prefix);
        Ok(self
            .list(&root)
            .await?
            .into_iter()
            .filter(|n| n.starts_with(prefix))
            .collect())
    }
}
