//! The model and its graph: values, nodes in execution order, inputs and outputs.

use super::op::Op;
use super::tensor::{DataType, Tensor};

/// Index of a value in [`Graph::values`].
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct ValueId(pub usize);

/// Index of a node in [`Graph::nodes`].
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct NodeId(pub usize);

/// One dimension of a declared input or output shape.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Dim {
    /// A fixed size.
    Fixed(usize),
    /// A named, free size such as "batch".
    Symbolic(String),
    /// Neither given.
    Unknown,
}

/// A named tensor in the graph: a graph input, a constant, or a node output.
#[derive(Debug, Clone, PartialEq)]
pub struct Value {
    /// The ONNX name.
    pub name: String,
    /// Element type, where known.
    pub dtype: Option<DataType>,
    /// Static shape, once shape inference has run (or for constants, always).
    pub shape: Option<Vec<usize>>,
    /// The data of an initializer or folded `Constant`.
    pub constant: Option<Tensor>,
    /// The data a shape subgraph (`Shape`, `Gather`, `Range`, … over sizes and
    /// constants) computes at the input size shape inference ran with. Set by
    /// shape inference, never written to a file: the nodes that compute it stay, so
    /// that a dynamic-shape export stays dynamic.
    pub folded: Option<Tensor>,
    /// The node that computes this value, if any.
    pub producer: Option<NodeId>,
}

/// A graph input or output with the type and shape the file declares for it.
#[derive(Debug, Clone, PartialEq)]
pub struct GraphIo {
    /// The value.
    pub value: ValueId,
    /// Declared element type (ONNX type number, 0 when undeclared).
    pub elem_type: i32,
    /// Declared shape; `None` when the file declares no shape.
    pub dims: Option<Vec<Dim>>,
}

/// An operator application.
#[derive(Debug, Clone, PartialEq)]
pub struct Node {
    /// The node's name (unique; generated when the file leaves it empty).
    pub name: String,
    /// What it computes.
    pub op: Op,
    /// Inputs in ONNX order; `None` for an omitted optional input.
    pub inputs: Vec<Option<ValueId>>,
    /// Outputs in ONNX order.
    pub outputs: Vec<ValueId>,
}

impl Node {
    /// The value at input position `i`, if present.
    pub fn input(&self, i: usize) -> Option<ValueId> {
        self.inputs.get(i).copied().flatten()
    }
}

/// A computation graph, nodes in an order where every input is computed before use.
#[derive(Debug, Clone, PartialEq, Default)]
pub struct Graph {
    /// The graph's name.
    pub name: String,
    /// Every value, indexed by [`ValueId`].
    pub values: Vec<Value>,
    /// Nodes in topological order, indexed by [`NodeId`].
    pub nodes: Vec<Node>,
    /// Graph inputs that are fed at run time (initializers excluded).
    pub inputs: Vec<GraphIo>,
    /// Graph outputs.
    pub outputs: Vec<GraphIo>,
}

impl Graph {
    /// The value with this id.
    pub fn value(&self, id: ValueId) -> &Value {
        &self.values[id.0]
    }

    /// The node with this id.
    pub fn node(&self, id: NodeId) -> &Node {
        &self.nodes[id.0]
    }

    /// The constant data of a value, if it is an initializer.
    pub fn constant(&self, id: ValueId) -> Option<&Tensor> {
        self.values[id.0].constant.as_ref()
    }

    /// The data of a value known before the network runs: an initializer, or what
    /// shape inference folded (see [`Value::folded`]).
    pub fn known(&self, id: ValueId) -> Option<&Tensor> {
        let v = &self.values[id.0];
        v.constant.as_ref().or(v.folded.as_ref())
    }

    /// Whether a node's outputs were all folded by shape inference: the node
    /// computes sizes, not features, and needs no executing at the inferred size.
    pub fn is_folded(&self, node: &Node) -> bool {
        !node.outputs.is_empty()
            && node
                .outputs
                .iter()
                .all(|&o| self.values[o.0].folded.is_some())
    }

    /// The shape of a value, if known.
    pub fn shape(&self, id: ValueId) -> Option<&[usize]> {
        self.values[id.0].shape.as_deref()
    }

    /// Finds a value by name.
    pub fn value_by_name(&self, name: &str) -> Option<ValueId> {
        self.values.iter().position(|v| v.name == name).map(ValueId)
    }

    /// Nodes whose op effp does not support, as (node name, op type).
    pub fn unsupported_ops(&self) -> Vec<(String, String)> {
        self.nodes
            .iter()
            .filter(|n| !n.op.is_supported())
            .map(|n| (n.name.clone(), n.op.op_type().to_string()))
            .collect()
    }
}

/// A model: the graph plus the file-level facts needed to write it back faithfully.
#[derive(Debug, Clone, PartialEq, Default)]
pub struct Model {
    /// ONNX IR version.
    pub ir_version: i64,
    /// (domain, version) of each imported opset.
    pub opset_imports: Vec<(String, i64)>,
    /// Exporter name.
    pub producer_name: String,
    /// Exporter version.
    pub producer_version: String,
    /// Model domain.
    pub domain: String,
    /// Model version.
    pub model_version: i64,
    /// Free-form documentation.
    pub doc_string: String,
    /// Key/value metadata (Ultralytics keeps class names and stride here).
    pub metadata: Vec<(String, String)>,
    /// The graph.
    pub graph: Graph,
}

impl Model {
    /// The version of the default ("" / "ai.onnx") opset.
    pub fn opset(&self) -> i64 {
        self.opset_imports
            .iter()
            .find(|(d, _)| d.is_empty() || d == "ai.onnx")
            .map(|(_, v)| *v)
            .unwrap_or(0)
    }
}
