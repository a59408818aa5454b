//! What models and datasets share: an uploaded file that is stored, checked and
//! recorded once per tenant and content, then listed, shown and deleted the same way.
//! The handlers of `/v1/models` and `/v1/datasets` are these, typed by [`Resource`].

use axum::Json;
use axum::body::Body;
use axum::http::{HeaderMap, StatusCode};
use axum::response::Response;
use serde::Serialize;

use crate::service::AppState;
use crate::service::checks::Upload;
use crate::service::problem::Problem;
use effp_store::{DatasetRecord, ModelRecord, StoreError, StoredObject};

use super::shared::{refuse_if_in_use, release_object};
use super::upload::{Received, answer_existing, created, discard, receive};

/// A kind of uploaded file the API keeps: its names, how it is checked and where
/// its records are stored.
#[async_trait::async_trait]
pub trait Resource: Serialize + Sized + Send + Sync + 'static {
    /// Singular name in messages (`model`).
    const KIND: &'static str;
    /// Path segment under `/v1` (`models`).
    const COLLECTION: &'static str;
    /// Prefix of record ids (`mdl`).
    const ID_PREFIX: &'static str;
    /// Name of an upload that names itself nothing.
    const DEFAULT_NAME: &'static str;
    /// How an upload is checked before it is kept.
    const CHECK: Upload;

    /// A new record of a checked upload; `checked` is what the check reported.
    fn record(
        id: String,
        tenant: String,
        name: String,
        object: &StoredObject,
        checked: serde_json::Value,
    ) -> Self;
    /// The record's stored file.
    fn sha256(&self) -> &str;
    /// The tenant's record of this content, if any.
    async fn by_hash(
        state: &AppState,
        tenant: &str,
        sha256: &str,
    ) -> Result<Option<Self>, StoreError>;
    /// Stores a record; returns the record already there when the tenant has this
    /// content (a concurrent upload won).
    async fn insert(&self, state: &AppState) -> Result<Option<Self>, StoreError>;
    /// A tenant's record by id.
    async fn get(state: &AppState, tenant: &str, id: &str) -> Result<Option<Self>, StoreError>;
    /// A page of a tenant's records, newest first.
    async fn page(
        state: &AppState,
        tenant: &str,
        limit: u32,
        offset: u32,
    ) -> Result<Vec<Self>, StoreError>;
    /// Deletes a tenant's record; returns it.
    async fn remove(state: &AppState, tenant: &str, id: &str) -> Result<Option<Self>, StoreError>;
}

/// Stores an upload, checks it and records it: 201 with the record, or 200 with the
/// tenant's record of the same content; nothing is kept of a file the check refuses.
pub async fn upload<R: Resource>(
    state: &AppState,
    tenant: String,
    name: Option<String>,
    headers: &HeaderMap,
    body: Body,
) -> Result<Response, Problem> {
    let Received { object, name } =
        receive(state, &tenant, headers, body, name, R::DEFAULT_NAME).await?;
    let known = R::by_hash(state, &tenant, &object.sha256).await;
    if let Some(answer) = answer_existing(state, &object, known).await {
        return answer;
    }
    let checked = match crate::service::checks::check(state, R::CHECK, &object.sha256).await {
        Ok(v) => v,
        Err(problem) => {
            discard(state, &object).await;
            return Err(problem);
        }
    };
    let id = format!("{}_{}", R::ID_PREFIX, uuid::Uuid::new_v4().simple());
    let record = R::record(id.clone(), tenant, name, &object, checked);
    // The same file may have arrived twice at once: one record, one reference.
    let inserted = record.insert(state).await;
    if let Some(answer) = answer_existing(state, &object, inserted).await {
        return answer;
    }
    Ok(created(format!("/v1/{}/{id}", R::COLLECTION), &record))
}

/// A tenant's record by id, or 404.
pub async fn show<R: Resource>(state: &AppState, tenant: &str, id: &str) -> Result<R, Problem> {
    R::get(state, tenant, id)
        .await?
        .ok_or_else(|| Problem::not_found(R::KIND, id))
}

/// A page of a tenant's records with its paging, as the list endpoints answer.
pub async fn list<R: Resource>(
    state: &AppState,
    tenant: &str,
    limit: u32,
    offset: u32,
) -> Result<Json<serde_json::Value>, Problem> {
    let items = R::page(state, tenant, limit, offset).await?;
    Ok(Json(
        serde_json::json!({ "items": items, "limit": limit, "offset": offset }),
    ))
}

/// Deletes a tenant's record (409 while queued or running jobs use it) and gives
/// back its reference to the stored file.
pub async fn delete<R: Resource>(
    state: &AppState,
    tenant: &str,
    id: &str,
) -> Result<StatusCode, Problem> {
    refuse_if_in_use(state, tenant, R::KIND, id).await?;
    let record = R::remove(state, tenant, id)
        .await?
        .ok_or_else(|| Problem::not_found(R::KIND, id))?;
    release_object(state, record.sha256()).await?;
    Ok(StatusCode::NO_CONTENT)
}

/// The RFC 3339 time of now, as records carry it.
fn now() -> String {
    humantime::format_rfc3339_millis(std::time::SystemTime::now()).to_string()
}

/// Implements [`Resource`] for a record type from its names, the field holding what
/// the check found, and the store's methods for it.
macro_rules! resource {
    ($record:ident {
        kind: $kind:literal, collection: $collection:literal, id_prefix: $prefix:literal,
        default_name: $default:literal, check: $check:expr, found: $found:ident,
        by_hash: $by_hash:ident, insert: $insert:ident, get: $get:ident,
        page: $page:ident, remove: $remove:ident $(,)?
    }) => {
        #[async_trait::async_trait]
        impl Resource for $record {
            const KIND: &'static str = $kind;
            const COLLECTION: &'static str = $collection;
            const ID_PREFIX: &'static str = $prefix;
            const DEFAULT_NAME: &'static str = $default;
            const CHECK: Upload = $check;

            fn record(
                id: String,
                tenant: String,
                name: String,
                object: &StoredObject,
                $found: serde_json::Value,
            ) -> Self {
                $record {
                    id,
                    tenant,
                    name,
                    sha256: object.sha256.clone(),
                    size: object.size,
                    created_at: now(),
                    $found,
                }
            }
            fn sha256(&self) -> &str {
                &self.sha256
            }
            async fn by_hash(
                state: &AppState,
                tenant: &str,
                sha256: &str,
            ) -> Result<Option<Self>, StoreError> {
                state.jobs.$by_hash(tenant, sha256).await
            }
            async fn insert(&self, state: &AppState) -> Result<Option<Self>, StoreError> {
                state.jobs.$insert(self, state.quotas.stored_bytes).await
            }
            async fn get(
                state: &AppState,
                tenant: &str,
                id: &str,
            ) -> Result<Option<Self>, StoreError> {
                state.jobs.$get(tenant, id).await
            }
            async fn page(
                state: &AppState,
                tenant: &str,
                limit: u32,
                offset: u32,
            ) -> Result<Vec<Self>, StoreError> {
                state.jobs.$page(tenant, limit, offset).await
            }
            async fn remove(
                state: &AppState,
                tenant: &str,
                id: &str,
            ) -> Result<Option<Self>, StoreError> {
                state.jobs.$remove(tenant, id).await
            }
        }
    };
}

resource!(ModelRecord {
    kind: "model",
    collection: "models",
    id_prefix: "mdl",
    default_name: "model.onnx",
    check: Upload::Model,
    found: inspect,
    by_hash: model_by_hash,
    insert: insert_model,
    get: model,
    page: models,
    remove: delete_model,
});

resource!(DatasetRecord {
    kind: "dataset",
    collection: "datasets",
    id_prefix: "ds",
    default_name: "dataset",
    check: Upload::Dataset,
    found: summary,
    by_hash: dataset_by_hash,
    insert: insert_dataset,
    get: dataset,
    page: datasets,
    remove: delete_dataset,
});
