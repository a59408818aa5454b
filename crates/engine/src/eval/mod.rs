//! Detection evaluation: decoding model outputs, NMS, and COCO-style mAP.

pub mod decode;
pub mod map;
pub mod run;
