//! Physical removal of switched-off groups: a smaller model computing what the masked
//! one computes.

use serde::{Deserialize, Serialize};

use super::{ChannelAnalysis, Mask};
use crate::error::Result;
use crate::ir::{Model, Node, NodeId, Op, Tensor, Value, ValueId};
use crate::shape::{infer_shapes, inferred_input_size};

/// How one weighted node changed.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct LayerChange {
    /// The node's name.
    pub node: String,
    /// Its op type.
    pub op: String,
    /// Output channels before compaction.
    pub out_channels_before: usize,
    /// Output channels after.
    pub out_channels_after: usize,
    /// Input channels before.
    pub in_channels_before: usize,
    /// Input channels after.
    pub in_channels_after: usize,
    /// Indices (in the original model) of the output channels kept.
    pub kept_output_channels: Vec<usize>,
    /// Indices (in the original model) of the input channels kept.
    pub kept_input_channels: Vec<usize>,
}

/// What compaction did, node by node.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct CompactionReport {
    /// Groups removed.
    pub groups_removed: usize,
    /// Every node whose weights or channel counts changed.
    pub layers: Vec<LayerChange>,
}

/// Removes every channel of every switched-off group: producer filters and biases,
/// consumer weight columns, BatchNormalization parameters and statistics, depthwise
/// filters, per-channel constants; fixes Split sizes; re-infers shapes at the input
/// size the original was analysed at. Opset, input/output names and declared
/// (possibly free) input sizes are unchanged, and so is any shape subgraph.
pub fn compact(
    model: &Model,
    analysis: &ChannelAnalysis,
    mask: &Mask,
) -> Result<(Model, CompactionReport)> {
    let mut out = model.clone();
    let g = &model.graph;
    let kept: Vec<Option<Vec<usize>>> = (0..g.values.len())
        .map(|v| {
            let n = analysis.channels(ValueId(v))?;
            let keep: Vec<usize> = (0..n)
                .filter(|&c| {
                    analysis
                        .group_of(ValueId(v), c)
                        .is_none_or(|gid| mask.is_active(gid))
                })
                .collect();
            (keep.len() != n).then_some(keep)
        })
        .collect();
    let all = |v: ValueId| -> Vec<usize> { (0..analysis.channels(v).unwrap_or(0)).collect() };
    let keep_of = |v: ValueId| kept[v.0].clone().unwrap_or_else(|| all(v));

    let mut layers = Vec::new();
    for (index, node) in g.nodes.iter().enumerate() {
        let x = node.input(0);
        let y = node.outputs.first().copied();
        let changed_in = x.is_some_and(|x| kept[x.0].is_some());
        let changed_out = y.is_some_and(|y| kept[y.0].is_some());
        if !changed_in && !changed_out {
            continue;
        }
        let (Some(x), Some(y)) = (x, y) else { continue };
        let mut edit = NodeEdit {
            model: &mut out,
            node: NodeId(index),
        };
        let weighted = match &node.op {
            Op::Conv(c) if c.group == 1 => {
                edit.slice_input(1, &[(0, keep_of(y)), (1, keep_of(x))]);
                edit.slice_input(2, &[(0, keep_of(y))]);
                true
            }
            Op::Conv(_) => {
                // Depthwise (analysis froze every other grouped case).
                let keep = keep_of(y);
                edit.slice_input(1, &[(0, keep.clone())]);
                edit.slice_input(2, &[(0, keep.clone())]);
                if let Op::Conv(c) = &mut edit.node_mut().op {
                    c.group = keep.len() as i64;
                }
                true
            }
            Op::ConvTranspose(_) => {
                edit.slice_input(1, &[(0, keep_of(x)), (1, keep_of(y))]);
                edit.slice_input(2, &[(0, keep_of(y))]);
                true
            }
            Op::Gemm { trans_b, .. } => {
                let b = if *trans_b {
                    [(0, keep_of(y)), (1, keep_of(x))]
                } else {
                    [(0, keep_of(x)), (1, keep_of(y))]
                };
                edit.slice_input(1, &b);
                if let Some(c) = node.input(2).and_then(|c| g.constant(c))
                    && c.dims().last() == Some(&analysis.channels(y).unwrap_or(0))
                {
                    let axis = c.dims().len() - 1;
                    edit.slice_input(2, &[(axis, keep_of(y))]);
                }
                true
            }
            Op::BatchNormalization { .. } => {
                for param in 1..=4 {
                    edit.slice_input(param, &[(0, keep_of(x))]);
                }
                false
            }
            Op::Add | Op::Sub | Op::Mul | Op::Div => {
                let out_rank = g.shape(y).map_or(0, <[usize]>::len);
                let full = analysis.channels(y).unwrap_or(0);
                for (position, input) in node.inputs.iter().enumerate() {
                    let Some(t) = input.and_then(|i| g.constant(i)) else {
                        continue;
                    };
                    let offset = out_rank as isize - t.dims().len() as isize;
                    let axis = 1 - offset;
                    if axis >= 0 && t.dims().get(axis as usize) == Some(&full) && full > 1 {
                        edit.slice_input(position, &[(axis as usize, keep_of(y))]);
                    }
                }
                false
            }
            Op::Split { axis, .. } => {
                let rank = g.shape(x).map_or(0, <[usize]>::len) as i64;
                if *axis == 1 || *axis == 1 - rank {
                    let sizes: Vec<i64> = node
                        .outputs
                        .iter()
                        .map(|&o| {
                            kept[o.0]
                                .as_ref()
                                .map_or_else(|| g.shape(o).map_or(0, |s| s[1]), Vec::len)
                                as i64
                        })
                        .collect();
                    edit.set_split_sizes(&sizes, model.opset());
                }
                false
            }
            _ => false,
        };
        if weighted {
            layers.push(LayerChange {
                node: node.name.clone(),
                op: node.op.op_type().to_string(),
                out_channels_before: analysis.channels(y).unwrap_or(0),
                out_channels_after: keep_of(y).len(),
                in_channels_before: analysis.channels(x).unwrap_or(0),
                in_channels_after: keep_of(x).len(),
                kept_output_channels: keep_of(y),
                kept_input_channels: keep_of(x),
            });
        }
    }
    for v in &mut out.graph.values {
        if v.constant.is_none() {
            v.shape = None;
        }
        v.folded = None;
    }
    // At the size the original was analysed at: a model with free input sizes has
    // none of its own, and its shape subgraph now computes the new channel counts.
    infer_shapes(&mut out, inferred_input_size(g))?;
    Ok((
        out,
        CompactionReport {
            groups_removed: mask.pruned(),
            layers,
        },
    ))
}

/// Rewrites one node's constant inputs. Constants are often shared between nodes
/// (exporters de-duplicate equal tensors), so each edit writes a fresh constant for
/// this node instead of changing the shared one.
struct NodeEdit<'m> {
    model: &'m mut Model,
    node: NodeId,
}

impl NodeEdit<'_> {
    fn node_mut(&mut self) -> &mut Node {
        &mut self.model.graph.nodes[self.node.0]
    }

    fn slice_input(&mut self, position: usize, cuts: &[(usize, Vec<usize>)]) {
        let Some(id) = self.model.graph.nodes[self.node.0].input(position) else {
            return;
        };
        let Some(mut t) = self.model.graph.constant(id).cloned() else {
            return;
        };
        for (axis, keep) in cuts {
            if *axis < t.dims().len() && keep.len() != t.dims()[*axis] {
                t = t.select(*axis, keep);
            }
        }
        self.replace_input(position, t);
    }

    fn replace_input(&mut self, position: usize, t: Tensor) {
        let graph = &mut self.model.graph;
        let old = graph.nodes[self.node.0]
            .input(position)
            .expect("input exists");
        let name = format!(
            "{}__{}",
            graph.value(old).name,
            graph.nodes[self.node.0].name
        );
        let id = ValueId(graph.values.len());
        graph.values.push(Value {
            name,
            dtype: Some(t.dtype()),
            shape: Some(t.dims().to_vec()),
            constant: Some(t),
            folded: None,
            producer: None,
        });
        graph.nodes[self.node.0].inputs[position] = Some(id);
    }

    fn set_split_sizes(&mut self, sizes: &[i64], opset: i64) {
        let node = self.node_mut();
        if let Op::Split {
            split, num_outputs, ..
        } = &mut node.op
        {
            *num_outputs = None;
            if opset < 13 {
                *split = Some(sizes.to_vec());
                return;
            }
            *split = None;
        }
        let t = Tensor::from_i64(vec![sizes.len()], sizes);
        if self.model.graph.nodes[self.node.0].input(1).is_some() {
            self.replace_input(1, t);
        } else {
            let graph = &mut self.model.graph;
            let name = format!("{}__split_sizes", graph.nodes[self.node.0].name);
            let id = ValueId(graph.values.len());
            graph.values.push(Value {
                name,
                dtype: Some(t.dtype()),
                shape: Some(vec![sizes.len()]),
                constant: Some(t),
                folded: None,
                producer: None,
            });
            let inputs = &mut graph.nodes[self.node.0].inputs;
            inputs.resize(2, None);
            inputs[1] = Some(id);
        }
    }
}

/// The masked model as a plain ONNX model: every consumer weight column of a
/// switched-off group is zeroed, which gates those channels exactly where they enter
/// the rest of the network. Its outputs equal those of [`compact`]'s model.
pub fn gate(model: &Model, analysis: &ChannelAnalysis, mask: &Mask) -> Model {
    let mut out = model.clone();
    let mut columns: std::collections::BTreeMap<NodeId, Vec<usize>> =
        std::collections::BTreeMap::new();
    for group in analysis.groups.iter().filter(|g| !mask.is_active(g.id)) {
        for &(node, c) in &group.consumers {
            columns.entry(node).or_default().push(c);
        }
    }
    for (node, channels) in columns {
        let n = &model.graph.nodes[node.0];
        let Some(t) = n.input(1).and_then(|w| model.graph.constant(w)) else {
            continue;
        };
        // Axis of the input channel in the weight.
        let axis = match &n.op {
            Op::ConvTranspose(_) => 0,
            Op::Gemm { trans_b: false, .. } => 0,
            _ => 1,
        };
        if t.is_empty() {
            // No weights to zero; the other axes may be of any declared size.
            continue;
        }
        let mut values = t.to_f32_vec();
        let dims = t.dims();
        let inner: usize = dims[axis + 1..].iter().product();
        let outer: usize = dims[..axis].iter().product();
        for o in 0..outer {
            for &c in &channels {
                let start = (o * dims[axis] + c) * inner;
                values[start..start + inner].fill(0.0);
            }
        }
        let mut edit = NodeEdit {
            model: &mut out,
            node,
        };
        edit.replace_input(1, Tensor::from_f32(dims.to_vec(), &values));
    }
    out
}
