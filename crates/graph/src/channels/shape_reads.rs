//! Which feature maps have their channel count read by a shape subgraph and used.
//!
//! A `Shape` node only reads sizes, so it does not tie channels together. But entry
//! 1 of its output is the channel count: if that entry reaches anything that is not
//! itself part of the folded shape subgraph (a `Reshape` target, an `Expand` shape,
//! a graph output, …), the model's behaviour depends on the count and pruning the
//! channels would change what it computes. Those feature maps are frozen.
//!
//! The entry is tracked element by element through ops that only move elements
//! (`Gather`, `Concat`, `Slice`, `Unsqueeze`, …), so that taking the batch size or
//! the height out of a `Shape` output does not count as reading the channels; every
//! other op passes a read on to all of its outputs' elements (conservative).

use crate::ir::{DataType, Graph, NodeId, Op, Tensor, ValueId};
use crate::shape::fold;

/// Largest value whose reads are tracked element by element; larger ones (anchor
/// grids, never shape vectors) are tracked as a whole.
const PER_ELEMENT: usize = 4096;

/// For each element, a bit set of the channel reads it carries (bit i: the read of
/// source i modulo 64; sharing a bit only freezes more).
#[derive(Debug, Clone)]
enum Reads {
    Elements(Vec<u64>),
    Whole(u64),
}

impl Reads {
    fn any(&self) -> u64 {
        match self {
            Self::Elements(v) => v.iter().fold(0, |a, &b| a | b),
            Self::Whole(m) => *m,
        }
    }

    /// As an int64 tensor of `dims`, when small enough to track per element.
    fn tensor(&self, dims: &[usize]) -> Option<Tensor> {
        let n: usize = dims.iter().product();
        if n > PER_ELEMENT {
            return None;
        }
        let v: Vec<i64> = match self {
            Self::Elements(v) if v.len() == n => v.iter().map(|&m| m as i64).collect(),
            Self::Elements(_) => return None,
            Self::Whole(m) => vec![*m as i64; n],
        };
        Some(Tensor::from_i64(dims.to_vec(), &v))
    }
}

/// A feature map whose channel count is used, with what reads and what uses it.
#[derive(Debug, Clone)]
pub(super) struct ChannelRead {
    /// The feature map.
    pub value: ValueId,
    /// Why it must keep its channels, for the frozen class's reason.
    pub reason: String,
}

/// Finds every feature map (a value `has_slots` accepts) whose channel count flows
/// from a `Shape` node into something outside the folded shape subgraph.
pub(super) fn channel_reads(
    graph: &Graph,
    has_slots: impl Fn(ValueId) -> bool,
) -> Vec<ChannelRead> {
    let mut sources: Vec<(ValueId, NodeId)> = Vec::new();
    let mut reads: Vec<Option<Reads>> = vec![None; graph.values.len()];
    let mut found = Vec::new();
    let mut report = |mask: u64, user: String, sources: &[(ValueId, NodeId)]| {
        for (i, &(value, shape_node)) in sources.iter().enumerate() {
            if mask & (1 << (i % 64)) != 0 {
                found.push(ChannelRead {
                    value,
                    reason: format!(
                        "its channel count, read by Shape '{}', is used by {user}",
                        graph.node(shape_node).name
                    ),
                });
            }
        }
    };
    for (index, node) in graph.nodes.iter().enumerate() {
        let input_reads: Vec<Option<&Reads>> = node
            .inputs
            .iter()
            .map(|i| i.and_then(|id| reads[id.0].as_ref()))
            .collect();
        if let Op::Shape { .. } = node.op {
            let Some(x) = node.input(0) else { continue };
            let Some(&out) = node.outputs.first() else {
                continue;
            };
            let rank = graph.shape(x).map_or(0, <[usize]>::len);
            let (start, end) = fold::shape_range(&node.op, rank);
            if has_slots(x) && start <= 1 && 1 < end {
                let bit = 1u64 << (sources.len() % 64);
                sources.push((x, NodeId(index)));
                let mut v = vec![0; end - start];
                v[1 - start] = bit;
                reads[out.0] = Some(Reads::Elements(v));
            } else if let Some(r) = input_reads[0] {
                // The shape of a value computed from a channel count.
                reads[out.0] = Some(Reads::Whole(r.any()));
            }
            continue;
        }
        if input_reads.iter().all(Option::is_none) {
            continue;
        }
        if !graph.is_folded(node) {
            let mask = input_reads.iter().flatten().fold(0, |a, r| a | r.any());
            let user = format!("{} '{}'", node.op.op_type(), node.name);
            report(mask, user, &sources);
            continue;
        }
        let outputs = propagate(graph, node, &input_reads);
        for (&id, r) in node.outputs.iter().zip(outputs) {
            reads[id.0] = Some(r);
        }
    }
    for io in &graph.outputs {
        if let Some(r) = &reads[io.value.0] {
            let user = format!("graph output '{}'", graph.value(io.value).name);
            report(r.any(), user, &sources);
        }
    }
    found
}

/// The reads each output of a folded node carries.
fn propagate(graph: &Graph, node: &crate::ir::Node, input_reads: &[Option<&Reads>]) -> Vec<Reads> {
    let whole = input_reads.iter().flatten().fold(0, |a, r| a | r.any());
    let everything = || vec![Reads::Whole(whole); node.outputs.len()];
    if let Op::Cast { .. } = node.op {
        return vec![input_reads[0].cloned().unwrap_or(Reads::Whole(whole))];
    }
    let Some(moved) = fold::moved_inputs(&node.op, node.inputs.len()) else {
        return everything();
    };
    // Reads on the inputs that only place elements reach every output element.
    let placing = input_reads
        .iter()
        .enumerate()
        .filter(|(i, _)| !moved.contains(i))
        .filter_map(|(_, r)| *r)
        .fold(0, |a, r| a | r.any());
    let mut tensors: Vec<Option<Tensor>> = Vec::with_capacity(node.inputs.len());
    for (i, id) in node.inputs.iter().enumerate() {
        let Some(id) = *id else {
            tensors.push(None);
            continue;
        };
        if moved.contains(&i) {
            let dims = graph.shape(id).unwrap_or(&[]);
            let r = input_reads[i].cloned().unwrap_or(Reads::Whole(0));
            match r.tensor(dims) {
                Some(t) => tensors.push(Some(t)),
                None => return everything(),
            }
        } else {
            match graph.known(id) {
                Some(t) => tensors.push(Some(t.clone())),
                None => return everything(),
            }
        }
    }
    let shapes: Vec<Option<&[usize]>> = node
        .inputs
        .iter()
        .map(|i| i.and_then(|id| graph.shape(id)))
        .collect();
    let Some(out_shapes) = node
        .outputs
        .iter()
        .map(|&o| graph.shape(o).map(<[usize]>::to_vec))
        .collect::<Option<Vec<_>>>()
    else {
        return everything();
    };
    let refs: Vec<Option<&Tensor>> = tensors.iter().map(Option::as_ref).collect();
    match fold::eval(&node.op, &refs, &shapes, &out_shapes) {
        Ok(Some(outs)) if outs.iter().all(|t| t.dtype() == DataType::Int64) => outs
            .iter()
            .map(|t| {
                let v = t.to_i64_vec().expect("int64 tensor");
                Reads::Elements(v.into_iter().map(|m| m as u64 | placing).collect())
            })
            .collect(),
        _ => everything(),
    }
}
