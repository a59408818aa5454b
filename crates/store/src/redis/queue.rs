//! The work queue on Redis: a stream per tenant read through the consumer group
//! `workers`, leases in a sorted set, idle workers blocked on a list of wake-up
//! tokens.

use std::time::Duration;

use effp_protocol::{Artifacts, JobState};
use redis::AsyncCommands;

use super::{RedisStore, backend};
use crate::{JobRecord, Queue, StoreError, now};

fn lost(job: &str, attempt: u32) -> StoreError {
    StoreError::LeaseLost {
        job: job.to_string(),
        attempt,
    }
}

#[async_trait::async_trait]
impl Queue for RedisStore {
    async fn claim(
        &self,
        lease: Duration,
        max_attempts: u32,
    ) -> Result<Option<JobRecord>, StoreError> {
        let (ts, ms) = now();
        let claimed: Option<String> = self
            .script(
                &self.scripts.claim,
                &[
                    &ms.to_string(),
                    &lease.as_millis().to_string(),
                    &max_attempts.to_string(),
                    &self.consumer,
                    &ts,
                ],
            )
            .await?;
        match claimed {
            Some(id) => self.load_job(&id, None).await,
            None => Ok(None),
        }
    }

    async fn wait_for_work(&self, timeout: Duration) {
        let first: Vec<(String, f64)> = self
            .conn()
            .zrange_withscores(self.key(&["leases"]), 0, 0)
            .await
            .unwrap_or_default();
        let wait = match first.first() {
            Some((_, until)) => {
                let left = (*until as i64).saturating_sub(now().1).max(0) as u64;
                timeout.min(Duration::from_millis(left) + Duration::from_millis(5))
            }
            None => timeout,
        };
        let wake = self.key(&["wake"]);
        if wait < Duration::from_millis(1) {
            // BLPOP with 0 would block for ever: take a token if there is one.
            let _: Option<String> = self.conn().lpop(&wake, None).await.unwrap_or(None);
            return;
        }
        let mut held = self.blocking.lock().await;
        if held.is_none() {
            match self.blocking_connection(wait).await {
                Ok(c) => *held = Some(c),
                Err(e) => {
                    tracing::warn!(%e, "cannot open the connection that waits for work");
                    tokio::time::sleep(wait.min(Duration::from_secs(1))).await;
                    return;
                }
            }
        }
        let Some(conn) = held.as_mut() else { return };
        conn.set_response_timeout(wait + super::RESPONSE_TIMEOUT);
        let popped: Result<Option<(String, String)>, _> =
            conn.blpop(&wake, wait.as_secs_f64()).await;
        if let Err(e) = popped {
            tracing::warn!(%e, "waiting for work failed; reconnecting");
            *held = None;
        }
    }

    async fn heartbeat(&self, id: &str, attempt: u32, lease: Duration) -> Result<bool, StoreError> {
        let (ts, ms) = now();
        let until = ms + lease.as_millis() as i64;
        let answer: i64 = self
            .script(
                &self.scripts.heartbeat,
                &[
                    id,
                    &attempt.to_string(),
                    &until.to_string(),
                    &ts,
                    &self.consumer,
                ],
            )
            .await?;
        match answer {
            -1 => Err(lost(id, attempt)),
            n => Ok(n == 1),
        }
    }

    async fn report(
        &self,
        id: &str,
        attempt: u32,
        phase: &str,
        progress: f64,
        metrics: &serde_json::Value,
    ) -> Result<(), StoreError> {
        let (progress, metrics) = (json_number(progress), metrics.to_string());
        self.fenced(
            &self.scripts.report,
            (id, attempt),
            &[phase, &progress, &metrics],
        )
        .await
    }

    async fn release(&self, id: &str, attempt: u32) -> Result<(), StoreError> {
        self.fenced(&self.scripts.release, (id, attempt), &[]).await
    }

    async fn retry(
        &self,
        id: &str,
        attempt: u32,
        reason: &str,
        max_attempts: u32,
    ) -> Result<(), StoreError> {
        let max = max_attempts.to_string();
        self.fenced(&self.scripts.retry, (id, attempt), &[reason, &max])
            .await
    }

    async fn finish(
        &self,
        id: &str,
        attempt: u32,
        state: JobState,
        error: Option<&str>,
        artifacts: &Artifacts,
    ) -> Result<(), StoreError> {
        let artifacts =
            serde_json::to_string(artifacts).map_err(|e| StoreError::Backend(e.to_string()))?;
        let has_error = if error.is_some() { "1" } else { "0" };
        let rest = [
            state.as_str(),
            error.unwrap_or_default(),
            has_error,
            &artifacts,
        ];
        self.fenced(&self.scripts.finish, (id, attempt), &rest)
            .await
    }

    async fn depth(&self) -> Result<u64, StoreError> {
        let queued: Option<i64> = self
            .conn()
            .hget(self.key(&["job-counts"]), JobState::Queued.as_str())
            .await
            .map_err(backend)?;
        Ok(queued.unwrap_or(0).max(0) as u64)
    }
}

impl RedisStore {
    /// Runs a job script fenced by a claim: its arguments are the job, the claim's
    /// attempt, `rest` and the time; it answers 1 when the claim still held.
    async fn fenced(
        &self,
        script: &redis::Script,
        (id, attempt): (&str, u32),
        rest: &[&str],
    ) -> Result<(), StoreError> {
        let (ts, _) = now();
        let attempt_text = attempt.to_string();
        let mut args = vec![id, attempt_text.as_str()];
        args.extend_from_slice(rest);
        args.push(&ts);
        let done: i64 = self.script(script, &args).await?;
        if done == 1 {
            Ok(())
        } else {
            Err(lost(id, attempt))
        }
    }
}

/// A progress value as JSON text (events embed it as is).
fn json_number(x: f64) -> String {
    if x.is_finite() {
        x.to_string()
    } else {
        "0".into()
    }
}
