//! Work on tenants' files in processes of its own: the service starts the same
//! binary for each job (`effp run-job`) and each upload check (`effp check-upload`)
//! and watches it. A stop request becomes SIGTERM (a job checkpoints and exits), a
//! process over its memory budget is killed, and whatever the process does to itself
//! (an abort in native code, running out of memory) ends that process, not the
//! service.

use std::collections::VecDeque;
use std::path::Path;
use std::process::Stdio;
use std::time::Duration;

use tokio::io::{AsyncBufReadExt, BufReader};
use tokio_util::sync::CancellationToken;

/// How often the child's memory is measured.
const MEMORY_POLL: Duration = Duration::from_millis(100);
/// Lines of the child's standard error kept for the log when it fails.
const STDERR_LINES: usize = 40;

/// How an isolated process ended.
#[derive(Debug)]
pub enum ChildExit {
    /// Exit status 0.
    Succeeded,
    /// Stopped on request (exit status 130; a job wrote its checkpoint).
    Stopped,
    /// Another exit status.
    Failed(i32),
    /// Killed for using more memory than its budget.
    OverMemory {
        /// Resident memory when it was stopped, in bytes.
        used: u64,
    },
    /// The process died on its own (a signal, an abort in native code).
    Died(String),
}

/// How to run and watch an isolated process.
pub struct Supervision<'a> {
    /// Its working folder; its temporary files go here too.
    pub work: &'a Path,
    /// Resident memory the process may use, in bytes.
    pub memory_limit: u64,
    /// Whether to also cap the address space (CPU jobs; CUDA reserves far more
    /// address space than it uses).
    pub cap_address_space: bool,
    /// Fires when the process should stop (cancellation, shutdown).
    pub stop: CancellationToken,
}

/// Starts this binary with `args`, hands every line of its standard output to
/// `on_line`, and waits for it to end.
pub async fn run_isolated(
    args: &[&std::ffi::OsStr],
    how: Supervision<'_>,
    mut on_line: impl FnMut(String) + Send + 'static,
) -> std::io::Result<ChildExit> {
    let exe = own_binary()?;
    let mut command = tokio::process::Command::new(exe);
    command
        .args(args)
        .env("TMPDIR", how.work)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .kill_on_drop(true);
    let address_space = how
        .cap_address_space
        .then(|| address_space_cap(how.memory_limit));
    // SAFETY: the closure runs in the forked child before exec and only makes
    // async-signal-safe system calls (prctl, setrlimit).
    unsafe {
        command.pre_exec(move || {
            // The process dies with the service: a restarted service must be the
            // only one to run its job again.
            if libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL) != 0 {
                return Err(std::io::Error::last_os_error());
            }
            if let Some(bytes) = address_space {
                let limit = libc::rlimit {
                    rlim_cur: bytes as libc::rlim_t,
                    rlim_max: bytes as libc::rlim_t,
                };
                if libc::setrlimit(libc::RLIMIT_AS, &limit) != 0 {
                    return Err(std::io::Error::last_os_error());
                }
            }
            Ok(())
        });
    }
    let mut child = command.spawn()?;
    let pid = child.id().unwrap_or(0) as i32;
    let stdout = child.stdout.take().expect("stdout is piped");
    let stderr = child.stderr.take().expect("stderr is piped");
    let lines = tokio::spawn(async move {
        let mut lines = BufReader::new(stdout).lines();
        while let Ok(Some(line)) = lines.next_line().await {
            on_line(line);
        }
    });
    let stderr_tail = tokio::spawn(async move {
        let mut lines = BufReader::new(stderr).lines();
        let mut tail = VecDeque::with_capacity(STDERR_LINES);
        while let Ok(Some(line)) = lines.next_line().await {
            if tail.len() == STDERR_LINES {
                tail.pop_front();
            }
            tail.push_back(line);
        }
        tail
    });

    let mut over_memory = None;
    let mut signalled = false;
    let status = loop {
        tokio::select! {
            status = child.wait() => break status?,
            _ = how.stop.cancelled(), if !signalled => {
                signalled = true;
                // SAFETY: kill(2) on our own child's pid.
                unsafe { libc::kill(pid, libc::SIGTERM) };
            }
            _ = tokio::time::sleep(MEMORY_POLL), if over_memory.is_none() => {
                if let Some(used) = resident_bytes(pid)
                    && used > how.memory_limit
                {
                    over_memory = Some(used);
                    let _ = child.start_kill();
                }
            }
        }
    };
    let _ = lines.await;
    let tail = stderr_tail.await.unwrap_or_default();
    use std::os::unix::process::ExitStatusExt;
    let exit = match (status.code(), over_memory) {
        (_, Some(used)) => ChildExit::OverMemory { used },
        (Some(0), _) => ChildExit::Succeeded,
        (Some(130), _) => ChildExit::Stopped,
        (Some(code), _) => ChildExit::Failed(code),
        (None, _) => ChildExit::Died(match status.signal() {
            Some(libc::SIGKILL) => {
                "its worker process was killed (SIGKILL; the system may have run out of memory)"
                    .into()
            }
            Some(libc::SIGABRT) => "its worker process aborted".into(),
            Some(libc::SIGSEGV) => "its worker process crashed (segmentation fault)".into(),
            Some(signal) => format!("its worker process was ended by signal {signal}"),
            None => "its worker process ended without a status".into(),
        }),
    };
    if matches!(exit, ChildExit::OverMemory { .. } | ChildExit::Died(_)) {
        tracing::warn!(
            pid,
            ?exit,
            stderr = %tail.iter().cloned().collect::<Vec<_>>().join("\n"),
            "isolated process failed"
        );
    }
    Ok(exit)
}

/// Private memory of a process in bytes (`RssAnon` + `RssShmem`: what it allocated,
/// not the library files it maps, which the system shares and can drop), if it
/// still exists.
fn resident_bytes(pid: i32) -> Option<u64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    let kib = |key: &str| -> Option<u64> {
        let line = status.lines().find(|l| l.starts_with(key))?;
        line.split_whitespace().nth(1)?.parse().ok()
    };
    Some((kib("RssAnon:")? + kib("RssShmem:").unwrap_or(0)) * 1024)
}

/// The address-space cap of a CPU job: its memory budget plus room for what a
/// process maps without using (libraries, thread stacks, allocator arenas), so
/// that an allocation far past the budget fails at once instead of racing the
/// memory watcher.
fn address_space_cap(memory_limit: u64) -> u64 {
    memory_limit.saturating_mul(2).saturating_add(4 << 30)
}

/// The binary this process runs, to start worker processes from. On Linux the running
/// file itself (`/proc/self/exe`), so that a binary replaced on disk while the service
/// runs (an upgrade in place) does not break the jobs of the one still running.
fn own_binary() -> std::io::Result<std::path::PathBuf> {
    let running = std::path::Path::new("/proc/self/exe");
    if running.exists() {
        return Ok(running.to_path_buf());
    }
    std::env::current_exe()
}
