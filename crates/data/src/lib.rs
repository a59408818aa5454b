//! effp's detection data, everything of it that needs no tensor library: datasets in
//! the YOLO layout and COCO JSON, on disk or in (untrusted) archives, letterboxing and
//! Ultralytics' augmentation, synthetic sets for tests and benchmarks, and the
//! evaluation side: decoding detector outputs, NMS and COCO-style mAP. Knows nothing
//! of tch or HTTP, so that the API can check uploads without libtorch.

pub mod archive;
pub mod augment;
pub mod coco;
pub mod dataset;
pub mod decode;
pub mod letterbox;
pub mod map;
pub mod rng;
pub mod synth;

pub use dataset::{Dataset, Label, Sample};

/// Everything that can be wrong with a dataset.
#[derive(Debug, thiserror::Error)]
pub enum DataError {
    /// A file could not be read or written.
    #[error("cannot {action} '{path}': {source}")]
    Io {
        /// What was being done.
        action: &'static str,
        /// The file.
        path: std::path::PathBuf,
        /// What the operating system said.
        source: std::io::Error,
    },
    /// The folder does not have the expected layout.
    #[error("not a YOLO dataset: {0}")]
    Layout(String),
    /// Label files have errors; every one found is listed.
    #[error("{} label error(s):\n{}", .0.len(), .0.iter().take(50).cloned().collect::<Vec<_>>().join("\n"))]
    Labels(Vec<String>),
    /// An image could not be decoded.
    #[error("cannot decode image '{path}': {reason}")]
    Image {
        /// The image.
        path: std::path::PathBuf,
        /// What the decoder said.
        reason: String,
    },
    /// An archive was refused.
    #[error(transparent)]
    Archive(#[from] archive::ArchiveError),
}

pub(crate) fn io(
    action: &'static str,
    path: &std::path::Path,
) -> impl FnOnce(std::io::Error) -> DataError + use<> {
    let path = path.to_path_buf();
    move |source| DataError::Io {
        action,
        path,
        source,
    }
}

/// Decodes an image file as 8-bit RGB.
pub fn read_rgb(path: &std::path::Path) -> Result<image::RgbImage, DataError> {
    image::open(path)
        .map(|img| img.to_rgb8())
        .map_err(|e| DataError::Image {
            path: path.to_path_buf(),
            reason: e.to_string(),
        })
}
