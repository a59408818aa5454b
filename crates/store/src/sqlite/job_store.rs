//! The job store on SQLite: records, content references, jobs and their events.

use effp_protocol::JobState;
use rusqlite::{OptionalExtension, params};

use super::{
    JOB_COLUMNS, ObjectLock, SqliteStore, append_event, job_row, json_column, state_column,
};
use crate::{
    ActiveLimits, DatasetRecord, JobEvent, JobRecord, JobStore, ModelRecord, StoreError, now,
};

#[async_trait::async_trait]
impl JobStore for SqliteStore {
    async fn insert_model(
        &self,
        m: &ModelRecord,
        max_stored_bytes: u64,
    ) -> Result<Option<ModelRecord>, StoreError> {
        self.insert_upload(m, max_stored_bytes).await
    }

    async fn model(&self, tenant: &str, id: &str) -> Result<Option<ModelRecord>, StoreError> {
        self.upload_by("id", tenant, id).await
    }

    async fn model_by_hash(
        &self,
        tenant: &str,
        sha256: &str,
    ) -> Result<Option<ModelRecord>, StoreError> {
        self.upload_by("sha256", tenant, sha256).await
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
        self.upload_by("id", tenant, id).await
    }

    async fn dataset_by_hash(
        &self,
        tenant: &str,
        sha256: &str,
    ) -> Result<Option<DatasetRecord>, StoreError> {
        self.upload_by("sha256", tenant, sha256).await
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

    async fn active_jobs_using(&self, tenant: &str, id: &str) -> Result<Vec<String>, StoreError> {
        let (tenant, id) = (tenant.to_string(), id.to_string());
        self.with(move |c| {
            let mut stmt = c.prepare(
                "SELECT id FROM jobs WHERE tenant = ?1 AND state IN ('queued', 'running') \
                 AND (json_extract(spec, '$.model') = ?2 OR json_extract(spec, '$.dataset') = ?2) \
                 ORDER BY created_at",
            )?;
            let rows = stmt.query_map(params![tenant, id], |r| r.get(0))?;
            rows.collect()
        })
        .await
    }

    async fn hold_object(&self, sha256: &str, size: u64) -> Result<(), StoreError> {
        let sha = sha256.to_string();
        self.with(move |c| {
            c.execute(
                "INSERT INTO objects (sha256, size, refs) VALUES (?1, ?2, 1) \
                 ON CONFLICT (sha256) DO UPDATE SET refs = refs + 1",
                params![sha, size as i64],
            )
            .map(|_| ())
        })
        .await
    }

    async fn drop_object(&self, sha256: &str) -> Result<bool, StoreError> {
        let sha = sha256.to_string();
        self.with(move |c| {
            c.execute(
                "UPDATE objects SET refs = refs - 1 WHERE sha256 = ?1",
                params![sha],
            )?;
            let gone = c.execute(
                "DELETE FROM objects WHERE sha256 = ?1 AND refs <= 0",
                params![sha],
            )?;
            Ok(gone > 0)
        })
        .await
    }

    async fn recount_objects(&self) -> Result<std::collections::HashSet<String>, StoreError> {
        self.with(|c| {
            let tx = c.unchecked_transaction()?;
            tx.execute_batch(
                "DELETE FROM objects;
                 INSERT INTO objects (sha256, size, refs)
                 SELECT sha256, MAX(size), COUNT(*) FROM (
                     SELECT sha256, size FROM models
                     UNION ALL SELECT sha256, size FROM datasets
                     UNION ALL SELECT json_extract(a.value, '$.sha256'), json_extract(a.value, '$.size')
                         FROM jobs, json_each(jobs.artifacts) AS a
                         WHERE json_valid(jobs.artifacts) AND json_type(a.value) = 'object'
                     UNION ALL SELECT pruned_sha, pruned_size FROM benchmarks
                         WHERE state IN ('queued', 'running')
                 ) WHERE sha256 IS NOT NULL GROUP BY sha256;",
            )?;
            let keys = {
                let mut stmt = tx.prepare("SELECT sha256 FROM objects")?;
                let rows = stmt.query_map([], |r| r.get::<_, String>(0))?;
                rows.collect::<rusqlite::Result<_>>()?
            };
            tx.commit()?;
            Ok(keys)
        })
        .await
    }

    async fn object_references(&self, sha256: &str) -> Result<u64, StoreError> {
        let sha = sha256.to_string();
        self.with(move |c| {
            c.query_row(
                "SELECT refs FROM objects WHERE sha256 = ?1",
                params![sha],
                |r| r.get::<_, i64>(0),
            )
            .optional()
            .map(|refs| refs.unwrap_or(0).max(0) as u64)
        })
        .await
    }

    async fn try_lock_object(
        &self,
        sha256: &str,
        holder: &str,
        lease: std::time::Duration,
    ) -> Result<bool, StoreError> {
        let now = std::time::Instant::now();
        let mut locks = self.object_locks();
        match locks.get(sha256) {
            Some(l) if l.until > now => Ok(false),
            _ => {
                locks.insert(
                    sha256.to_string(),
                    ObjectLock {
                        holder: holder.to_string(),
                        until: now + lease,
                    },
                );
                Ok(true)
            }
        }
    }

    async fn renew_object_lock(
        &self,
        sha256: &str,
        holder: &str,
        lease: std::time::Duration,
    ) -> Result<bool, StoreError> {
        let now = std::time::Instant::now();
        match self.object_locks().get_mut(sha256) {
            Some(l) if l.holder == holder && l.until > now => {
                l.until = now + lease;
                Ok(true)
            }
            _ => Ok(false),
        }
    }

    async fn unlock_object(&self, sha256: &str, holder: &str) -> Result<(), StoreError> {
        let mut locks = self.object_locks();
        if locks.get(sha256).is_some_and(|l| l.holder == holder) {
            locks.remove(sha256);
        }
        Ok(())
    }

    async fn stored_bytes(&self, tenant: &str) -> Result<u64, StoreError> {
        let tenant = tenant.to_string();
        self.with(move |c| super::uploads::stored_bytes(c, &tenant))
            .await
    }

    async fn active_load(&self, tenant: &str) -> Result<(u64, u64), StoreError> {
        let tenant = tenant.to_string();
        self.with(move |c| active_load(c, &tenant)).await
    }

    async fn ended_jobs(&self, ids: &[String]) -> Result<Vec<String>, StoreError> {
        let ids = ids.to_vec();
        self.with(move |c| {
            let mut stmt = c.prepare("SELECT state FROM jobs WHERE id = ?1")?;
            let mut ended = Vec::new();
            for id in ids {
                let state: Option<String> = stmt.query_row(params![id], |r| r.get(0)).optional()?;
                if !matches!(state.as_deref(), Some("queued" | "running")) {
                    ended.push(id);
                }
            }
            Ok(ended)
        })
        .await
    }

    async fn insert_job(
        &self,
        j: &JobRecord,
        limits: ActiveLimits,
    ) -> Result<Option<JobRecord>, StoreError> {
        let j = j.clone();
        let existing = self.with(move |c| {
            let tx = c.unchecked_transaction()?;
            let same_key = |tx: &rusqlite::Transaction| {
                tx.query_row(
                    &format!("SELECT {JOB_COLUMNS} FROM jobs WHERE tenant = ?1 AND idempotency_key = ?2"),
                    params![j.tenant, j.idempotency_key],
                    job_row,
                )
                .optional()
            };
            if j.idempotency_key.is_some()
                && let Some(existing) = same_key(&tx)?
            {
                return Ok(Ok(Some(existing)));
            }
            let (jobs, steps) = active_load(&tx, &j.tenant)?;
            let requested = j
                .spec
                .pointer("/training/steps")
                .and_then(serde_json::Value::as_u64)
                .unwrap_or(0);
            if jobs >= limits.jobs || steps.saturating_add(requested) > limits.training_steps {
                return Ok(Err(StoreError::TooManyActive {
                    jobs,
                    steps,
                    requested,
                    limits,
                }));
            }
            let inserted = tx.execute(
                &format!("INSERT INTO jobs ({JOB_COLUMNS}) VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10, ?11, ?12, ?13, ?14) \
                          ON CONFLICT (tenant, idempotency_key) DO NOTHING"),
                params![
                    j.id, j.tenant, j.spec.to_string(), j.state.as_str(), j.phase, j.progress,
                    j.metrics.to_string(), serde_json::json!(j.artifacts).to_string(), j.error, j.attempts,
                    j.cancel_requested as i64, j.idempotency_key, j.created_at, j.updated_at
                ],
            )?;
            if inserted == 0 {
                return same_key(&tx).map(Ok);
            }
            append_event(&tx, &j.id, "state")?;
            if let Some(url) = crate::notify_url(&j.spec) {
                tx.execute(
                    "INSERT INTO notifications (job_id, url, state, due_ms, attempts) VALUES (?1, ?2, 'pending', 0, 0)",
                    params![j.id, url],
                )?;
            }
            tx.commit()?;
            Ok(Ok(None))
        })
        .await??;
        if existing.is_none() {
            self.work_arrived();
        }
        Ok(existing)
    }

    async fn job(&self, tenant: &str, id: &str) -> Result<Option<JobRecord>, StoreError> {
        self.find(
            format!("SELECT {JOB_COLUMNS} FROM jobs WHERE tenant = ?1 AND id = ?2"),
            tenant,
            id,
            job_row,
        )
        .await
    }

    async fn job_by_key(&self, tenant: &str, key: &str) -> Result<Option<JobRecord>, StoreError> {
        let (tenant, key) = (tenant.to_string(), key.to_string());
        self.with(move |c| {
            c.query_row(
                &format!(
                    "SELECT {JOB_COLUMNS} FROM jobs WHERE tenant = ?1 AND idempotency_key = ?2"
                ),
                params![tenant, key],
                job_row,
            )
            .optional()
        })
        .await
    }

    async fn jobs(
        &self,
        tenant: &str,
        state: Option<JobState>,
        limit: u32,
        offset: u32,
    ) -> Result<Vec<JobRecord>, StoreError> {
        let (tenant, state) = (tenant.to_string(), state.map(JobState::as_str));
        self.with(move |c| {
            let mut stmt = c.prepare(&format!(
                "SELECT {JOB_COLUMNS} FROM jobs WHERE tenant = ?1 AND (?2 IS NULL OR state = ?2) \
                 ORDER BY created_at DESC, id DESC LIMIT ?3 OFFSET ?4"
            ))?;
            let rows = stmt.query_map(params![tenant, state, limit, offset], job_row)?;
            rows.collect()
        })
        .await
    }

    async fn cancel_job(&self, tenant: &str, id: &str) -> Result<Option<JobRecord>, StoreError> {
        let (tenant, id) = (tenant.to_string(), id.to_string());
        let (ts, _) = now();
        self.with(move |c| {
            c.execute(
                "UPDATE jobs SET state = CASE WHEN state = 'queued' THEN 'cancelled' ELSE state END, \
                 cancel_requested = CASE WHEN state IN ('queued', 'running') THEN 1 ELSE cancel_requested END, \
                 updated_at = ?3 WHERE tenant = ?1 AND id = ?2",
                params![tenant, id, ts],
            )?;
            append_event(c, &id, "state")?;
            c.query_row(
                &format!("SELECT {JOB_COLUMNS} FROM jobs WHERE tenant = ?1 AND id = ?2"),
                params![tenant, id],
                job_row,
            )
            .optional()
        })
        .await
    }

    async fn events(&self, job_id: &str, after: i64) -> Result<Vec<JobEvent>, StoreError> {
        let id = job_id.to_string();
        self.with(move |c| {
            let mut stmt = c.prepare(
                "SELECT seq, kind, data FROM job_events WHERE job_id = ?1 AND seq > ?2 ORDER BY seq LIMIT 500",
            )?;
            let rows = stmt.query_map(params![id, after], |r| {
                Ok(JobEvent {
                    seq: r.get(0)?,
                    kind: r.get(1)?,
                    data: json_column(r, 2)?,
                })
            })?;
            rows.collect()
        })
        .await
    }

    async fn job_counts(&self) -> Result<std::collections::HashMap<JobState, u64>, StoreError> {
        self.with(|c| {
            let mut stmt = c.prepare("SELECT state, COUNT(*) FROM jobs GROUP BY state")?;
            let rows = stmt.query_map([], |r| {
                Ok((state_column(r, 0)?, r.get::<_, i64>(1)? as u64))
            })?;
            rows.collect()
        })
        .await
    }

    async fn ping(&self) -> Result<(), StoreError> {
        self.with(|c| c.query_row("SELECT 1", [], |_| Ok(()))).await
    }
}

/// A tenant's queued or running jobs and the training steps they ask for.
fn active_load(c: &rusqlite::Connection, tenant: &str) -> rusqlite::Result<(u64, u64)> {
    c.query_row(
        "SELECT COUNT(*), COALESCE(SUM(json_extract(spec, '$.training.steps')), 0) \
         FROM jobs WHERE tenant = ?1 AND state IN ('queued', 'running')",
        params![tenant],
        |r| {
            Ok((
                r.get::<_, i64>(0)?.max(0) as u64,
                r.get::<_, i64>(1)?.max(0) as u64,
            ))
        },
    )
}
