//! The cost model: multiply-accumulates and parameters, the way the field reports them.
//!
//! MACs count Conv, ConvTranspose, Gemm and MatMul; FLOPs are 2 × MACs; parameters
//! are the elements of those ops' constant weight and bias tensors. BatchNormalization
//! statistics are buffers, not parameters, and elementwise ops are free.

use serde::Serialize;

use crate::ir::{Graph, Node, Op};

/// Cost of one node.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize)]
pub struct NodeCost {
    /// Multiply-accumulate operations for one forward pass.
    pub macs: u64,
    /// Trainable weight and bias elements.
    pub params: u64,
}

impl NodeCost {
    /// Floating-point operations: 2 × MACs.
    pub fn flops(&self) -> u64 {
        self.macs.saturating_mul(2)
    }
}

/// Cost of a whole graph.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub struct GraphCost {
    /// Sum of MACs.
    pub macs: u64,
    /// Sum of parameters.
    pub params: u64,
    /// Cost of every node, indexed like [`Graph::nodes`]; `None` where shapes are unknown.
    pub per_node: Vec<Option<NodeCost>>,
}

impl GraphCost {
    /// Floating-point operations: 2 × MACs.
    pub fn flops(&self) -> u64 {
        self.macs.saturating_mul(2)
    }
}

/// Costs every node of a graph whose shapes have been inferred.
pub fn graph_cost(graph: &Graph) -> GraphCost {
    let per_node: Vec<Option<NodeCost>> = graph.nodes.iter().map(|n| node_cost(graph, n)).collect();
    let (macs, params) = per_node.iter().flatten().fold((0u64, 0u64), |(m, p), c| {
        (m.saturating_add(c.macs), p.saturating_add(c.params))
    });
    GraphCost {
        macs,
        params,
        per_node,
    }
}

/// Cost of one node; `None` when a shape it needs is unknown.
pub fn node_cost(graph: &Graph, node: &Node) -> Option<NodeCost> {
    let shape = |i: usize| node.input(i).and_then(|id| graph.shape(id));
    let out = node.outputs.first().and_then(|&id| graph.shape(id));
    let product = |s: &[usize]| s.iter().fold(1u64, |acc, &d| acc.saturating_mul(d as u64));
    let constant_elems = |i: usize| {
        node.input(i)
            .and_then(|id| graph.constant(id))
            .map_or(0, |t| t.len() as u64)
    };
    let weight_params = || constant_elems(1).saturating_add(constant_elems(2));
    Some(match &node.op {
        Op::Conv(_) => {
            let w = shape(1)?;
            let per_output = product(w.get(1..)?);
            NodeCost {
                macs: product(out?).saturating_mul(per_output),
                params: weight_params(),
            }
        }
        Op::ConvTranspose(_) => {
            // Every input element is scattered through (Cout / group) × kernel weights.
            let w = shape(1)?;
            let per_input = product(w.get(1..)?);
            NodeCost {
                macs: product(shape(0)?).saturating_mul(per_input),
                params: weight_params(),
            }
        }
        Op::Gemm { trans_a, .. } => {
            // Shapes are only consistent when inference ran on this node: look, don't index.
            let a = shape(0)?;
            let k = *a.get(if *trans_a { 0 } else { 1 })?;
            NodeCost {
                macs: product(out?).saturating_mul(k as u64),
                params: weight_params(),
            }
        }
        Op::MatMul => {
            let a = shape(0)?;
            let k = *a.last()?;
            NodeCost {
                macs: product(out?).saturating_mul(k as u64),
                params: constant_elems(0).saturating_add(constant_elems(1)),
            }
        }
        _ => NodeCost::default(),
    })
}
