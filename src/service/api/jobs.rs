//! `/v1/jobs`: submit pruning jobs, follow them, cancel them, fetch their artifacts.

use axum::Json;
use axum::body::Bytes;
use axum::extract::{Path, State};

use super::extract::Query;
use axum::http::{HeaderMap, StatusCode, header};
use std::collections::VecDeque;
use std::convert::Infallible;

use axum::response::sse::{Event, KeepAlive, Sse};
use axum::response::{IntoResponse, Response};
use serde::{Deserialize, Serialize};
use serde_json::json;

use crate::service::AppState;
use crate::service::auth::Tenant;
use crate::service::problem::{FieldError, Problem};
use crate::service::store::JobRecord;
use crate::service::store::sqlite::now;

use super::models::store_problem;

/// Methods a job may ask for.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(rename_all = "lowercase")]
pub enum JobMethod {
    /// One-shot magnitude pruning (no data needed).
    L1,
    /// EFFP masked training (needs a dataset).
    Effp,
    /// Soft filter pruning (needs a dataset).
    Sfp,
    /// Staged hard pruning (needs a dataset).
    Progressive,
    /// Random mask and fine-tuning (needs a dataset).
    Random,
    /// Torch-Pruning's recipe: the same share of every layer by group L2 norm, in
    /// stages with fine-tuning (needs a dataset).
    Uniform,
}

/// Where removed groups compete (as `effp prune --scope`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(rename_all = "lowercase")]
pub enum ScopeSpec {
    /// Across the whole network, by importance per MAC.
    Global,
    /// Within each layer: every layer loses the same share of its channels.
    Layer,
}

/// What to reach: exactly one of the three.
#[derive(Debug, Clone, Default, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct TargetSpec {
    /// Fraction of the original FLOPs to keep, in (0, 1).
    #[serde(skip_serializing_if = "Option::is_none")]
    #[schema(exclusive_minimum = 0.0, exclusive_maximum = 1.0)]
    pub flops_ratio: Option<f64>,
    /// Absolute FLOPs to keep at most.
    #[serde(skip_serializing_if = "Option::is_none")]
    #[schema(minimum = 1)]
    pub flops: Option<u64>,
    /// Fraction of the original parameters to keep, in (0, 1).
    #[serde(skip_serializing_if = "Option::is_none")]
    #[schema(exclusive_minimum = 0.0, exclusive_maximum = 1.0)]
    pub params_ratio: Option<f64>,
}

/// Per-layer limits (as `effp prune`'s flags of the same names).
#[derive(Debug, Clone, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct PruneOptions {
    /// Channels every feature map keeps at least.
    #[serde(default = "one")]
    #[schema(minimum = 1)]
    pub min_channels: u32,
    /// Fraction of its channels every feature map keeps at least, in [0, 1) (default:
    /// 0.25 for `effp`, 0 for the other methods).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schema(minimum = 0.0, exclusive_maximum = 1.0)]
    pub min_fraction: Option<f64>,
    /// Remove channels in multiples of this per layer.
    #[serde(default = "one")]
    #[schema(minimum = 1, maximum = 256)]
    pub round_to: u32,
    /// MACs charged per feature-map element a channel group occupies when groups are
    /// ranked (default 0: FLOPs alone); above 0, pruning favours channels of
    /// high-resolution feature maps, so that CPU latency falls closer to the FLOPs.
    #[serde(default, skip_serializing_if = "is_zero")]
    #[schema(minimum = 0.0, maximum = 1000000.0)]
    pub activation_cost: f64,
    /// Where removed groups compete (default: layer for `uniform`, global for the
    /// other methods; `uniform` accepts only layer).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub scope: Option<ScopeSpec>,
}

fn one() -> u32 {
    1
}

fn is_zero(v: &f64) -> bool {
    *v == 0.0
}

impl Default for PruneOptions {
    fn default() -> Self {
        Self {
            min_channels: 1,
            min_fraction: None,
            round_to: 1,
            activation_cost: 0.0,
            scope: None,
        }
    }
}

/// How effp ranks active groups for pruning (as `effp prune --criterion`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(rename_all = "lowercase")]
pub enum CriterionSpec {
    /// Second-order estimate of the loss increase.
    Curvature,
    /// First-order Taylor estimate.
    Taylor,
    /// Filter norm.
    Magnitude,
}

/// Schedule and optimiser settings of the trained methods (as `effp prune`'s flags of
/// the same names); ignored by `l1` without a dataset.
#[derive(Debug, Clone, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct TrainingSpec {
    /// Optimiser steps in all, pruning phase and fine-tuning (default 300; 0 with
    /// l1 skips fine-tuning).
    #[serde(default = "default_steps")]
    #[schema(maximum = 1000000)]
    pub steps: u32,
    /// Share of the steps in which masks change, in (0, 1] (default 0.7).
    #[serde(default = "default_prune_share")]
    #[schema(exclusive_minimum = 0.0, maximum = 1.0)]
    pub prune_share: f64,
    /// effp: steps between mask updates (default 5).
    #[serde(default = "default_interval")]
    #[schema(minimum = 1)]
    pub interval: u32,
    /// effp: initial fraction of switched-off groups considered for regrowing, in
    /// [0, 1] (default 0.3; 0 turns regrowing off).
    #[serde(default = "default_regrow")]
    #[schema(minimum = 0.0, maximum = 1.0)]
    pub regrow: f64,
    /// effp: how active groups are ranked for pruning (default curvature).
    #[serde(default = "default_criterion")]
    pub criterion: CriterionSpec,
    /// progressive: number of prune-then-fine-tune stages (default 4).
    #[serde(default = "default_stages")]
    #[schema(minimum = 1)]
    pub stages: u32,
    /// Images per step (default 8).
    #[serde(default = "default_batch")]
    #[schema(minimum = 1, maximum = 1024)]
    pub batch: u32,
    /// Peak learning rate of AdamW, in (0, 1] (default 0.001).
    #[serde(default = "default_lr")]
    #[schema(exclusive_minimum = 0.0, maximum = 1.0)]
    pub lr: f64,
    /// Seed for shuffling, augmentation and random masks (default 0).
    #[serde(default)]
    pub seed: u64,
    /// Weight of YOLOv8's detection loss on the dataset's labels (per image) beside
    /// the distillation loss, in [0, 100] (default 1; 0: the student learns from the
    /// original's outputs alone).
    #[serde(default = "default_label_weight")]
    #[schema(minimum = 0.0, maximum = 100.0)]
    pub label_weight: f64,
    /// Probability that a training image is a mosaic of four, in [0, 1] (default 0;
    /// Ultralytics' trainer uses 1; the last tenth of the steps trains without).
    #[serde(default = "default_mosaic")]
    #[schema(minimum = 0.0, maximum = 1.0)]
    pub mosaic: f64,
    /// What the steps after the pruning phase train: `compacted` (default: the
    /// network with the switched-off groups removed, faster) or `masked`.
    #[serde(default)]
    pub fine_tune: FineTuneSpec,
}

/// What a job's fine-tuning phase trains (as `effp prune --fine-tune`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(rename_all = "lowercase")]
pub enum FineTuneSpec {
    /// The compacted network.
    #[default]
    Compacted,
    /// The full-size network with its gates closed.
    Masked,
}

fn default_steps() -> u32 {
    300
}
fn default_prune_share() -> f64 {
    0.7
}
fn default_interval() -> u32 {
    5
}
fn default_regrow() -> f64 {
    0.3
}
fn default_criterion() -> CriterionSpec {
    CriterionSpec::Curvature
}
fn default_stages() -> u32 {
    4
}
fn default_batch() -> u32 {
    8
}
fn default_label_weight() -> f64 {
    effp_engine::train::session::DEFAULT_LABEL_WEIGHT
}
fn default_mosaic() -> f64 {
    effp_engine::data::augment::DEFAULT_MOSAIC
}
fn default_lr() -> f64 {
    1e-3
}

impl Default for TrainingSpec {
    fn default() -> Self {
        Self {
            steps: default_steps(),
            prune_share: default_prune_share(),
            interval: default_interval(),
            regrow: default_regrow(),
            criterion: default_criterion(),
            stages: default_stages(),
            batch: default_batch(),
            lr: default_lr(),
            seed: 0,
            label_weight: default_label_weight(),
            mosaic: default_mosaic(),
            fine_tune: FineTuneSpec::default(),
        }
    }
}

impl TrainingSpec {
    /// Every out-of-range setting, by its path in the job request.
    fn errors(&self) -> Vec<FieldError> {
        let mut errors = Vec::new();
        if self.steps > 1_000_000 {
            errors.push(field("/training/steps", "must be at most 1000000"));
        }
        if !(self.prune_share > 0.0 && self.prune_share <= 1.0) {
            errors.push(field("/training/prune_share", "must be in (0, 1]"));
        }
        if self.interval == 0 {
            errors.push(field("/training/interval", "must be at least 1"));
        }
        if !(0.0..=1.0).contains(&self.regrow) {
            errors.push(field("/training/regrow", "must be in [0, 1]"));
        }
        if self.stages == 0 {
            errors.push(field("/training/stages", "must be at least 1"));
        }
        if !(1..=1024).contains(&self.batch) {
            errors.push(field("/training/batch", "must be in 1..=1024"));
        }
        if !(self.lr > 0.0 && self.lr <= 1.0) {
            errors.push(field("/training/lr", "must be in (0, 1]"));
        }
        if !(0.0..=100.0).contains(&self.label_weight) {
            errors.push(field("/training/label_weight", "must be in [0, 100]"));
        }
        if !(0.0..=1.0).contains(&self.mosaic) {
            errors.push(field("/training/mosaic", "must be in [0, 1]"));
        }
        errors
    }
}

/// A job request.
#[derive(Debug, Clone, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct JobSpec {
    /// The model's id.
    #[schema(min_length = 1)]
    pub model: String,
    /// A dataset's id: the training images of the trained methods (which need one)
    /// and the labels for mAP before and after (any method).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub dataset: Option<String>,
    /// The method (default: effp with a dataset, l1 without).
    #[serde(default = "default_method")]
    pub method: JobMethod,
    /// The target.
    pub target: TargetSpec,
    /// Per-layer limits.
    #[serde(default)]
    pub options: PruneOptions,
    /// Schedule and optimiser settings of the trained methods.
    #[serde(default)]
    pub training: TrainingSpec,
    /// Image size as HxW (default: the model's own). Required for a model with free
    /// input sizes (a dynamic-shape export), which is pruned and trained at this size
    /// and keeps its free sizes.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schema(pattern = "^[1-9][0-9]{0,4}(x[1-9][0-9]{0,4})?$")]
    pub input_size: Option<String>,
    /// auto, cpu, cuda or cuda:N (default cpu).
    #[serde(default = "default_device")]
    #[schema(pattern = "^(auto|cpu|cuda(:[0-9]+)?)$")]
    pub device: String,
}

fn default_method() -> JobMethod {
    JobMethod::L1
}

fn default_device() -> String {
    "cpu".into()
}

pub(crate) fn invalid(errors: Vec<FieldError>) -> Problem {
    let mut p = Problem::new(
        StatusCode::UNPROCESSABLE_ENTITY,
        "invalid-job",
        "the job request is not valid: see errors",
    );
    p.errors = errors;
    p
}

pub(crate) fn field(path: &str, message: impl Into<String>) -> FieldError {
    FieldError {
        path: path.into(),
        message: message.into(),
    }
}

/// Parses and checks a request body; every problem found is reported at once.
fn parse_spec(body: &[u8]) -> Result<JobSpec, Problem> {
    let mut value: serde_json::Value = serde_json::from_slice(body)
        .map_err(|e| invalid(vec![field("", format!("not a JSON job request: {e}"))]))?;
    // The method defaults to what the data allows: EFFP with images, L1 without.
    if let Some(object) = value.as_object_mut()
        && !object.contains_key("method")
        && object.get("dataset").is_some_and(|d| !d.is_null())
    {
        object.insert("method".into(), "effp".into());
    }
    let spec: JobSpec = serde_path_to_error::deserialize(value).map_err(|e| {
        let path = e.path().to_string();
        let pointer = if path == "." {
            String::new()
        } else {
            format!("/{}", path.replace('.', "/"))
        };
        invalid(vec![field(&pointer, e.inner().to_string())])
    })?;
    let mut errors = Vec::new();
    let t = &spec.target;
    let given = [
        t.flops_ratio.is_some(),
        t.flops.is_some(),
        t.params_ratio.is_some(),
    ]
    .iter()
    .filter(|&&b| b)
    .count();
    if given != 1 {
        errors.push(field(
            "/target",
            "give exactly one of flops_ratio, flops, params_ratio",
        ));
    }
    for (name, r) in [
        ("flops_ratio", t.flops_ratio),
        ("params_ratio", t.params_ratio),
    ] {
        if let Some(r) = r
            && !(r > 0.0 && r < 1.0)
        {
            errors.push(field(
                &format!("/target/{name}"),
                format!("{r} is not between 0 and 1 (exclusive)"),
            ));
        }
    }
    if t.flops == Some(0) {
        errors.push(field("/target/flops", "must be positive"));
    }
    let o = &spec.options;
    if o.min_channels == 0 {
        errors.push(field("/options/min_channels", "must be at least 1"));
    }
    if spec.method == JobMethod::Uniform && o.scope == Some(ScopeSpec::Global) {
        errors.push(field(
            "/options/scope",
            "uniform prunes the same share of every layer: leave scope out, or use method progressive with scope global",
        ));
    }
    if o.min_fraction.is_some_and(|f| !(0.0..1.0).contains(&f)) {
        errors.push(field("/options/min_fraction", "must be in [0, 1)"));
    }
    if !(1..=256).contains(&o.round_to) {
        errors.push(field("/options/round_to", "must be in 1..=256"));
    }
    if !(0.0..=1e6).contains(&o.activation_cost) {
        errors.push(field(
            "/options/activation_cost",
            "must be in [0, 1e6] MACs per feature-map element",
        ));
    }
    if let Some(size) = &spec.input_size
        && let Err(e) = size.parse::<effp_graph::shape::InputSize>()
    {
        errors.push(field("/input_size", e));
    }
    if spec
        .device
        .parse::<effp_engine::runtime::DeviceChoice>()
        .is_err()
    {
        errors.push(field("/device", "must be auto, cpu, cuda or cuda:N"));
    }
    if spec.method != JobMethod::L1 && spec.dataset.is_none() {
        errors.push(field(
            "/dataset",
            format!(
                "method {} trains on images from the model's domain: upload them to /v1/datasets and give the dataset's id",
                serde_json::to_value(spec.method).unwrap_or_default().as_str().unwrap_or("?")
            ),
        ));
    }
    errors.extend(spec.training.errors());
    if errors.is_empty() {
        Ok(spec)
    } else {
        Err(invalid(errors))
    }
}

/// `POST /v1/jobs`.
#[utoipa::path(post, path = "/v1/jobs", operation_id = "create_job", tag = "jobs",
    params(("Idempotency-Key" = Option<String>, Header, description = "Makes a retried call return the same job")),
    request_body = JobSpec,
    responses(
        (status = 201, description = "Queued", body = JobRecord),
        (status = 200, description = "The job created before with this Idempotency-Key", body = JobRecord),
        (status = 400, description = "Bad Idempotency-Key", content_type = "application/problem+json", body = crate::service::problem::Problem),
        (status = 401, description = "Missing or wrong API key", content_type = "application/problem+json", body = crate::service::problem::Problem),
        (status = 422, description = "Invalid request: errors lists every bad field (also a job estimated over the job memory limit, or asking for more training steps than a tenant may queue)", content_type = "application/problem+json", body = crate::service::problem::Problem),
        (status = 429, description = "The tenant's queued jobs or their training steps are at their quota; Retry-After says when to try again", content_type = "application/problem+json", body = crate::service::problem::Problem),
    ),
    security(("bearer" = [])))]
pub async fn submit(
    State(state): State<AppState>,
    Tenant(tenant): Tenant,
    headers: HeaderMap,
    body: Bytes,
) -> Result<Response, Problem> {
    let key = headers
        .get("idempotency-key")
        .map(|v| {
            v.to_str()
                .ok()
                .filter(|k| !k.is_empty() && k.len() <= 255)
                .map(str::to_string)
                .ok_or_else(|| {
                    Problem::new(
                        StatusCode::BAD_REQUEST,
                        "bad-idempotency-key",
                        "Idempotency-Key must be 1–255 visible ASCII characters",
                    )
                })
        })
        .transpose()?;
    let spec = parse_spec(&body)?;
    let spec_value =
        serde_json::to_value(&spec).map_err(|e| Problem::internal("cannot encode the job", e))?;
    if let Some(k) = &key
        && let Some(existing) = state
            .jobs
            .job_by_key(&tenant, k)
            .await
            .map_err(store_problem)?
    {
        return replay(existing, &spec_value, k);
    }
    let mut missing = Vec::new();
    let model = state
        .jobs
        .model(&tenant, &spec.model)
        .await
        .map_err(store_problem)?;
    if model.is_none() {
        missing.push(field(
            "/model",
            format!("no model with id '{}'", spec.model),
        ));
    }
    if let Some(dataset) = &spec.dataset
        && state
            .jobs
            .dataset(&tenant, dataset)
            .await
            .map_err(store_problem)?
            .is_none()
    {
        missing.push(field("/dataset", format!("no dataset with id '{dataset}'")));
    }
    if !missing.is_empty() {
        return Err(invalid(missing));
    }
    if let Some(model) = &model {
        if model.inspect["free_input_size"] == json!(true) && spec.input_size.is_none() {
            return Err(invalid(vec![field(
                "/input_size",
                format!(
                    "model '{}' has free input sizes (a dynamic-shape export): give the size to \
                     prune and train at, e.g. \"640x640\"; the pruned model keeps its free sizes",
                    spec.model
                ),
            )]));
        }
        crate::service::budget::check_job(&state, model, &spec).await?;
    }
    if let Err(refused) = crate::service::quota::check_job(&state, &tenant, &spec).await {
        // A retry of a request that made the job that filled the quota gets that job.
        if let Some(k) = &key
            && let Some(existing) = state
                .jobs
                .job_by_key(&tenant, k)
                .await
                .map_err(store_problem)?
        {
            return replay(existing, &spec_value, k);
        }
        return Err(refused);
    }
    let (ts, _) = now();
    let job = JobRecord {
        id: format!("job_{}", uuid::Uuid::new_v4().simple()),
        tenant,
        spec: spec_value,
        state: "queued".into(),
        phase: "queued".into(),
        progress: 0.0,
        metrics: json!({}),
        artifacts: json!({}),
        error: None,
        attempts: 0,
        cancel_requested: false,
        idempotency_key: key,
        created_at: ts.clone(),
        updated_at: ts,
    };
    if let Some(existing) = state.jobs.insert_job(&job).await.map_err(store_problem)? {
        // Another request with the same Idempotency-Key got there first.
        let key = job.idempotency_key.as_deref().unwrap_or_default();
        return replay(existing, &job.spec, key);
    }
    state.wake.notify_waiters();
    let location = format!("/v1/jobs/{}", job.id);
    Ok((
        StatusCode::CREATED,
        [(header::LOCATION, location)],
        Json(job),
    )
        .into_response())
}

/// The answer to a request that repeats an Idempotency-Key: the job made the first
/// time (200), or 422 when the request differs from that one.
fn replay(existing: JobRecord, spec: &serde_json::Value, key: &str) -> Result<Response, Problem> {
    if existing.spec != *spec {
        return Err(Problem::new(
            StatusCode::UNPROCESSABLE_ENTITY,
            "idempotency-key-reused",
            format!(
                "Idempotency-Key '{key}' was used for job {} with a different request",
                existing.id
            ),
        ));
    }
    Ok((StatusCode::OK, Json(existing)).into_response())
}

/// A page of jobs.
#[derive(Debug, Serialize, utoipa::ToSchema)]
pub struct JobList {
    /// The jobs.
    pub items: Vec<JobRecord>,
    /// Page size.
    pub limit: u32,
    /// Jobs skipped.
    pub offset: u32,
}

/// Filter and paging of `GET /v1/jobs`.
#[derive(Debug, Deserialize)]
pub struct JobQuery {
    state: Option<String>,
    limit: Option<u32>,
    offset: Option<u32>,
}

const STATES: [&str; 5] = ["queued", "running", "succeeded", "failed", "cancelled"];

/// `GET /v1/jobs`.
#[utoipa::path(get, path = "/v1/jobs", operation_id = "list_jobs", tag = "jobs",
    params(("state" = Option<String>, Query, description = "queued, running, succeeded, failed or cancelled"),
           ("limit" = Option<u32>, Query, description = "1–500, default 50", minimum = 1, maximum = 500), ("offset" = Option<u32>, Query, minimum = 0, maximum = 2147483647)),
    responses(
        (status = 200, description = "The tenant's jobs, newest first", body = JobList),
        (status = 401, description = "Missing or wrong API key", content_type = "application/problem+json", body = crate::service::problem::Problem),
        (status = 422, description = "Invalid filter or paging", content_type = "application/problem+json", body = crate::service::problem::Problem),
    ),
    security(("bearer" = [])))]
pub async fn list(
    State(state): State<AppState>,
    Tenant(tenant): Tenant,
    Query(q): Query<JobQuery>,
) -> Result<Json<serde_json::Value>, Problem> {
    let page = super::models::Page {
        limit: q.limit,
        offset: q.offset,
    }
    .checked();
    let mut errors = page
        .as_ref()
        .err()
        .map(|p| p.errors.clone())
        .unwrap_or_default();
    if let Some(s) = &q.state
        && !STATES.contains(&s.as_str())
    {
        errors.push(field(
            "/state",
            format!("'{s}' is not one of {}", STATES.join(", ")),
        ));
    }
    if !errors.is_empty() {
        return Err(invalid(errors));
    }
    let (limit, offset) = page?;
    let items = state
        .jobs
        .jobs(&tenant, q.state.as_deref(), limit, offset)
        .await
        .map_err(store_problem)?;
    Ok(Json(
        json!({ "items": items, "limit": limit, "offset": offset }),
    ))
}

async fn find(state: &AppState, tenant: &str, id: &str) -> Result<JobRecord, Problem> {
    state
        .jobs
        .job(tenant, id)
        .await
        .map_err(store_problem)?
        .ok_or_else(|| Problem::not_found("job", id))
}

/// `GET /v1/jobs/{id}`.
#[utoipa::path(get, path = "/v1/jobs/{id}", operation_id = "get_job", tag = "jobs",
    params(("id" = String, Path)),
    responses(
        (status = 200, body = JobRecord),
        (status = 401, description = "Missing or wrong API key", content_type = "application/problem+json", body = crate::service::problem::Problem),
        (status = 404, description = "No such job for this tenant", content_type = "application/problem+json", body = crate::service::problem::Problem),
    ),
    security(("bearer" = [])))]
pub async fn show(
    State(state): State<AppState>,
    Tenant(tenant): Tenant,
    Path(id): Path<String>,
) -> Result<Json<JobRecord>, Problem> {
    find(&state, &tenant, &id).await.map(Json)
}

/// `POST /v1/jobs/{id}/cancel`.
#[utoipa::path(post, path = "/v1/jobs/{id}/cancel", operation_id = "cancel_job", tag = "jobs",
    params(("id" = String, Path)),
    responses(
        (status = 200, description = "Cancelled (it was queued)", body = JobRecord),
        (status = 202, description = "Its worker will stop it", body = JobRecord),
        (status = 401, description = "Missing or wrong API key", content_type = "application/problem+json", body = crate::service::problem::Problem),
        (status = 404, description = "No such job for this tenant", content_type = "application/problem+json", body = crate::service::problem::Problem),
        (status = 409, description = "The job has already ended", content_type = "application/problem+json", body = crate::service::problem::Problem),
    ),
    security(("bearer" = [])))]
pub async fn cancel(
    State(state): State<AppState>,
    Tenant(tenant): Tenant,
    Path(id): Path<String>,
) -> Result<Response, Problem> {
    let job = find(&state, &tenant, &id).await?;
    if !matches!(job.state.as_str(), "queued" | "running") {
        return Err(Problem::new(
            StatusCode::CONFLICT,
            "job-finished",
            format!("job {id} has already ended ({})", job.state),
        ));
    }
    let job = state
        .jobs
        .cancel_job(&tenant, &id)
        .await
        .map_err(store_problem)?
        .ok_or_else(|| Problem::not_found("job", &id))?;
    let status = if job.state == "cancelled" {
        StatusCode::OK
    } else {
        StatusCode::ACCEPTED
    };
    Ok((status, Json(job)).into_response())
}

/// `GET /v1/jobs/{id}/artifacts`.
#[utoipa::path(get, path = "/v1/jobs/{id}/artifacts", operation_id = "list_artifacts", tag = "jobs",
    params(("id" = String, Path)),
    responses(
        (status = 200, description = "Artifact name → sha256 and size", body = Object),
        (status = 401, description = "Missing or wrong API key", content_type = "application/problem+json", body = crate::service::problem::Problem),
        (status = 404, description = "No such job for this tenant", content_type = "application/problem+json", body = crate::service::problem::Problem),
    ),
    security(("bearer" = [])))]
pub async fn artifacts(
    State(state): State<AppState>,
    Tenant(tenant): Tenant,
    Path(id): Path<String>,
) -> Result<Json<serde_json::Value>, Problem> {
    let job = find(&state, &tenant, &id).await?;
    Ok(Json(json!({ "items": job.artifacts })))
}

/// `GET /v1/jobs/{id}/artifacts/{name}`: streamed, with its SHA-256 as ETag.
#[utoipa::path(get, path = "/v1/jobs/{id}/artifacts/{name}", operation_id = "download_artifact", tag = "jobs",
    params(("id" = String, Path), ("name" = String, Path, description = "pruned.onnx or report.json")),
    responses(
        (status = 200, description = "The file; ETag is its SHA-256", content_type = "application/octet-stream", body = inline(super::models::FileBytes)),
        (status = 304, description = "If-None-Match matched"),
        (status = 401, description = "Missing or wrong API key", content_type = "application/problem+json", body = crate::service::problem::Problem),
        (status = 404, description = "No such job or artifact for this tenant", content_type = "application/problem+json", body = crate::service::problem::Problem),
    ),
    security(("bearer" = [])))]
pub async fn artifact(
    State(state): State<AppState>,
    Tenant(tenant): Tenant,
    Path((id, name)): Path<(String, String)>,
    headers: HeaderMap,
) -> Result<Response, Problem> {
    let job = find(&state, &tenant, &id).await?;
    let Some(entry) = job.artifacts.get(&name) else {
        return Err(Problem::not_found("artifact", &format!("{id}/{name}")));
    };
    let sha = entry["sha256"].as_str().unwrap_or_default().to_string();
    let size = entry["size"].as_u64().unwrap_or(0);
    let content_type = if name.ends_with(".json") {
        "application/json"
    } else {
        "application/octet-stream"
    };
    super::models::stream_object(&state, &sha, size, &name, content_type, &headers).await
}

/// What the worker writes for a job's artifact list.
pub fn artifact_entry(sha256: &str, size: u64) -> serde_json::Value {
    json!({ "sha256": sha256, "size": size })
}

/// `GET /v1/jobs/{id}/events`: Server-Sent Events, one per state change or progress
/// report, each with its sequence number as id; `Last-Event-ID` resumes after it. The
/// stream ends once the job has ended and every event was sent.
#[utoipa::path(get, path = "/v1/jobs/{id}/events", operation_id = "job_events", tag = "jobs",
    params(("id" = String, Path), ("Last-Event-ID" = Option<i64>, Header, description = "Resume after this event", minimum = 0)),
    responses(
        (status = 200, description = "Server-Sent Events, one per state change or progress report", content_type = "text/event-stream", body = JobEventMessage),
        (status = 401, description = "Missing or wrong API key", content_type = "application/problem+json", body = crate::service::problem::Problem),
        (status = 404, description = "No such job for this tenant", content_type = "application/problem+json", body = crate::service::problem::Problem),
        (status = 422, description = "Last-Event-ID is not an event id", content_type = "application/problem+json", body = crate::service::problem::Problem),
    ),
    security(("bearer" = [])))]
pub async fn events(
    State(state): State<AppState>,
    Tenant(tenant): Tenant,
    Path(id): Path<String>,
    headers: HeaderMap,
) -> Result<Sse<impl futures_util::Stream<Item = Result<Event, Infallible>>>, Problem> {
    find(&state, &tenant, &id).await?;
    let after = match headers.get("last-event-id") {
        None => 0,
        Some(v) => v
            .to_str()
            .ok()
            .and_then(|v| v.trim().parse::<i64>().ok())
            .filter(|&n| n >= 0)
            .ok_or_else(|| {
                invalid(vec![field(
                    "/Last-Event-ID",
                    "must be the id of an event of this stream (a non-negative integer)",
                )])
            })?,
    };
    let start = Follow {
        state,
        tenant,
        id,
        after,
        pending: VecDeque::new(),
        ended: false,
    };
    let stream = futures_util::stream::unfold(start, |mut f| async move {
        loop {
            if let Some(e) = f.pending.pop_front() {
                f.after = e.seq;
                let event = Event::default()
                    .id(e.seq.to_string())
                    .event(e.kind.clone())
                    .json_data(&e.data)
                    .unwrap_or_else(|_| Event::default().comment("unencodable event"));
                return Some((Ok(event), f));
            }
            if f.ended || f.state.shutdown.is_cancelled() {
                return None;
            }
            // Read the job's state before its events: an end seen here is followed
            // by no event the read below misses.
            let ended = match f.state.jobs.job(&f.tenant, &f.id).await {
                Ok(Some(job)) => matches!(job.state.as_str(), "succeeded" | "failed" | "cancelled"),
                _ => true,
            };
            match f.state.jobs.events(&f.id, f.after).await {
                Ok(batch) if !batch.is_empty() => f.pending.extend(batch),
                Ok(_) if ended => f.ended = true,
                Ok(_) => tokio::time::sleep(std::time::Duration::from_millis(200)).await,
                Err(e) => {
                    tracing::warn!(%e, job = %f.id, "cannot read job events");
                    f.ended = true;
                }
            }
        }
    });
    Ok(Sse::new(stream).keep_alive(KeepAlive::default()))
}

/// One event of `GET /v1/jobs/{id}/events` as it goes over the wire.
#[derive(Debug, utoipa::ToSchema)]
#[allow(dead_code)] // Describes the stream in the OpenAPI document only.
pub struct JobEventMessage {
    /// The event's sequence number; send the last one seen as `Last-Event-ID` to resume.
    #[schema(pattern = "^[0-9]+$")]
    id: String,
    /// `state` for a change of state, `progress` for phase and metrics.
    #[schema(pattern = "^(state|progress)$")]
    event: String,
    /// JSON object: the job's state, phase, progress, metrics, artifacts, error and
    /// attempts at that moment.
    #[schema(content_media_type = "application/json")]
    data: String,
}

/// Where an event stream stands.
struct Follow {
    state: AppState,
    tenant: String,
    id: String,
    after: i64,
    pending: VecDeque<crate::service::store::JobEvent>,
    ended: bool,
}
