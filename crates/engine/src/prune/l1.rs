//! One-shot magnitude pruning (Li et al. 2017), the first method and baseline.

use std::collections::BTreeMap;

use effp_graph::channels::cost::ActiveChannels;
use effp_graph::channels::{ChannelAnalysis, Mask, PrunableGroup};
use effp_graph::cost::NodeCost;
use effp_graph::ir::{Graph, NodeId, Op, ValueId};

use effp_protocol::{Method, PruneOptions};

use super::{PruneError, Target};

/// Limits on how far any one layer may be thinned.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct L1Options {
    /// Channels every feature map keeps at least (default 1: no layer is ever empty).
    pub min_channels: usize,
    /// Fraction of its channels every feature map keeps at least (default 0).
    pub min_fraction: f64,
    /// Remove channels of a layer in multiples of this (default 1). Kernels on CPUs
    /// and TensorRT run fastest on channel counts that are multiples of 8.
    pub round_to: usize,
    /// How strongly a group's cost discounts its importance: groups are removed in
    /// order of importance / MACs^exponent (default 1: importance per FLOP; 0: cost
    /// ignored). Below 1, cheap layers are not spared just for being cheap.
    pub cost_exponent: f64,
    /// MACs charged per feature-map element a group occupies when groups are ranked
    /// (default 0: FLOPs alone). Above 0, channels of large feature maps count as
    /// dearer than their FLOPs, so that latency on memory-bound hardware falls
    /// closer to the FLOPs; the target is still measured in FLOPs.
    pub activation_cost: f64,
    /// Whether groups compete across the network or within their layer.
    pub scope: Scope,
}

impl L1Options {
    /// The limits a run's prune options set for `method`, `labelled` saying whether
    /// it learns from labels (checked beforehand by [`PruneOptions::errors`]; a
    /// scope the method cannot use falls back to the method's own).
    pub fn new(options: &PruneOptions, method: Method, labelled: bool) -> Self {
        Self {
            min_channels: options.min_channels as usize,
            min_fraction: options.min_fraction_for(method),
            round_to: options.round_to as usize,
            cost_exponent: options.cost_exponent,
            activation_cost: options.activation_cost,
            scope: method
                .scope(options.scope, labelled)
                .unwrap_or(method.defaults(labelled).scope),
        }
    }

    /// The channels feature map `v` keeps at least.
    pub(crate) fn floor(&self, analysis: &ChannelAnalysis, v: ValueId) -> usize {
        let n = analysis.channels(v).unwrap_or(1);
        self.min_channels
            .max((self.min_fraction * n as f64).ceil() as usize)
            .min(n)
    }

    /// What removing a set of groups costs in the ranking: their MACs plus their
    /// feature-map elements at [`Self::activation_cost`], raised to
    /// [`Self::cost_exponent`].
    pub(crate) fn ranking_cost<'a>(
        &self,
        groups: impl IntoIterator<Item = &'a PrunableGroup>,
    ) -> f64 {
        let cost: f64 = groups
            .into_iter()
            .map(|g| g.macs as f64 + self.activation_cost * g.activations as f64)
            .sum();
        cost.max(1.0).powf(self.cost_exponent)
    }
}

impl Default for L1Options {
    fn default() -> Self {
        Self {
            min_channels: 1,
            min_fraction: 0.0,
            round_to: 1,
            cost_exponent: 1.0,
            activation_cost: 0.0,
            scope: Scope::Global,
        }
    }
}

pub use effp_protocol::Scope;

/// Chooses groups to switch off: importance = L2 norm of each producer filter,
/// normalised by the largest in its layer and averaged over the group's producers,
/// divided by the MACs the group costs; the least important per MAC go first until
/// the target holds.
pub fn l1_mask(
    graph: &Graph,
    analysis: &ChannelAnalysis,
    target: Target,
    options: L1Options,
) -> Result<Mask, PruneError> {
    target.validate()?;
    let importance = group_importance(graph, analysis);
    let original = ActiveChannels::all(graph, analysis).cost();
    let start = Mask::all_active(analysis.groups.len());
    let (mask, best) = select(
        graph,
        analysis,
        &importance,
        &start,
        |c| target.is_met(original, c),
        options,
    );
    if target.is_met(original, best) {
        return Ok(mask);
    }
    Err(PruneError::Unreachable {
        target,
        best_flops: best.flops(),
        best_params: best.params,
        min_channels: options.min_channels,
    })
}

/// Switches off active groups of `start`, least important per MAC first (in chunks
/// of `round_to` per layer), until `done` accepts the cost or nothing more may go.
/// Returns the mask and its cost.
pub fn select(
    graph: &Graph,
    analysis: &ChannelAnalysis,
    importance: &[f64],
    start: &Mask,
    done: impl Fn(NodeCost) -> bool,
    options: L1Options,
) -> (Mask, NodeCost) {
    if options.scope == Scope::Layer {
        return super::per_layer::select_per_layer(
            graph, analysis, importance, start, done, options,
        );
    }
    let active: Vec<usize> = (0..analysis.groups.len())
        .filter(|&g| start.is_active(g))
        .collect();
    let mut chunks = removal_chunks(analysis, &active, importance, options.round_to.max(1));
    let score = |chunk: &Vec<usize>| {
        let imp: f64 = chunk.iter().map(|&g| importance[g]).sum();
        imp / options.ranking_cost(chunk.iter().map(|&g| &analysis.groups[g]))
    };
    chunks.sort_by(|a, b| score(a).total_cmp(&score(b)));

    let mut counts = ActiveChannels::for_mask(graph, analysis, start);
    let floor = |v: ValueId| options.floor(analysis, v);
    let mut mask = start.clone();
    for chunk in chunks {
        if done(counts.cost()) {
            break;
        }
        let mut per_value: std::collections::HashMap<usize, usize> =
            std::collections::HashMap::new();
        for &g in &chunk {
            for &(v, _) in &analysis.groups[g].members {
                *per_value.entry(v.0).or_default() += 1;
            }
        }
        let allowed = per_value
            .iter()
            .all(|(&v, &n)| counts.active(ValueId(v)) >= n + floor(ValueId(v)));
        if allowed {
            for g in chunk {
                counts.switch(analysis, g, false);
                mask.set(g, false);
            }
        }
    }
    (mask, counts.cost())
}

/// Sets of groups removed together. Groups produced by the same filters and flowing
/// through the same feature maps (one conv's output channels, one half of a Split,
/// or the convs tied by a residual chain) form a family; a family
/// is cut in chunks of `round_to`, least important first, the first chunk taking the
/// remainder so that what stays is a multiple of `round_to`.
fn removal_chunks(
    analysis: &ChannelAnalysis,
    candidates: &[usize],
    importance: &[f64],
    round_to: usize,
) -> Vec<Vec<usize>> {
    let mut chunks = Vec::new();
    for mut members in families(analysis, candidates) {
        members.sort_by(|&a, &b| importance[a].total_cmp(&importance[b]));
        let first = members.len() % round_to;
        let (head, rest) = members.split_at(first);
        if !head.is_empty() {
            chunks.push(head.to_vec());
        }
        chunks.extend(rest.chunks(round_to).map(<[usize]>::to_vec));
    }
    chunks
}

/// The groups of `candidates` split into layers: groups produced by the same filters
/// and flowing through the same feature maps (one conv's output channels, one half
/// of a Split, or the convs tied by a residual chain), in a fixed order.
pub(crate) fn families(analysis: &ChannelAnalysis, candidates: &[usize]) -> Vec<Vec<usize>> {
    type Family = (Vec<NodeId>, Vec<ValueId>);
    let mut families: BTreeMap<Family, Vec<usize>> = BTreeMap::new();
    for group in candidates.iter().map(|&g| &analysis.groups[g]) {
        let mut producers: Vec<NodeId> = group.producers.iter().map(|&(n, _)| n).collect();
        producers.sort();
        producers.dedup();
        // The values too: the two halves of a Split are separate layers downstream.
        let mut values: Vec<ValueId> = group.members.iter().map(|&(v, _)| v).collect();
        values.sort();
        values.dedup();
        families
            .entry((producers, values))
            .or_default()
            .push(group.id);
    }
    families.into_values().collect()
}

/// Mean normalised filter norm of each group's producers, from the model's weights.
fn group_importance(graph: &Graph, analysis: &ChannelAnalysis) -> Vec<f64> {
    importance_from_norms(analysis, |node| filter_norms(graph, node))
}

/// Mean normalised filter norm of each group's producers; `norms` gives the L2 norm
/// of every output filter of a producer node (from stored or live weights).
pub fn importance_from_norms(
    analysis: &ChannelAnalysis,
    filter_norms: impl Fn(NodeId) -> Vec<f64>,
) -> Vec<f64> {
    let mut norms: std::collections::HashMap<NodeId, Vec<f64>> = std::collections::HashMap::new();
    for group in &analysis.groups {
        for &(node, _) in &group.producers {
            norms.entry(node).or_insert_with(|| filter_norms(node));
        }
    }
    let max: std::collections::HashMap<NodeId, f64> = norms
        .iter()
        .map(|(&n, v)| {
            (
                n,
                v.iter().copied().fold(0.0, f64::max).max(f64::MIN_POSITIVE),
            )
        })
        .collect();
    analysis
        .groups
        .iter()
        .map(|group| {
            let sum: f64 = group
                .producers
                .iter()
                .map(|&(n, c)| norms[&n].get(c).copied().unwrap_or(0.0) / max[&n])
                .sum();
            sum / group.producers.len().max(1) as f64
        })
        .collect()
}

/// L2 norm of every output filter of a Conv, ConvTranspose or Gemm.
fn filter_norms(graph: &Graph, id: NodeId) -> Vec<f64> {
    let node = graph.node(id);
    let Some(w) = node.input(1).and_then(|w| graph.constant(w)) else {
        return Vec::new();
    };
    let values = w.to_f32_vec();
    let dims = w.dims();
    // Axis of the output channel in the weight.
    let out_axis = match &node.op {
        Op::ConvTranspose(_) => 1,
        Op::Gemm { trans_b: false, .. } => 1,
        _ => 0,
    };
    let n_out = dims.get(out_axis).copied().unwrap_or(0);
    let inner: usize = dims[out_axis + 1..].iter().product();
    let outer: usize = dims[..out_axis].iter().product();
    let mut sq = vec![0.0f64; n_out];
    for o in 0..outer {
        for (c, acc) in sq.iter_mut().enumerate() {
            let start = (o * n_out + c) * inner;
            *acc += values[start..start + inner]
                .iter()
                .map(|&v| (v as f64) * (v as f64))
                .sum::<f64>();
        }
    }
    sq.into_iter().map(f64::sqrt).collect()
}
