//! Masks applied as gates on consumer weight columns.
//!
//! A gate vector holds one value per prunable group (1 = on, 0 = off; fractional values
//! and gradients are allowed, which is what EFFP's regrowing reads). Each consumer node
//! maps its input channels to gate entries; frozen channels map to a constant 1.

use std::collections::HashMap;

use effp_graph::channels::{ChannelAnalysis, Mask};
use effp_graph::ir::{Graph, NodeId, Op};
use tch::{Device, Kind, Tensor};

/// For every consumer node, the gate index of each of its input channels.
#[derive(Debug)]
pub struct GateMap {
    groups: usize,
    per_node: HashMap<NodeId, Tensor>,
}

impl GateMap {
    /// Builds the map from the channel analysis of `graph`.
    pub fn new(graph: &Graph, analysis: &ChannelAnalysis, device: Device) -> Self {
        let groups = analysis.groups.len();
        let mut per_node = HashMap::new();
        for (i, node) in graph.nodes.iter().enumerate() {
            let consumes = match &node.op {
                Op::Conv(c) => c.group == 1,
                Op::ConvTranspose(c) => c.group == 1,
                Op::Gemm { .. } => true,
                _ => false,
            };
            let Some(x) = node.input(0).filter(|_| consumes) else {
                continue;
            };
            let Some(n) = analysis.channels(x) else {
                continue;
            };
            let index: Vec<i64> = (0..n)
                .map(|c| analysis.group_of(x, c).map_or(groups as i64, |g| g as i64))
                .collect();
            if index.iter().all(|&g| g == groups as i64) {
                continue; // every input channel frozen: nothing to gate
            }
            per_node.insert(NodeId(i), Tensor::from_slice(&index).to_device(device));
        }
        Self { groups, per_node }
    }

    /// Number of prunable groups (the length of a gate vector).
    pub fn groups(&self) -> usize {
        self.groups
    }

    /// A gate vector for a mask.
    pub fn gates_for(&self, mask: &Mask, device: Device) -> Tensor {
        let values: Vec<f32> = (0..self.groups)
            .map(|g| if mask.is_active(g) { 1.0 } else { 0.0 })
            .collect();
        Tensor::from_slice(&values).to_device(device)
    }

    /// The per-input-channel gate of a consumer node, if it has gated channels.
    pub(crate) fn node_gate(&self, node: NodeId, gates: &Tensor) -> Option<Tensor> {
        let index = self.per_node.get(&node)?;
        let one = Tensor::ones([1], (Kind::Float, gates.device()));
        let extended = Tensor::cat(&[gates.to_kind(Kind::Float), one], 0);
        Some(extended.index_select(0, index))
    }
}
