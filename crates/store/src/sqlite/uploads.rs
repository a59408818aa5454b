//! Models and datasets: one table each, read and written by one generic path.

use rusqlite::{OptionalExtension, params};

use super::{SqliteStore, json_column};
use crate::{DatasetRecord, ModelRecord, StoreError};

/// A record of an uploaded file (models, datasets): one table each, the same
/// columns but the last, which holds what checking the upload found.
pub(super) trait UploadRow: Clone + Send + 'static {
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
    pub(super) async fn insert_upload<R: UploadRow>(
        &self,
        record: &R,
        max_stored_bytes: u64,
    ) -> Result<Option<R>, StoreError> {
        let record = record.clone();
        // The connection is held for the whole closure: the quota check and the
        // insert are one step for every task of this process, the only one using it.
        self.with(move |c| {
            let (id, tenant, name, sha256, size, created_at, found) = record.fields();
            let existing = c
                .query_row(
                    &format!(
                        "SELECT {} FROM {} WHERE tenant = ?1 AND sha256 = ?2",
                        R::COLUMNS,
                        R::TABLE
                    ),
                    params![tenant, sha256],
                    R::from_row,
                )
                .optional()?;
            if existing.is_some() {
                return Ok(Ok(existing));
            }
            let used = stored_bytes(c, tenant)?;
            if used.saturating_add(size) > max_stored_bytes {
                return Ok(Err(StoreError::QuotaExceeded {
                    used,
                    size,
                    limit: max_stored_bytes,
                }));
            }
            c.execute(
                &format!(
                    "INSERT INTO {} ({}) VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7)",
                    R::TABLE,
                    R::COLUMNS
                ),
                params![
                    id,
                    tenant,
                    name,
                    sha256,
                    size as i64,
                    created_at,
                    found.to_string()
                ],
            )?;
            Ok(Ok(None))
        })
        .await?
    }

    /// A tenant's upload whose `column` (id or sha256) is `value`.
    pub(super) async fn upload_by<R: UploadRow>(
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
    pub(super) async fn uploads<R: UploadRow>(
        &self,
        tenant: &str,
        limit: u32,
        offset: u32,
    ) -> Result<Vec<R>, StoreError> {
        self.page(R::TABLE, R::COLUMNS, tenant, (limit, offset), R::from_row)
            .await
    }

    /// Deletes a tenant's upload record; returns it.
    pub(super) async fn delete_upload<R: UploadRow>(
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

/// Bytes of models and datasets `tenant` keeps.
pub(super) fn stored_bytes(c: &rusqlite::Connection, tenant: &str) -> rusqlite::Result<u64> {
    c.query_row(
        "SELECT (SELECT COALESCE(SUM(size), 0) FROM models WHERE tenant = ?1) + \
                (SELECT COALESCE(SUM(size), 0) FROM datasets WHERE tenant = ?1)",
        params![tenant],
        |r| r.get::<_, i64>(0),
    )
    .map(|n| n.max(0) as u64)
}
