//! The child process the agent is running (trtexec), so that an immediate exit (a
//! second SIGTERM or Ctrl-C) can take it down instead of leaving it behind.

use std::sync::atomic::{AtomicU32, Ordering};

/// The running child's process id; 0 when none.
static CURRENT: AtomicU32 = AtomicU32::new(0);

/// Marks a child as running until the guard is dropped.
#[derive(Debug)]
pub struct Registered(u32);

impl Drop for Registered {
    fn drop(&mut self) {
        let _ = CURRENT.compare_exchange(self.0, 0, Ordering::SeqCst, Ordering::SeqCst);
    }
}

/// Records `pid` as the running child.
pub fn register(pid: u32) -> Registered {
    CURRENT.store(pid, Ordering::SeqCst);
    Registered(pid)
}

/// Kills the running child, if any (SIGKILL: the agent is exiting at once).
pub fn kill_current() {
    let pid = CURRENT.swap(0, Ordering::SeqCst);
    if let Ok(pid) = libc::pid_t::try_from(pid)
        && pid > 0
    {
        // SAFETY: kill(2) only sends a signal. The pid is our own child's, registered
        // from its spawn until it has been waited for, so it names no other process.
        unsafe {
            libc::kill(pid, libc::SIGKILL);
        }
    }
}
