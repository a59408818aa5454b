//! Detection evaluation: decoding model outputs, NMS and COCO-style mAP (from
//! effp-data), and running a network over a split to score it.

pub use effp_data::{decode, map};

pub mod run;
