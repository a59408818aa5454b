//! ONNX files in and out, through the protobuf schema of the `onnx-protobuf` crate.

mod load;
mod save;

pub use load::{from_proto, load_bytes, load_file};
pub use save::{save_file, to_bytes, to_proto};
