//! The notification outbox in SQLite: a row per job that asked for one.

use std::time::Duration;

use rusqlite::{OptionalExtension, params};

use super::{JOB_COLUMNS, SqliteStore, job_row};
use crate::{
    JobRecord, NotificationState, NotificationStatus, Notifications, NotifyOutcome, StoreError,
};

/// The states in which a job has ended.
const ENDED: &str = "('succeeded', 'failed', 'cancelled')";

#[async_trait::async_trait]
impl Notifications for SqliteStore {
    async fn due_notifications(&self, limit: usize) -> Result<Vec<String>, StoreError> {
        let now = crate::now().1;
        self.with(move |c| {
            let mut stmt = c.prepare(&format!(
                "SELECT n.job_id FROM notifications n JOIN jobs j ON j.id = n.job_id \
                 WHERE n.state = 'pending' AND n.due_ms <= ?1 AND j.state IN {ENDED} \
                 ORDER BY n.due_ms LIMIT ?2"
            ))?;
            stmt.query_map(params![now, limit as i64], |r| r.get(0))?
                .collect()
        })
        .await
    }

    async fn claim_notification(
        &self,
        id: &str,
        lease: Duration,
    ) -> Result<Option<(JobRecord, u32)>, StoreError> {
        let (id, now) = (id.to_string(), crate::now().1);
        let until = now + lease.as_millis() as i64;
        self.with(move |c| {
            let tx = c.unchecked_transaction()?;
            let taken = tx.execute(
                &format!(
                    "UPDATE notifications SET due_ms = ?3, attempts = attempts + 1 \
                     WHERE job_id = ?1 AND state = 'pending' AND due_ms <= ?2 \
                     AND (SELECT state FROM jobs WHERE id = ?1) IN {ENDED}"
                ),
                params![id, now, until],
            )?;
            if taken == 0 {
                return Ok(None);
            }
            let attempts: u32 = tx.query_row(
                "SELECT attempts FROM notifications WHERE job_id = ?1",
                params![id],
                |r| r.get(0),
            )?;
            let job = tx
                .query_row(
                    &format!("SELECT {JOB_COLUMNS} FROM jobs WHERE id = ?1"),
                    params![id],
                    job_row,
                )
                .optional()?;
            tx.commit()?;
            Ok(job.map(|j| (j, attempts)))
        })
        .await
    }

    async fn notification_outcome(
        &self,
        id: &str,
        outcome: NotifyOutcome,
    ) -> Result<(), StoreError> {
        let id = id.to_string();
        self.with(move |c| {
            match outcome {
                NotifyOutcome::Delivered => c.execute(
                    "UPDATE notifications SET state = 'delivered', last_error = NULL WHERE job_id = ?1",
                    params![id],
                ),
                NotifyOutcome::Retry { at_ms, error } => c.execute(
                    "UPDATE notifications SET due_ms = ?2, last_error = ?3 WHERE job_id = ?1 AND state = 'pending'",
                    params![id, at_ms, error],
                ),
                NotifyOutcome::Failed { error } => c.execute(
                    "UPDATE notifications SET state = 'failed', last_error = ?2 WHERE job_id = ?1",
                    params![id, error],
                ),
            }
            .map(|_| ())
        })
        .await
    }

    async fn notification(&self, id: &str) -> Result<Option<NotificationStatus>, StoreError> {
        let id = id.to_string();
        self.with(move |c| {
            c.query_row(
                "SELECT url, state, attempts, last_error FROM notifications WHERE job_id = ?1",
                params![id],
                |r| {
                    let state: String = r.get(1)?;
                    Ok(NotificationStatus {
                        url: r.get(0)?,
                        state: NotificationState::parse(&state)
                            .unwrap_or(NotificationState::Pending),
                        attempts: r.get(2)?,
                        last_error: r.get(3)?,
                    })
                },
            )
            .optional()
        })
        .await
    }
}
