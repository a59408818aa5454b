//! Broken and hostile models give one clear error naming what is wrong and where.

use effp_graph::onnx::{load_bytes, load_file};
use effp_graph::{GraphError, analyse};
use effp_testkit::builder::{ModelBuilder, int, ints};
use effp_testkit::fixtures;
use onnx_protobuf::Message;

fn analyse_bytes(bytes: &[u8]) -> Result<effp_graph::inspect::InspectReport, GraphError> {
    analyse(load_bytes(bytes)?, None).map(|(_, r)| r)
}

#[test]
fn an_empty_file_is_named_as_empty() {
    let tmp = tempfile::NamedTempFile::new().unwrap();
    let err = load_file(tmp.path()).unwrap_err();
    assert!(matches!(err, GraphError::Empty), "{err}");
    assert!(err.to_string().contains("empty"));
}

#[test]
fn random_bytes_are_not_an_onnx_model() {
    let mut state = 0x9e37_79b9_7f4a_7c15u64;
    let bytes: Vec<u8> = (0..4096)
        .map(|_| {
            state = state
                .wrapping_mul(6_364_136_223_846_793_005)
                .wrapping_add(1);
            (state >> 56) as u8
        })
        .collect();
    let err = load_bytes(&bytes).unwrap_err();
    assert!(
        matches!(err, GraphError::Decode { .. } | GraphError::NoGraph),
        "{err:?}"
    );
    assert!(err.to_string().contains("not a valid ONNX model"), "{err}");
}

#[test]
fn a_truncated_file_is_reported_as_truncated_or_corrupt() {
    let bytes = std::fs::read(fixtures::path("yolov8t.onnx")).unwrap();
    // Cuts inside the graph (a cut on a field boundary near the end can leave a valid,
    // shorter model, which is not what this test is about).
    for cut in [100, bytes.len() / 3, bytes.len() / 2] {
        let Err(err) = load_bytes(&bytes[..cut]) else {
            panic!("a model cut at byte {cut} loaded")
        };
        assert!(
            matches!(err, GraphError::Decode { .. }),
            "cut at {cut}: {err:?}"
        );
        assert!(
            err.to_string().contains("truncated, corrupt or not ONNX"),
            "{err}"
        );
    }
}

#[test]
fn a_cycle_names_the_nodes_on_it() {
    let mut b = ModelBuilder::new("cycle", 1);
    let x = b.input("input", &[1, 3, 8, 8]);
    let a = b.node("Add", &[&x, "loop_back"], 1, vec![]).remove(0);
    let mut m = b.build();
    let g = m.graph.as_mut().unwrap();
    let mut relu = onnx_protobuf::NodeProto::new();
    relu.op_type = "Relu".into();
    relu.name = "closing_relu".into();
    relu.input = vec![a.clone()];
    relu.output = vec!["loop_back".into()];
    g.node.push(relu);
    let err = load_bytes(&m.write_to_bytes().unwrap()).unwrap_err();
    assert!(matches!(err, GraphError::Cycle { .. }), "{err:?}");
    assert!(err.to_string().contains("closing_relu"), "{err}");
}

#[test]
fn a_dangling_input_names_the_node_and_the_value() {
    let mut b = ModelBuilder::new("dangling", 1);
    let x = b.input("input", &[1, 3, 8, 8]);
    let y = b.op("Add", &[&x, "nowhere"], vec![]);
    let bytes = b.finish_as(&y, "out", &[1]);
    let err = load_bytes(&bytes).unwrap_err();
    assert!(matches!(err, GraphError::DanglingInput { .. }), "{err:?}");
    let msg = err.to_string();
    assert!(msg.contains("'nowhere'") && msg.contains("(Add)"), "{msg}");
}

#[test]
fn a_missing_weight_is_reported_on_its_conv() {
    // The weight is declared as a graph input with no initializer behind it.
    let mut b = ModelBuilder::new("missing_weight", 1);
    let x = b.input("input", &[1, 3, 8, 8]);
    let w = b.input("conv_weight", &[4, 3, 3, 3]);
    let y = b.op("Conv", &[&x, &w], vec![ints("kernel_shape", &[3, 3])]);
    let bytes = b.finish_as(&y, "out", &[1]);
    let err = analyse_bytes(&bytes).unwrap_err();
    assert!(matches!(err, GraphError::MissingWeight { .. }), "{err:?}");
    assert!(err.to_string().contains("'conv_weight'"), "{err}");

    // And a Conv with no weight input at all.
    let mut b = ModelBuilder::new("no_weight", 1);
    let x = b.input("input", &[1, 3, 8, 8]);
    let y = b.op("Conv", &[&x], vec![]);
    let err = analyse_bytes(&b.finish_as(&y, "out", &[1])).unwrap_err();
    assert!(
        matches!(err, GraphError::MissingInput { role: "weight", .. }),
        "{err:?}"
    );
}

#[test]
fn an_unsupported_op_is_listed_with_its_node_and_shapes_after_it_stay_unknown() {
    let mut b = ModelBuilder::new("unsupported", 1);
    let x = b.input("input", &[1, 3, 8, 8]);
    let c = b.conv(&x, 3, 4, 3, 1, 1);
    let t = b.op("Tanh", &[&c], vec![]);
    let o = b.conv(&t, 4, 2, 3, 1, 1);
    let (model, report) =
        analyse(load_bytes(&b.finish_as(&o, "out", &[1])).unwrap(), None).unwrap();
    assert_eq!(report.unsupported_ops.len(), 1);
    assert_eq!(report.unsupported_ops[0].op, "Tanh");
    assert!(!report.totals.complete);
    let err = effp_graph::require_supported(&model).unwrap_err();
    let msg = err.to_string();
    assert!(
        msg.contains("Tanh (node 'Tanh_") && msg.contains("1 unsupported op"),
        "{msg}"
    );
}

#[test]
fn a_zero_or_negative_input_size_is_refused() {
    for bad in ["0x320", "-1x320", "320x0", "0"] {
        assert!(
            bad.parse::<effp_graph::shape::InputSize>().is_err(),
            "{bad}"
        );
    }
    let mut b = ModelBuilder::new("zero", 1);
    let x = b.input("input", &[1, 3, 0, 8]);
    let y = b.op("Relu", &[&x], vec![]);
    let err = analyse_bytes(&b.finish_as(&y, "out", &[1])).unwrap_err();
    assert!(matches!(err, GraphError::InputSize { .. }), "{err:?}");
}

#[test]
fn a_symbolic_image_size_asks_for_an_input_size() {
    let mut b = ModelBuilder::new("dynamic", 1);
    let x = b.input("input", &[-1, 3, 8, 8]);
    let c = b.conv(&x, 3, 4, 3, 1, 1);
    let bytes = b.finish_as(&c, "out", &[1]);
    // A symbolic batch becomes 1 …
    let report = analyse_bytes(&bytes).unwrap();
    assert_eq!(report.inputs[0].shape.as_deref(), Some(&[1, 3, 8, 8][..]));
    // … and a symbolic height needs --input-size.
    let mut m = onnx_protobuf::ModelProto::parse_from_bytes(&bytes).unwrap();
    let dim = &mut m.graph.as_mut().unwrap().input[0].type_.as_mut().unwrap();
    if let Some(onnx_protobuf::type_proto::Value::TensorType(t)) = dim.value.as_mut() {
        t.shape.as_mut().unwrap().dim[2].value =
            Some(onnx_protobuf::tensor_shape_proto::dimension::Value::DimParam("h".into()));
    }
    let err = analyse_bytes(&m.write_to_bytes().unwrap()).unwrap_err();
    assert!(err.to_string().contains("--input-size"), "{err}");
}

#[test]
fn an_external_data_tensor_is_refused_with_advice() {
    let mut b = ModelBuilder::new("external", 1);
    let x = b.input("input", &[1, 3, 8, 8]);
    let c = b.conv(&x, 3, 4, 3, 1, 1);
    let mut m = onnx_protobuf::ModelProto::parse_from_bytes(&b.finish_as(&c, "out", &[1])).unwrap();
    let t = &mut m.graph.as_mut().unwrap().initializer[0];
    t.raw_data.clear();
    let mut loc = onnx_protobuf::StringStringEntryProto::new();
    loc.key = "location".into();
    loc.value = "weights.bin".into();
    t.external_data.push(loc);
    t.data_location = onnx_protobuf::tensor_proto::DataLocation::EXTERNAL.into();
    let err = load_bytes(&m.write_to_bytes().unwrap()).unwrap_err();
    assert!(matches!(err, GraphError::ExternalData { .. }), "{err:?}");
    assert!(
        err.to_string().contains("save_as_external_data=False"),
        "{err}"
    );
}

#[test]
fn a_weight_whose_data_does_not_fill_its_shape_is_malformed() {
    let mut b = ModelBuilder::new("short", 1);
    let x = b.input("input", &[1, 3, 8, 8]);
    let c = b.conv(&x, 3, 4, 3, 1, 1);
    let mut m = onnx_protobuf::ModelProto::parse_from_bytes(&b.finish_as(&c, "out", &[1])).unwrap();
    m.graph.as_mut().unwrap().initializer[0]
        .raw_data
        .truncate(10);
    let err = load_bytes(&m.write_to_bytes().unwrap()).unwrap_err();
    assert!(matches!(err, GraphError::MalformedTensor { .. }), "{err:?}");
}

#[test]
fn inconsistent_shapes_name_the_node() {
    let mut b = ModelBuilder::new("mismatch", 1);
    let x = b.input("input", &[1, 3, 8, 8]);
    let c = b.conv(&x, 3, 4, 3, 1, 1);
    let d = b.conv(&x, 3, 5, 3, 2, 1);
    let s = b.op("Add", &[&c, &d], vec![]);
    let err = analyse_bytes(&b.finish_as(&s, "out", &[1])).unwrap_err();
    let msg = err.to_string();
    assert!(
        msg.contains("(Add)") && msg.contains("cannot be broadcast"),
        "{msg}"
    );

    let mut b = ModelBuilder::new("bad_axis", 1);
    let x = b.input("input", &[1, 3, 8, 8]);
    let y = b.op("Concat", &[&x, &x], vec![int("axis", 7)]);
    let err = analyse_bytes(&b.finish_as(&y, "out", &[1])).unwrap_err();
    assert!(err.to_string().contains("axis 7 is out of range"), "{err}");
}

#[test]
fn an_unknown_attribute_is_not_silently_ignored() {
    let mut b = ModelBuilder::new("attr", 1);
    let x = b.input("input", &[1, 3, 8, 8]);
    let y = b.op("Relu", &[&x], vec![int("mystery", 1)]);
    let err = load_bytes(&b.finish_as(&y, "out", &[1])).unwrap_err();
    assert!(
        err.to_string()
            .contains("'mystery' is not a known attribute"),
        "{err}"
    );
}
