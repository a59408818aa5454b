//! Job notifications (webhooks): every process with the stores (API replicas and
//! workers alike) delivers the due notifications of ended jobs, so a notification is
//! delivered at least once whichever process ended its job and whichever dies.

pub mod address;
mod deliver;

use std::sync::Arc;
use std::time::Duration;

use effp_store::{JobRecord, Notifications, NotifyOutcome, notify_url};
use tokio_util::sync::CancellationToken;

/// Tries of one notification before it is given up (the waits between them double
/// from 1 s: about 4 minutes in all).
pub const MAX_TRIES: u32 = 8;
/// How long a process holds a notification it is delivering: one that dies leaves
/// it to another after this.
const LEASE: Duration = Duration::from_secs(60);
/// How often a process looks for due notifications.
const POLL: Duration = Duration::from_millis(500);

/// How notifications are signed and where they may go.
#[derive(Clone)]
pub struct WebhookConfig {
    /// The service's secret, from which each tenant's signing key is derived; `None`
    /// when webhooks are not configured.
    pub secret: Option<Vec<u8>>,
    /// Whether notifications may reach private and loopback addresses.
    pub allow_private: bool,
}

impl WebhookConfig {
    /// The key `tenant`'s notifications are signed with, if webhooks are configured.
    pub fn tenant_secret(&self, tenant: &str) -> Option<String> {
        self.secret
            .as_deref()
            .map(|s| effp_protocol::webhook::tenant_secret(s, tenant))
    }
}

/// Delivers due notifications until `shutdown`.
pub async fn run(
    store: Arc<dyn Notifications>,
    config: WebhookConfig,
    shutdown: CancellationToken,
) {
    loop {
        tokio::select! {
            () = shutdown.cancelled() => return,
            () = tokio::time::sleep(POLL) => {}
        }
        let due = match store.due_notifications(16).await {
            Ok(due) => due,
            Err(e) => {
                tracing::warn!(%e, "cannot look for due notifications");
                continue;
            }
        };
        for id in due {
            let (job, attempt) = match store.claim_notification(&id, LEASE).await {
                Ok(Some(taken)) => taken,
                Ok(None) => continue,
                Err(e) => {
                    tracing::warn!(%e, job = %id, "cannot take a notification");
                    continue;
                }
            };
            let outcome = try_once(job, attempt, &config).await;
            if let Err(e) = store.notification_outcome(&id, outcome).await {
                tracing::warn!(%e, job = %id, "cannot record a notification's outcome");
            }
        }
    }
}

/// One try of `job`'s notification, and what comes of it.
async fn try_once(job: JobRecord, attempt: u32, config: &WebhookConfig) -> NotifyOutcome {
    let Some(url) = notify_url(&job.spec).map(str::to_string) else {
        return NotifyOutcome::Failed {
            error: "the job names no notify URL".into(),
        };
    };
    let Some(secret) = config.tenant_secret(&job.tenant) else {
        return NotifyOutcome::Failed {
            error: "webhooks are not configured on the service (EFFP_WEBHOOK_SECRET)".into(),
        };
    };
    let event = format!("job.{}", job.state.as_str());
    let body =
        serde_json::to_vec(&serde_json::json!({ "event": event, "job": job })).unwrap_or_default();
    // One id for every try of this notification: receivers drop repeats by it.
    let delivery = format!("{}-{}", job.id, job.state.as_str());
    let allow_private = config.allow_private;
    let tried = tokio::task::spawn_blocking(move || {
        deliver::post(
            &url,
            &body,
            &event,
            &delivery,
            secret.as_bytes(),
            allow_private,
        )
    })
    .await
    .unwrap_or_else(|e| Err(format!("the delivery task failed: {e}")));
    match tried {
        Ok(()) => {
            tracing::info!(job = %job.id, attempt, "notification delivered");
            NotifyOutcome::Delivered
        }
        Err(error) if attempt >= MAX_TRIES => {
            tracing::warn!(job = %job.id, attempt, %error, "notification given up");
            NotifyOutcome::Failed { error }
        }
        Err(error) => {
            let wait = Duration::from_secs(1 << (attempt - 1).min(10));
            tracing::info!(job = %job.id, attempt, %error, "notification failed; trying again in {wait:?}");
            NotifyOutcome::Retry {
                at_ms: effp_store::now().1 + wait.as_millis() as i64,
                error,
            }
        }
    }
}
