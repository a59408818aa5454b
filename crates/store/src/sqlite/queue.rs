//! The work queue on SQLite: the jobs table's state and lease columns.

use std::time::Duration;

use effp_protocol::{Artifacts, JobState};
use rusqlite::{OptionalExtension, params};

use super::{JOB_COLUMNS, SqliteStore, append_event, job_row};
use crate::{JobRecord, Queue, StoreError, now};

#[async_trait::async_trait]
impl Queue for SqliteStore {
    async fn claim(
        &self,
        lease: Duration,
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

    async fn wait_for_work(&self, timeout: Duration) {
        let woken = self.wake.notified();
        // The earliest lease of a running job, in Unix milliseconds: when it runs out
        // the job is claimable.
        let expiry = self
            .with(|c| {
                c.query_row(
                    "SELECT MIN(lease_until) FROM jobs WHERE state = 'running'",
                    [],
                    |r| r.get::<_, Option<i64>>(0),
                )
            })
            .await
            .ok()
            .flatten();
        let wait = match expiry {
            Some(until) => {
                let left = Duration::from_millis(until.saturating_sub(now().1).max(0) as u64);
                // Just past the expiry, so that the claim sees it run out.
                timeout.min(left + Duration::from_millis(5))
            }
            None => timeout,
        };
        let _ = tokio::time::timeout(wait, woken).await;
    }

    async fn heartbeat(&self, id: &str, attempt: u32, lease: Duration) -> Result<bool, StoreError> {
        let (id, id_copy) = (id.to_string(), id.to_string());
        let (ts, ms) = now();
        let until = ms + lease.as_millis() as i64;
        let cancel = self
            .with(move |c| {
                c.query_row(
                    "UPDATE jobs SET lease_until = ?2, updated_at = ?3 \
                     WHERE id = ?1 AND state = 'running' AND attempts = ?4 RETURNING cancel_requested",
                    params![id, until, ts, attempt],
                    |r| r.get::<_, i64>(0),
                )
                .optional()
            })
            .await?;
        held(cancel.map(|v| v != 0), (id_copy.as_str(), attempt))
    }

    async fn report(
        &self,
        id: &str,
        attempt: u32,
        phase: &str,
        progress: f64,
        metrics: &serde_json::Value,
    ) -> Result<(), StoreError> {
        let kind = event_kind(phase);
        let (phase, metrics) = (phase.to_string(), metrics.to_string());
        let (ts, _) = now();
        self.fenced((id, attempt), kind, move |c, job| {
            c.execute(
                "UPDATE jobs SET phase = ?2, progress = ?3, metrics = ?4, updated_at = ?5 \
                 WHERE id = ?1 AND state = 'running' AND attempts = ?6",
                params![job, phase, progress, metrics, ts, attempt],
            )
        })
        .await
    }

    async fn release(&self, id: &str, attempt: u32) -> Result<(), StoreError> {
        let (ts, _) = now();
        self.fenced((id, attempt), "state", move |c, job| {
            c.execute(
                "UPDATE jobs SET state = 'queued', phase = 'queued', lease_until = 0, \
                 attempts = MAX(attempts - 1, 0), updated_at = ?2 \
                 WHERE id = ?1 AND state = 'running' AND attempts = ?3",
                params![job, ts, attempt],
            )
        })
        .await?;
        self.work_arrived();
        Ok(())
    }

    async fn retry(
        &self,
        id: &str,
        attempt: u32,
        reason: &str,
        max_attempts: u32,
    ) -> Result<(), StoreError> {
        let reason = reason.to_string();
        let (ts, _) = now();
        self.fenced((id, attempt), "state", move |c, job| {
            c.execute(
                "UPDATE jobs SET lease_until = 0, updated_at = ?2, \
                 state = CASE WHEN attempts >= ?3 THEN 'failed' ELSE 'queued' END, \
                 phase = CASE WHEN attempts >= ?3 THEN 'done' ELSE 'queued' END, \
                 error = CASE WHEN attempts >= ?3 \
                   THEN 'the job was started ' || attempts || ' times and never finished: ' || ?4 \
                   ELSE error END \
                 WHERE id = ?1 AND state = 'running' AND attempts = ?5",
                params![job, ts, max_attempts, reason, attempt],
            )
        })
        .await?;
        self.work_arrived();
        Ok(())
    }

    async fn finish(
        &self,
        id: &str,
        attempt: u32,
        state: JobState,
        error: Option<&str>,
        artifacts: &Artifacts,
    ) -> Result<(), StoreError> {
        let (state, error, artifacts) = (
            state.as_str(),
            error.map(str::to_string),
            serde_json::to_string(artifacts).map_err(|e| StoreError::Backend(e.to_string()))?,
        );
        let (ts, _) = now();
        self.fenced((id, attempt), "state", move |c, job| {
            c.execute(
                "UPDATE jobs SET state = ?2, error = ?3, artifacts = ?4, phase = 'done', \
                 progress = CASE WHEN ?2 = 'succeeded' THEN 1.0 ELSE progress END, updated_at = ?5 \
                 WHERE id = ?1 AND state = 'running' AND attempts = ?6",
                params![job, state, error, artifacts, ts, attempt],
            )
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

impl SqliteStore {
    /// Runs `update` (which changes the job only while the claim holds it) and, when
    /// it changed the job, records an event of `kind`.
    async fn fenced(
        &self,
        (id, attempt): (&str, u32),
        kind: &'static str,
        update: impl FnOnce(&rusqlite::Connection, &str) -> rusqlite::Result<usize> + Send + 'static,
    ) -> Result<(), StoreError> {
        let job = id.to_string();
        let changed = self
            .with(move |c| {
                let n = update(c, &job)?;
                if n > 0 {
                    append_event(c, &job, kind)?;
                }
                Ok(n > 0)
            })
            .await?;
        held(changed.then_some(()), (id, attempt))
    }
}

/// The event a report in `phase` makes: `benchmark` in the benchmark phase (its
/// metrics carry the device benchmark), `progress` otherwise.
fn event_kind(phase: &str) -> &'static str {
    if phase == "benchmark" {
        "benchmark"
    } else {
        "progress"
    }
}

/// The outcome of an operation fenced by a claim: `None` when the claim no longer
/// holds the job.
fn held<T>(outcome: Option<T>, (job, attempt): (&str, u32)) -> Result<T, StoreError> {
    outcome.ok_or_else(|| StoreError::LeaseLost {
        job: job.to_string(),
        attempt,
    })
}
