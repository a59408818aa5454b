//! Benchmark tasks in SQLite: a row per task, claimed by device kind in the order
//! they were asked for.

use std::time::Duration;

use effp_protocol::{BenchmarkResult, BenchmarkState};
use rusqlite::{OptionalExtension, params};

use super::{SqliteStore, typed_column};
use crate::benchmarks::{ended, gave_up_message, lost};
use crate::{BenchmarkRecord, Benchmarks, StoreError, expired_message};

const COLUMNS: &str = "id, job_id, tenant, request, state, attempts, agent, created_at, claim_by_ms, \
                       lease_until_ms, original_sha, original_size, pruned_sha, pruned_size, result, error";

fn row(r: &rusqlite::Row<'_>) -> rusqlite::Result<BenchmarkRecord> {
    let state: String = r.get(4)?;
    let result: Option<String> = r.get(14)?;
    Ok(BenchmarkRecord {
        id: r.get(0)?,
        job_id: r.get(1)?,
        tenant: r.get(2)?,
        request: typed_column(r, 3)?,
        state: BenchmarkState::parse(&state).ok_or_else(|| {
            rusqlite::Error::FromSqlConversionFailure(
                4,
                rusqlite::types::Type::Text,
                format!("'{state}' is not a benchmark state").into(),
            )
        })?,
        attempts: r.get(5)?,
        agent: r.get(6)?,
        created_at: r.get(7)?,
        claim_by_ms: r.get(8)?,
        lease_until_ms: r.get(9)?,
        original: (r.get(10)?, r.get::<_, i64>(11)? as u64),
        pruned: (r.get(12)?, r.get::<_, i64>(13)? as u64),
        result: result.and_then(|t| serde_json::from_str(&t).ok()),
        error: r.get(15)?,
    })
}

#[async_trait::async_trait]
impl Benchmarks for SqliteStore {
    async fn insert_benchmark(&self, b: &BenchmarkRecord) -> Result<(), StoreError> {
        let b = b.clone();
        let request =
            serde_json::to_string(&b.request).map_err(|e| StoreError::Backend(e.to_string()))?;
        self.with(move |c| {
            c.execute(
                "INSERT INTO benchmarks (id, job_id, tenant, device, request, state, attempts, agent, \
                 created_at, created_seq, claim_by_ms, lease_until_ms, original_sha, original_size, \
                 pruned_sha, pruned_size, result, error) VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, \
                 (SELECT COALESCE(MAX(created_seq), 0) + 1 FROM benchmarks), ?10, ?11, ?12, ?13, ?14, ?15, NULL, NULL)",
                params![
                    b.id,
                    b.job_id,
                    b.tenant,
                    b.request.device,
                    request,
                    b.state.as_str(),
                    b.attempts,
                    b.agent,
                    b.created_at,
                    b.claim_by_ms,
                    b.lease_until_ms,
                    b.original.0,
                    b.original.1 as i64,
                    b.pruned.0,
                    b.pruned.1 as i64,
                ],
            )
            .map(|_| ())
        })
        .await
    }

    async fn benchmark(&self, id: &str) -> Result<Option<BenchmarkRecord>, StoreError> {
        let id = id.to_string();
        self.with(move |c| {
            c.query_row(
                &format!("SELECT {COLUMNS} FROM benchmarks WHERE id = ?1"),
                params![id],
                row,
            )
            .optional()
        })
        .await
    }

    async fn job_benchmarks(&self, job_id: &str) -> Result<Vec<BenchmarkRecord>, StoreError> {
        let job_id = job_id.to_string();
        self.with(move |c| {
            let mut stmt = c.prepare(&format!(
                "SELECT {COLUMNS} FROM benchmarks WHERE job_id = ?1 ORDER BY created_seq"
            ))?;
            stmt.query_map(params![job_id], row)?.collect()
        })
        .await
    }

    async fn claim_benchmark(
        &self,
        kind: &str,
        agent: &str,
        lease: Duration,
        max_attempts: u32,
    ) -> Result<Option<BenchmarkRecord>, StoreError> {
        let (kind, agent, now) = (kind.to_string(), agent.to_string(), crate::now().1);
        let until = now + lease.as_millis() as i64;
        self.with(move |c| {
            let tx = c.unchecked_transaction()?;
            tx.execute(
                "UPDATE benchmarks SET state = 'expired', error = ?3 \
                 WHERE device = ?1 AND state = 'queued' AND claim_by_ms < ?2",
                params![kind, now, expired_message(&kind)],
            )?;
            tx.execute(
                "UPDATE benchmarks SET state = 'failed', error = ?4 \
                 WHERE device = ?1 AND state = 'running' AND lease_until_ms < ?2 AND attempts >= ?3",
                params![
                    kind,
                    now,
                    max_attempts,
                    gave_up_message(max_attempts)
                ],
            )?;
            let id: Option<String> = tx
                .query_row(
                    "SELECT id FROM benchmarks WHERE device = ?1 AND \
                     (state = 'queued' OR (state = 'running' AND lease_until_ms < ?2)) \
                     ORDER BY created_seq LIMIT 1",
                    params![kind, now],
                    |r| r.get(0),
                )
                .optional()?;
            let Some(id) = id else {
                tx.commit()?;
                return Ok(None);
            };
            tx.execute(
                "UPDATE benchmarks SET state = 'running', attempts = attempts + 1, agent = ?2, \
                 lease_until_ms = ?3 WHERE id = ?1",
                params![id, agent, until],
            )?;
            let claimed = tx.query_row(
                &format!("SELECT {COLUMNS} FROM benchmarks WHERE id = ?1"),
                params![id],
                row,
            )?;
            tx.commit()?;
            Ok(Some(claimed))
        })
        .await
    }

    async fn renew_benchmark(
        &self,
        id: &str,
        agent: &str,
        attempt: u32,
        lease: Duration,
    ) -> Result<(), StoreError> {
        let (key, agent) = (id.to_string(), agent.to_string());
        let until = crate::now().1 + lease.as_millis() as i64;
        let changed = self
            .with(move |c| {
                c.execute(
                    "UPDATE benchmarks SET lease_until_ms = ?4 \
                     WHERE id = ?1 AND agent = ?2 AND attempts = ?3 AND state = 'running'",
                    params![key, agent, attempt, until],
                )
            })
            .await?;
        if changed == 0 {
            return Err(lost(id, attempt));
        }
        Ok(())
    }

    async fn finish_benchmark(
        &self,
        id: &str,
        agent: &str,
        attempt: u32,
        outcome: Result<BenchmarkResult, String>,
    ) -> Result<(), StoreError> {
        let (key, agent) = (id.to_string(), agent.to_string());
        let (state, result, error) = ended(outcome)?;
        let changed = self
            .with(move |c| {
                c.execute(
                    "UPDATE benchmarks SET state = ?4, result = ?5, error = ?6, lease_until_ms = 0 \
                     WHERE id = ?1 AND agent = ?2 AND attempts = ?3 AND state = 'running'",
                    params![key, agent, attempt, state.as_str(), result, error],
                )
            })
            .await?;
        if changed == 0 {
            return Err(lost(id, attempt));
        }
        Ok(())
    }

    async fn expire_benchmark(&self, id: &str) -> Result<bool, StoreError> {
        let (id, now) = (id.to_string(), crate::now().1);
        self.with(move |c| {
            let tx = c.unchecked_transaction()?;
            let device: Option<String> = tx
                .query_row(
                    "SELECT device FROM benchmarks WHERE id = ?1 AND state = 'queued' AND claim_by_ms < ?2",
                    params![id, now],
                    |r| r.get(0),
                )
                .optional()?;
            let Some(device) = device else {
                return Ok(false);
            };
            tx.execute(
                "UPDATE benchmarks SET state = 'expired', error = ?2 WHERE id = ?1",
                params![id, expired_message(&device)],
            )?;
            tx.commit()?;
            Ok(true)
        })
        .await
    }
}
