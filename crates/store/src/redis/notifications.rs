//! The notification outbox in Redis: a hash per job that asked for one, and the
//! ended jobs' pending notifications in a sorted set by when they are due.

use std::collections::HashMap;
use std::time::Duration;

use redis::AsyncCommands;

use super::{RedisStore, backend};
use crate::{
    JobRecord, NotificationState, NotificationStatus, Notifications, NotifyOutcome, StoreError,
};

#[async_trait::async_trait]
impl Notifications for RedisStore {
    async fn due_notifications(&self, limit: usize) -> Result<Vec<String>, StoreError> {
        let now = crate::now().1;
        self.conn()
            .zrangebyscore_limit(self.key(&["notify", "due"]), "-inf", now, 0, limit as isize)
            .await
            .map_err(backend)
    }

    async fn claim_notification(
        &self,
        id: &str,
        lease: Duration,
    ) -> Result<Option<(JobRecord, u32)>, StoreError> {
        let now = crate::now().1;
        let lease_end = (now + lease.as_millis() as i64).to_string();
        let attempt: Option<u32> = self
            .script(
                &self.scripts.claim_notification,
                &[id, &now.to_string(), &lease_end],
            )
            .await?;
        let Some(attempt) = attempt else {
            return Ok(None);
        };
        Ok(self.load_job(id, None).await?.map(|job| (job, attempt)))
    }

    async fn notification_outcome(
        &self,
        id: &str,
        outcome: NotifyOutcome,
    ) -> Result<(), StoreError> {
        let (due, record) = (self.key(&["notify", "due"]), self.key(&["notify", id]));
        let mut pipe = redis::pipe();
        pipe.atomic();
        match outcome {
            NotifyOutcome::Delivered => {
                pipe.zrem(&due, id)
                    .hset(&record, "state", "delivered")
                    .hdel(&record, "last_error");
            }
            NotifyOutcome::Retry { at_ms, error } => {
                pipe.zadd(&due, id, at_ms)
                    .hset(&record, "last_error", error);
            }
            NotifyOutcome::Failed { error } => {
                pipe.zrem(&due, id).hset(&record, "state", "failed").hset(
                    &record,
                    "last_error",
                    error,
                );
            }
        }
        pipe.query_async::<()>(&mut self.conn())
            .await
            .map_err(backend)
    }

    async fn notification(&self, id: &str) -> Result<Option<NotificationStatus>, StoreError> {
        let fields: HashMap<String, String> = self
            .conn()
            .hgetall(self.key(&["notify", id]))
            .await
            .map_err(backend)?;
        let Some(url) = fields.get("url") else {
            return Ok(None);
        };
        Ok(Some(NotificationStatus {
            url: url.clone(),
            state: fields
                .get("state")
                .and_then(|s| NotificationState::parse(s))
                .unwrap_or(NotificationState::Pending),
            attempts: fields
                .get("attempts")
                .and_then(|a| a.parse().ok())
                .unwrap_or(0),
            last_error: fields.get("last_error").cloned(),
        }))
    }
}
