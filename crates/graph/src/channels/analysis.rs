//! Which channels must be removed together: a union-find over channel slots.
//!
//! Every feature map with a channel axis (axis 1) gets one slot per channel. Ops that
//! keep channel identity unify slot c of their inputs and output; Concat and Split map
//! slots by offset; Conv and Gemm outputs are producers (a filter per slot) and their
//! inputs consumers (a weight column per slot). A slot that reaches anything whose
//! channels cannot be sliced (Reshape, Transpose, MatMul, Softmax over channels, a
//! graph input or output, a grouped convolution) freezes its whole class.

use std::collections::BTreeMap;

use super::union_find::UnionFind;
use crate::ir::{Graph, NodeId, Op, ValueId};

/// A channel of a value: (value, channel index).
pub type Channel = (ValueId, usize);

/// A set of channels that can only be removed together, and what removing it touches.
#[derive(Debug, Clone)]
pub struct PrunableGroup {
    /// Index in [`ChannelAnalysis::groups`].
    pub id: usize,
    /// Filters that produce these channels: (Conv/ConvTranspose/Gemm node, output channel).
    pub producers: Vec<(NodeId, usize)>,
    /// Weight columns that read them: (Conv/ConvTranspose/Gemm node, input channel).
    pub consumers: Vec<(NodeId, usize)>,
    /// Per-channel parameters on the path (BatchNormalization, depthwise filters,
    /// per-channel constants): (node, input position, channel).
    pub per_channel: Vec<(NodeId, usize, usize)>,
    /// Every (value, channel) in the group.
    pub members: Vec<Channel>,
    /// MACs saved by switching off this group alone.
    pub macs: u64,
}

/// A set of channels that must be kept, and why.
#[derive(Debug, Clone)]
pub struct FrozenClass {
    /// Every (value, channel) in the class.
    pub members: Vec<Channel>,
    /// What froze it (the first reason found).
    pub reason: String,
}

/// The channel coupling of a graph.
#[derive(Debug, Clone)]
pub struct ChannelAnalysis {
    /// For each value: its first slot and channel count, if it has a channel axis.
    value_slots: Vec<Option<(usize, usize)>>,
    /// For each slot: its group, or `None` when frozen.
    slot_group: Vec<Option<usize>>,
    /// Prunable groups.
    pub groups: Vec<PrunableGroup>,
    /// Frozen classes.
    pub frozen: Vec<FrozenClass>,
}

impl ChannelAnalysis {
    /// The group a channel belongs to, `None` when it is frozen or has no slot.
    pub fn group_of(&self, value: ValueId, channel: usize) -> Option<usize> {
        let (offset, n) = self.value_slots[value.0]?;
        (channel < n)
            .then(|| self.slot_group[offset + channel])
            .flatten()
    }

    /// Number of channels (slots) of a value, if it has a channel axis.
    pub fn channels(&self, value: ValueId) -> Option<usize> {
        self.value_slots[value.0].map(|(_, n)| n)
    }

    /// Analyses a graph whose shapes have been inferred.
    pub fn new(graph: &Graph) -> Self {
        let mut b = SlotBuilder::new(graph);
        for (index, node) in graph.nodes.iter().enumerate() {
            b.node(NodeId(index), node);
        }
        for io in graph.inputs.iter() {
            b.freeze(
                io.value,
                format!("graph input '{}'", graph.value(io.value).name),
            );
        }
        for io in graph.outputs.iter() {
            b.freeze(
                io.value,
                format!("graph output '{}'", graph.value(io.value).name),
            );
        }
        b.finish(graph)
    }
}

struct SlotBuilder<'g> {
    graph: &'g Graph,
    value_slots: Vec<Option<(usize, usize)>>,
    uf: UnionFind,
    freezes: Vec<(usize, String)>,
    producers: Vec<(usize, NodeId, usize)>,
    consumers: Vec<(usize, NodeId, usize)>,
    per_channel: Vec<(usize, NodeId, usize, usize)>,
}

impl<'g> SlotBuilder<'g> {
    fn new(graph: &'g Graph) -> Self {
        let mut next = 0;
        let value_slots: Vec<Option<(usize, usize)>> = graph
            .values
            .iter()
            .map(|v| {
                if v.constant.is_some() {
                    return None;
                }
                let s = v.shape.as_ref()?;
                let n = *s.get(1).filter(|_| s.len() >= 2)?;
                let slot = (next, n);
                next += n;
                Some(slot)
            })
            .collect();
        Self {
            graph,
            value_slots,
            uf: UnionFind::new(next),
            freezes: Vec::new(),
            producers: Vec::new(),
            consumers: Vec::new(),
            per_channel: Vec::new(),
        }
    }

    fn slots(&self, v: ValueId) -> Option<(usize, usize)> {
        self.value_slots[v.0]
    }

    fn freeze(&mut self, v: ValueId, reason: String) {
        if let Some((o, n)) = self.slots(v) {
            self.freezes.extend((o..o + n).map(|s| (s, reason.clone())));
        }
    }

    /// Unifies channel c of `a` with channel c of `b`; mismatches freeze both.
    fn unify(&mut self, a: ValueId, b: ValueId, why: &str) {
        match (self.slots(a), self.slots(b)) {
            (Some((oa, na)), Some((ob, nb))) if na == nb => {
                for c in 0..na {
                    self.uf.union(oa + c, ob + c);
                }
            }
            (None, None) => {}
            _ => {
                self.freeze(a, format!("{why}: channel axes do not line up"));
                self.freeze(b, format!("{why}: channel axes do not line up"));
            }
        }
    }

    fn node_label(&self, id: NodeId) -> String {
        let n = self.graph.node(id);
        format!("{} '{}'", n.op.op_type(), n.name)
    }

    fn freeze_all(&mut self, id: NodeId, reason: &str) {
        let node = self.graph.node(id);
        let label = self.node_label(id);
        for v in node
            .inputs
            .iter()
            .flatten()
            .chain(node.outputs.iter())
            .copied()
            .collect::<Vec<_>>()
        {
            self.freeze(v, format!("{reason} ({label})"));
        }
    }

    fn node(&mut self, id: NodeId, node: &'g crate::ir::Node) {
        let g = self.graph;
        let input = |i: usize| node.input(i);
        let out = node.outputs.first().copied();
        let label = self.node_label(id);
        match &node.op {
            Op::Conv(c) => {
                let (Some(x), Some(y)) = (input(0), out) else {
                    return;
                };
                let cin = self.slots(x).map_or(0, |s| s.1);
                let cout = self.slots(y).map_or(0, |s| s.1);
                if c.group == 1 {
                    self.producer_consumer(id, x, y);
                } else if c.group as usize == cin && cin == cout {
                    // Depthwise: channel c in is channel c out; its filter is per-channel.
                    self.unify(x, y, &label);
                    if let Some((o, n)) = self.slots(y) {
                        for ch in 0..n {
                            self.per_channel.push((o + ch, id, 1, ch));
                        }
                    }
                } else {
                    self.freeze_all(id, "grouped convolution");
                }
            }
            Op::ConvTranspose(c) => {
                let (Some(x), Some(y)) = (input(0), out) else {
                    return;
                };
                if c.group == 1 {
                    self.producer_consumer(id, x, y);
                } else {
                    self.freeze_all(id, "grouped transposed convolution");
                }
            }
            Op::Gemm { trans_a, .. } => {
                let (Some(x), Some(y)) = (input(0), out) else {
                    return;
                };
                let b_constant = input(1).is_some_and(|b| g.constant(b).is_some());
                if *trans_a || !b_constant {
                    self.freeze_all(id, "Gemm with a transposed or computed left operand");
                } else {
                    self.producer_consumer(id, x, y);
                }
            }
            Op::BatchNormalization { .. } => {
                let (Some(x), Some(y)) = (input(0), out) else {
                    return;
                };
                self.unify(x, y, &label);
                if let Some((o, n)) = self.slots(y) {
                    for ch in 0..n {
                        for param in 1..=4 {
                            self.per_channel.push((o + ch, id, param, ch));
                        }
                    }
                }
            }
            Op::Relu
            | Op::LeakyRelu { .. }
            | Op::Sigmoid
            | Op::HardSigmoid { .. }
            | Op::HardSwish
            | Op::Clip { .. }
            | Op::Identity
            | Op::MaxPool(_)
            | Op::AveragePool(_)
            | Op::GlobalAveragePool => {
                if let (Some(x), Some(y)) = (input(0), out) {
                    self.unify(x, y, &label);
                }
            }
            Op::Resize(_) | Op::Pad { .. } => {
                let (Some(x), Some(y)) = (input(0), out) else {
                    return;
                };
                if g.shape(x).and_then(|s| s.get(1)) == g.shape(y).and_then(|s| s.get(1)) {
                    self.unify(x, y, &label);
                } else {
                    self.freeze_all(id, "resizes or pads the channel axis");
                }
            }
            Op::Softmax { axis, .. } => {
                let (Some(x), Some(y)) = (input(0), out) else {
                    return;
                };
                let rank = g.shape(x).map_or(0, <[usize]>::len) as i64;
                if *axis == 1 || *axis == 1 - rank {
                    self.freeze_all(id, "Softmax over channels");
                } else {
                    self.unify(x, y, &label);
                }
            }
            Op::Add | Op::Sub | Op::Mul | Op::Div => self.elementwise(id, node, &label),
            Op::Concat { axis } => self.concat_split(id, node, *axis, true, &label),
            Op::Split { axis, .. } => self.concat_split(id, node, *axis, false, &label),
            Op::Slice { .. } => {
                let (Some(x), Some(y)) = (input(0), out) else {
                    return;
                };
                if g.shape(x).and_then(|s| s.get(1)) == g.shape(y).and_then(|s| s.get(1)) {
                    self.unify(x, y, &label);
                } else {
                    self.freeze_all(id, "slices the channel axis");
                }
            }
            Op::Flatten { axis: 1 } => {
                // [N, C, 1, 1] → [N, C] keeps channel identity (classifier heads).
                let (Some(x), Some(y)) = (input(0), out) else {
                    return;
                };
                if g.shape(x)
                    .is_some_and(|s| s.len() >= 2 && s[2..].iter().all(|&d| d == 1))
                {
                    self.unify(x, y, &label);
                } else {
                    self.freeze_all(id, "Flatten mixes channels with positions");
                }
            }
            Op::Reshape { .. } | Op::Transpose { .. } | Op::Flatten { .. } | Op::MatMul => {
                self.freeze_all(id, "channels reach an op that mixes axes");
            }
            Op::Constant(_) => {}
            Op::Unsupported { .. } => self.freeze_all(id, "unsupported op"),
        }
    }

    fn producer_consumer(&mut self, id: NodeId, x: ValueId, y: ValueId) {
        if let Some((o, n)) = self.slots(x) {
            self.consumers.extend((0..n).map(|c| (o + c, id, c)));
        }
        if let Some((o, n)) = self.slots(y) {
            self.producers.extend((0..n).map(|c| (o + c, id, c)));
        }
    }

    fn elementwise(&mut self, id: NodeId, node: &crate::ir::Node, label: &str) {
        let g = self.graph;
        let Some(y) = node.outputs.first().copied() else {
            return;
        };
        let Some(out_shape) = g.shape(y) else { return };
        let Some((_, cout)) = self.slots(y) else {
            return;
        };
        for (position, x) in node.inputs.iter().enumerate() {
            let Some(x) = *x else { continue };
            let Some(shape) = g.shape(x) else { continue };
            // Align from the right: which axis of this operand meets the output's axis 1?
            let offset = out_shape.len() as isize - shape.len() as isize;
            let axis = 1 - offset;
            let along = if axis >= 0 {
                shape.get(axis as usize).copied().unwrap_or(1)
            } else {
                1
            };
            if along == 1 {
                continue; // broadcast across channels: no coupling
            }
            if g.constant(x).is_some() {
                if let Some((o, n)) = self.slots(y) {
                    for c in 0..n {
                        self.per_channel.push((o + c, id, position, c));
                    }
                }
            } else if along == cout && offset == 0 {
                self.unify(x, y, label);
            } else {
                self.freeze_all(id, "elementwise operands with different layouts");
            }
        }
    }

    fn concat_split(
        &mut self,
        id: NodeId,
        node: &crate::ir::Node,
        axis: i64,
        concat: bool,
        label: &str,
    ) {
        let g = self.graph;
        let whole = if concat {
            node.outputs.first().copied()
        } else {
            node.input(0)
        };
        let Some(whole) = whole else { return };
        let rank = g.shape(whole).map_or(0, <[usize]>::len) as i64;
        let parts: Vec<ValueId> = if concat {
            node.inputs.iter().flatten().copied().collect()
        } else {
            node.outputs.clone()
        };
        if axis != 1 && axis != 1 - rank {
            for p in parts {
                self.unify(p, whole, label);
            }
            return;
        }
        let Some((wo, wn)) = self.slots(whole) else {
            return;
        };
        let mut offset = 0;
        for p in parts {
            let Some((po, pn)) = self.slots(p) else {
                self.freeze_all(id, "a part without a channel axis");
                return;
            };
            if offset + pn > wn {
                self.freeze_all(id, "parts do not add up to the whole");
                return;
            }
            for c in 0..pn {
                self.uf.union(po + c, wo + offset + c);
            }
            offset += pn;
        }
    }

    fn finish(mut self, graph: &Graph) -> ChannelAnalysis {
        let total = self.uf_len();
        let mut frozen_reason: BTreeMap<usize, String> = BTreeMap::new();
        for (slot, reason) in std::mem::take(&mut self.freezes) {
            let root = self.uf.find(slot);
            frozen_reason.entry(root).or_insert(reason);
        }
        let mut has_producer = vec![false; total];
        for &(slot, ..) in &self.producers {
            let root = self.uf.find(slot);
            has_producer[root] = true;
        }
        // Number classes densely: groups first-seen order, frozen separately.
        let mut root_group: BTreeMap<usize, usize> = BTreeMap::new();
        let mut root_frozen: BTreeMap<usize, usize> = BTreeMap::new();
        let mut groups: Vec<PrunableGroup> = Vec::new();
        let mut frozen: Vec<FrozenClass> = Vec::new();
        let mut slot_group = vec![None; total];
        let mut slot_channel = vec![(ValueId(0), 0); total];
        for (v, s) in self.value_slots.iter().enumerate() {
            if let Some((o, n)) = *s {
                for c in 0..n {
                    slot_channel[o + c] = (ValueId(v), c);
                }
            }
        }
        for slot in 0..total {
            let root = self.uf.find(slot);
            let member = slot_channel[slot];
            let reason = frozen_reason.get(&root).cloned().or_else(|| {
                (!has_producer[root]).then(|| "no filter produces these channels".to_string())
            });
            if let Some(reason) = reason {
                let i = *root_frozen.entry(root).or_insert_with(|| {
                    frozen.push(FrozenClass {
                        members: Vec::new(),
                        reason,
                    });
                    frozen.len() - 1
                });
                frozen[i].members.push(member);
            } else {
                let i = *root_group.entry(root).or_insert_with(|| {
                    let id = groups.len();
                    groups.push(PrunableGroup {
                        id,
                        producers: Vec::new(),
                        consumers: Vec::new(),
                        per_channel: Vec::new(),
                        members: Vec::new(),
                        macs: 0,
                    });
                    id
                });
                groups[i].members.push(member);
                slot_group[slot] = Some(i);
            }
        }
        for (slot, node, c) in self.producers {
            if let Some(gid) = slot_group[slot] {
                groups[gid].producers.push((node, c));
            }
        }
        for (slot, node, c) in self.consumers {
            if let Some(gid) = slot_group[slot] {
                groups[gid].consumers.push((node, c));
            }
        }
        for (slot, node, position, c) in self.per_channel {
            if let Some(gid) = slot_group[slot] {
                groups[gid].per_channel.push((node, position, c));
            }
        }
        let mut analysis = ChannelAnalysis {
            value_slots: self.value_slots,
            slot_group,
            groups,
            frozen,
        };
        let mut counts = super::cost::ActiveChannels::all(graph, &analysis);
        let full = counts.cost().macs;
        for gid in 0..analysis.groups.len() {
            counts.switch(&analysis, gid, false);
            analysis.groups[gid].macs = full - counts.cost().macs;
            counts.switch(&analysis, gid, true);
        }
        analysis
    }

    fn uf_len(&self) -> usize {
        self.value_slots.iter().flatten().map(|(_, n)| n).sum()
    }
}
