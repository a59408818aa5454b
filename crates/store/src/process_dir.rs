//! Folders of work in progress, one per process, in a directory that several
//! processes on one machine share: each process works in `<parent>/<pid>` and
//! removes the folders of processes that have ended (whatever they left is garbage).

use std::path::{Path, PathBuf};

/// Creates this process's folder under `parent` (emptied if a dead process with the
/// same id left one) after removing those of processes that no longer run, and of
/// earlier versions (plain files).
pub fn claim(parent: &Path) -> std::io::Result<PathBuf> {
    std::fs::create_dir_all(parent)?;
    let own = std::process::id();
    for entry in std::fs::read_dir(parent)?.flatten() {
        let path = entry.path();
        let pid = entry
            .file_name()
            .to_str()
            .and_then(|n| n.parse::<u32>().ok());
        match pid {
            Some(pid) if pid != own && alive(pid) => {}
            _ if path.is_dir() => {
                let _ = std::fs::remove_dir_all(&path);
            }
            _ => {
                let _ = std::fs::remove_file(&path);
            }
        }
    }
    let mine = parent.join(own.to_string());
    std::fs::create_dir_all(&mine)?;
    Ok(mine)
}

/// Whether a process with this id runs (on this machine).
fn alive(pid: u32) -> bool {
    let Ok(pid) = libc::pid_t::try_from(pid) else {
        return false;
    };
    // SAFETY: signal 0 only checks that the process exists.
    let found = unsafe { libc::kill(pid, 0) } == 0;
    found || std::io::Error::last_os_error().raw_os_error() == Some(libc::EPERM)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn folders_of_ended_processes_go_and_running_ones_stay() {
        let dir = tempfile::tempdir().unwrap();
        // pid 1 always runs; a pid above the kernel's maximum never does.
        for name in ["1", "4194305", "legacy-upload"] {
            std::fs::create_dir_all(dir.path().join(name)).unwrap();
            std::fs::write(dir.path().join(name).join("part"), b"x").unwrap();
        }
        std::fs::write(dir.path().join("0123abcd"), b"an old upload").unwrap();
        let mine = claim(dir.path()).unwrap();
        assert_eq!(mine, dir.path().join(std::process::id().to_string()));
        let mut left: Vec<String> = std::fs::read_dir(dir.path())
            .unwrap()
            .map(|e| e.unwrap().file_name().into_string().unwrap())
            .collect();
        left.sort();
        let mut expected = vec!["1".to_string(), std::process::id().to_string()];
        expected.sort();
        assert_eq!(left, expected);
    }
}
