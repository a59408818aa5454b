//! Weights that are not learnt: fixed projections the exporter stores as convolutions.

use effp_graph::ir::{Graph, Op, ValueId};

/// Weights of the convolutions that read a Softmax's output (through Reshape or
/// Transpose): the distribution-focal-loss decode of YOLOv8-style heads, whose weights
/// are the bin positions 0…reg_max−1. Training them (or decaying them) would move the
/// decoded boxes away from what the bins mean.
pub fn fixed_projections(graph: &Graph) -> Vec<ValueId> {
    graph
        .nodes
        .iter()
        .filter(|node| matches!(node.op, Op::Conv(_)))
        .filter(|node| reads_softmax(graph, node.input(0)))
        .filter_map(|node| node.input(1).filter(|&w| graph.constant(w).is_some()))
        .collect()
}

/// Whether `value` is a Softmax's output, seen through ops that only move elements.
fn reads_softmax(graph: &Graph, mut value: Option<ValueId>) -> bool {
    while let Some(v) = value {
        let Some(producer) = graph.value(v).producer else {
            return false;
        };
        let node = graph.node(producer);
        match node.op {
            Op::Softmax { .. } => return true,
            Op::Transpose { .. } | Op::Reshape { .. } => value = node.input(0),
            _ => return false,
        }
    }
    false
}
