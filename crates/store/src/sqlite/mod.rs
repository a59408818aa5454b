//! The embedded job store and queue: one SQLite file in the data directory, used by
//! one process (which runs the API and the jobs' worker processes).

mod benchmarks;
mod job_store;
mod lock;
mod notifications;
mod queue;
mod uploads;

use effp_protocol::JobState;
use std::collections::HashMap;
use std::path::Path;
use std::sync::{Arc, Mutex};

use rusqlite::{Connection, OptionalExtension, params};

use crate::{JobRecord, StoreError};

/// Who holds a lock on stored content, and until when.
#[derive(Debug)]
pub(super) struct ObjectLock {
    pub(super) holder: String,
    pub(super) until: std::time::Instant,
}

/// Resource metadata and the work queue in SQLite (WAL mode, one connection behind a
/// lock; calls run on the blocking pool).
#[derive(Debug, Clone)]
pub struct SqliteStore {
    conn: Arc<Mutex<Connection>>,
    /// Wakes idle workers of this process when work arrives.
    wake: Arc<tokio::sync::Notify>,
    /// Held while the store is open: the database serves one process.
    _lock: Arc<lock::ExclusiveLock>,
    /// Locks on stored content. In memory: no other process shares this database.
    object_locks: Arc<Mutex<HashMap<String, ObjectLock>>>,
    /// Jobs a previous process left running, queued again at open.
    recovered: u64,
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
CREATE TABLE IF NOT EXISTS notifications (
    job_id TEXT PRIMARY KEY,
    url TEXT NOT NULL,
    state TEXT NOT NULL,
    due_ms INTEGER NOT NULL,
    attempts INTEGER NOT NULL,
    last_error TEXT
);
CREATE INDEX IF NOT EXISTS notifications_due ON notifications (state, due_ms);
CREATE TABLE IF NOT EXISTS benchmarks (
    id TEXT PRIMARY KEY,
    job_id TEXT NOT NULL,
    tenant TEXT NOT NULL,
    device TEXT NOT NULL,
    request TEXT NOT NULL,
    state TEXT NOT NULL,
    attempts INTEGER NOT NULL,
    agent TEXT,
    created_at TEXT NOT NULL,
    created_seq INTEGER NOT NULL,
    claim_by_ms INTEGER NOT NULL,
    lease_until_ms INTEGER NOT NULL,
    original_sha TEXT NOT NULL,
    original_size INTEGER NOT NULL,
    pruned_sha TEXT NOT NULL,
    pruned_size INTEGER NOT NULL,
    result TEXT,
    error TEXT
);
CREATE INDEX IF NOT EXISTS benchmarks_by_job ON benchmarks (job_id, created_seq);
CREATE INDEX IF NOT EXISTS benchmarks_claimable ON benchmarks (device, state, created_seq);
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

/// A JSON column of a typed value; text that does not hold one is a corrupt row.
fn typed_column<T: serde::de::DeserializeOwned>(
    row: &rusqlite::Row<'_>,
    i: usize,
) -> rusqlite::Result<T> {
    let text: String = row.get(i)?;
    serde_json::from_str(&text).map_err(|e| {
        rusqlite::Error::FromSqlConversionFailure(i, rusqlite::types::Type::Text, e.into())
    })
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
        artifacts: typed_column(row, 7)?,
        error: row.get(8)?,
        attempts: row.get(9)?,
        cancel_requested: row.get::<_, i64>(10)? != 0,
        idempotency_key: row.get(11)?,
        created_at: row.get(12)?,
        updated_at: row.get(13)?,
        notification: None,
        benchmarks: Vec::new(),
    })
}

fn backend(e: impl std::fmt::Display) -> StoreError {
    StoreError::Backend(e.to_string())
}

impl SqliteStore {
    /// Opens (creating) the database at `path`, for this process only (a second
    /// process is refused with [`StoreError::InUse`]). Jobs that a previous process
    /// left running are claimable again at once: it is gone, so nobody runs them.
    pub fn open(path: &Path) -> Result<Self, StoreError> {
        let lock = lock::ExclusiveLock::acquire(path)?;
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
        let recovered = conn
            .execute(
                "UPDATE jobs SET lease_until = 0 WHERE state = 'running'",
                [],
            )
            .map_err(backend)? as u64;
        Ok(Self {
            conn: Arc::new(Mutex::new(conn)),
            wake: Arc::new(tokio::sync::Notify::new()),
            _lock: Arc::new(lock),
            object_locks: Arc::default(),
            recovered,
        })
    }

    /// Jobs the previous process left running, which [`SqliteStore::open`] made
    /// claimable again.
    pub fn recovered(&self) -> u64 {
        self.recovered
    }

    /// Tells idle workers that a claim may now find work. A worker that is between a
    /// claim and its wait keeps the stored permit, so no wake-up is lost.
    fn work_arrived(&self) {
        self.wake.notify_waiters();
        self.wake.notify_one();
    }

    /// The row of `sql` (whose parameters are a tenant and one value), if any.
    pub(super) async fn find<T: Send + 'static>(
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
    pub(super) async fn page<T: Send + 'static>(
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
    pub(super) async fn delete_row(
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

    /// The locks on stored content (a poisoned mutex still holds a usable map: every
    /// change to it is one insert or remove).
    pub(super) fn object_locks(&self) -> std::sync::MutexGuard<'_, HashMap<String, ObjectLock>> {
        self.object_locks
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    pub(super) async fn with<T: Send + 'static>(
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
