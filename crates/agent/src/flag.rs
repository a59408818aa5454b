//! A one-way flag threads can raise, test and wait on: "shut down after this task",
//! "the lease is lost", "the task is over".

use std::sync::{Arc, Condvar, Mutex, PoisonError};
use std::time::{Duration, Instant};

/// A flag that starts lowered and, once raised, stays raised. Clones share it.
#[derive(Debug, Clone, Default)]
pub struct Flag {
    inner: Arc<(Mutex<bool>, Condvar)>,
}

impl Flag {
    /// A lowered flag.
    pub fn new() -> Self {
        Self::default()
    }

    /// Raises the flag and wakes every waiter.
    pub fn raise(&self) {
        let (raised, changed) = &*self.inner;
        *raised.lock().unwrap_or_else(PoisonError::into_inner) = true;
        changed.notify_all();
    }

    /// Whether the flag is raised.
    pub fn is_raised(&self) -> bool {
        *self.inner.0.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Waits until the flag is raised or `timeout` has passed; returns whether it is
    /// raised.
    pub fn wait(&self, timeout: Duration) -> bool {
        let (raised, changed) = &*self.inner;
        let deadline = Instant::now() + timeout;
        let mut guard = raised.lock().unwrap_or_else(PoisonError::into_inner);
        while !*guard {
            let now = Instant::now();
            if now >= deadline {
                break;
            }
            guard = changed
                .wait_timeout(guard, deadline - now)
                .unwrap_or_else(PoisonError::into_inner)
                .0;
        }
        *guard
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_raised_flag_wakes_its_waiter() {
        let flag = Flag::new();
        assert!(!flag.wait(Duration::from_millis(5)));
        let other = flag.clone();
        let waiter = std::thread::spawn(move || other.wait(Duration::from_secs(30)));
        flag.raise();
        assert!(waiter.join().unwrap());
        assert!(flag.is_raised());
    }
}
