//! Job notifications (webhooks) as an outbox: registered with the job when it is
//! queued, delivered after it ends by whichever process finds it due, at least once.

use std::time::Duration;

use serde::{Deserialize, Serialize};

use crate::{JobRecord, StoreError};

/// Where a job's notification stands.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[serde(rename_all = "lowercase")]
pub enum NotificationState {
    /// Waiting for the job to end, or for its next try.
    Pending,
    /// The receiver answered 2xx.
    Delivered,
    /// Every try failed; the last error says why.
    Failed,
}

impl NotificationState {
    /// The state's name, as records spell it.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Pending => "pending",
            Self::Delivered => "delivered",
            Self::Failed => "failed",
        }
    }

    /// The state a record spells `s`.
    pub fn parse(s: &str) -> Option<Self> {
        match s {
            "pending" => Some(Self::Pending),
            "delivered" => Some(Self::Delivered),
            "failed" => Some(Self::Failed),
            _ => None,
        }
    }
}

/// A job's notification, as the job shows it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct NotificationStatus {
    /// Where it goes.
    pub url: String,
    /// Where it stands.
    pub state: NotificationState,
    /// Tries so far.
    pub attempts: u32,
    /// Why the last try failed.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub last_error: Option<String>,
}

/// What a try of a notification came to.
#[derive(Debug, Clone, PartialEq)]
pub enum NotifyOutcome {
    /// The receiver took it.
    Delivered,
    /// It failed; try again at `at_ms` (Unix milliseconds).
    Retry {
        /// When.
        at_ms: i64,
        /// Why this try failed.
        error: String,
    },
    /// It failed for the last time.
    Failed {
        /// Why.
        error: String,
    },
}

/// The notification outbox.
#[async_trait::async_trait]
pub trait Notifications: Send + Sync {
    /// Jobs that have ended and whose notification is due now, at most `limit`.
    async fn due_notifications(&self, limit: usize) -> Result<Vec<String>, StoreError>;
    /// Takes job `id`'s due notification for `lease` (another process may take it
    /// after): the job and the number of this try, or `None` when it is not due,
    /// its job has not ended, or another process took it first.
    async fn claim_notification(
        &self,
        id: &str,
        lease: Duration,
    ) -> Result<Option<(JobRecord, u32)>, StoreError>;
    /// Records what a try came to.
    async fn notification_outcome(
        &self,
        id: &str,
        outcome: NotifyOutcome,
    ) -> Result<(), StoreError>;
    /// Where job `id`'s notification stands, when it has one.
    async fn notification(&self, id: &str) -> Result<Option<NotificationStatus>, StoreError>;
}

/// The `notify` URL of a job's request, if it names one.
pub fn notify_url(spec: &serde_json::Value) -> Option<&str> {
    spec.get("notify").and_then(serde_json::Value::as_str)
}
