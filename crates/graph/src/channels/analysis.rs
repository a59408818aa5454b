//! Which channels must be removed together: a union-find over channel slots.
//!
//! Every feature map with a channel axis (axis 1) gets one slot per channel. Ops that
//! keep channel identity unify slot c of their inputs and output; Concat and Split map
//! slots by offset; Conv and Gemm outputs are producers (a filter per slot) and their
//! inputs consumers (a weight column per slot). A slot that reaches anything whose
//! channels cannot be sliced (Reshape, Transpose, MatMul, Softmax over channels, a
//! graph input or output, a grouped convolution) freezes its whole class.

use super::union_find::UnionFind;
use crate::error::{GraphError, Result};
use crate::ir::{Graph, NodeId, Op, ValueId};
use crate::limits::{Limits, Quantity, display_name, exceeded};

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
    /// Feature-map elements of one image that this group's channels occupy, summed
    /// over the values it flows through: the memory traffic removing it saves, which
    /// FLOPs do not see (on CPUs, large feature maps with few MACs per element cost
    /// time out of proportion to their FLOPs).
    pub activations: u64,
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

    /// Analyses a graph whose shapes have been inferred, under the default [`Limits`].
    ///
    /// Fails with [`GraphError::LimitExceeded`] when the graph has more channel slots
    /// or channel references than the limits allow, before allocating for them.
    pub fn new(graph: &Graph) -> Result<Self> {
        Self::with_limits(graph, &Limits::default())
    }

    /// [`ChannelAnalysis::new`] under other [`Limits`] than the defaults.
    pub fn with_limits(graph: &Graph, limits: &Limits) -> Result<Self> {
        let mut b = SlotBuilder::new(graph, limits)?;
        for (index, node) in graph.nodes.iter().enumerate() {
            b.node(NodeId(index), node)?;
        }
        for read in super::shape_reads::channel_reads(graph, |v| b.slots(v).is_some()) {
            b.freeze(read.value, || read.reason);
        }
        for io in graph.inputs.iter() {
            b.freeze(io.value, || {
                format!("graph input '{}'", graph.value(io.value).name)
            });
        }
        for io in graph.outputs.iter() {
            b.freeze(io.value, || {
                format!("graph output '{}'", graph.value(io.value).name)
            });
        }
        b.finish(graph)
    }
}

/// What a union-find root has become while classes are numbered.
#[derive(Debug, Clone, Copy)]
enum Class {
    /// Not reached yet.
    Unseen,
    /// Index in the prunable groups.
    Group(usize),
    /// Index in the frozen classes.
    Frozen(usize),
}

/// A vector of `n` copies of `value`, or [`GraphError::OutOfMemory`].
fn try_filled<T: Clone>(n: usize, value: T, what: &'static str) -> Result<Vec<T>> {
    let mut v = Vec::new();
    v.try_reserve_exact(n)
        .map_err(|_| GraphError::OutOfMemory { what, count: n })?;
    v.resize(n, value);
    Ok(v)
}

struct SlotBuilder<'g> {
    graph: &'g Graph,
    limits: &'g Limits,
    value_slots: Vec<Option<(usize, usize)>>,
    uf: UnionFind,
    /// Whether a value has been frozen already: only its first reason counts.
    frozen_values: Vec<bool>,
    /// Frozen values with the first reason found, in the order found.
    freezes: Vec<(ValueId, String)>,
    producers: Vec<(usize, NodeId, usize)>,
    consumers: Vec<(usize, NodeId, usize)>,
    per_channel: Vec<(usize, NodeId, usize, usize)>,
    /// Entries in `producers`, `consumers` and `per_channel` together.
    references: u64,
}

impl<'g> SlotBuilder<'g> {
    /// Gives each value with a channel axis its slots, refusing a graph with more
    /// slots in total than the limit before allocating any.
    fn new(graph: &'g Graph, limits: &'g Limits) -> Result<Self> {
        let channels = |v: &crate::ir::Value| {
            if v.constant.is_some() || v.folded.is_some() {
                return None;
            }
            let s = v.shape.as_ref()?;
            s.get(1).filter(|_| s.len() >= 2).copied()
        };
        let total: u128 = graph
            .values
            .iter()
            .filter_map(channels)
            .map(|n| n as u128)
            .sum();
        let cap = limits.max_channel_slots.min(u64::from(u32::MAX));
        if total > u128::from(cap) {
            let (largest, n) = graph
                .values
                .iter()
                .filter_map(|v| channels(v).map(|n| (v, n)))
                .min_by_key(|&(_, n)| std::cmp::Reverse(n))
                .expect("slots come from some value");
            return Err(exceeded(
                format!(
                    "the graph (its largest feature map, '{}', has {n} channels)",
                    display_name(&largest.name)
                ),
                Quantity::ChannelSlots,
                total,
                cap,
            ));
        }
        let total = usize::try_from(total).expect("at most u32::MAX slots");
        let mut next = 0;
        let mut value_slots = try_filled(graph.values.len(), None, "value slots")?;
        for (slot, v) in value_slots.iter_mut().zip(&graph.values) {
            if let Some(n) = channels(v) {
                *slot = Some((next, n));
                next += n;
            }
        }
        let uf = UnionFind::new(total).ok_or(GraphError::OutOfMemory {
            what: "the channel union-find",
            count: total,
        })?;
        Ok(Self {
            graph,
            limits,
            value_slots,
            uf,
            frozen_values: try_filled(graph.values.len(), false, "frozen values")?,
            freezes: Vec::new(),
            producers: Vec::new(),
            consumers: Vec::new(),
            per_channel: Vec::new(),
            references: 0,
        })
    }

    fn slots(&self, v: ValueId) -> Option<(usize, usize)> {
        self.value_slots[v.0]
    }

    /// Freezes every channel of `v`; the first reason given for a value is kept.
    fn freeze(&mut self, v: ValueId, reason: impl FnOnce() -> String) {
        if self.slots(v).is_some() && !self.frozen_values[v.0] {
            self.frozen_values[v.0] = true;
            self.freezes.push((v, reason()));
        }
    }

    /// Accounts for `n` more channel references, refusing the graph past the limit.
    fn reference(&mut self, n: usize) -> Result<()> {
        self.references = self.references.saturating_add(n as u64);
        if self.references > self.limits.max_channel_references {
            return Err(exceeded(
                "the graph".to_string(),
                Quantity::ChannelReferences,
                u128::from(self.references),
                self.limits.max_channel_references,
            ));
        }
        Ok(())
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
                self.freeze(a, || format!("{why}: channel axes do not line up"));
                self.freeze(b, || format!("{why}: channel axes do not line up"));
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
            self.freeze(v, || format!("{reason} ({label})"));
        }
    }

    fn node(&mut self, id: NodeId, node: &'g crate::ir::Node) -> Result<()> {
        let g = self.graph;
        let input = |i: usize| node.input(i);
        let out = node.outputs.first().copied();
        let label = self.node_label(id);
        if g.is_folded(node) {
            // A size computation: it reads no channels (see `shape_reads`).
            return Ok(());
        }
        match &node.op {
            Op::Conv(c) => {
                let (Some(x), Some(y)) = (input(0), out) else {
                    return Ok(());
                };
                let cin = self.slots(x).map_or(0, |s| s.1);
                let cout = self.slots(y).map_or(0, |s| s.1);
                if c.group == 1 {
                    self.producer_consumer(id, x, y)?;
                } else if c.group as usize == cin && cin == cout {
                    // Depthwise: channel c in is channel c out; its filter is per-channel.
                    self.unify(x, y, &label);
                    if let Some((o, n)) = self.slots(y) {
                        self.reference(n)?;
                        self.per_channel
                            .extend((0..n).map(|ch| (o + ch, id, 1, ch)));
                    }
                } else {
                    self.freeze_all(id, "grouped convolution");
                }
            }
            Op::ConvTranspose(c) => {
                let (Some(x), Some(y)) = (input(0), out) else {
                    return Ok(());
                };
                if c.group == 1 {
                    self.producer_consumer(id, x, y)?;
                } else {
                    self.freeze_all(id, "grouped transposed convolution");
                }
            }
            Op::Gemm { trans_a, .. } => {
                let (Some(x), Some(y)) = (input(0), out) else {
                    return Ok(());
                };
                let b_constant = input(1).is_some_and(|b| g.constant(b).is_some());
                if *trans_a || !b_constant {
                    self.freeze_all(id, "Gemm with a transposed or computed left operand");
                } else {
                    self.producer_consumer(id, x, y)?;
                }
            }
            Op::BatchNormalization { .. } => {
                let (Some(x), Some(y)) = (input(0), out) else {
                    return Ok(());
                };
                self.unify(x, y, &label);
                if let Some((o, n)) = self.slots(y) {
                    self.reference(n.saturating_mul(4))?;
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
                    return Ok(());
                };
                if g.shape(x).and_then(|s| s.get(1)) == g.shape(y).and_then(|s| s.get(1)) {
                    self.unify(x, y, &label);
                } else {
                    self.freeze_all(id, "resizes or pads the channel axis");
                }
            }
            Op::Softmax { axis, .. } => {
                let (Some(x), Some(y)) = (input(0), out) else {
                    return Ok(());
                };
                let rank = g.shape(x).map_or(0, <[usize]>::len) as i64;
                if *axis == 1 || *axis == 1 - rank {
                    self.freeze_all(id, "Softmax over channels");
                } else {
                    self.unify(x, y, &label);
                }
            }
            Op::Add | Op::Sub | Op::Mul | Op::Div => self.elementwise(id, node, &label)?,
            Op::Concat { axis } => self.concat_split(id, node, *axis, true, &label),
            Op::Split { axis, .. } => self.concat_split(id, node, *axis, false, &label),
            Op::Slice { .. } => {
                let (Some(x), Some(y)) = (input(0), out) else {
                    return Ok(());
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
                    return Ok(());
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
            Op::Constant(_) | Op::Shape { .. } => {}
            Op::Cast { .. } => {
                if let (Some(x), Some(y)) = (input(0), out) {
                    self.unify(x, y, &label);
                }
            }
            Op::Gather { axis } => {
                let (Some(x), Some(y)) = (input(0), out) else {
                    return Ok(());
                };
                let rank = g.shape(x).map_or(0, <[usize]>::len);
                let spatial = crate::shape::norm_axis(*axis, rank).is_ok_and(|a| a >= 2);
                let vector = input(1)
                    .and_then(|i| g.shape(i))
                    .is_some_and(|s| s.len() == 1);
                if spatial && vector {
                    self.unify(x, y, &label);
                } else {
                    self.freeze_all(
                        id,
                        "Gather along the batch or channel axis, or one that changes the rank",
                    );
                }
            }
            Op::Unsqueeze { axes } | Op::Squeeze { axes } => {
                let (Some(x), Some(y)) = (input(0), out) else {
                    return Ok(());
                };
                let axes = axes.clone().or_else(|| {
                    input(1)
                        .and_then(|a| g.known(a))
                        .and_then(|t| t.to_i64_vec())
                });
                let unsqueeze = matches!(node.op, Op::Unsqueeze { .. });
                let rank =
                    if unsqueeze { g.shape(y) } else { g.shape(x) }.map_or(0, <[usize]>::len);
                let keeps_channels = axes.is_some_and(|axes| {
                    axes.iter()
                        .all(|&a| crate::shape::norm_axis(a, rank).is_ok_and(|a| a >= 2))
                });
                if keeps_channels {
                    self.unify(x, y, &label);
                } else {
                    self.freeze_all(id, "adds or removes an axis before the channels");
                }
            }
            Op::Expand => {
                let (Some(x), Some(y)) = (input(0), out) else {
                    return Ok(());
                };
                let (sx, sy) = (g.shape(x), g.shape(y));
                let same = sx
                    .zip(sy)
                    .is_some_and(|(a, b)| a.len() == b.len() && a.len() >= 2 && a[1] == b[1]);
                if same {
                    self.unify(x, y, &label);
                } else {
                    self.freeze_all(id, "Expand changes the channel axis");
                }
            }
            Op::Range | Op::ConstantOfShape { .. } | Op::Compare(_) | Op::Where | Op::Not => {
                self.freeze_all(id, "a comparison or size computation on feature maps");
            }
            Op::Unsupported { .. } => self.freeze_all(id, "unsupported op"),
        }
        Ok(())
    }

    fn producer_consumer(&mut self, id: NodeId, x: ValueId, y: ValueId) -> Result<()> {
        if let Some((o, n)) = self.slots(x) {
            self.reference(n)?;
            self.consumers.extend((0..n).map(|c| (o + c, id, c)));
        }
        if let Some((o, n)) = self.slots(y) {
            self.reference(n)?;
            self.producers.extend((0..n).map(|c| (o + c, id, c)));
        }
        Ok(())
    }

    fn elementwise(&mut self, id: NodeId, node: &crate::ir::Node, label: &str) -> Result<()> {
        let g = self.graph;
        let Some(y) = node.outputs.first().copied() else {
            return Ok(());
        };
        let Some(out_shape) = g.shape(y) else {
            return Ok(());
        };
        let Some((_, cout)) = self.slots(y) else {
            return Ok(());
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
                    self.reference(n)?;
                    self.per_channel
                        .extend((0..n).map(|c| (o + c, id, position, c)));
                }
            } else if along == cout && offset == 0 {
                self.unify(x, y, label);
            } else {
                self.freeze_all(id, "elementwise operands with different layouts");
            }
        }
        Ok(())
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
            // A part listed many times is unified once.
            let mut parts = parts;
            parts.sort_unstable();
            parts.dedup();
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

    fn finish(mut self, graph: &Graph) -> Result<ChannelAnalysis> {
        let total = self.uf_len();
        // Per root: the first freeze reason reaching it (an index into `reasons`).
        let freezes = std::mem::take(&mut self.freezes);
        let mut root_reason: Vec<Option<u32>> = try_filled(total, None, "channel slots")?;
        let mut reasons: Vec<String> = Vec::with_capacity(freezes.len());
        for (v, reason) in freezes {
            let (o, n) = self.slots(v).expect("only values with slots are frozen");
            let index = u32::try_from(reasons.len()).expect("fewer freezes than slots");
            reasons.push(reason);
            for slot in o..o + n {
                let root = self.uf.find(slot);
                root_reason[root].get_or_insert(index);
            }
        }
        let mut has_producer = try_filled(total, false, "channel slots")?;
        for &(slot, ..) in &self.producers {
            let root = self.uf.find(slot);
            has_producer[root] = true;
        }
        // Number classes densely: groups first-seen order, frozen separately.
        let mut root_class = try_filled(total, Class::Unseen, "channel slots")?;
        let mut groups: Vec<PrunableGroup> = Vec::new();
        let mut frozen: Vec<FrozenClass> = Vec::new();
        let mut slot_group = try_filled(total, None, "channel slots")?;
        // Slots were handed out value by value, so this visits them in slot order.
        for (v, s) in self.value_slots.iter().enumerate() {
            let Some((o, n)) = *s else { continue };
            for c in 0..n {
                let slot = o + c;
                let root = self.uf.find(slot);
                let member = (ValueId(v), c);
                match root_class[root] {
                    Class::Group(i) => {
                        groups[i].members.push(member);
                        slot_group[slot] = Some(i);
                    }
                    Class::Frozen(i) => frozen[i].members.push(member),
                    Class::Unseen => {
                        if let Some(why) = root_reason[root] {
                            root_class[root] = Class::Frozen(frozen.len());
                            frozen.push(FrozenClass {
                                members: vec![member],
                                reason: reasons[why as usize].clone(),
                            });
                        } else if !has_producer[root] {
                            root_class[root] = Class::Frozen(frozen.len());
                            frozen.push(FrozenClass {
                                members: vec![member],
                                reason: "no filter produces these channels".to_string(),
                            });
                        } else {
                            let id = groups.len();
                            root_class[root] = Class::Group(id);
                            groups.push(PrunableGroup {
                                id,
                                producers: Vec::new(),
                                consumers: Vec::new(),
                                per_channel: Vec::new(),
                                members: vec![member],
                                macs: 0,
                                activations: 0,
                            });
                            slot_group[slot] = Some(id);
                        }
                    }
                }
            }
        }
        drop((root_class, root_reason, has_producer));
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
        let macs = super::cost::group_savings(graph, &analysis);
        for (group, macs) in analysis.groups.iter_mut().zip(macs) {
            group.macs = macs;
            group.activations = super::cost::group_activations(graph, group);
        }
        Ok(analysis)
    }

    fn uf_len(&self) -> usize {
        self.value_slots.iter().flatten().map(|(_, n)| n).sum()
    }
}
