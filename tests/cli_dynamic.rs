//! `effp prune` on models with free input sizes, as users export them: Ultralytics'
//! `dynamic=True` export and a paddle2onnx-style `[N, 3, H, W]` input. The pruned
//! file keeps its free sizes and runs in onnxruntime at sizes other than the one it
//! was pruned at.

mod common;

use common::{effp, text};
use std::path::{Path, PathBuf};

use effp_graph::channels::{ChannelAnalysis, Mask, gate};
use effp_graph::ir::{Dim, Model};
use effp_graph::onnx::{load_file, save_file};
use effp_testkit::builder::{ModelBuilder, int};
use effp_testkit::fixtures;
use onnx_protobuf::Message;
use onnx_protobuf::tensor_shape_proto::dimension;

/// `effp prune MODEL --input-size SIZE --target-flops 0.5` (one-shot L1, no data).
fn prune(model: &Path, size: &str, dir: &Path) -> (PathBuf, serde_json::Value) {
    let out = dir.join("pruned.onnx");
    let json = dir.join("report.json");
    let run = effp(&[
        "prune",
        model.to_str().unwrap(),
        "--input-size",
        size,
        "--target-flops",
        "0.5",
        "--device",
        "cpu",
        "--out",
        out.to_str().unwrap(),
        "--report",
        json.to_str().unwrap(),
    ]);
    assert!(run.status.success(), "{}", text(&run.stderr));
    let report = serde_json::from_str(&std::fs::read_to_string(&json).unwrap()).unwrap();
    (out, report)
}

/// The original model with the groups the report removed gated to zero: what the
/// pruned file must compute. A group is on when its first filter was kept.
fn masked_original(model: &Path, size: &str, report: &serde_json::Value, dir: &Path) -> PathBuf {
    let (m, _) = effp_graph::analyse_file(model, Some(size.parse().unwrap())).unwrap();
    let analysis = ChannelAnalysis::new(&m.graph).unwrap();
    let layers = report["compaction"]["layers"].as_array().unwrap();
    let kept = |node: &str, c: usize| {
        layers.iter().find(|l| l["node"] == node).is_none_or(|l| {
            l["kept_output_channels"]
                .as_array()
                .unwrap()
                .iter()
                .any(|k| k.as_u64() == Some(c as u64))
        })
    };
    let flags: Vec<bool> = analysis
        .groups
        .iter()
        .map(|g| {
            let &(node, c) = g.producers.first().unwrap();
            kept(&m.graph.node(node).name, c)
        })
        .collect();
    let mask = Mask::from_flags(flags);
    assert_eq!(
        mask.pruned() as u64,
        report["compaction"]["groups_removed"].as_u64().unwrap()
    );
    let path = dir.join("masked.onnx");
    save_file(&gate(&m, &analysis, &mask), &path).unwrap();
    path
}

/// onnxruntime on both files at an input shape: (output shapes, largest relative
/// difference).
fn compare(
    reference: &Path,
    candidate: &Path,
    input: &str,
    shape: [usize; 4],
) -> (serde_json::Value, f64) {
    let answer = fixtures::reference(
        "compare",
        &serde_json::json!({
            "pairs": [[reference, candidate]],
            "seed": 5,
            "input_shapes": { input: shape },
        }),
    );
    let a = &answer[0];
    assert!(a["shapes_equal"].as_bool().unwrap(), "{a}");
    (a["shapes"].clone(), a["max_rel"].as_f64().unwrap())
}

fn free_image_input(m: &Model) -> bool {
    matches!(
        m.graph.inputs[0].dims.as_deref(),
        Some([_, Dim::Fixed(3), h, w]) if !matches!(h, Dim::Fixed(_)) && !matches!(w, Dim::Fixed(_))
    )
}

fn op_count(m: &Model, op: &str) -> usize {
    m.graph
        .nodes
        .iter()
        .filter(|n| n.op.op_type() == op)
        .count()
}

#[test]
fn a_dynamic_ultralytics_export_prunes_and_stays_dynamic() {
    let dir = tempfile::tempdir().unwrap();
    let (dynamic, _) = fixtures::dynamic_yolov8t();
    let (pruned, report) = prune(&dynamic, "128x128", dir.path());
    assert!(report["flops_ratio"].as_f64().unwrap() <= 0.5, "{report}");
    assert!(
        report["equivalence"]["max_relative_error"]
            .as_f64()
            .unwrap()
            <= 1e-4
    );

    let before = load_file(&dynamic).unwrap();
    let after = load_file(&pruned).unwrap();
    assert!(free_image_input(&after), "{:?}", after.graph.inputs[0].dims);
    assert_eq!(after.graph.inputs[0].dims, before.graph.inputs[0].dims);
    assert_eq!(after.graph.outputs[0].dims, before.graph.outputs[0].dims);
    for op in [
        "Shape",
        "Gather",
        "Range",
        "ConstantOfShape",
        "Expand",
        "Unsqueeze",
        "Cast",
    ] {
        assert_eq!(
            op_count(&after, op),
            op_count(&before, op),
            "{op}: the shape subgraph is intact"
        );
    }

    let masked = masked_original(&dynamic, "128x128", &report, dir.path());
    let (shapes, rel) = compare(&masked, &pruned, "images", [1, 3, 128, 128]);
    assert_eq!(shapes, serde_json::json!([[1, 7, 336]]));
    assert!(
        rel <= 1e-4,
        "masked original and pruned file differ by {rel} at 128x128"
    );
    // Another size, and another batch: the file computes sizes as it runs.
    let (shapes, rel) = compare(&masked, &pruned, "images", [2, 3, 160, 96]);
    assert_eq!(shapes, serde_json::json!([[2, 7, 315]]));
    assert!(
        rel <= 1e-4,
        "masked original and pruned file differ by {rel} at 160x96"
    );
}

#[test]
fn a_dynamic_export_without_an_input_size_is_told_to_pass_one() {
    let dir = tempfile::tempdir().unwrap();
    let (dynamic, _) = fixtures::dynamic_yolov8t();
    let out = dir.path().join("p.onnx");
    let run = effp(&[
        "prune",
        dynamic.to_str().unwrap(),
        "--target-flops",
        "0.5",
        "--out",
        out.to_str().unwrap(),
    ]);
    assert!(!run.status.success());
    let stderr = text(&run.stderr);
    assert!(stderr.contains("free size on axis 2"), "{stderr}");
    assert!(stderr.contains("--input-size HxW"), "{stderr}");
    assert!(!out.exists());
}

/// A paddle2onnx-style detector body: input `[N, 3, H, W]` with every size but the
/// channels free (named, or left without a name or value), convolutions, and a head
/// that flattens the positions with a shape computed from `Shape`.
fn free_size_model(named: bool) -> Vec<u8> {
    let mut b = ModelBuilder::new("paddle_like", 11).opset(13);
    let x = b.input("image", &[1, 3, 1, 1]);
    let c1 = b.conv(&x, 3, 8, 3, 2, 1);
    let bn = b.batch_norm(&c1, 8);
    let r1 = b.op("Relu", &[&bn], vec![]);
    let c2 = b.conv(&r1, 8, 16, 3, 1, 1);
    let r2 = b.op("Relu", &[&c2], vec![]);
    let c3 = b.conv(&r2, 16, 6, 1, 1, 1);
    let shape = b.op("Shape", &[&c3], vec![]);
    let zero = b.constant_i64("zero", &[0]);
    let batch = b.op("Gather", &[&shape, &zero], vec![int("axis", 0)]);
    let rest = b.constant_i64("rest", &[6, -1]);
    let target = b.op("Concat", &[&batch, &rest], vec![int("axis", 0)]);
    let y = b.op("Reshape", &[&c3, &target], vec![]);
    let axes = b.constant_i64("axes", &[1]);
    let y = b.op("Unsqueeze", &[&y, &axes], vec![]);
    let y = b.op("Squeeze", &[&y, &axes], vec![]);
    let mut proto =
        onnx_protobuf::ModelProto::parse_from_bytes(&b.finish_as(&y, "out", &[-1, 6, -1])).unwrap();
    let g = proto.graph.as_mut().unwrap();
    for (vi, names) in [(&mut g.input[0], ["N", "", "H", "W"])] {
        let tt = match vi.type_.as_mut().unwrap().value.as_mut().unwrap() {
            onnx_protobuf::type_proto::Value::TensorType(t) => t,
            _ => unreachable!(),
        };
        for (d, name) in tt.shape.as_mut().unwrap().dim.iter_mut().zip(names) {
            if name.is_empty() {
                continue;
            }
            d.value = named.then(|| dimension::Value::DimParam(name.into()));
        }
    }
    proto.write_to_bytes().unwrap()
}

#[test]
fn a_model_with_free_height_and_width_prunes_at_an_input_size() {
    for named in [true, false] {
        let dir = tempfile::tempdir().unwrap();
        let model = dir.path().join("free.onnx");
        std::fs::write(&model, free_size_model(named)).unwrap();
        let (pruned, report) = prune(&model, "64x48", dir.path());
        assert!(report["flops_ratio"].as_f64().unwrap() <= 0.5, "{report}");
        let after = load_file(&pruned).unwrap();
        assert_eq!(
            after.graph.inputs[0].dims,
            load_file(&model).unwrap().graph.inputs[0].dims
        );
        let masked = masked_original(&model, "64x48", &report, dir.path());
        for shape in [[1, 3, 64, 48], [3, 3, 40, 72]] {
            let (shapes, rel) = compare(&masked, &pruned, "image", shape);
            let positions = (shape[2] / 2) * (shape[3] / 2);
            assert_eq!(shapes, serde_json::json!([[shape[0], 6, positions]]));
            assert!(rel <= 1e-4, "named={named} {shape:?}: differ by {rel}");
        }
    }
}
