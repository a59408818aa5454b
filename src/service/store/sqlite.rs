//! The embedded job store: one SQLite file in the data directory.

use effp_protocol::JobState;
use std::path::Path;
use std::sync::{Arc, Mutex};

use rusqlite::{Connection, OptionalExtension, params};

use super::{DatasetRecord, JobEvent, JobRecord, JobStore, ModelRecord, Queue, StoreError};

/// Resource metadata in SQLite (WAL mode, one connection behind a lock; calls run
/// on the blocking pool).
#[derive(Debug, Clone)]
pub struct SqliteStore {
    conn: Arc<Mutex<Connection>>,
}

const SCHEMA: &str = "
CREATE TABLE IF NOT EXISTS models (
    id TEXT PRIMARY KEY,
    tenant TEXT NOT NULL,
    name TEXT NOT NULL,
    sha256 TEXT NOT NULL,
    size INTEGER NOT NULL,
    created_at TEXT NOT NULL,
    inspect TEXT NOT NULL
);
CREATE INDEX IF NOT EXISTS models_by_tenant ON models (tenant, created_at);
CREATE INDEX IF NOT EXISTS models_by_hash ON models (sha256);
CREATE TABLE IF NOT EXISTS datasets (
    id TEXT PRIMARY KEY,
    tenant TEXT NOT NULL,
    name TEXT NOT NULL,
    sha256 TEXT NOT NULL,
    size INTEGER NOT NULL,
    created_at TEXT NOT NULL,
    summary TEXT NOT NULL
);
CREATE INDEX IF NOT EXISTS datasets_by_tenant ON datasets (tenant, created_at);
CREATE INDEX IF NOT EXISTS datasets_by_hash ON datasets (sha256);
CREATE TABLE IF NOT EXISTS jobs (
    id TEXT PRIMARY KEY,
    tenant TEXT NOT NULL,
    spec TEXT NOT NULL,
    state TEXT NOT NULL,
    phase TEXT NOT NULL,
    progress REAL NOT NULL,
    metrics TEXT NOT NULL,
    artifacts TEXT NOT NULL,
    error TEXT,
    attempts INTEGER NOT NULL,
    cancel_requested INTEGER NOT NULL,
    idempotency_key TEXT,
    created_at TEXT NOT NULL,
    updated_at TEXT NOT NULL,
    lease_until INTEGER NOT NULL DEFAULT 0,
    UNIQUE (tenant, idempotency_key)
);
CREATE INDEX IF NOT EXISTS jobs_by_tenant ON jobs (tenant, created_at);
CREATE INDEX IF NOT EXISTS jobs_by_state ON jobs (state, created_at);
CREATE TABLE IF NOT EXISTS job_events (
    seq INTEGER PRIMARY KEY AUTOINCREMENT,
    job_id TEXT NOT NULL,
    kind TEXT NOT NULL,
    data TEXT NOT NULL
);
CREATE INDEX IF NOT EXISTS job_events_by_job ON job_events (job_id, seq);
CREATE TABLE IF NOT EXISTS objects (
    sha256 TEXT PRIMARY KEY,
    size INTEGER NOT NULL,
    refs INTEGER NOT NULL
);
";

/// Changes to tables of earlier versions, applied when their column is missing.
const MIGRATIONS: &[(&str, &str, &str)] = &[(
    "jobs",
    "claimed_at",
    "ALTER TABLE jobs ADD COLUMN claimed_at INTEGER NOT NULL DEFAULT 0",
)];

/// One record per tenant and content: the same file uploaded twice at once gives one
/// model. Created after the migrations; a database from before this index that holds
/// duplicates keeps working without it.
const UNIQUE_CONTENT: &str = "
CREATE UNIQUE INDEX IF NOT EXISTS models_unique_content ON models (tenant, sha256);
CREATE UNIQUE INDEX IF NOT EXISTS datasets_unique_content ON datasets (tenant, sha256);
CREATE INDEX IF NOT EXISTS jobs_by_tenant_state ON jobs (tenant, state);
";

/// Appends an event carrying the job's public state as it is now.
fn append_event(c: &Connection, job_id: &str, kind: &str) -> rusqlite::Result<()> {
    c.execute(
        "INSERT INTO job_events (job_id, kind, data) \
         SELECT id, ?2, json_object('state', state, 'phase', phase, 'progress', progress, \
                'metrics', json(metrics), 'artifacts', json(artifacts), 'error', error, 'attempts', attempts) \
         FROM jobs WHERE id = ?1",
        params![job_id, kind],
    )
    .map(|_| ())
}

const JOB_COLUMNS: &str = "id, tenant, spec, state, phase, progress, metrics, artifacts, error, attempts, \
                           cancel_requested, idempotency_key, created_at, updated_at";

fn json_column(row: &rusqlite::Row<'_>, i: usize) -> rusqlite::Result<serde_json::Value> {
    let text: String = row.get(i)?;
    Ok(serde_json::from_str(&text).unwrap_or(serde_json::Value::Null))
}

/// A job state column; text that names no state is a corrupt row.
fn state_column(row: &rusqlite::Row<'_>, i: usize) -> rusqlite::Result<JobState> {
    let text: String = row.get(i)?;
    text.parse().map_err(|e: String| {
        rusqlite::Error::FromSqlConversionFailure(i, rusqlite::types::Type::Text, e.into())
    })
}

fn job_row(row: &rusqlite::Row<'_>) -> rusqlite::Result<JobRecord> {
    Ok(JobRecord {
        id: row.get(0)?,
        tenant: row.get(1)?,
        spec: json_column(row, 2)?,
        state: state_column(row, 3)?,
        phase: row.get(4)?,
        progress: row.get(5)?,
        metrics: json_column(row, 6)?,
        artifacts: json_column(row, 7)?,
        error: row.get(8)?,
        attempts: row.get(9)?,
        cancel_requested: row.get::<_, i64>(10)? != 0,
        idempotency_key: row.get(11)?,
        created_at: row.get(12)?,
        updated_at: row.get(13)?,
    })
}

/// Now as an RFC 3339 timestamp and as Unix milliseconds.
pub fn now() -> (String, i64) {
    let t = std::time::SystemTime::now();
    let ms = t
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as i64);
    (humantime::format_rfc3339_millis(t).to_string(), ms)
}

fn backend(e: impl std::fmt::Display) -> StoreError {
    StoreError::Backend(e.to_string())
}

impl SqliteStore {
    /// Opens (creating) the database at `path`.
    pub fn open(path: &Path) -> Result<Self, StoreError> {
        let conn = Connection::open(path).map_err(backend)?;
        conn.pragma_update(None, "journal_mode", "WAL")
            .map_err(backend)?;
        conn.pragma_update(None, "synchronous", "NORMAL")
            .map_err(backend)?;
        conn.execute_batch(SCHEMA).map_err(backend)?;
        for (table, column, sql) in MIGRATIONS {
            let has: bool = conn
                .query_row(
                    &format!("SELECT COUNT(*) FROM pragma_table_info('{table}') WHERE name = ?1"),
                    params![column],
                    |r| r.get::<_, i64>(0),
                )
                .map_err(backend)?
                > 0;
            if !has {
                conn.execute_batch(sql).map_err(backend)?;
            }
        }
        if let Err(e) = conn.execute_batch(UNIQUE_CONTENT) {
            tracing::warn!(%e, "duplicate records from an earlier version: concurrent uploads of one file may create two");
        }
        Ok(Self {
            conn: Arc::new(Mutex::new(conn)),
        })
    }

    /// The row of `sql` (whose parameters are a tenant and one value), if any.
    async fn find<T: Send + 'static>(
        &self,
        sql: String,
        tenant: &str,
        value: &str,
        map: fn(&rusqlite::Row<'_>) -> rusqlite::Result<T>,
    ) -> Result<Option<T>, StoreError> {
        let (tenant, value) = (tenant.to_string(), value.to_string());
        self.with(move |c| c.query_row(&sql, params![tenant, value], map).optional())
            .await
    }

    /// A tenant's rows of `table`, newest first, `limit` from `offset`.
    async fn page<T: Send + 'static>(
        &self,
        table: &'static str,
        columns: &'static str,
        tenant: &str,
        (limit, offset): (u32, u32),
        map: fn(&rusqlite::Row<'_>) -> rusqlite::Result<T>,
    ) -> Result<Vec<T>, StoreError> {
        let tenant = tenant.to_string();
        self.with(move |c| {
            let mut stmt = c.prepare(&format!(
                "SELECT {columns} FROM {table} WHERE tenant = ?1 ORDER BY created_at DESC, id DESC LIMIT ?2 OFFSET ?3"
            ))?;
            let rows = stmt.query_map(params![tenant, limit, offset], map)?;
            rows.collect()
        })
        .await
    }

    /// Deletes a tenant's row of `table` by id.
    async fn delete_row(
        &self,
        table: &'static str,
        tenant: &str,
        id: &str,
    ) -> Result<(), StoreError> {
        let (tenant, id) = (tenant.to_string(), id.to_string());
        self.with(move |c| {
            c.execute(
                &format!("DELETE FROM {table} WHERE tenant = ?1 AND id = ?2"),
                params![tenant, id],
            )
            .map(|_| ())
        })
        .await
    }

    async fn with<T: Send + 'static>(
        &self,
        f: impl FnOnce(&Connection) -> rusqlite::Result<T> + Send + 'static,
    ) -> Result<T, StoreError> {
        let conn = Arc::clone(&self.conn);
        tokio::task::spawn_blocking(move || {
            let conn = conn
                .lock()
                .map_err(|_| backend("the database lock is poisoned"))?;
            f(&conn).map_err(backend)
        })
        .await
        .map_err(backend)?
    }
}

/// A record of an uploaded file (models, datasets): one table each, the same
/// columns but the last, which holds what checking the upload found.
trait UploadRow: Clone + Send + 'static {
    /// The table.
    const TABLE: &'static str;
    /// Its columns, in the order of [`Self::from_row`] and [`Self::fields`].
    const COLUMNS: &'static str;
    /// The record of a row.
    fn from_row(row: &rusqlite::Row<'_>) -> rusqlite::Result<Self>;
    /// Id, tenant, name, SHA-256, size, creation time and the check's findings.
    fn fields(&self) -> (&str, &str, &str, &str, u64, &str, &serde_json::Value);
}

/// Implements [`UploadRow`] for a record type: its table and the column (and
/// field) holding what checking the upload found.
macro_rules! upload_row {
    ($record:ident, $table:literal, $found:ident) => {
        impl UploadRow for $record {
            const TABLE: &'static str = $table;
            const COLUMNS: &'static str = concat!(
                "id, tenant, name, sha256, size, created_at, ",
                stringify!($found)
            );
            fn from_row(row: &rusqlite::Row<'_>) -> rusqlite::Result<Self> {
                Ok($record {
                    id: row.get(0)?,
                    tenant: row.get(1)?,
                    name: row.get(2)?,
                    sha256: row.get(3)?,
                    size: row.get::<_, i64>(4)? as u64,
                    created_at: row.get(5)?,
                    $found: json_column(row, 6)?,
                })
            }
            fn fields(&self) -> (&str, &str, &str, &str, u64, &str, &serde_json::Value) {
                (
                    &self.id,
                    &self.tenant,
                    &self.name,
                    &self.sha256,
                    self.size,
                    &self.created_at,
                    &self.$found,
                )
            }
        }
    };
}

upload_row!(ModelRecord, "models", inspect);
upload_row!(DatasetRecord, "datasets", summary);

impl SqliteStore {
    /// Records an upload unless the tenant has the same content; then returns that.
    async fn insert_upload<R: UploadRow>(&self, record: &R) -> Result<Option<R>, StoreError> {
        let record = record.clone();
        self.with(move |c| {
            let (id, tenant, name, sha256, size, created_at, found) = record.fields();
            let inserted = c.execute(
                &format!(
                    "INSERT INTO {} ({}) VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7) ON CONFLICT DO NOTHING",
                    R::TABLE,
                    R::COLUMNS
                ),
                params![id, tenant, name, sha256, size as i64, created_at, found.to_string()],
            )?;
            if inserted == 1 {
                return Ok(None);
            }
            c.query_row(
                &format!("SELECT {} FROM {} WHERE tenant = ?1 AND sha256 = ?2", R::COLUMNS, R::TABLE),
                params![tenant, sha256],
                R::from_row,
            )
            .optional()
        })
        .await
    }

    /// A tenant's upload whose `column` (id or sha256) is `value`.
    async fn upload_by<R: UploadRow>(
        &self,
        column: &'static str,
        tenant: &str,
        value: &str,
    ) -> Result<Option<R>, StoreError> {
        self.find(
            format!(
                "SELECT {} FROM {} WHERE tenant = ?1 AND {column} = ?2",
                R::COLUMNS,
                R::TABLE
            ),
            tenant,
            value,
            R::from_row,
        )
        .await
    }

    /// A tenant's uploads, newest first.
    async fn uploads<R: UploadRow>(
        &self,
        tenant: &str,
        limit: u32,
        offset: u32,
    ) -> Result<Vec<R>, StoreError> {
        self.page(R::TABLE, R::COLUMNS, tenant, (limit, offset), R::from_row)
            .await
    }

    /// Deletes a tenant's upload record; returns it.
    async fn delete_upload<R: UploadRow>(
        &self,
        tenant: &str,
        id: &str,
    ) -> Result<Option<R>, StoreError> {
        let existing = self.upload_by::<R>("id", tenant, id).await?;
        if existing.is_some() {
            self.delete_row(R::TABLE, tenant, id).await?;
        }
        Ok(existing)
    }
}

#[async_trait::async_trait]
impl JobStore for SqliteStore {
    async fn insert_model(&self, m: &ModelRecord) -> Result<Option<ModelRecord>, StoreError> {
        self.insert_upload(m).await
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

    async fn insert_dataset(&self, d: &DatasetRecord) -> Result<Option<DatasetRecord>, StoreError> {
        self.insert_upload(d).await
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

    async fn stored_bytes(&self, tenant: &str) -> Result<u64, StoreError> {
        let tenant = tenant.to_string();
        self.with(move |c| {
            c.query_row(
                "SELECT (SELECT COALESCE(SUM(size), 0) FROM models WHERE tenant = ?1) + \
                        (SELECT COALESCE(SUM(size), 0) FROM datasets WHERE tenant = ?1)",
                params![tenant],
                |r| r.get::<_, i64>(0),
            )
            .map(|n| n.max(0) as u64)
        })
        .await
    }

    async fn active_load(&self, tenant: &str) -> Result<(u64, u64), StoreError> {
        let tenant = tenant.to_string();
        self.with(move |c| {
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
        })
        .await
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

    async fn insert_job(&self, j: &JobRecord) -> Result<Option<JobRecord>, StoreError> {
        let j = j.clone();
        self.with(move |c| {
            let tx = c.unchecked_transaction()?;
            let inserted = tx.execute(
                &format!("INSERT INTO jobs ({JOB_COLUMNS}) VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10, ?11, ?12, ?13, ?14) \
                          ON CONFLICT (tenant, idempotency_key) DO NOTHING"),
                params![
                    j.id, j.tenant, j.spec.to_string(), j.state.as_str(), j.phase, j.progress,
                    j.metrics.to_string(), j.artifacts.to_string(), j.error, j.attempts,
                    j.cancel_requested as i64, j.idempotency_key, j.created_at, j.updated_at
                ],
            )?;
            if inserted == 0 {
                return tx
                    .query_row(
                        &format!("SELECT {JOB_COLUMNS} FROM jobs WHERE tenant = ?1 AND idempotency_key = ?2"),
                        params![j.tenant, j.idempotency_key],
                        job_row,
                    )
                    .optional();
            }
            append_event(&tx, &j.id, "state")?;
            tx.commit()?;
            Ok(None)
        })
        .await
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

#[async_trait::async_trait]
impl Queue for SqliteStore {
    async fn claim(
        &self,
        lease: std::time::Duration,
        max_attempts: u32,
    ) -> Result<Option<JobRecord>, StoreError> {
        let (ts, ms) = now();
        let until = ms + lease.as_millis() as i64;
        self.with(move |c| {
            c.execute(
                "UPDATE jobs SET state = 'failed', phase = 'done', updated_at = ?1, \
                 error = 'the job was started ' || attempts || ' times and never finished (its worker died each time)' \
                 WHERE state = 'running' AND lease_until < ?2 AND attempts >= ?3",
                params![ts, ms, max_attempts],
            )?;
            let job = c
                .query_row(
                    &format!(
                        "UPDATE jobs SET state = 'running', attempts = attempts + 1, lease_until = ?1, updated_at = ?2, claimed_at = ?3 \
                         WHERE id = (SELECT id FROM jobs j WHERE j.state = 'queued' OR (j.state = 'running' AND j.lease_until < ?3) \
                                     ORDER BY \
                                       (SELECT COUNT(*) FROM jobs r WHERE r.tenant = j.tenant AND r.state = 'running' AND r.lease_until >= ?3), \
                                       (SELECT COALESCE(MAX(c.claimed_at), 0) FROM jobs c WHERE c.tenant = j.tenant), \
                                       j.created_at, j.id LIMIT 1) \
                         RETURNING {JOB_COLUMNS}"
                    ),
                    params![until, ts, ms],
                    job_row,
                )
                .optional()?;
            if let Some(j) = &job {
                append_event(c, &j.id, "state")?;
            }
            Ok(job)
        })
        .await
    }

    async fn heartbeat(&self, id: &str, lease: std::time::Duration) -> Result<bool, StoreError> {
        let id = id.to_string();
        let (ts, ms) = now();
        let until = ms + lease.as_millis() as i64;
        self.with(move |c| {
            c.execute(
                "UPDATE jobs SET lease_until = ?2, updated_at = ?3 WHERE id = ?1 AND state = 'running'",
                params![id, until, ts],
            )?;
            c.query_row(
                "SELECT cancel_requested FROM jobs WHERE id = ?1",
                params![id],
                |r| r.get::<_, i64>(0),
            )
            .map(|v| v != 0)
        })
        .await
    }

    async fn report(
        &self,
        id: &str,
        phase: &str,
        progress: f64,
        metrics: &serde_json::Value,
    ) -> Result<(), StoreError> {
        let (id, phase, metrics) = (id.to_string(), phase.to_string(), metrics.to_string());
        let (ts, _) = now();
        self.with(move |c| {
            c.execute(
                "UPDATE jobs SET phase = ?2, progress = ?3, metrics = ?4, updated_at = ?5 WHERE id = ?1",
                params![id, phase, progress, metrics, ts],
            )?;
            append_event(c, &id, "progress")
        })
        .await
    }

    async fn release(&self, id: &str) -> Result<(), StoreError> {
        let id = id.to_string();
        let (ts, _) = now();
        self.with(move |c| {
            c.execute(
                "UPDATE jobs SET state = 'queued', phase = 'queued', lease_until = 0, \
                 attempts = MAX(attempts - 1, 0), updated_at = ?2 WHERE id = ?1 AND state = 'running'",
                params![id, ts],
            )?;
            append_event(c, &id, "state")
        })
        .await
    }

    async fn retry(&self, id: &str, reason: &str, max_attempts: u32) -> Result<(), StoreError> {
        let (id, reason) = (id.to_string(), reason.to_string());
        let (ts, _) = now();
        self.with(move |c| {
            c.execute(
                "UPDATE jobs SET lease_until = 0, updated_at = ?2, \
                 state = CASE WHEN attempts >= ?3 THEN 'failed' ELSE 'queued' END, \
                 phase = CASE WHEN attempts >= ?3 THEN 'done' ELSE 'queued' END, \
                 error = CASE WHEN attempts >= ?3 \
                   THEN 'the job was started ' || attempts || ' times and never finished: ' || ?4 \
                   ELSE error END \
                 WHERE id = ?1 AND state = 'running'",
                params![id, ts, max_attempts, reason],
            )?;
            append_event(c, &id, "state")
        })
        .await
    }

    async fn recover_abandoned(&self) -> Result<u64, StoreError> {
        self.with(|c| {
            c.execute(
                "UPDATE jobs SET lease_until = 0 WHERE state = 'running'",
                [],
            )
            .map(|n| n as u64)
        })
        .await
    }

    async fn finish(
        &self,
        id: &str,
        state: JobState,
        error: Option<&str>,
        artifacts: &serde_json::Value,
    ) -> Result<(), StoreError> {
        let (id, state, error, artifacts) = (
            id.to_string(),
            state.as_str(),
            error.map(str::to_string),
            artifacts.to_string(),
        );
        let (ts, _) = now();
        self.with(move |c| {
            c.execute(
                "UPDATE jobs SET state = ?2, error = ?3, artifacts = ?4, phase = 'done', \
                 progress = CASE WHEN ?2 = 'succeeded' THEN 1.0 ELSE progress END, updated_at = ?5 WHERE id = ?1",
                params![id, state, error, artifacts, ts],
            )?;
            append_event(c, &id, "state")
        })
        .await
    }

    async fn depth(&self) -> Result<u64, StoreError> {
        self.with(|c| {
            c.query_row(
                "SELECT COUNT(*) FROM jobs WHERE state = 'queued'",
                [],
                |r| r.get::<_, i64>(0),
            )
            .map(|n| n as u64)
        })
        .await
    }
}
