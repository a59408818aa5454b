//! Models with free input sizes: Ultralytics' `dynamic=True` export and a
//! paddle2onnx-style `[N, 3, H, W]` input are analysed at a given size, like the
//! static export of the same model.

use effp_graph::channels::ChannelAnalysis;
use effp_graph::ir::Dim;
use effp_graph::shape::InputSize;
use effp_graph::{GraphError, analyse_file};
use effp_testkit::fixtures;

fn size(s: &str) -> Option<InputSize> {
    Some(s.parse().unwrap())
}

#[test]
fn a_dynamic_ultralytics_export_analyses_like_the_static_one() {
    let (dynamic, fixed) = fixtures::dynamic_yolov8t();
    let (dm, dr) = analyse_file(&dynamic, size("128x128")).unwrap();
    let (sm, sr) = analyse_file(&fixed, None).unwrap();
    assert!(dr.unsupported_ops.is_empty(), "{:?}", dr.unsupported_ops);
    assert!(dr.totals.complete, "every shape is known");
    assert!(
        matches!(
            dm.graph.inputs[0].dims.as_deref(),
            Some([
                Dim::Symbolic(_),
                Dim::Fixed(3),
                Dim::Symbolic(_),
                Dim::Symbolic(_)
            ])
        ),
        "the export has free sizes: {:?}",
        dm.graph.inputs[0].dims
    );
    let shape_ops = dm
        .graph
        .nodes
        .iter()
        .filter(|n| n.op.op_type() == "Shape")
        .count();
    assert!(
        shape_ops >= 3,
        "the export computes sizes ({shape_ops} Shape nodes)"
    );
    assert_eq!(dr.totals.params, sr.totals.params);
    assert_eq!(dr.totals.macs, sr.totals.macs);
    let output =
        |m: &effp_graph::ir::Model| m.graph.shape(m.graph.outputs[0].value).unwrap().to_vec();
    assert_eq!(output(&dm), output(&sm));

    let da = ChannelAnalysis::new(&dm.graph).unwrap();
    let sa = ChannelAnalysis::new(&sm.graph).unwrap();
    assert_eq!(da.groups.len(), sa.groups.len(), "prunable groups");
    let macs = |a: &ChannelAnalysis| {
        let mut v: Vec<u64> = a.groups.iter().map(|g| g.macs).collect();
        v.sort_unstable();
        v
    };
    assert_eq!(
        macs(&da),
        macs(&sa),
        "each group saves what it saves in the static export"
    );
}

#[test]
fn a_dynamic_export_without_an_input_size_asks_for_one() {
    let (dynamic, _) = fixtures::dynamic_yolov8t();
    let err = analyse_file(&dynamic, None).unwrap_err();
    assert!(matches!(err, GraphError::InputSize { .. }), "{err}");
    let msg = err.to_string();
    assert!(
        msg.contains("free size on axis 0") || msg.contains("free size on axis 2"),
        "{msg}"
    );
    assert!(msg.contains("--input-size HxW"), "{msg}");
}

#[test]
fn the_folded_sizes_follow_the_input_size() {
    let (dynamic, _) = fixtures::dynamic_yolov8t();
    for (hw, anchors) in [
        ("128x128", 16 * 16 + 8 * 8 + 4 * 4),
        ("160x96", 20 * 12 + 10 * 6 + 5 * 3),
    ] {
        let (m, _) = analyse_file(&dynamic, size(hw)).unwrap();
        let out = m.graph.shape(m.graph.outputs[0].value).unwrap();
        assert_eq!(out, [1, 7, anchors], "{hw}");
    }
}
