//! Uploads to S3 in bounded memory: bodies go up in parts as they arrive, hashed on
//! the way.

use aws_sdk_s3::primitives::ByteStream as S3Body;
use aws_sdk_s3::types::{CompletedMultipartUpload, CompletedPart};
use bytes::BytesMut;
use futures_util::StreamExt;
use sha2::{Digest, Sha256};

use super::{S3Objects, SHA256_META, backend};
use crate::{ByteStream, StoreError, StoredObject};

/// S3's smallest part but for the last.
pub const MIN_PART_SIZE: usize = 5 << 20;
/// Bytes copied per part when an object is too large to copy in one request.
const COPY_PART_SIZE: u64 = 1 << 30;

/// A key for an upload in progress that no other upload, in any process, shares.
pub(super) fn staging_id() -> String {
    uuid::Uuid::new_v4().simple().to_string()
}

/// A multipart upload in progress.
struct Multipart {
    id: String,
    parts: Vec<CompletedPart>,
}

impl Multipart {
    /// The number the next part gets (S3 counts from 1).
    fn next_number(&self) -> i32 {
        self.parts.len() as i32 + 1
    }

    /// Records part `number` as sent, with the entity tag S3 gave it.
    fn sent(&mut self, number: i32, e_tag: Option<&str>) {
        self.parts.push(
            CompletedPart::builder()
                .part_number(number)
                .set_e_tag(e_tag.map(str::to_string))
                .build(),
        );
    }
}

/// Streams `body` to `key`, hashing it; fails (leaving nothing) once it exceeds
/// `limit` bytes. `sha256`, when known beforehand, is recorded with the object.
pub(super) async fn stream_to(
    store: &S3Objects,
    key: &str,
    mut body: ByteStream<'_>,
    limit: u64,
    sha256: Option<&str>,
) -> Result<StoredObject, StoreError> {
    let mut hasher = Sha256::new();
    let mut size = 0u64;
    let mut buffer = BytesMut::new();
    let mut multipart: Option<Multipart> = None;
    let outcome: Result<(), StoreError> = async {
        while let Some(chunk) = body.next().await {
            let chunk = crate::objects::next_chunk(chunk, &mut size, limit)?;
            hasher.update(&chunk);
            buffer.extend_from_slice(&chunk);
            while buffer.len() >= store.part_size {
                let part = buffer.split_to(store.part_size).freeze();
                if multipart.is_none() {
                    multipart = Some(Multipart {
                        id: create(store, key, sha256).await?,
                        parts: Vec::new(),
                    });
                }
                let upload = multipart.as_mut().expect("created above");
                send_part(store, key, upload, S3Body::from(part)).await?;
            }
        }
        Ok(())
    }
    .await;
    let outcome = match (outcome, multipart.as_mut()) {
        (Ok(()), None) => put(store, key, buffer, sha256).await,
        (Ok(()), Some(upload)) => {
            let rest = async {
                if !buffer.is_empty() {
                    send_part(store, key, upload, S3Body::from(buffer.freeze())).await?;
                }
                complete(store, key, upload).await
            };
            rest.await
        }
        (Err(e), _) => Err(e),
    };
    if let Err(e) = outcome {
        if let Some(upload) = multipart {
            abort(store, key, &upload.id).await;
        }
        return Err(e);
    }
    Ok(StoredObject {
        sha256: format!("{:x}", hasher.finalize()),
        size,
    })
}

async fn put(
    store: &S3Objects,
    key: &str,
    bytes: BytesMut,
    sha256: Option<&str>,
) -> Result<(), StoreError> {
    let mut put = store
        .client
        .put_object()
        .bucket(&store.bucket)
        .key(key)
        .body(S3Body::from(bytes.freeze()));
    if let Some(sha) = sha256 {
        put = put.metadata(SHA256_META, sha);
    }
    put.send().await.map_err(|e| backend("put", e))?;
    Ok(())
}

async fn create(store: &S3Objects, key: &str, sha256: Option<&str>) -> Result<String, StoreError> {
    let mut create = store
        .client
        .create_multipart_upload()
        .bucket(&store.bucket)
        .key(key);
    if let Some(sha) = sha256 {
        create = create.metadata(SHA256_META, sha);
    }
    let out = create
        .send()
        .await
        .map_err(|e| backend("create multipart upload", e))?;
    out.upload_id()
        .map(str::to_string)
        .ok_or_else(|| StoreError::Backend("S3 create multipart upload: no upload id".into()))
}

async fn send_part(
    store: &S3Objects,
    key: &str,
    upload: &mut Multipart,
    body: S3Body,
) -> Result<(), StoreError> {
    let number = upload.next_number();
    let out = store
        .client
        .upload_part()
        .bucket(&store.bucket)
        .key(key)
        .upload_id(&upload.id)
        .part_number(number)
        .body(body)
        .send()
        .await
        .map_err(|e| backend("upload part", e))?;
    upload.sent(number, out.e_tag());
    Ok(())
}

async fn complete(store: &S3Objects, key: &str, upload: &Multipart) -> Result<(), StoreError> {
    store
        .client
        .complete_multipart_upload()
        .bucket(&store.bucket)
        .key(key)
        .upload_id(&upload.id)
        .multipart_upload(
            CompletedMultipartUpload::builder()
                .set_parts(Some(upload.parts.clone()))
                .build(),
        )
        .send()
        .await
        .map_err(|e| backend("complete multipart upload", e))?;
    Ok(())
}

async fn abort(store: &S3Objects, key: &str, id: &str) {
    let aborted = store
        .client
        .abort_multipart_upload()
        .bucket(&store.bucket)
        .key(key)
        .upload_id(id)
        .send()
        .await;
    if let Err(e) = aborted {
        tracing::warn!(key, error = %backend("abort multipart upload", e), "an abandoned upload's parts were not removed");
    }
}

/// Copies an object too large for one copy request, in parts, recording `sha256`.
pub(super) async fn copy_in_parts(
    store: &S3Objects,
    from: &str,
    to: &str,
    size: u64,
    sha256: &str,
) -> Result<(), StoreError> {
    let mut upload = Multipart {
        id: create(store, to, Some(sha256)).await?,
        parts: Vec::new(),
    };
    let copied: Result<(), StoreError> = async {
        let mut start = 0u64;
        while start < size {
            let end = (start + COPY_PART_SIZE).min(size) - 1;
            let number = upload.next_number();
            let out = store
                .client
                .upload_part_copy()
                .bucket(&store.bucket)
                .key(to)
                .upload_id(&upload.id)
                .part_number(number)
                .copy_source(format!("{}/{from}", store.bucket))
                .copy_source_range(format!("bytes={start}-{end}"))
                .send()
                .await
                .map_err(|e| backend("copy part", e))?;
            upload.parts.push(
                CompletedPart::builder()
                    .part_number(number)
                    .set_e_tag(
                        out.copy_part_result()
                            .and_then(|r| r.e_tag())
                            .map(str::to_string),
                    )
                    .build(),
            );
            start = end + 1;
        }
        complete(store, to, &upload).await
    }
    .await;
    if copied.is_err() {
        abort(store, to, &upload.id).await;
    }
    copied
}
