//! Keeping a task's lease: a thread renews it every third of its length while the
//! task runs, and raises the task's "abandoned" flag when the server says another
//! agent has it (409) or the key stopped working.

use std::thread::JoinHandle;
use std::time::Duration;

use crate::backoff::Backoff;
use crate::client::{Client, ClientError};
use crate::flag::Flag;

/// Shortest wait between renewals.
const MIN_INTERVAL: Duration = Duration::from_secs(1);

/// How long to wait between renewals of a lease of `lease_s` seconds.
pub fn renewal_interval(lease_s: u32) -> Duration {
    (Duration::from_secs(u64::from(lease_s)) / 3).max(MIN_INTERVAL)
}

/// The renewing thread of one task; stop it with [`LeaseKeeper::finish`].
#[derive(Debug)]
pub struct LeaseKeeper {
    done: Flag,
    thread: Option<JoinHandle<()>>,
}

impl LeaseKeeper {
    /// Starts renewing the lease on task `id` (claim `attempt`, lasting `lease_s`);
    /// raises `abandoned` when the lease is lost.
    pub fn start(client: Client, id: String, attempt: u32, lease_s: u32, abandoned: Flag) -> Self {
        let done = Flag::new();
        let stop = done.clone();
        let thread = std::thread::Builder::new()
            .name(format!("lease-{id}"))
            .spawn(move || keep(&client, &id, attempt, lease_s, &stop, &abandoned))
            .ok();
        if thread.is_none() {
            tracing::error!("cannot start the lease renewal thread; the lease may run out");
        }
        Self { done, thread }
    }

    /// Stops renewing (the task is reported or abandoned).
    pub fn finish(mut self) {
        self.stop();
    }

    fn stop(&mut self) {
        self.done.raise();
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
}

impl Drop for LeaseKeeper {
    fn drop(&mut self) {
        self.stop();
    }
}

fn keep(client: &Client, id: &str, attempt: u32, lease_s: u32, done: &Flag, abandoned: &Flag) {
    let mut interval = renewal_interval(lease_s);
    let mut wait = interval;
    let mut backoff = Backoff::default();
    while !done.wait(wait) {
        match client.renew(id, attempt) {
            Ok(lease_s) => {
                interval = renewal_interval(lease_s);
                wait = interval;
                backoff = Backoff::default();
                tracing::debug!(task = id, lease_s, "lease renewed");
            }
            Err(ClientError::LeaseLost { detail }) => {
                tracing::warn!(task = id, %detail, "lease lost: another agent has the task; abandoning it");
                abandoned.raise();
                return;
            }
            Err(e) if e.is_retryable() => {
                // Try again soon, but not in a tight loop.
                wait = backoff.next_delay().min(interval);
                tracing::warn!(task = id, error = %e, retry_in_s = wait.as_secs(), "lease renewal failed");
            }
            Err(e) => {
                tracing::error!(task = id, error = %e, "lease renewal refused; abandoning the task");
                abandoned.raise();
                return;
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn renewals_come_every_third_of_the_lease() {
        assert_eq!(renewal_interval(90), Duration::from_secs(30));
        assert_eq!(renewal_interval(1), MIN_INTERVAL);
    }
}
