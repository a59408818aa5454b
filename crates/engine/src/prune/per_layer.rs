//! Per-layer selection: every layer loses the same share of its channels, the share
//! found by bisection so that the target holds (Torch-Pruning's default, Li et al.).

use std::collections::HashMap;

use effp_graph::channels::cost::ActiveChannels;
use effp_graph::channels::{ChannelAnalysis, Mask};
use effp_graph::cost::NodeCost;
use effp_graph::ir::{Graph, ValueId};

use super::L1Options;
use super::l1::families;

/// Bisection steps on the share: 2^-40 is far below one channel of any layer.
const BISECTION_STEPS: usize = 40;

/// One layer's groups: how many there are, how many `start` already switched off,
/// and its active groups from least to most important.
struct Layer {
    size: usize,
    off: usize,
    order: Vec<usize>,
}

/// Switches off, in every layer, its least important active groups until the layer
/// keeps `1 - share` of its channels (counting those `start` switched off, rounded up
/// to a multiple of `round_to`), with the smallest share that `done` accepts, or
/// everything the per-layer limits allow if none does. Layers whose kept count steps
/// down at that share step down one at a time, so that the cost lands just inside
/// the target rather than wherever many layers of one size cross together. Returns
/// the mask and its cost.
pub(crate) fn select_per_layer(
    graph: &Graph,
    analysis: &ChannelAnalysis,
    importance: &[f64],
    start: &Mask,
    done: impl Fn(NodeCost) -> bool,
    options: L1Options,
) -> (Mask, NodeCost) {
    let all: Vec<usize> = (0..analysis.groups.len()).collect();
    let layers: Vec<Layer> = families(analysis, &all)
        .into_iter()
        .map(|members| {
            let size = members.len();
            let mut order: Vec<usize> = members
                .into_iter()
                .filter(|&g| start.is_active(g))
                .collect();
            order.sort_by(|&a, &b| importance[a].total_cmp(&importance[b]).then(a.cmp(&b)));
            Layer {
                size,
                off: size - order.len(),
                order,
            }
        })
        .collect();
    let round_to = options.round_to.max(1);
    let apply = |removals: &[usize]| switch_off(graph, analysis, &layers, start, removals, options);

    let untouched = apply(&vec![0; layers.len()]);
    if done(untouched.1) {
        return untouched;
    }
    let (mut low, mut high) = (0.0, 1.0);
    let most = apply(&removals(&layers, high, round_to));
    if !done(most.1) {
        return most;
    }
    for _ in 0..BISECTION_STEPS {
        let mid = 0.5 * (low + high);
        if done(apply(&removals(&layers, mid, round_to)).1) {
            high = mid;
        } else {
            low = mid;
        }
    }
    let above = removals(&layers, high, round_to);
    let mut current = removals(&layers, low, round_to);
    for (layer, &count) in above.iter().enumerate() {
        if current[layer] == count {
            continue;
        }
        current[layer] = count;
        let candidate = apply(&current);
        if done(candidate.1) {
            return candidate;
        }
    }
    apply(&above)
}

/// How many active groups each layer gives up to keep `1 - share` of its size.
fn removals(layers: &[Layer], share: f64, round_to: usize) -> Vec<usize> {
    layers
        .iter()
        .map(|layer| {
            let keep = ((1.0 - share) * layer.size as f64).ceil() as usize;
            let keep = keep
                .div_ceil(round_to)
                .saturating_mul(round_to)
                .min(layer.size);
            (layer.size - layer.off).saturating_sub(keep)
        })
        .collect()
}

/// `start` with each layer's `removals` least important active groups switched off,
/// as far as the per-layer limits allow.
fn switch_off(
    graph: &Graph,
    analysis: &ChannelAnalysis,
    layers: &[Layer],
    start: &Mask,
    removals: &[usize],
    options: L1Options,
) -> (Mask, NodeCost) {
    let floor = |v: ValueId| options.floor(analysis, v);
    let mut counts = ActiveChannels::for_mask(graph, analysis, start);
    let mut mask = start.clone();
    for (layer, &remove) in layers.iter().zip(removals) {
        for &g in layer.order.iter().take(remove) {
            let mut per_value: HashMap<ValueId, usize> = HashMap::new();
            for &(v, _) in &analysis.groups[g].members {
                *per_value.entry(v).or_default() += 1;
            }
            if !per_value
                .iter()
                .all(|(&v, &n)| counts.active(v) >= n + floor(v))
            {
                // Every group of a layer runs through the same feature maps.
                break;
            }
            counts.switch(analysis, g, false);
            mask.set(g, false);
        }
    }
    let cost = counts.cost();
    (mask, cost)
}
