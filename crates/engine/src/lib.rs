//! effp's engine: the runtime that executes the graph IR with tch (CPU or CUDA, with
//! autograd) and the pruning methods on top of it. Knows nothing of HTTP.

pub mod data;
mod error;
pub mod eval;
pub mod pipeline;
pub mod prune;
pub mod runtime;
pub mod train;
pub mod verify;

pub use error::EngineError;
pub use tch;
