//! The inspection report: what a model is, what it costs, and what effp cannot handle.
//!
//! This is the stable object behind `effp inspect --json` and, later, the API's model
//! resource. Fields are only ever added, never renamed or removed, within a `schema`.

use std::collections::BTreeMap;

use serde::Serialize;

use crate::cost::graph_cost;
use crate::ir::{Dim, GraphIo, Model};

/// Identifier of the report layout, carried in every report.
pub const INSPECT_SCHEMA: &str = "effp.inspect/v1";

/// Everything `effp inspect` reports about a model.
#[derive(Debug, Clone, Serialize)]
pub struct InspectReport {
    /// Always [`INSPECT_SCHEMA`].
    pub schema: &'static str,
    /// File-level facts.
    pub model: ModelInfo,
    /// Graph inputs with their effective shapes.
    pub inputs: Vec<TensorInfo>,
    /// Graph outputs with their inferred shapes.
    pub outputs: Vec<TensorInfo>,
    /// Whole-model cost.
    pub totals: Totals,
    /// Count of nodes per op type, sorted by op type.
    pub op_histogram: BTreeMap<String, usize>,
    /// Nodes whose op effp does not support; empty for a model effp can prune.
    pub unsupported_ops: Vec<UnsupportedOp>,
    /// Every node in execution order.
    pub nodes: Vec<NodeInfo>,
    /// Channel groups and frozen classes; present when asked for (`--groups`).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub channel_groups: Option<GroupsReport>,
}

/// File-level facts about a model.
#[derive(Debug, Clone, Serialize)]
pub struct ModelInfo {
    /// ONNX IR version.
    pub ir_version: i64,
    /// Default-domain opset version.
    pub opset: i64,
    /// Exporter, e.g. "pytorch 2.11.0".
    pub producer: String,
    /// The graph's name.
    pub graph_name: String,
    /// Metadata keys and values (Ultralytics stores names, stride, imgsz here).
    pub metadata: BTreeMap<String, String>,
}

/// A graph input or output.
#[derive(Debug, Clone, Serialize)]
pub struct TensorInfo {
    /// The value's name.
    pub name: String,
    /// The element type, e.g. "float32".
    pub dtype: Option<String>,
    /// The shape the file declares; symbolic axes as their names, unknown as null.
    pub declared_shape: Option<Vec<DeclaredDim>>,
    /// The shape effp works with; null when it could not be inferred.
    pub shape: Option<Vec<usize>>,
}

/// Whole-model cost, in the convention of the cost model.
#[derive(Debug, Clone, Serialize)]
pub struct Totals {
    /// Number of nodes (Constant nodes are folded into initializers and not counted).
    pub nodes: usize,
    /// Multiply-accumulates.
    pub macs: u64,
    /// 2 × MACs.
    pub flops: u64,
    /// FLOPs in units of 10⁹, as detector papers and Ultralytics report them.
    pub gflops: f64,
    /// Trainable parameters (Conv/ConvTranspose/Gemm/MatMul weights and biases).
    pub params: u64,
    /// Whether every node's shape and cost is known (false after an unsupported op).
    pub complete: bool,
}

/// An op effp cannot execute or prune.
#[derive(Debug, Clone, Serialize)]
pub struct UnsupportedOp {
    /// The node's name.
    pub node: String,
    /// The op type.
    pub op: String,
    /// The op's domain ("" is the default ONNX domain).
    pub domain: String,
}

/// One node's line in the report.
#[derive(Debug, Clone, Serialize)]
pub struct NodeInfo {
    /// The node's name.
    pub name: String,
    /// The op type.
    pub op: String,
    /// Shape of each output; null where unknown.
    pub output_shapes: Vec<Option<Vec<usize>>>,
    /// Multiply-accumulates; null where unknown.
    pub macs: Option<u64>,
    /// 2 × MACs; null where unknown.
    pub flops: Option<u64>,
    /// Parameters; null where unknown.
    pub params: Option<u64>,
}

/// A declared dimension: a number, a symbol name, or null when the file gives neither.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DeclaredDim(pub Dim);

impl Serialize for DeclaredDim {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        match &self.0 {
            Dim::Fixed(n) => s.serialize_u64(*n as u64),
            Dim::Symbolic(name) => s.serialize_str(name),
            Dim::Unknown => s.serialize_none(),
        }
    }
}

/// Builds the report for a model whose shapes have been inferred.
pub fn inspect(model: &Model) -> InspectReport {
    let g = &model.graph;
    let cost = graph_cost(g);
    let mut op_histogram = BTreeMap::new();
    for n in &g.nodes {
        *op_histogram.entry(n.op.op_type().to_string()).or_insert(0) += 1;
    }
    let nodes: Vec<NodeInfo> = g
        .nodes
        .iter()
        .zip(&cost.per_node)
        .map(|(n, c)| NodeInfo {
            name: n.name.clone(),
            op: n.op.op_type().to_string(),
            output_shapes: n
                .outputs
                .iter()
                .map(|&id| g.shape(id).map(<[usize]>::to_vec))
                .collect(),
            macs: c.map(|c| c.macs),
            flops: c.map(|c| c.flops()),
            params: c.map(|c| c.params),
        })
        .collect();
    let complete =
        cost.per_node.iter().all(Option::is_some) && g.values.iter().all(|v| v.shape.is_some());
    let io = |io: &GraphIo| {
        let v = g.value(io.value);
        TensorInfo {
            name: v.name.clone(),
            dtype: v.dtype.map(|d| d.name().to_string()),
            declared_shape: io
                .dims
                .as_ref()
                .map(|dims| dims.iter().cloned().map(DeclaredDim).collect()),
            shape: v.shape.clone(),
        }
    };
    InspectReport {
        schema: INSPECT_SCHEMA,
        model: ModelInfo {
            ir_version: model.ir_version,
            opset: model.opset(),
            producer: format!("{} {}", model.producer_name, model.producer_version)
                .trim()
                .to_string(),
            graph_name: g.name.clone(),
            metadata: model.metadata.iter().cloned().collect(),
        },
        inputs: g.inputs.iter().map(io).collect(),
        outputs: g.outputs.iter().map(io).collect(),
        totals: Totals {
            nodes: g.nodes.len(),
            macs: cost.macs,
            flops: cost.flops(),
            gflops: cost.flops() as f64 / 1e9,
            params: cost.params,
            complete,
        },
        op_histogram,
        unsupported_ops: g
            .nodes
            .iter()
            .filter(|n| !n.op.is_supported())
            .map(|n| UnsupportedOp {
                node: n.name.clone(),
                op: n.op.op_type().to_string(),
                domain: n.op.domain().to_string(),
            })
            .collect(),
        nodes,
        channel_groups: None,
    }
}

/// The channel dependency analysis in report form (`effp inspect --groups`).
#[derive(Debug, Clone, Serialize)]
pub struct GroupsReport {
    /// Number of prunable groups.
    pub prunable_groups: usize,
    /// Channels (value, index) in prunable groups.
    pub prunable_channels: usize,
    /// Number of frozen classes.
    pub frozen_classes: usize,
    /// Channels in frozen classes.
    pub frozen_channels: usize,
    /// Every prunable group.
    pub groups: Vec<GroupInfo>,
    /// Every frozen class.
    pub frozen: Vec<FrozenInfo>,
}

/// A channel of a named value.
#[derive(Debug, Clone, Serialize)]
pub struct NamedChannel {
    /// Value name (or node name, for producers and consumers).
    pub name: String,
    /// Channel index.
    pub channel: usize,
}

/// One prunable group.
#[derive(Debug, Clone, Serialize)]
pub struct GroupInfo {
    /// Group id (the index masks use).
    pub id: usize,
    /// Filters producing the group: node name and output channel.
    pub producers: Vec<NamedChannel>,
    /// Weight columns reading it: node name and input channel.
    pub consumers: Vec<NamedChannel>,
    /// Number of per-channel parameters on its path (BatchNormalization, depthwise, constants).
    pub per_channel_params: usize,
    /// The feature-map channels it covers.
    pub channels: Vec<NamedChannel>,
    /// FLOPs saved by removing this group alone.
    pub flops: u64,
}

/// One frozen class.
#[derive(Debug, Clone, Serialize)]
pub struct FrozenInfo {
    /// Why it cannot be pruned.
    pub reason: String,
    /// Number of channels in it.
    pub channels: usize,
    /// Names of the values it touches.
    pub values: Vec<String>,
}

/// Builds the groups section of the report.
pub fn groups_report(model: &Model, analysis: &crate::channels::ChannelAnalysis) -> GroupsReport {
    let g = &model.graph;
    let node = |(n, c): (crate::ir::NodeId, usize)| NamedChannel {
        name: g.node(n).name.clone(),
        channel: c,
    };
    let value = |(v, c): (crate::ir::ValueId, usize)| NamedChannel {
        name: g.value(v).name.clone(),
        channel: c,
    };
    let groups: Vec<GroupInfo> = analysis
        .groups
        .iter()
        .map(|gr| GroupInfo {
            id: gr.id,
            producers: gr.producers.iter().copied().map(node).collect(),
            consumers: gr.consumers.iter().copied().map(node).collect(),
            per_channel_params: gr.per_channel.len(),
            channels: gr.members.iter().copied().map(value).collect(),
            flops: gr.macs.saturating_mul(2),
        })
        .collect();
    let frozen: Vec<FrozenInfo> = analysis
        .frozen
        .iter()
        .map(|f| {
            let mut values: Vec<String> = f
                .members
                .iter()
                .map(|&(v, _)| g.value(v).name.clone())
                .collect();
            values.dedup();
            values.sort();
            values.dedup();
            FrozenInfo {
                reason: f.reason.clone(),
                channels: f.members.len(),
                values,
            }
        })
        .collect();
    GroupsReport {
        prunable_groups: groups.len(),
        prunable_channels: groups.iter().map(|g| g.channels.len()).sum(),
        frozen_classes: frozen.len(),
        frozen_channels: frozen.iter().map(|f| f.channels).sum(),
        groups,
        frozen,
    }
}
