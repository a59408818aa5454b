//! Detection datasets as the engine uses them: everything of effp-data, and the
//! loader that turns samples into training tensors.

pub use effp_data::{
    DataError, Dataset, Label, Sample, archive, augment, coco, dataset, letterbox, read_rgb, rng,
    synth,
};

pub mod loader;
