//! Unpacking uploaded dataset archives (.zip, .tar, .tar.gz), which are hostile until
//! proven otherwise: no paths outside the target, no links or device files, and hard
//! limits on file count, unpacked bytes and compression ratio.

use std::fs::File;
use std::io::{BufReader, Read, Write};
use std::path::{Component, Path, PathBuf};

/// Limits on what an archive may unpack to.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct ArchiveLimits {
    /// Most entries (files and folders).
    pub max_entries: usize,
    /// Most bytes unpacked in total.
    pub max_bytes: u64,
    /// Most unpacked bytes per archive byte.
    pub max_ratio: u64,
}

impl Default for ArchiveLimits {
    fn default() -> Self {
        Self {
            max_entries: 50_000,
            max_bytes: 8 << 30,
            max_ratio: 200,
        }
    }
}

/// Why an archive was refused.
#[derive(Debug, thiserror::Error)]
pub enum ArchiveError {
    /// An entry would land outside the target folder.
    #[error(
        "archive entry '{0}' points outside the archive (absolute path or '..'); refusing to unpack"
    )]
    PathTraversal(String),
    /// An entry is a symbolic or hard link.
    #[error("archive entry '{0}' is a link; datasets must contain plain files only")]
    Link(String),
    /// An entry is a device, FIFO or socket.
    #[error(
        "archive entry '{0}' is a device or special file; datasets must contain plain files only"
    )]
    SpecialFile(String),
    /// Too many entries.
    #[error("archive has more than {limit} entries; split the dataset or raise the limit")]
    TooManyEntries {
        /// The limit.
        limit: usize,
    },
    /// Unpacks to too many bytes.
    #[error("archive unpacks to more than {limit} bytes")]
    TooLarge {
        /// The limit.
        limit: u64,
    },
    /// Compresses suspiciously well (a decompression bomb).
    #[error("archive expands more than {limit}× its size (a decompression bomb?)")]
    RatioExceeded {
        /// The limit.
        limit: u64,
    },
    /// An entry's path is longer or deeper than any dataset needs.
    #[error("archive entry '{name}' is refused: {reason}")]
    BadPath {
        /// The entry's name (cut to its first 200 characters).
        name: String,
        /// What is wrong with it.
        reason: String,
    },
    /// Two entries claim the same place as a file and as a folder.
    #[error(
        "archive entry '{0}' cannot be unpacked: another entry already uses its path (or a folder on it) for a file or folder of the other kind"
    )]
    Conflict(String),
    /// Not an archive format effp reads, or corrupt.
    #[error("cannot read the archive: {0}")]
    Format(String),
    /// I/O failure while unpacking.
    #[error("cannot unpack to '{path}': {source}")]
    Io {
        /// Where.
        path: PathBuf,
        /// What the operating system said.
        source: std::io::Error,
    },
}

/// Unpacks `archive` into the folder `dest` (created; removed again on failure).
pub fn extract(archive: &Path, dest: &Path, limits: ArchiveLimits) -> Result<(), ArchiveError> {
    let io = |path: &Path| {
        let path = path.to_path_buf();
        move |source| ArchiveError::Io { path, source }
    };
    let size = std::fs::metadata(archive)
        .map_err(io(archive))?
        .len()
        .max(1);
    let mut magic = [0u8; 4];
    let n = File::open(archive)
        .map_err(io(archive))?
        .read(&mut magic)
        .map_err(io(archive))?;
    std::fs::create_dir_all(dest).map_err(io(dest))?;
    let budget = Budget {
        limits,
        archive_bytes: size,
        unpacked: 0,
        entries: 0,
    };
    let result = match &magic[..n] {
        [0x50, 0x4b, ..] => extract_zip(archive, dest, budget),
        [0x1f, 0x8b, ..] => {
            let file = File::open(archive).map_err(io(archive))?;
            extract_tar(
                flate2::read::GzDecoder::new(BufReader::new(file)),
                dest,
                budget,
            )
        }
        _ => extract_tar(
            BufReader::new(File::open(archive).map_err(io(archive))?),
            dest,
            budget,
        ),
    };
    if result.is_err() {
        let _ = std::fs::remove_dir_all(dest);
    }
    result
}

struct Budget {
    limits: ArchiveLimits,
    archive_bytes: u64,
    unpacked: u64,
    entries: usize,
}

impl Budget {
    fn entry(&mut self) -> Result<(), ArchiveError> {
        self.entries += 1;
        if self.entries > self.limits.max_entries {
            return Err(ArchiveError::TooManyEntries {
                limit: self.limits.max_entries,
            });
        }
        Ok(())
    }

    /// Copies one file, stopping as soon as a byte limit is crossed.
    fn copy(&mut self, mut from: impl Read, to: &Path, name: &str) -> Result<(), ArchiveError> {
        let io = |source| ArchiveError::Io {
            path: to.to_path_buf(),
            source,
        };
        if let Some(parent) = to.parent() {
            std::fs::create_dir_all(parent).map_err(|e| placing(e, name, to))?;
        }
        let mut out = std::io::BufWriter::new(File::create(to).map_err(|e| placing(e, name, to))?);
        let mut buf = vec![0u8; 64 << 10];
        loop {
            let n = from
                .read(&mut buf)
                .map_err(|e| ArchiveError::Format(e.to_string()))?;
            if n == 0 {
                break;
            }
            self.unpacked += n as u64;
            if self.unpacked > self.limits.max_bytes {
                return Err(ArchiveError::TooLarge {
                    limit: self.limits.max_bytes,
                });
            }
            if self.unpacked > self.limits.max_ratio.saturating_mul(self.archive_bytes) {
                return Err(ArchiveError::RatioExceeded {
                    limit: self.limits.max_ratio,
                });
            }
            out.write_all(&buf[..n]).map_err(io)?;
        }
        out.flush().map_err(io)
    }
}

/// Longest entry path accepted, in bytes.
const MAX_PATH_BYTES: usize = 1024;
/// Most folders an entry may be nested in.
const MAX_PATH_DEPTH: usize = 32;
/// Longest file or folder name accepted, in bytes (the usual file-system limit).
const MAX_NAME_BYTES: usize = 255;

/// The entry's path below `dest`, refusing absolute paths, `..`, and paths longer or
/// deeper than any dataset needs (which the file system would refuse half-way).
fn safe_path(dest: &Path, name: &str) -> Result<PathBuf, ArchiveError> {
    let bad = |reason: String| ArchiveError::BadPath {
        name: name.chars().take(200).collect(),
        reason,
    };
    if name.len() > MAX_PATH_BYTES {
        return Err(bad(format!(
            "its path is {} bytes long, more than {MAX_PATH_BYTES}",
            name.len()
        )));
    }
    let relative = Path::new(name);
    let mut out = dest.to_path_buf();
    let mut depth = 0;
    for c in relative.components() {
        match c {
            Component::Normal(part) => {
                depth += 1;
                if depth > MAX_PATH_DEPTH {
                    return Err(bad(format!(
                        "it is nested more than {MAX_PATH_DEPTH} folders deep"
                    )));
                }
                if part.len() > MAX_NAME_BYTES {
                    return Err(bad(format!(
                        "a name in its path is longer than {MAX_NAME_BYTES} bytes"
                    )));
                }
                out.push(part)
            }
            Component::CurDir => {}
            _ => return Err(ArchiveError::PathTraversal(name.to_string())),
        }
    }
    if name.starts_with('/') || name.starts_with('\\') || name.contains(":\\") {
        return Err(ArchiveError::PathTraversal(name.to_string()));
    }
    Ok(out)
}

/// The error for a file or folder that could not be created where the entry `name`
/// puts it: the archive's fault when another entry took the place (a file `a`, then
/// `a/b`; a folder `a`, then a file `a`), the server's otherwise.
fn placing(source: std::io::Error, name: &str, path: &Path) -> ArchiveError {
    use std::io::ErrorKind;
    match source.kind() {
        ErrorKind::NotADirectory | ErrorKind::IsADirectory | ErrorKind::AlreadyExists => {
            ArchiveError::Conflict(name.chars().take(200).collect())
        }
        ErrorKind::InvalidFilename => ArchiveError::BadPath {
            name: name.chars().take(200).collect(),
            reason: "the file system refuses its name".into(),
        },
        _ => ArchiveError::Io {
            path: path.to_path_buf(),
            source,
        },
    }
}

fn extract_zip(archive: &Path, dest: &Path, mut budget: Budget) -> Result<(), ArchiveError> {
    let file = File::open(archive).map_err(|source| ArchiveError::Io {
        path: archive.to_path_buf(),
        source,
    })?;
    let mut zip = zip::ZipArchive::new(BufReader::new(file))
        .map_err(|e| ArchiveError::Format(e.to_string()))?;
    if zip.len() > budget.limits.max_entries {
        return Err(ArchiveError::TooManyEntries {
            limit: budget.limits.max_entries,
        });
    }
    for i in 0..zip.len() {
        budget.entry()?;
        let entry = zip
            .by_index(i)
            .map_err(|e| ArchiveError::Format(e.to_string()))?;
        let name = entry.name().to_string();
        let target = safe_path(dest, &name)?;
        if entry.enclosed_name().is_none() {
            return Err(ArchiveError::PathTraversal(name));
        }
        let mode = entry.unix_mode().unwrap_or(0) & 0o170000;
        if entry.is_symlink() || mode == 0o120000 {
            return Err(ArchiveError::Link(name));
        }
        if matches!(mode, 0o020000 | 0o060000 | 0o010000 | 0o140000) {
            return Err(ArchiveError::SpecialFile(name));
        }
        if entry.is_dir() {
            std::fs::create_dir_all(&target).map_err(|e| placing(e, &name, &target))?;
            continue;
        }
        // Refuse a declared bomb before inflating it.
        if entry.size()
            > budget
                .limits
                .max_ratio
                .saturating_mul(entry.compressed_size().max(1))
            && entry.size() > 1 << 20
        {
            return Err(ArchiveError::RatioExceeded {
                limit: budget.limits.max_ratio,
            });
        }
        budget.copy(entry, &target, &name)?;
    }
    Ok(())
}

fn extract_tar(reader: impl Read, dest: &Path, mut budget: Budget) -> Result<(), ArchiveError> {
    let mut tar = tar::Archive::new(reader);
    let entries = tar
        .entries()
        .map_err(|e| ArchiveError::Format(e.to_string()))?;
    for entry in entries {
        let entry = entry.map_err(|e| ArchiveError::Format(e.to_string()))?;
        budget.entry()?;
        let name = String::from_utf8_lossy(&entry.path_bytes()).into_owned();
        let target = safe_path(dest, &name)?;
        match entry.header().entry_type() {
            tar::EntryType::Regular | tar::EntryType::Continuous => {
                budget.copy(entry, &target, &name)?
            }
            tar::EntryType::Directory => {
                std::fs::create_dir_all(&target).map_err(|e| placing(e, &name, &target))?
            }
            tar::EntryType::Symlink | tar::EntryType::Link => return Err(ArchiveError::Link(name)),
            tar::EntryType::Char | tar::EntryType::Block | tar::EntryType::Fifo => {
                return Err(ArchiveError::SpecialFile(name));
            }
            _ => {} // pax/GNU metadata entries carry no file
        }
    }
    Ok(())
}
