//! The one error type of the graph crate.

use std::path::PathBuf;

use crate::limits::Quantity;

/// Everything that can be wrong with a model file or a request about it.
///
/// Each message names the input at fault (file, node, tensor, attribute) and, where
/// there is one, what the user can do about it.
#[derive(Debug, thiserror::Error)]
pub enum GraphError {
    /// The model file could not be read or written.
    #[error("cannot {action} '{path}': {source}")]
    Io {
        /// "read" or "write".
        action: &'static str,
        /// The file.
        path: PathBuf,
        /// What the operating system said.
        source: std::io::Error,
    },

    /// The input has no bytes at all.
    #[error("the model is empty (0 bytes): upload or pass an .onnx file")]
    Empty,

    /// The bytes are not a protobuf-encoded ONNX ModelProto.
    #[error(
        "not a valid ONNX model: {reason}; the file is truncated, corrupt or not ONNX \
         (export it again with torch.onnx.export or your framework's ONNX exporter)"
    )]
    Decode {
        /// What the protobuf decoder reported.
        reason: String,
    },

    /// The model decoded but carries no graph (random bytes often decode this way).
    #[error(
        "not a valid ONNX model: it has no graph (no nodes, inputs or outputs); the file \
         is probably not an ONNX model"
    )]
    NoGraph,

    /// The model names no default-domain opset, or one this project does not read.
    #[error("unsupported opset: {reason}")]
    Opset {
        /// What is wrong with the opset imports.
        reason: String,
    },

    /// A tensor keeps its data in a separate file.
    #[error(
        "tensor '{tensor}' keeps its data in an external file; external-data models are \
         not supported: save the model with the weights inside the .onnx file \
         (onnx.save(model, path, save_as_external_data=False))"
    )]
    ExternalData {
        /// The tensor's name.
        tensor: String,
    },

    /// A tensor is stored in an element type this project does not read.
    #[error("tensor '{tensor}' has unsupported element type {data_type}")]
    UnsupportedDataType {
        /// The tensor's name.
        tensor: String,
        /// The ONNX data type, by name or number.
        data_type: String,
    },

    /// A tensor's stored data does not match its declared shape.
    #[error("tensor '{tensor}' is malformed: {reason}")]
    MalformedTensor {
        /// The tensor's name.
        tensor: String,
        /// What does not add up.
        reason: String,
    },

    /// Two things in the graph produce the same value name.
    #[error(
        "value '{name}' is defined twice (by {first} and by {second}); ONNX names must be unique"
    )]
    DuplicateValue {
        /// The duplicated name.
        name: String,
        /// What defined it first.
        first: String,
        /// What defined it again.
        second: String,
    },

    /// A node reads a value nobody produces.
    #[error(
        "node '{node}' ({op}) reads '{input}', which is not a graph input, an initializer \
         or the output of any node"
    )]
    DanglingInput {
        /// The node's name.
        node: String,
        /// The node's op type.
        op: String,
        /// The missing value.
        input: String,
    },

    /// A graph output is never produced.
    #[error("graph output '{output}' is not produced by any node, input or initializer")]
    DanglingOutput {
        /// The output's name.
        output: String,
    },

    /// The nodes cannot be ordered because they depend on each other in a loop.
    #[error("the graph has a cycle through node(s) {}", nodes.join(", "))]
    Cycle {
        /// Some of the nodes on the cycle.
        nodes: Vec<String>,
    },

    /// A weight that must be a constant is computed at run time or missing.
    #[error(
        "node '{node}' ({op}) needs its {role} ('{input}') as a constant initializer, \
         but {reason}"
    )]
    MissingWeight {
        /// The node's name.
        node: String,
        /// The node's op type.
        op: String,
        /// What the input is for ("weight", "shape", …).
        role: &'static str,
        /// The input's value name.
        input: String,
        /// Why it is not usable.
        reason: &'static str,
    },

    /// A node lacks an input it cannot do without.
    #[error("node '{node}' ({op}) is missing its required input #{index} ({role})")]
    MissingInput {
        /// The node's name.
        node: String,
        /// The node's op type.
        op: String,
        /// The input position.
        index: usize,
        /// What the input is for.
        role: &'static str,
    },

    /// A node's attribute is missing, of the wrong type, or has a value we cannot honour.
    #[error("node '{node}' ({op}): attribute '{attribute}' {reason}")]
    Attribute {
        /// The node's name.
        node: String,
        /// The node's op type.
        op: String,
        /// The attribute's name.
        attribute: String,
        /// What is wrong with it.
        reason: String,
    },

    /// Shape inference found shapes that do not fit the op.
    #[error("node '{node}' ({op}): {reason}")]
    Shape {
        /// The node's name.
        node: String,
        /// The node's op type.
        op: String,
        /// What does not fit.
        reason: String,
    },

    /// The graph has ops this project cannot execute or analyse.
    #[error(
        "the model uses {} unsupported op(s): {}; effp supports the ops listed in \
         `effp inspect --help`",
        ops.len(),
        ops.iter().map(|(node, op)| format!("{op} (node '{node}')")).collect::<Vec<_>>().join(", ")
    )]
    UnsupportedOps {
        /// (node name, op type) of each unsupported node.
        ops: Vec<(String, String)>,
    },

    /// The requested input size cannot be applied to this model.
    #[error("invalid input size: {reason}")]
    InputSize {
        /// What is wrong.
        reason: String,
    },

    /// A size the model declares, or that follows from it, is over one of effp's
    /// [`Limits`](crate::Limits). Checked before anything is allocated from it.
    #[error(
        "{subject} has {amount} {quantity}; effp accepts at most {limit} {unit}: {advice}",
        amount = crate::limits::render_amount(*declared),
        unit = quantity.unit(),
        advice = quantity.advice()
    )]
    LimitExceeded {
        /// What declares the size: the graph, a graph input, an initializer or a node's
        /// output, by name, with its shape where it has one.
        subject: String,
        /// Which cap it is over.
        quantity: Quantity,
        /// The size it declares (exact; may be far beyond 64 bits for a product).
        declared: u128,
        /// The cap.
        limit: u64,
    },

    /// Memory for an analysis sized within the limits could not be obtained.
    #[error(
        "not enough memory to analyse this model: {what} needs {count} entries; \
         retry later or analyse a smaller model"
    )]
    OutOfMemory {
        /// What was being allocated.
        what: &'static str,
        /// How many entries it needed.
        count: usize,
    },

    /// The model could not be encoded back to ONNX.
    #[error("cannot encode the model as ONNX: {reason}")]
    Encode {
        /// What the encoder reported.
        reason: String,
    },
}

/// Result alias for the graph crate.
pub type Result<T, E = GraphError> = std::result::Result<T, E>;
