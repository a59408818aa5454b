//! The embedded job store: one SQLite file in the data directory.

use std::path::Path;
use std::sync::{Arc, Mutex};

use rusqlite::{Connection, OptionalExtension, params};

use super::{JobStore, ModelRecord, StoreError};

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
";

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
        Ok(Self {
            conn: Arc::new(Mutex::new(conn)),
        })
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

fn model_row(row: &rusqlite::Row<'_>) -> rusqlite::Result<ModelRecord> {
    let inspect: String = row.get(6)?;
    Ok(ModelRecord {
        id: row.get(0)?,
        tenant: row.get(1)?,
        name: row.get(2)?,
        sha256: row.get(3)?,
        size: row.get::<_, i64>(4)? as u64,
        created_at: row.get(5)?,
        inspect: serde_json::from_str(&inspect).unwrap_or(serde_json::Value::Null),
    })
}

const MODEL_COLUMNS: &str = "id, tenant, name, sha256, size, created_at, inspect";

#[async_trait::async_trait]
impl JobStore for SqliteStore {
    async fn insert_model(&self, m: &ModelRecord) -> Result<(), StoreError> {
        let m = m.clone();
        self.with(move |c| {
            c.execute(
                "INSERT INTO models (id, tenant, name, sha256, size, created_at, inspect) VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7)",
                params![m.id, m.tenant, m.name, m.sha256, m.size as i64, m.created_at, m.inspect.to_string()],
            )
            .map(|_| ())
        })
        .await
    }

    async fn model(&self, tenant: &str, id: &str) -> Result<Option<ModelRecord>, StoreError> {
        let (tenant, id) = (tenant.to_string(), id.to_string());
        self.with(move |c| {
            c.query_row(
                &format!("SELECT {MODEL_COLUMNS} FROM models WHERE tenant = ?1 AND id = ?2"),
                params![tenant, id],
                model_row,
            )
            .optional()
        })
        .await
    }

    async fn model_by_hash(
        &self,
        tenant: &str,
        sha256: &str,
    ) -> Result<Option<ModelRecord>, StoreError> {
        let (tenant, sha) = (tenant.to_string(), sha256.to_string());
        self.with(move |c| {
            c.query_row(
                &format!("SELECT {MODEL_COLUMNS} FROM models WHERE tenant = ?1 AND sha256 = ?2"),
                params![tenant, sha],
                model_row,
            )
            .optional()
        })
        .await
    }

    async fn models(
        &self,
        tenant: &str,
        limit: u32,
        offset: u32,
    ) -> Result<Vec<ModelRecord>, StoreError> {
        let tenant = tenant.to_string();
        self.with(move |c| {
            let mut stmt = c.prepare(&format!(
                "SELECT {MODEL_COLUMNS} FROM models WHERE tenant = ?1 ORDER BY created_at DESC, id DESC LIMIT ?2 OFFSET ?3"
            ))?;
            let rows = stmt.query_map(params![tenant, limit, offset], model_row)?;
            rows.collect()
        })
        .await
    }

    async fn delete_model(
        &self,
        tenant: &str,
        id: &str,
    ) -> Result<Option<ModelRecord>, StoreError> {
        let existing = self.model(tenant, id).await?;
        if existing.is_some() {
            let (tenant, id) = (tenant.to_string(), id.to_string());
            self.with(move |c| {
                c.execute(
                    "DELETE FROM models WHERE tenant = ?1 AND id = ?2",
                    params![tenant, id],
                )
                .map(|_| ())
            })
            .await?;
        }
        Ok(existing)
    }

    async fn references(&self, sha256: &str) -> Result<u64, StoreError> {
        let sha = sha256.to_string();
        self.with(move |c| {
            c.query_row(
                "SELECT COUNT(*) FROM models WHERE sha256 = ?1",
                params![sha],
                |r| r.get::<_, i64>(0),
            )
            .map(|n| n as u64)
        })
        .await
    }

    async fn ping(&self) -> Result<(), StoreError> {
        self.with(|c| c.query_row("SELECT 1", [], |_| Ok(()))).await
    }
}
