//! One-shot L1 pruning reaches its target on real detectors, with no hand-written
//! list of layers to skip: the channel analysis alone decides what may go.

use effp_engine::prune::{L1Options, PruneError, Scope, Target, importance_from_norms, l1_mask};
use effp_graph::channels::{ChannelAnalysis, compact};
use effp_graph::cost::graph_cost;
use effp_graph::onnx::load_file;
use effp_graph::shape::infer_shapes;
use effp_testkit::fixtures;

fn load(name: &str) -> effp_graph::ir::Model {
    let mut m = load_file(&fixtures::path(name)).unwrap();
    infer_shapes(&mut m, None).unwrap();
    m
}

#[test]
fn published_detectors_land_within_half_a_percent_of_each_flops_target() {
    for &(file, ..) in fixtures::PUBLISHED {
        let model = load(file);
        let analysis = ChannelAnalysis::new(&model.graph).unwrap();
        let before = graph_cost(&model.graph).flops() as f64;
        for target in [0.7, 0.5, 0.3] {
            let mask = l1_mask(
                &model.graph,
                &analysis,
                Target::FlopsRatio(target),
                L1Options::default(),
            )
            .unwrap();
            let (pruned, report) = compact(&model, &analysis, &mask).unwrap();
            let ratio = graph_cost(&pruned.graph).flops() as f64 / before;
            assert!(
                // Measured: at most 0.19% below (yolov5nu at 0.3); the last group
                // removed is that small a share of the network.
                (ratio - target).abs() <= 0.005 * target,
                "{file} at {target}: reached {ratio}"
            );
            assert!(
                ratio <= target,
                "{file} at {target}: {ratio} is above the target"
            );
            // No feature map is left without channels.
            for layer in &report.layers {
                assert!(
                    layer.out_channels_after >= 1 && layer.in_channels_after >= 1,
                    "{file}: {} emptied",
                    layer.node
                );
            }
        }
    }
}

#[test]
fn a_parameter_target_is_met_too() {
    let model = load("yolov8t.onnx");
    let analysis = ChannelAnalysis::new(&model.graph).unwrap();
    let mask = l1_mask(
        &model.graph,
        &analysis,
        Target::ParamsRatio(0.6),
        L1Options::default(),
    )
    .unwrap();
    let (pruned, _) = compact(&model, &analysis, &mask).unwrap();
    let ratio = graph_cost(&pruned.graph).params as f64 / graph_cost(&model.graph).params as f64;
    // Measured: 0.5987.
    assert!(ratio <= 0.6 && ratio > 0.595, "{ratio}");
}

#[test]
fn an_unreachable_target_says_how_far_pruning_can_go() {
    let model = load("yolov8t.onnx");
    let analysis = ChannelAnalysis::new(&model.graph).unwrap();
    let options = L1Options {
        min_channels: 1,
        min_fraction: 0.5,
        round_to: 1,
        ..L1Options::default()
    };
    let err = l1_mask(&model.graph, &analysis, Target::FlopsRatio(0.05), options).unwrap_err();
    assert!(matches!(err, PruneError::Unreachable { .. }), "{err}");
    assert!(err.to_string().contains("cannot be reached"), "{err}");
    let err = l1_mask(&model.graph, &analysis, Target::FlopsRatio(1.5), options).unwrap_err();
    assert!(matches!(err, PruneError::InvalidTarget(_)), "{err}");
}

#[test]
fn the_minimum_fraction_per_layer_is_honoured() {
    let model = load("yolo11t.onnx");
    let analysis = ChannelAnalysis::new(&model.graph).unwrap();
    let options = L1Options {
        min_channels: 1,
        min_fraction: 0.25,
        round_to: 1,
        ..L1Options::default()
    };
    let mask = l1_mask(&model.graph, &analysis, Target::FlopsRatio(0.6), options).unwrap();
    let (_, report) = compact(&model, &analysis, &mask).unwrap();
    for l in &report.layers {
        assert!(
            4 * l.out_channels_after >= l.out_channels_before,
            "{}: {} of {}",
            l.node,
            l.out_channels_after,
            l.out_channels_before
        );
    }
}

#[test]
fn rounding_keeps_pruned_layers_at_multiples_of_eight() {
    let model = load("yolov8n.onnx");
    let analysis = ChannelAnalysis::new(&model.graph).unwrap();
    let options = L1Options {
        round_to: 8,
        ..L1Options::default()
    };
    let mask = l1_mask(&model.graph, &analysis, Target::FlopsRatio(0.5), options).unwrap();
    let (pruned, report) = compact(&model, &analysis, &mask).unwrap();
    let ratio = graph_cost(&pruned.graph).flops() as f64 / graph_cost(&model.graph).flops() as f64;
    // Measured: 0.4987; eight channels at a time land a little further below.
    assert!((0.495..=0.5).contains(&ratio), "{ratio}");
    for l in report
        .layers
        .iter()
        .filter(|l| l.out_channels_after != l.out_channels_before)
    {
        assert_eq!(
            l.out_channels_after % 8,
            0,
            "{}: {} channels",
            l.node,
            l.out_channels_after
        );
    }
}

/// Whether one share `s` explains every layer's kept count as ⌈(1 − s)·size⌉, or
/// one more where a layer steps down exactly at `s`: `kept ≤ (1 − s)·size + 1`
/// and `kept ≥ (1 − s)·size` for all layers at once.
fn one_share_fits(layers: &[(usize, usize)]) -> bool {
    let below = layers
        .iter()
        .map(|&(kept, size)| (kept as f64 - 1.0) / size as f64)
        .fold(f64::NEG_INFINITY, f64::max);
    let above = layers
        .iter()
        .map(|&(kept, size)| kept as f64 / size as f64)
        .fold(f64::INFINITY, f64::min);
    below <= above
}

/// L2 norm of each output filter of a Conv, computed here from the stored weights.
fn conv_filter_norms(model: &effp_graph::ir::Model, node: effp_graph::ir::NodeId) -> Vec<f64> {
    let node = model.graph.node(node);
    let Some(w) = node.input(1).and_then(|w| model.graph.constant(w)) else {
        return Vec::new();
    };
    let values = w.to_f32_vec();
    let filters = w.dims()[0];
    values
        .chunks(values.len() / filters)
        .map(|f| f.iter().map(|&v| f64::from(v).powi(2)).sum::<f64>().sqrt())
        .collect()
}

/// The layer a group belongs to: its producers and the feature maps it runs through.
fn layer_of(
    g: &effp_graph::channels::PrunableGroup,
) -> (Vec<effp_graph::ir::NodeId>, Vec<effp_graph::ir::ValueId>) {
    let mut producers: Vec<_> = g.producers.iter().map(|&(n, _)| n).collect();
    producers.sort();
    producers.dedup();
    let mut values: Vec<_> = g.members.iter().map(|&(v, _)| v).collect();
    values.sort();
    values.dedup();
    (producers, values)
}

/// (kept, size) of every layer: groups with the same producers and feature maps.
fn layer_counts(
    analysis: &ChannelAnalysis,
    mask: &effp_graph::channels::Mask,
) -> Vec<(usize, usize)> {
    let mut layers: std::collections::BTreeMap<_, (usize, usize)> = Default::default();
    for g in &analysis.groups {
        let entry = layers.entry(layer_of(g)).or_default();
        entry.0 += usize::from(mask.is_active(g.id));
        entry.1 += 1;
    }
    layers.into_values().collect()
}

#[test]
fn per_layer_scope_thins_every_layer_by_one_share_and_global_does_not() {
    let model = load("yolov8n.onnx");
    let analysis = ChannelAnalysis::new(&model.graph).unwrap();
    let before = graph_cost(&model.graph).flops() as f64;
    let layer = L1Options {
        scope: Scope::Layer,
        ..L1Options::default()
    };
    let mask = l1_mask(&model.graph, &analysis, Target::FlopsRatio(0.5), layer).unwrap();
    let (pruned, _) = compact(&model, &analysis, &mask).unwrap();
    let ratio = graph_cost(&pruned.graph).flops() as f64 / before;
    assert!((0.49..=0.5).contains(&ratio), "{ratio}");
    let counts = layer_counts(&analysis, &mask);
    assert!(counts.len() > 40, "{} layers", counts.len());
    assert!(one_share_fits(&counts), "{counts:?}");
    // Every layer lost about 30% (FLOPs fall about quadratically with the share).
    for &(kept, size) in &counts {
        let share = 1.0 - kept as f64 / size as f64;
        assert!((0.2..0.4).contains(&share), "{kept} of {size}");
    }

    // Within every layer, the weakest filters went.
    let importance = importance_from_norms(&analysis, |node| conv_filter_norms(&model, node));
    let mut layers: std::collections::BTreeMap<_, (f64, f64)> = Default::default();
    for g in &analysis.groups {
        let (removed_max, kept_min) = layers
            .entry(layer_of(g))
            .or_insert((f64::NEG_INFINITY, f64::INFINITY));
        if mask.is_active(g.id) {
            *kept_min = kept_min.min(importance[g.id]);
        } else {
            *removed_max = removed_max.max(importance[g.id]);
        }
    }
    for (layer, (removed_max, kept_min)) in layers {
        assert!(
            removed_max <= kept_min,
            "{layer:?}: {removed_max} > {kept_min}"
        );
    }

    let global = l1_mask(
        &model.graph,
        &analysis,
        Target::FlopsRatio(0.5),
        L1Options::default(),
    )
    .unwrap();
    assert!(!one_share_fits(&layer_counts(&analysis, &global)));
}

#[test]
fn per_layer_scope_keeps_multiples_of_the_rounding_and_the_per_layer_floor() {
    let model = load("yolov8n.onnx");
    let analysis = ChannelAnalysis::new(&model.graph).unwrap();
    let options = L1Options {
        scope: Scope::Layer,
        round_to: 8,
        ..L1Options::default()
    };
    let mask = l1_mask(&model.graph, &analysis, Target::FlopsRatio(0.5), options).unwrap();
    for (kept, size) in layer_counts(&analysis, &mask) {
        assert!(kept == size || kept % 8 == 0, "{kept} of {size}");
    }
    let options = L1Options {
        scope: Scope::Layer,
        min_fraction: 0.8,
        ..L1Options::default()
    };
    let err = l1_mask(&model.graph, &analysis, Target::FlopsRatio(0.5), options).unwrap_err();
    assert!(matches!(err, PruneError::Unreachable { .. }), "{err}");
}

/// Charging feature-map elements in the ranking moves pruning toward the
/// high-resolution layers (what CPU latency follows), while the FLOPs target holds.
#[test]
fn an_activation_cost_takes_more_from_large_feature_maps_at_the_same_flops() {
    let model = load("yolov8n.onnx");
    let analysis = ChannelAnalysis::new(&model.graph).unwrap();
    let removed = |activation_cost: f64| {
        let options = L1Options {
            activation_cost,
            ..L1Options::default()
        };
        let mask = l1_mask(&model.graph, &analysis, Target::FlopsRatio(0.5), options).unwrap();
        let (pruned, _) = compact(&model, &analysis, &mask).unwrap();
        let ratio =
            graph_cost(&pruned.graph).flops() as f64 / graph_cost(&model.graph).flops() as f64;
        assert!((0.495..=0.5).contains(&ratio), "{activation_cost}: {ratio}");
        let elements: u64 = analysis
            .groups
            .iter()
            .filter(|g| !mask.is_active(g.id))
            .map(|g| g.activations)
            .sum();
        let total: u64 = analysis.groups.iter().map(|g| g.activations).sum();
        elements as f64 / total as f64
    };
    let flops_only = removed(0.0);
    let latency_aware = removed(8192.0);
    // Measured: 0.414 → 0.578 of the feature-map elements removed.
    assert!(
        latency_aware > flops_only + 0.1,
        "{flops_only} → {latency_aware}"
    );
}
