//! One-shot L1 pruning reaches its target on real detectors, with no hand-written
//! list of layers to skip: the channel analysis alone decides what may go.

use effp_engine::prune::{L1Options, PruneError, Target, l1_mask};
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
