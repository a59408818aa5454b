//! The engine's error type.

/// What can go wrong while building or running a network.
#[derive(Debug, thiserror::Error)]
pub enum EngineError {
    /// libtorch rejected an operation (shape mismatch, out of memory, no CUDA).
    #[error("node '{node}' ({op}): {message}")]
    Torch {
        /// The node being executed.
        node: String,
        /// Its op type.
        op: String,
        /// What libtorch said.
        message: String,
    },
    /// The graph uses something the runtime cannot execute.
    #[error("node '{node}' ({op}) cannot be executed: {reason}")]
    Unsupported {
        /// The node.
        node: String,
        /// Its op type.
        op: String,
        /// What is not supported.
        reason: String,
    },
    /// The caller passed the wrong inputs.
    #[error("invalid input: {0}")]
    Input(String),
    /// The requested device is not available.
    #[error("device '{requested}' is not available: {reason}")]
    Device {
        /// What was asked for.
        requested: String,
        /// Why it cannot be used.
        reason: String,
    },
    /// The model has no YOLOv8-style detection head, which the labelled detection
    /// loss needs; the message says what was looked for and what was found.
    #[error("no YOLOv8-style detection head: {0}")]
    NoDetectionHead(String),
    /// The graph itself is at fault.
    #[error(transparent)]
    Graph(#[from] effp_graph::GraphError),
    /// The run was cancelled (its state saved where the error says).
    #[error(transparent)]
    Cancelled(#[from] crate::train::session::Cancelled),
    /// The dataset is at fault.
    #[error(transparent)]
    Data(#[from] crate::data::DataError),
}
