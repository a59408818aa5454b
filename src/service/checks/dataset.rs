//! The check of an uploaded dataset: the archive is unpacked within limits into a
//! scratch folder and read as a dataset, every label checked. Its result is what the
//! dataset resource shows.

use std::path::Path;

use effp_data::DataError;
use effp_data::archive::{ArchiveError, ArchiveLimits};
use effp_data::dataset::Dataset;
use serde_json::json;

use super::Refusal;

/// The layout, classes and per-split counts of the archive's dataset, or why it was
/// refused (messages name files inside the archive, never where it was unpacked).
pub fn check_dataset(
    archive: &Path,
    scratch: &Path,
    limits: ArchiveLimits,
) -> Result<serde_json::Value, Refusal> {
    let unpacked = scratch.join("unpacked");
    std::fs::create_dir_all(&unpacked)
        .map_err(|e| Refusal::internal(format!("cannot create a scratch folder: {e}")))?;
    let result = effp_data::dataset::open(archive, &unpacked, limits);
    let prefix = format!("{}/", unpacked.join("dataset").display());
    match result {
        Ok(dataset) => Ok(summarise(&dataset, &prefix)),
        Err(e) => Err(dataset_problem(&e, &prefix, limits)),
    }
}

fn dataset_problem(e: &DataError, prefix: &str, limits: ArchiveLimits) -> Refusal {
    let detail = e.to_string().replace(prefix, "");
    let (kind, title) = match e {
        DataError::Archive(ArchiveError::Format(_)) => (
            "invalid-archive",
            "the upload is not a .zip, .tar or .tar.gz archive effp can read",
        ),
        DataError::Archive(ArchiveError::Io { .. }) | DataError::Io { .. } => {
            return Refusal::internal(format!("cannot unpack the dataset: {detail}"));
        }
        DataError::Archive(_) => ("unsafe-archive", "the archive was refused as unsafe"),
        DataError::Labels(_) | DataError::Layout(_) | DataError::Image { .. } => {
            ("invalid-dataset", "the archive is not a valid dataset")
        }
    };
    let mut p = Refusal::unprocessable(kind, format!("{title}: {detail}"));
    if kind == "unsafe-archive" {
        p.detail.push_str(&format!(
            " (limits: {} entries, {} bytes unpacked, {}× expansion)",
            limits.max_entries, limits.max_bytes, limits.max_ratio
        ));
    }
    p
}

/// The layout, classes and per-split counts of a dataset.
fn summarise(dataset: &Dataset, prefix: &str) -> serde_json::Value {
    let layout = if dataset.root.join("data.yaml").is_file() {
        "yolo"
    } else {
        "coco"
    };
    let splits: serde_json::Map<String, serde_json::Value> = dataset
        .splits
        .iter()
        .map(|(name, samples)| {
            let objects: usize = samples.iter().map(|s| s.labels.len()).sum();
            let background = samples.iter().filter(|s| s.labels.is_empty()).count();
            (
                name.clone(),
                json!({ "images": samples.len(), "objects": objects, "background_images": background }),
            )
        })
        .collect();
    let root = format!("{}/", dataset.root.display());
    json!({
        "layout": layout,
        "root": root.strip_prefix(prefix).unwrap_or("").trim_end_matches('/'),
        "classes": dataset.names,
        "splits": splits,
    })
}
