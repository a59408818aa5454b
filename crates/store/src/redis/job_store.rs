//! The job store on Redis: models and datasets, content references, jobs, events.

use std::collections::{HashMap, HashSet};

use effp_protocol::JobState;
use redis::AsyncCommands;
use serde::Serialize;
use serde::de::DeserializeOwned;

use super::{RedisStore, backend, millis_of};
use crate::{ActiveLimits, DatasetRecord, JobEvent, JobRecord, JobStore, ModelRecord, StoreError};

/// A record of an uploaded file, kept as JSON beside its owner.
trait Upload: Serialize + DeserializeOwned + Clone + Send + Sync {
    /// The key part of its kind (`model`, `dataset`).
    const KIND: &'static str;
    /// Id, tenant, SHA-256, size and creation time.
    fn parts(&self) -> (&str, &str, &str, u64, &str);
    /// Sets the owner (not part of the JSON clients see).
    fn set_tenant(&mut self, tenant: String);
}

macro_rules! upload {
    ($record:ident, $kind:literal) => {
        impl Upload for $record {
            const KIND: &'static str = $kind;
            fn parts(&self) -> (&str, &str, &str, u64, &str) {
                (
                    &self.id,
                    &self.tenant,
                    &self.sha256,
                    self.size,
                    &self.created_at,
                )
            }
            fn set_tenant(&mut self, tenant: String) {
                self.tenant = tenant;
            }
        }
    };
}

upload!(ModelRecord, "model");
upload!(DatasetRecord, "dataset");

impl RedisStore {
    /// The `fields` of each of the jobs `ids`, in one round trip.
    async fn job_fields<T: redis::FromRedisValue>(
        &self,
        ids: &[String],
        fields: &[&str],
    ) -> Result<Vec<T>, StoreError> {
        if ids.is_empty() {
            return Ok(Vec::new());
        }
        let mut pipe = redis::pipe();
        for id in ids {
            match fields {
                [field] => pipe.hget(self.key(&["job", id]), field),
                _ => pipe.hmget(self.key(&["job", id]), fields),
            };
        }
        pipe.query_async(&mut self.conn()).await.map_err(backend)
    }

    async fn insert_upload<R: Upload>(
        &self,
        record: &R,
        max_stored_bytes: u64,
    ) -> Result<Option<R>, StoreError> {
        let (id, tenant, sha, size, created_at) = record.parts();
        let json = serde_json::to_string(record).map_err(|e| StoreError::Backend(e.to_string()))?;
        let outcome: Vec<String> = self
            .script(
                &self.scripts.insert_upload,
                &[
                    R::KIND,
                    id,
                    tenant,
                    sha,
                    &size.to_string(),
                    &millis_of(created_at).to_string(),
                    &json,
                    &max_stored_bytes.to_string(),
                ],
            )
            .await?;
        match outcome.as_slice() {
            [kind] if kind == "inserted" => Ok(None),
            [kind, other] if kind == "existing" => self.upload::<R>(tenant, other).await,
            [kind, used] if kind == "quota" => Err(StoreError::QuotaExceeded {
                used: used.parse().unwrap_or(0),
                size,
                limit: max_stored_bytes,
            }),
            other => Err(StoreError::Backend(format!(
                "unexpected answer from the insert script: {other:?}"
            ))),
        }
    }

    async fn upload<R: Upload>(&self, tenant: &str, id: &str) -> Result<Option<R>, StoreError> {
        let (owner, json): (Option<String>, Option<String>) = self
            .conn()
            .hmget(self.key(&[R::KIND, id]), &["tenant", "json"])
            .await
            .map_err(backend)?;
        match (owner, json) {
            (Some(owner), Some(json)) if owner == tenant => decode_upload(&json, owner).map(Some),
            _ => Ok(None),
        }
    }

    async fn upload_by_hash<R: Upload>(
        &self,
        tenant: &str,
        sha256: &str,
    ) -> Result<Option<R>, StoreError> {
        let by_sha = format!("{}-sha", R::KIND);
        let id: Option<String> = self
            .conn()
            .get(self.key(&[&by_sha, tenant, sha256]))
            .await
            .map_err(backend)?;
        match id {
            Some(id) => self.upload(tenant, &id).await,
            None => Ok(None),
        }
    }

    async fn uploads<R: Upload>(
        &self,
        tenant: &str,
        limit: u32,
        offset: u32,
    ) -> Result<Vec<R>, StoreError> {
        let list = format!("{}s", R::KIND);
        let ids = self
            .newest(&self.key(&[&list, tenant]), limit, offset)
            .await?;
        if ids.is_empty() {
            return Ok(Vec::new());
        }
        // One round trip for the page.
        let mut pipe = redis::pipe();
        for id in &ids {
            pipe.hmget(self.key(&[R::KIND, id]), &["tenant", "json"]);
        }
        let rows: Vec<(Option<String>, Option<String>)> =
            pipe.query_async(&mut self.conn()).await.map_err(backend)?;
        rows.into_iter()
            .filter_map(|row| match row {
                (Some(owner), Some(json)) if owner == tenant => Some(decode_upload(&json, owner)),
                _ => None,
            })
            .collect()
    }

    async fn delete_upload<R: Upload>(
        &self,
        tenant: &str,
        id: &str,
    ) -> Result<Option<R>, StoreError> {
        let json: Option<String> = self
            .script(&self.scripts.delete_upload, &[R::KIND, tenant, id])
            .await?;
        json.map(|j| decode_upload(&j, tenant.to_string()))
            .transpose()
    }

    /// Members of a sorted set by creation time, newest first.
    async fn newest(&self, key: &str, limit: u32, offset: u32) -> Result<Vec<String>, StoreError> {
        if limit == 0 {
            return Ok(Vec::new());
        }
        self.conn()
            .zrevrange(key, offset as isize, (offset + limit - 1) as isize)
            .await
            .map_err(backend)
    }

    /// The ids of a tenant's queued and running jobs, oldest first.
    async fn active_ids(&self, tenant: &str) -> Result<Vec<String>, StoreError> {
        let mut both: Vec<(String, f64)> = Vec::new();
        for state in [JobState::Queued, JobState::Running] {
            let ids: Vec<(String, f64)> = self
                .conn()
                .zrange_withscores(self.key(&["jobs", tenant, state.as_str()]), 0, -1)
                .await
                .map_err(backend)?;
            both.extend(ids);
        }
        both.sort_by(|a, b| a.1.total_cmp(&b.1).then_with(|| a.0.cmp(&b.0)));
        Ok(both.into_iter().map(|(id, _)| id).collect())
    }

    /// Every key matching `pattern` (the start-up recount only).
    async fn scan(&self, pattern: &str) -> Result<Vec<String>, StoreError> {
        let mut conn = self.conn();
        let mut keys = Vec::new();
        let mut cursor: u64 = 0;
        loop {
            let (next, batch): (u64, Vec<String>) = redis::cmd("SCAN")
                .arg(cursor)
                .arg("MATCH")
                .arg(pattern)
                .arg("COUNT")
                .arg(500)
                .query_async(&mut conn)
                .await
                .map_err(backend)?;
            keys.extend(batch);
            if next == 0 {
                return Ok(keys);
            }
            cursor = next;
        }
    }
}

fn decode_upload<R: Upload>(json: &str, tenant: String) -> Result<R, StoreError> {
    let mut record: R = serde_json::from_str(json)
        .map_err(|e| StoreError::Backend(format!("redis: a stored record is not valid: {e}")))?;
    record.set_tenant(tenant);
    Ok(record)
}

#[async_trait::async_trait]
impl JobStore for RedisStore {
    async fn insert_model(
        &self,
        m: &ModelRecord,
        max_stored_bytes: u64,
    ) -> Result<Option<ModelRecord>, StoreError> {
        self.insert_upload(m, max_stored_bytes).await
    }

    async fn model(&self, tenant: &str, id: &str) -> Result<Option<ModelRecord>, StoreError> {
        self.upload(tenant, id).await
    }

    async fn model_by_hash(
        &self,
        tenant: &str,
        sha256: &str,
    ) -> Result<Option<ModelRecord>, StoreError> {
        self.upload_by_hash(tenant, sha256).await
    }

    async fn models(
        &self,
        tenant: &str,
        limit: u32,
        offset: u32,
    ) -> Result<Vec<ModelRecord>, StoreError> {
        self.uploads(tenant, limit, offset).await
    }

    async fn delete_model(
        &self,
        tenant: &str,
        id: &str,
    ) -> Result<Option<ModelRecord>, StoreError> {
        self.delete_upload(tenant, id).await
    }

    async fn insert_dataset(
        &self,
        d: &DatasetRecord,
        max_stored_bytes: u64,
    ) -> Result<Option<DatasetRecord>, StoreError> {
        self.insert_upload(d, max_stored_bytes).await
    }

    async fn dataset(&self, tenant: &str, id: &str) -> Result<Option<DatasetRecord>, StoreError> {
        self.upload(tenant, id).await
    }

    async fn dataset_by_hash(
        &self,
        tenant: &str,
        sha256: &str,
    ) -> Result<Option<DatasetRecord>, StoreError> {
        self.upload_by_hash(tenant, sha256).await
    }

    async fn datasets(
        &self,
        tenant: &str,
        limit: u32,
        offset: u32,
    ) -> Result<Vec<DatasetRecord>, StoreError> {
        self.uploads(tenant, limit, offset).await
    }

    async fn delete_dataset(
        &self,
        tenant: &str,
        id: &str,
    ) -> Result<Option<DatasetRecord>, StoreError> {
        self.delete_upload(tenant, id).await
    }

    async fn hold_object(&self, sha256: &str, size: u64) -> Result<(), StoreError> {
        redis::pipe()
            .atomic()
            .hincr(self.key(&["objects"]), sha256, 1)
            .hset(self.key(&["object-sizes"]), sha256, size)
            .query_async::<()>(&mut self.conn())
            .await
            .map_err(backend)
    }

    async fn drop_object(&self, sha256: &str) -> Result<bool, StoreError> {
        let gone: i64 = self.script(&self.scripts.drop_object, &[sha256]).await?;
        Ok(gone == 1)
    }

    async fn object_references(&self, sha256: &str) -> Result<u64, StoreError> {
        let refs: Option<i64> = self
            .conn()
            .hget(self.key(&["objects"]), sha256)
            .await
            .map_err(backend)?;
        Ok(refs.unwrap_or(0).max(0) as u64)
    }

    async fn try_lock_object(
        &self,
        sha256: &str,
        holder: &str,
        lease: std::time::Duration,
    ) -> Result<bool, StoreError> {
        let taken: Option<String> = redis::cmd("SET")
            .arg(self.key(&["object-lock", sha256]))
            .arg(holder)
            .arg("NX")
            .arg("PX")
            .arg(lease.as_millis().max(1) as u64)
            .query_async(&mut self.conn())
            .await
            .map_err(backend)?;
        Ok(taken.is_some())
    }

    async fn renew_object_lock(
        &self,
        sha256: &str,
        holder: &str,
        lease: std::time::Duration,
    ) -> Result<bool, StoreError> {
        let ms = (lease.as_millis().max(1) as u64).to_string();
        let renewed: i64 = self
            .script(&self.scripts.renew_object_lock, &[sha256, holder, &ms])
            .await?;
        Ok(renewed == 1)
    }

    async fn unlock_object(&self, sha256: &str, holder: &str) -> Result<(), StoreError> {
        self.script::<i64>(&self.scripts.unlock_object, &[sha256, holder])
            .await
            .map(|_| ())
    }

    async fn recount_objects(&self) -> Result<HashSet<String>, StoreError> {
        // Run at start-up, before this process serves; other replicas may be serving,
        // so references are only ever added here, never forgotten.
        let mut counts: HashMap<String, (i64, u64)> = HashMap::new();
        for kind in ["model", "dataset"] {
            let pattern = format!("{}:{kind}:*", self.prefix);
            for key in self.scan(&pattern).await? {
                let (sha, size): (Option<String>, Option<u64>) = self
                    .conn()
                    .hmget(&key, &["sha256", "size"])
                    .await
                    .map_err(backend)?;
                if let Some(sha) = sha {
                    let entry = counts.entry(sha).or_insert((0, size.unwrap_or(0)));
                    entry.0 += 1;
                }
            }
        }
        for key in self.scan(&format!("{}:job:*", self.prefix)).await? {
            let artifacts: Option<String> =
                self.conn().hget(&key, "artifacts").await.map_err(backend)?;
            let artifacts: effp_protocol::Artifacts = artifacts
                .and_then(|a| serde_json::from_str(&a).ok())
                .unwrap_or_default();
            for a in artifacts.into_values() {
                counts.entry(a.sha256).or_insert((0, a.size)).0 += 1;
            }
        }
        let objects = self.key(&["objects"]);
        let held: HashMap<String, i64> = self.conn().hgetall(&objects).await.map_err(backend)?;
        for (sha, (refs, size)) in &counts {
            if held.get(sha).copied().unwrap_or(0) < *refs {
                redis::pipe()
                    .atomic()
                    .hset(&objects, sha, *refs)
                    .hset(self.key(&["object-sizes"]), sha, *size)
                    .query_async::<()>(&mut self.conn())
                    .await
                    .map_err(backend)?;
            }
        }
        let mut referenced: HashSet<String> = counts.into_keys().collect();
        // Content held by uploads in progress elsewhere stays too.
        referenced.extend(held.into_iter().filter(|(_, n)| *n > 0).map(|(k, _)| k));
        Ok(referenced)
    }

    async fn stored_bytes(&self, tenant: &str) -> Result<u64, StoreError> {
        let bytes: Option<i64> = self
            .conn()
            .hget(self.key(&["stored-bytes"]), tenant)
            .await
            .map_err(backend)?;
        Ok(bytes.unwrap_or(0).max(0) as u64)
    }

    async fn active_load(&self, tenant: &str) -> Result<(u64, u64), StoreError> {
        let ids = self.active_ids(tenant).await?;
        let steps: Vec<Option<u64>> = self.job_fields(&ids, &["steps"]).await?;
        Ok((ids.len() as u64, steps.into_iter().flatten().sum()))
    }

    async fn ended_jobs(&self, ids: &[String]) -> Result<Vec<String>, StoreError> {
        let states: Vec<Option<String>> = self.job_fields(ids, &["state"]).await?;
        Ok(ids
            .iter()
            .zip(states)
            .filter(|(_, state)| !matches!(state.as_deref(), Some("queued" | "running")))
            .map(|(id, _)| id.clone())
            .collect())
    }

    async fn active_jobs_using(&self, tenant: &str, id: &str) -> Result<Vec<String>, StoreError> {
        let jobs = self.active_ids(tenant).await?;
        let uses: Vec<(Option<String>, Option<String>)> =
            self.job_fields(&jobs, &["model", "dataset"]).await?;
        Ok(jobs
            .into_iter()
            .zip(uses)
            .filter(|(_, (model, dataset))| {
                model.as_deref() == Some(id) || dataset.as_deref() == Some(id)
            })
            .map(|(job, _)| job)
            .collect())
    }

    async fn insert_job(
        &self,
        j: &JobRecord,
        limits: ActiveLimits,
    ) -> Result<Option<JobRecord>, StoreError> {
        let text = |v: &serde_json::Value| v.to_string();
        let spec_str = |path: &str| {
            j.spec
                .pointer(path)
                .and_then(|v| v.as_str())
                .map(str::to_string)
        };
        let steps = j
            .spec
            .pointer("/training/steps")
            .and_then(serde_json::Value::as_u64)
            .unwrap_or(0);
        let created_ms = millis_of(&j.created_at).to_string();
        let mut fields: Vec<(&str, String)> = vec![
            ("id", j.id.clone()),
            ("tenant", j.tenant.clone()),
            ("spec", text(&j.spec)),
            ("state", j.state.as_str().into()),
            ("phase", j.phase.clone()),
            ("progress", j.progress.to_string()),
            ("metrics", text(&j.metrics)),
            (
                "artifacts",
                serde_json::to_string(&j.artifacts).unwrap_or_else(|_| "{}".into()),
            ),
            ("attempts", j.attempts.to_string()),
            (
                "cancel_requested",
                if j.cancel_requested { "1" } else { "0" }.into(),
            ),
            ("created_at", j.created_at.clone()),
            ("updated_at", j.updated_at.clone()),
            ("created_ms", created_ms.clone()),
            ("steps", steps.to_string()),
            ("lease_until", "0".into()),
            ("seq", "0".into()),
        ];
        for (name, value) in [
            ("model", spec_str("/model")),
            ("dataset", spec_str("/dataset")),
            ("idempotency_key", j.idempotency_key.clone()),
            ("error", j.error.clone()),
            ("notify", crate::notify_url(&j.spec).map(str::to_string)),
        ] {
            if let Some(v) = value {
                fields.push((name, v));
            }
        }
        let key = j.idempotency_key.clone().unwrap_or_default();
        let (max_jobs, max_steps, steps_arg) = (
            limits.jobs.to_string(),
            limits.training_steps.to_string(),
            steps.to_string(),
        );
        let mut args: Vec<&str> = vec![
            &j.id,
            &j.tenant,
            &key,
            &created_ms,
            &max_jobs,
            &max_steps,
            &steps_arg,
        ];
        for (name, value) in &fields {
            args.push(name);
            args.push(value);
        }
        let outcome: Vec<String> = self.script(&self.scripts.insert_job, &args).await?;
        match outcome.as_slice() {
            [kind] if kind == "inserted" => Ok(None),
            [kind, id] if kind == "existing" => self.load_job(id, Some(&j.tenant)).await,
            [kind, jobs, active_steps] if kind == "quota" => Err(StoreError::TooManyActive {
                jobs: jobs.parse().unwrap_or(0),
                steps: active_steps.parse().unwrap_or(0),
                requested: steps,
                limits,
            }),
            other => Err(StoreError::Backend(format!(
                "unexpected answer from the job insert script: {other:?}"
            ))),
        }
    }

    async fn job(&self, tenant: &str, id: &str) -> Result<Option<JobRecord>, StoreError> {
        self.load_job(id, Some(tenant)).await
    }

    async fn job_by_key(&self, tenant: &str, key: &str) -> Result<Option<JobRecord>, StoreError> {
        let id: Option<String> = self
            .conn()
            .get(self.key(&["idem", tenant, key]))
            .await
            .map_err(backend)?;
        match id {
            Some(id) => self.load_job(&id, Some(tenant)).await,
            None => Ok(None),
        }
    }

    async fn jobs(
        &self,
        tenant: &str,
        state: Option<JobState>,
        limit: u32,
        offset: u32,
    ) -> Result<Vec<JobRecord>, StoreError> {
        let key = match state {
            Some(s) => self.key(&["jobs", tenant, s.as_str()]),
            None => self.key(&["jobs", tenant]),
        };
        let ids = self.newest(&key, limit, offset).await?;
        self.load_jobs(&ids).await
    }

    async fn cancel_job(&self, tenant: &str, id: &str) -> Result<Option<JobRecord>, StoreError> {
        let (ts, _) = crate::now();
        let found: i64 = self
            .script(&self.scripts.cancel, &[tenant, id, &ts])
            .await?;
        if found == 0 {
            return Ok(None);
        }
        self.load_job(id, Some(tenant)).await
    }

    async fn events(&self, job_id: &str, after: i64) -> Result<Vec<JobEvent>, StoreError> {
        let from = format!("{}-0", after.max(0).saturating_add(1));
        let entries: redis::streams::StreamRangeReply = self
            .conn()
            .xrange_count(self.key(&["events", job_id]), from, "+", 500)
            .await
            .map_err(backend)?;
        entries
            .ids
            .into_iter()
            .map(|entry| {
                let seq = entry
                    .id
                    .split('-')
                    .next()
                    .and_then(|s| s.parse().ok())
                    .unwrap_or(0);
                let kind: String = entry.get("kind").unwrap_or_default();
                let data: String = entry.get("data").unwrap_or_default();
                Ok(JobEvent {
                    seq,
                    kind,
                    data: serde_json::from_str(&data).map_err(|e| {
                        StoreError::Backend(format!("redis: an event of {job_id} is not JSON: {e}"))
                    })?,
                })
            })
            .collect()
    }

    async fn job_counts(&self) -> Result<HashMap<JobState, u64>, StoreError> {
        let counts: HashMap<String, i64> = self
            .conn()
            .hgetall(self.key(&["job-counts"]))
            .await
            .map_err(backend)?;
        Ok(counts
            .into_iter()
            .filter(|(_, n)| *n > 0)
            .filter_map(|(s, n)| Some((s.parse().ok()?, n as u64)))
            .collect())
    }

    async fn ping(&self) -> Result<(), StoreError> {
        redis::cmd("PING")
            .query_async::<String>(&mut self.conn())
            .await
            .map(|_| ())
            .map_err(backend)
    }
}
