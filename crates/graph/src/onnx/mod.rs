//! ONNX files in and out, through the protobuf schema of the `onnx-protobuf` crate.

mod load;
mod save;

pub use load::{
    from_proto, from_proto_with, load_bytes, load_bytes_with, load_file, load_file_with,
};
pub use save::{save_file, to_bytes, to_proto};
