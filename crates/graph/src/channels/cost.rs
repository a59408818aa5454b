//! Exact MACs and parameters of a graph with some groups switched off.

use super::{ChannelAnalysis, Mask};
use crate::cost::NodeCost;
use crate::ir::{Graph, Node, Op, ValueId};

/// Active channel counts per value, kept up to date as groups switch on and off, so
/// that the cost of a mask is a pass over the weighted nodes only.
#[derive(Debug, Clone)]
pub struct ActiveChannels<'g> {
    graph: &'g Graph,
    active: Vec<usize>,
}

impl<'g> ActiveChannels<'g> {
    /// Every channel active.
    pub fn all(graph: &'g Graph, analysis: &ChannelAnalysis) -> Self {
        let active = graph
            .values
            .iter()
            .enumerate()
            .map(|(i, v)| {
                analysis
                    .channels(ValueId(i))
                    .or_else(|| v.shape.as_ref().and_then(|s| s.get(1).copied()))
                    .unwrap_or(1)
            })
            .collect();
        Self { graph, active }
    }

    /// Counts for a mask.
    pub fn for_mask(graph: &'g Graph, analysis: &ChannelAnalysis, mask: &Mask) -> Self {
        let mut counts = Self::all(graph, analysis);
        for gid in 0..analysis.groups.len() {
            if !mask.is_active(gid) {
                counts.switch(analysis, gid, false);
            }
        }
        counts
    }

    /// Switches a group's channels on or off (the caller keeps track of which it is).
    pub fn switch(&mut self, analysis: &ChannelAnalysis, group: usize, on: bool) {
        for &(v, _) in &analysis.groups[group].members {
            if on {
                self.active[v.0] += 1;
            } else {
                self.active[v.0] -= 1;
            }
        }
    }

    /// Active channels of a value.
    pub fn active(&self, v: ValueId) -> usize {
        self.active[v.0]
    }

    /// Whole-graph cost with the current counts.
    pub fn cost(&self) -> NodeCost {
        let mut total = NodeCost::default();
        for node in &self.graph.nodes {
            if let Some(c) = self.node_cost(node) {
                total.macs = total.macs.saturating_add(c.macs);
                total.params = total.params.saturating_add(c.params);
            }
        }
        total
    }

    fn node_cost(&self, node: &Node) -> Option<NodeCost> {
        let g = self.graph;
        let spatial = |v: ValueId| {
            g.shape(v).map(|s| {
                s.iter()
                    .enumerate()
                    .filter(|&(i, _)| i != 1)
                    .map(|(_, &d)| d as u64)
                    .product::<u64>()
            })
        };
        let x = node.input(0)?;
        let y = *node.outputs.first()?;
        let has_bias = node.input(2).is_some_and(|b| g.constant(b).is_some());
        Some(match &node.op {
            Op::Conv(c) => {
                let w = g.shape(node.input(1)?)?;
                let k: u64 = w[2..].iter().map(|&d| d as u64).product();
                let (cin, cout) = (self.active(x) as u64, self.active(y) as u64);
                let in_per_group = if c.group == 1 { cin } else { w[1] as u64 };
                NodeCost {
                    macs: spatial(y)? * cout * in_per_group * k,
                    params: cout * in_per_group * k + if has_bias { cout } else { 0 },
                }
            }
            Op::ConvTranspose(c) => {
                let w = g.shape(node.input(1)?)?;
                let k: u64 = w[2..].iter().map(|&d| d as u64).product();
                let (cin, cout) = (self.active(x) as u64, self.active(y) as u64);
                let group = c.group as u64;
                NodeCost {
                    macs: spatial(x)? * cin * (cout / group) * k,
                    params: cin * (cout / group) * k + if has_bias { cout } else { 0 },
                }
            }
            Op::Gemm { .. } => {
                let n = g.shape(x)?[0] as u64;
                let (k, m) = (self.active(x) as u64, self.active(y) as u64);
                let bias = node
                    .input(2)
                    .and_then(|b| g.constant(b))
                    .map_or(0, |t| if t.len() > 1 { m } else { t.len() as u64 });
                NodeCost {
                    macs: n * k * m,
                    params: k * m + bias,
                }
            }
            Op::MatMul => crate::cost::node_cost(g, node)?,
            _ => return None,
        })
    }
}

/// MACs and parameters of the graph with `mask` applied.
pub fn masked_cost(graph: &Graph, analysis: &ChannelAnalysis, mask: &Mask) -> NodeCost {
    ActiveChannels::for_mask(graph, analysis, mask).cost()
}
