//! load → save gives a file onnxruntime runs with the original's outputs.

use effp_graph::onnx::{load_file, save_file};
use effp_testkit::{fixtures, zoo};

#[test]
fn load_then_save_preserves_outputs_in_onnxruntime_on_every_fixture() {
    let tmp = tempfile::tempdir().unwrap();
    let mut originals: Vec<std::path::PathBuf> = fixtures::PUBLISHED
        .iter()
        .map(|(f, ..)| fixtures::path(f))
        .chain(fixtures::TINY.iter().map(|f| fixtures::path(f)))
        .collect();
    for z in zoo::all() {
        let p = tmp.path().join(format!("{}.onnx", z.name));
        std::fs::write(&p, &z.bytes).unwrap();
        originals.push(p);
    }
    let mut pairs = Vec::new();
    for (i, original) in originals.iter().enumerate() {
        let model = load_file(original).unwrap();
        let saved = tmp.path().join(format!("saved_{i}.onnx"));
        save_file(&model, &saved).unwrap();
        // Saving the re-loaded model again gives the same IR: nothing drifts.
        assert!(
            same_nodes(&load_file(&saved).unwrap(), &model),
            "{}: nodes changed",
            original.display()
        );
        pairs.push((original.clone(), saved));
    }
    let answers = fixtures::reference("compare", &serde_json::json!({ "pairs": pairs, "seed": 7 }));
    for a in answers.as_array().unwrap() {
        assert!(
            a["shapes_equal"].as_bool().unwrap(),
            "{}: output shapes differ: {a}",
            a["reference"]
        );
        let rel = a["max_rel"].as_f64().unwrap();
        assert!(
            rel <= 1e-6,
            "{}: outputs differ by {rel} (relative)",
            a["reference"]
        );
    }
}

#[test]
fn metadata_opset_and_names_survive_a_round_trip() {
    let original = load_file(&fixtures::path("yolov8t.onnx")).unwrap();
    let tmp = tempfile::tempdir().unwrap();
    let saved = tmp.path().join("m.onnx");
    save_file(&original, &saved).unwrap();
    let again = load_file(&saved).unwrap();
    assert_eq!(again.metadata, original.metadata);
    assert!(
        again
            .metadata
            .iter()
            .any(|(k, v)| k == "names" && v.starts_with("{0: "))
    );
    assert_eq!(again.opset_imports, original.opset_imports);
    assert_eq!(again.ir_version, original.ir_version);
    assert_eq!(again.graph.inputs, original.graph.inputs);
    let names = |m: &effp_graph::ir::Model| {
        m.graph
            .outputs
            .iter()
            .map(|o| m.graph.value(o.value).name.clone())
            .collect::<Vec<_>>()
    };
    assert_eq!(names(&again), names(&original));
}

#[test]
fn constant_nodes_become_initializers_with_the_same_values() {
    let model = effp_graph::onnx::load_bytes(&zoo::constant_node_weights()).unwrap();
    assert!(
        model
            .graph
            .nodes
            .iter()
            .all(|n| n.op.op_type() != "Constant")
    );
    let conv = model
        .graph
        .nodes
        .iter()
        .find(|n| n.op.op_type() == "Conv")
        .unwrap();
    let w = model.graph.constant(conv.input(1).unwrap()).unwrap();
    assert_eq!(w.dims(), &[8, 3, 3, 3]);
    assert!(w.to_f32_vec().iter().any(|&v| v != 0.0));
}

/// Nodes equal by op, attributes and the names of what they read and write.
fn same_nodes(a: &effp_graph::ir::Model, b: &effp_graph::ir::Model) -> bool {
    let describe = |m: &effp_graph::ir::Model| {
        m.graph
            .nodes
            .iter()
            .map(|n| {
                let name = |id: effp_graph::ir::ValueId| m.graph.value(id).name.clone();
                (
                    n.name.clone(),
                    n.op.clone(),
                    n.inputs.iter().map(|i| i.map(name)).collect::<Vec<_>>(),
                    n.outputs.iter().map(|&o| name(o)).collect::<Vec<_>>(),
                )
            })
            .collect::<Vec<_>>()
    };
    describe(a) == describe(b)
}
