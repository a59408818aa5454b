//! The embedded store belongs to one process: an advisory lock on a file beside the
//! database, which the kernel releases when the process ends however it ends.

use std::os::fd::AsRawFd;
use std::path::Path;

use crate::StoreError;

/// An exclusive `flock` on `<database>.lock`, held for the value's life.
#[derive(Debug)]
pub(super) struct ExclusiveLock {
    _file: std::fs::File,
}

impl ExclusiveLock {
    /// Takes the lock of the database at `database`, or says who has it.
    pub(super) fn acquire(database: &Path) -> Result<Self, StoreError> {
        let mut path = database.as_os_str().to_owned();
        path.push(".lock");
        let file = std::fs::OpenOptions::new()
            .create(true)
            .truncate(false)
            .write(true)
            .open(&path)
            .map_err(|e| StoreError::Backend(format!("{}: {e}", Path::new(&path).display())))?;
        // SAFETY: flock on a descriptor this function owns.
        let taken = unsafe { libc::flock(file.as_raw_fd(), libc::LOCK_EX | libc::LOCK_NB) } == 0;
        if !taken {
            return Err(StoreError::InUse(database.display().to_string()));
        }
        Ok(Self { _file: file })
    }
}
