//! effp's engine: the pruning methods and, on top of tch, the runtime that executes
//! the graph IR. Knows nothing of HTTP.

pub mod prune;

pub use tch;
