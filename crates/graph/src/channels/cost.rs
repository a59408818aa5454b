//! Exact MACs and parameters of a graph with some groups switched off.

use super::{ChannelAnalysis, Mask, PrunableGroup};
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

    /// Cost of one node with the current counts; `None` for nodes without a cost
    /// or whose shapes are unknown. Products saturate: a hostile graph can declare
    /// sizes whose product exceeds `u64`, and a saturated count is still "too much".
    pub(crate) fn node_cost(&self, node: &Node) -> Option<NodeCost> {
        let g = self.graph;
        let spatial = |v: ValueId| {
            g.shape(v).map(|s| {
                s.iter()
                    .enumerate()
                    .filter(|&(i, _)| i != 1)
                    .fold(1u64, |acc, (_, &d)| acc.saturating_mul(d as u64))
            })
        };
        let x = node.input(0)?;
        let y = *node.outputs.first()?;
        let has_bias = node.input(2).is_some_and(|b| g.constant(b).is_some());
        let mul = |factors: &[u64]| factors.iter().fold(1u64, |acc, &f| acc.saturating_mul(f));
        Some(match &node.op {
            Op::Conv(c) => {
                let w = g.shape(node.input(1)?)?;
                let k = product(w.get(2..)?);
                let (cin, cout) = (self.active(x) as u64, self.active(y) as u64);
                let in_per_group = if c.group == 1 { cin } else { *w.get(1)? as u64 };
                NodeCost {
                    macs: mul(&[spatial(y)?, cout, in_per_group, k]),
                    params: mul(&[cout, in_per_group, k]).saturating_add(if has_bias {
                        cout
                    } else {
                        0
                    }),
                }
            }
            Op::ConvTranspose(c) => {
                let w = g.shape(node.input(1)?)?;
                let k = product(w.get(2..)?);
                let (cin, cout) = (self.active(x) as u64, self.active(y) as u64);
                let per_group = cout / c.group.max(1) as u64;
                NodeCost {
                    macs: mul(&[spatial(x)?, cin, per_group, k]),
                    params: mul(&[cin, per_group, k]).saturating_add(if has_bias {
                        cout
                    } else {
                        0
                    }),
                }
            }
            Op::Gemm { .. } => {
                let n = *g.shape(x)?.first()? as u64;
                let (k, m) = (self.active(x) as u64, self.active(y) as u64);
                let bias = node
                    .input(2)
                    .and_then(|b| g.constant(b))
                    .map_or(0, |t| if t.len() > 1 { m } else { t.len() as u64 });
                NodeCost {
                    macs: mul(&[n, k, m]),
                    params: mul(&[k, m]).saturating_add(bias),
                }
            }
            Op::MatMul => crate::cost::node_cost(g, node)?,
            _ => return None,
        })
    }
}

/// Product of sizes, saturating at `u64::MAX`.
fn product(dims: &[usize]) -> u64 {
    dims.iter()
        .fold(1u64, |acc, &d| acc.saturating_mul(d as u64))
}

/// Whether a node's cost depends on the active channels of its input 0 or output 0
/// (MatMul's does not: it is costed from the shapes alone).
fn depends_on_channels(node: &Node) -> bool {
    matches!(
        node.op,
        Op::Conv(_) | Op::ConvTranspose(_) | Op::Gemm { .. }
    )
}

/// MACs saved by switching off each group alone, indexed like
/// [`ChannelAnalysis::groups`].
///
/// Only the nodes that read or write a group's values are costed for that group, so
/// the work is proportional to the channel references the analysis recorded (which
/// the limits cap) rather than to groups × nodes.
pub(crate) fn group_savings(graph: &Graph, analysis: &ChannelAnalysis) -> Vec<u64> {
    let mut touching: Vec<Vec<usize>> = vec![Vec::new(); graph.values.len()];
    for (index, node) in graph.nodes.iter().enumerate() {
        if !depends_on_channels(node) {
            continue;
        }
        let ends = [node.input(0), node.outputs.first().copied()];
        for v in ends.into_iter().flatten() {
            if touching[v.0].last() != Some(&index) {
                touching[v.0].push(index);
            }
        }
    }
    let mut counts = ActiveChannels::all(graph, analysis);
    let mut seen = vec![usize::MAX; graph.nodes.len()];
    let mut nodes = Vec::new();
    let mut savings = Vec::with_capacity(analysis.groups.len());
    for (gid, group) in analysis.groups.iter().enumerate() {
        nodes.clear();
        let mut last = None;
        for &(v, _) in &group.members {
            if last == Some(v) {
                continue;
            }
            last = Some(v);
            for &n in &touching[v.0] {
                if seen[n] != gid {
                    seen[n] = gid;
                    nodes.push(n);
                }
            }
        }
        let macs = |counts: &ActiveChannels<'_>| {
            nodes
                .iter()
                .filter_map(|&n| counts.node_cost(&graph.nodes[n]))
                .fold(0u64, |acc, c| acc.saturating_add(c.macs))
        };
        let before = macs(&counts);
        counts.switch(analysis, gid, false);
        let after = macs(&counts);
        counts.switch(analysis, gid, true);
        savings.push(before.saturating_sub(after));
    }
    savings
}

/// Elements per channel, for one image, of every distinct value a group's channels
/// occupy (the spatial size; 1 for a value without spatial axes).
pub(crate) fn group_activations(graph: &Graph, group: &PrunableGroup) -> u64 {
    let mut values: Vec<ValueId> = group.members.iter().map(|&(v, _)| v).collect();
    values.sort();
    values.dedup();
    values
        .into_iter()
        .filter_map(|v| graph.shape(v))
        .map(|s| {
            s.iter()
                .skip(2)
                .fold(1u64, |acc, &d| acc.saturating_mul(d as u64))
        })
        .fold(0u64, u64::saturating_add)
}

/// MACs and parameters of the graph with `mask` applied.
pub fn masked_cost(graph: &Graph, analysis: &ChannelAnalysis, mask: &Mask) -> NodeCost {
    ActiveChannels::for_mask(graph, analysis, mask).cost()
}
