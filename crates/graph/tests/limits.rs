//! Every size a model declares is capped before anything is allocated from it: a tiny
//! hostile file gets a one-line `LimitExceeded` (or `MalformedTensor`) naming what is
//! at fault, never an abort or an exhausted machine.

use effp_graph::channels::cost::masked_cost;
use effp_graph::channels::{ChannelAnalysis, Mask};
use effp_graph::limits::Quantity;
use effp_graph::onnx::{load_bytes, load_bytes_with};
use effp_graph::shape::{InputSize, infer_shapes, infer_shapes_with};
use effp_graph::{GraphError, Limits, analyse};
use effp_testkit::builder::{ModelBuilder, int, ints};
use effp_testkit::zoo;
use onnx_protobuf::tensor_shape_proto::{Dimension, dimension};
use onnx_protobuf::{
    GraphProto, Message, ModelProto, NodeProto, OperatorSetIdProto, TensorProto, TensorShapeProto,
    TypeProto, ValueInfoProto, type_proto,
};

/// A float32 value declaration with fixed dims.
fn value_info(name: &str, dims: &[i64]) -> ValueInfoProto {
    let mut shape = TensorShapeProto::new();
    shape.dim = dims
        .iter()
        .map(|&d| {
            let mut dim = Dimension::new();
            dim.value = Some(dimension::Value::DimValue(d));
            dim
        })
        .collect();
    let mut t = type_proto::Tensor::new();
    t.elem_type = 1;
    t.shape = Some(shape).into();
    let mut tp = TypeProto::new();
    tp.value = Some(type_proto::Value::TensorType(t));
    let mut vi = ValueInfoProto::new();
    vi.name = name.into();
    vi.type_ = Some(tp).into();
    vi
}

/// The smallest model that declares `channels` channels: input `x` → Relu → `y`.
fn relu_bomb(channels: i64) -> Vec<u8> {
    let mut relu = NodeProto::new();
    relu.op_type = "Relu".into();
    relu.input = vec!["x".into()];
    relu.output = vec!["y".into()];
    let mut g = GraphProto::new();
    g.node.push(relu);
    g.input.push(value_info("x", &[1, channels, 1, 1]));
    let mut out = ValueInfoProto::new();
    out.name = "y".into();
    g.output.push(out);
    let mut m = ModelProto::new();
    m.ir_version = 8;
    let mut opset = OperatorSetIdProto::new();
    opset.version = 17;
    m.opset_import.push(opset);
    m.graph = Some(g).into();
    m.write_to_bytes().unwrap()
}

/// Messages go to logs and API responses: one line, no file system paths.
fn assert_one_line(err: &GraphError) -> String {
    let msg = err.to_string();
    assert!(!msg.contains('\n'), "{msg}");
    assert!(!msg.contains("/tmp") && !msg.contains("/root"), "{msg}");
    msg
}

fn limit_error(err: GraphError) -> (String, Quantity, u128, u64) {
    let msg = assert_one_line(&err);
    match err {
        GraphError::LimitExceeded {
            subject,
            quantity,
            declared,
            limit,
        } => {
            assert!(msg.contains(&limit.to_string()), "{msg}");
            (subject, quantity, declared, limit)
        }
        other => panic!("expected LimitExceeded, got {other:?}"),
    }
}

#[test]
fn the_75_byte_slot_bomb_is_refused_naming_its_input() {
    for channels in [1i64 << 40, 1 << 30, 1 << 32] {
        let bytes = relu_bomb(channels);
        assert!(bytes.len() < 100, "{} bytes", bytes.len());
        let model = load_bytes(&bytes).unwrap();
        let err = analyse(model, None).unwrap_err();
        let msg = err.to_string();
        let (subject, quantity, declared, _) = limit_error(err);
        assert!(subject.contains("graph input 'x'"), "{subject}");
        assert_eq!(quantity, Quantity::Channels);
        assert_eq!(declared, channels as u128);
        assert!(msg.contains("realistic input shape"), "{msg}");
    }
}

#[test]
fn the_channel_analysis_refuses_the_bomb_on_its_own() {
    // A caller that sets shapes itself, without shape inference, is still protected.
    let mut model = load_bytes(&relu_bomb(1 << 40)).unwrap();
    for v in &mut model.graph.values {
        v.shape = Some(vec![1, 1 << 40, 1, 1]);
    }
    let (subject, quantity, declared, _) =
        limit_error(ChannelAnalysis::new(&model.graph).unwrap_err());
    assert_eq!(quantity, Quantity::ChannelSlots);
    assert_eq!(declared, 2 << 40);
    assert!(subject.contains("1099511627776 channels"), "{subject}");
}

#[test]
fn a_weight_claiming_more_than_its_data_is_malformed_before_any_copy() {
    let mut b = ModelBuilder::new("huge_weight", 1);
    let x = b.input("input", &[1, 3, 8, 8]);
    let c = b.conv(&x, 3, 4, 3, 1, 1);
    let bytes = b.finish_as(&c, "out", &[1]);
    let mut m = ModelProto::parse_from_bytes(&bytes).unwrap();
    let weight = &mut m.graph.as_mut().unwrap().initializer[0];
    assert_eq!(weight.dims, [4, 3, 3, 3]);
    weight.dims[0] = 1 << 40;
    let err = load_bytes(&m.write_to_bytes().unwrap()).unwrap_err();
    assert!(matches!(err, GraphError::MalformedTensor { .. }), "{err:?}");
    assert_one_line(&err);

    // The same through the typed fields, which are re-encoded only after the check.
    let weight = &mut m.graph.as_mut().unwrap().initializer[0];
    weight.float_data = vec![0.5; 4 * 27];
    weight.raw_data.clear();
    let err = load_bytes(&m.write_to_bytes().unwrap()).unwrap_err();
    assert!(matches!(err, GraphError::MalformedTensor { .. }), "{err:?}");

    // And dims whose product overflows.
    let weight = &mut m.graph.as_mut().unwrap().initializer[0];
    weight.dims = vec![i64::MAX, i64::MAX, 3, 3];
    let err = load_bytes(&m.write_to_bytes().unwrap()).unwrap_err();
    assert!(matches!(err, GraphError::MalformedTensor { .. }), "{err:?}");
}

#[test]
fn an_empty_constant_cannot_declare_huge_axes() {
    let mut b = ModelBuilder::new("empty_constant", 1);
    let x = b.input("input", &[1, 3, 8, 8]);
    let y = b.op("Relu", &[&x], vec![]);
    let mut m = ModelProto::parse_from_bytes(&b.finish_as(&y, "out", &[1])).unwrap();
    let mut t = TensorProto::new();
    t.name = "empty".into();
    t.data_type = 1;
    t.dims = vec![0, 1 << 40, 1 << 40];
    m.graph.as_mut().unwrap().initializer.push(t);
    let (subject, quantity, ..) =
        limit_error(load_bytes(&m.write_to_bytes().unwrap()).unwrap_err());
    assert!(subject.contains("initializer 'empty'"), "{subject}");
    assert_eq!(quantity, Quantity::AxisLength);
}

#[test]
fn an_input_size_over_the_pixel_cap_is_refused_with_the_limit() {
    let err = "100000x100000".parse::<InputSize>().unwrap_err();
    assert!(err.contains("65536") && !err.contains('\n'), "{err}");
    let err = "8193x8192".parse::<InputSize>().unwrap_err();
    assert!(err.contains("67108864"), "{err}");
    assert!("8192x8192".parse::<InputSize>().is_ok());

    // A size built in code (effp eval --imgsz) is checked by shape inference.
    let mut b = ModelBuilder::new("image", 1);
    let x = b.input("images", &[1, 3, 640, 640]);
    let c = b.conv(&x, 3, 4, 3, 2, 1);
    let bytes = b.finish_as(&c, "out", &[1]);
    for (height, width) in [(100_000, 100_000), (8193, 8192), (1 << 40, 1)] {
        let size = InputSize { height, width };
        let err = analyse(load_bytes(&bytes).unwrap(), Some(size)).unwrap_err();
        let (subject, quantity, _, limit) = limit_error(err);
        assert!(subject.contains("graph input 'images'"), "{subject}");
        assert_eq!((quantity, limit), (Quantity::InputPixels, 8192 * 8192));
    }
    analyse(load_bytes(&bytes).unwrap(), Some("1280".parse().unwrap())).unwrap();

    // And so is a declared one.
    let mut b = ModelBuilder::new("declared", 1);
    let x = b.input("images", &[1, 3, 9000, 9000]);
    let y = b.op("Relu", &[&x], vec![]);
    let err = analyse(load_bytes(&b.finish_as(&y, "out", &[1])).unwrap(), None).unwrap_err();
    assert_eq!(limit_error(err).1, Quantity::InputPixels);
}

#[test]
fn a_node_output_over_a_cap_is_refused_naming_the_node() {
    // Resize to 2^20 × 2^20: 3 × 2^40 elements.
    let mut b = ModelBuilder::new("resize", 1);
    let x = b.input("input", &[1, 3, 8, 8]);
    let sizes = b.constant_i64("sizes", &[1, 3, 1 << 20, 1 << 20]);
    let y = b.op("Resize", &[&x, "", "", &sizes], vec![]);
    let err = analyse(load_bytes(&b.finish_as(&y, "out", &[1])).unwrap(), None).unwrap_err();
    let (subject, quantity, declared, _) = limit_error(err);
    assert!(subject.contains("output of Resize node"), "{subject}");
    assert_eq!((quantity, declared), (Quantity::Elements, 3 << 40));

    // Concat of 2^17 channels five times over: past the 2^19 channel cap.
    let mut b = ModelBuilder::new("concat", 1);
    let x = b.input("input", &[1, 1 << 17, 1, 1]);
    let y = b.op("Concat", &[&x, &x, &x, &x, &x], vec![int("axis", 1)]);
    let err = analyse(load_bytes(&b.finish_as(&y, "out", &[1])).unwrap(), None).unwrap_err();
    let (subject, quantity, ..) = limit_error(err);
    assert!(subject.contains("output of Concat node"), "{subject}");
    assert_eq!(quantity, Quantity::Channels);
}

/// `input` [1, c, 1, 1] through `relus` Relus: (relus + 1) × c channel slots.
fn relu_chain(channels: i64, relus: usize) -> effp_graph::ir::Model {
    let mut b = ModelBuilder::new("chain", 1);
    let mut v = b.input("input", &[1, channels, 1, 1]);
    for _ in 0..relus {
        v = b.op("Relu", &[&v], vec![]);
    }
    let mut model = load_bytes(&b.finish_as(&v, "out", &[1])).unwrap();
    infer_shapes(&mut model, None).unwrap();
    model
}

#[test]
fn channel_slots_just_over_the_cap_are_refused() {
    let model = relu_chain(30, 4);
    let at_cap = Limits {
        max_channel_slots: 150,
        ..Limits::default()
    };
    ChannelAnalysis::with_limits(&model.graph, &at_cap).unwrap();
    let over = Limits {
        max_channel_slots: 149,
        ..Limits::default()
    };
    let (subject, quantity, declared, limit) =
        limit_error(ChannelAnalysis::with_limits(&model.graph, &over).unwrap_err());
    assert_eq!(
        (quantity, declared, limit),
        (Quantity::ChannelSlots, 150, 149)
    );
    assert!(subject.contains("'input', has 30 channels"), "{subject}");

    // The default cap, with every value under the per-value cap.
    let model = relu_chain(200_000, 21);
    let (_, quantity, declared, limit) =
        limit_error(ChannelAnalysis::new(&model.graph).unwrap_err());
    assert_eq!(quantity, Quantity::ChannelSlots);
    assert_eq!((declared, limit), (22 * 200_000, 1 << 22));
}

#[test]
fn many_nodes_reading_one_wide_value_exhaust_the_reference_budget() {
    // Four convolutions share one input and one weight: 4 × 30 weight columns.
    let mut b = ModelBuilder::new("fan_out", 1);
    let x = b.input("input", &[1, 30, 1, 1]);
    let w = b.random_constant("w", &[1, 30, 1, 1], -1.0, 1.0);
    let outs: Vec<String> = (0..4).map(|_| b.op("Conv", &[&x, &w], vec![])).collect();
    let refs: Vec<&str> = outs.iter().map(String::as_str).collect();
    let y = b.op("Concat", &refs, vec![int("axis", 1)]);
    let mut model = load_bytes(&b.finish_as(&y, "out", &[1])).unwrap();
    infer_shapes(&mut model, None).unwrap();
    let tight = Limits {
        max_channel_references: 100,
        ..Limits::default()
    };
    let (_, quantity, ..) =
        limit_error(ChannelAnalysis::with_limits(&model.graph, &tight).unwrap_err());
    assert_eq!(quantity, Quantity::ChannelReferences);
    ChannelAnalysis::new(&model.graph).unwrap();
}

#[test]
fn a_graph_with_more_nodes_than_the_cap_is_refused_at_load() {
    let mut b = ModelBuilder::new("long", 1);
    let mut v = b.input("input", &[1, 3, 4, 4]);
    for _ in 0..11 {
        v = b.op("Identity", &[&v], vec![]);
    }
    let bytes = b.finish_as(&v, "out", &[1]);
    let ten = Limits {
        max_nodes: 10,
        ..Limits::default()
    };
    let (subject, quantity, declared, limit) =
        limit_error(load_bytes_with(&bytes, &ten).unwrap_err());
    assert!(subject.contains("graph 'long'"), "{subject}");
    assert_eq!((quantity, declared, limit), (Quantity::Nodes, 11, 10));
    load_bytes(&bytes).unwrap();

    // The default cap, on a file of a few megabytes.
    let mut m = ModelProto::parse_from_bytes(&bytes).unwrap();
    let g = m.graph.as_mut().unwrap();
    let node = g.node[0].clone();
    g.node = vec![node; 100_001];
    let (_, quantity, declared, _) =
        limit_error(load_bytes(&m.write_to_bytes().unwrap()).unwrap_err());
    assert_eq!((quantity, declared), (Quantity::Nodes, 100_001));
}

#[test]
fn inputs_past_an_ops_arity_are_refused() {
    // Later passes walk every input: 1,000 copies of one would multiply their work.
    let mut b = ModelBuilder::new("arity", 1);
    let x = b.input("input", &[1, 8, 4, 4]);
    let inputs = vec![x.as_str(); 1000];
    let y = b.op("Add", &inputs, vec![]);
    let err = analyse(load_bytes(&b.finish_as(&y, "out", &[1])).unwrap(), None).unwrap_err();
    assert!(err.to_string().contains("takes at most 2"), "{err}");
}

#[test]
fn names_from_the_file_cannot_break_the_message_onto_two_lines() {
    let mut m = ModelProto::parse_from_bytes(&relu_bomb(1 << 40)).unwrap();
    let g = m.graph.as_mut().unwrap();
    g.input[0].name = "x\nINFO forged log line".into();
    g.node[0].input[0] = g.input[0].name.clone();
    let err = analyse(load_bytes(&m.write_to_bytes().unwrap()).unwrap(), None).unwrap_err();
    let msg = assert_one_line(&err);
    assert!(msg.contains("x\\nINFO"), "{msg}");
}

#[test]
fn overflowing_size_arithmetic_is_an_error_not_a_panic() {
    let check = |bytes: Vec<u8>| {
        let Ok(model) = load_bytes(&bytes) else {
            return;
        };
        if let Ok((model, report)) = analyse(model, None) {
            serde_json::to_string(&report).unwrap();
            if let Ok(a) = ChannelAnalysis::new(&model.graph) {
                let mask = Mask::all_active(a.groups.len());
                masked_cost(&model.graph, &a, &mask);
            }
        }
    };
    // ConvTranspose: output channels = weight axis 1 × group.
    let mut b = ModelBuilder::new("convt", 1);
    let x = b.input("input", &[1, 2, 4, 4]);
    let w = b.random_constant("w", &[2, 1, 1, 1], -1.0, 1.0);
    let y = b.op("ConvTranspose", &[&x, &w], vec![int("group", i64::MAX)]);
    check(b.finish_as(&y, "out", &[1]));
    // Dilated windows and pads at the extremes.
    let mut b = ModelBuilder::new("window", 1);
    let x = b.input("input", &[1, 2, 4, 4]);
    let y = b.op(
        "MaxPool",
        &[&x],
        vec![
            ints("kernel_shape", &[i64::MAX, 1]),
            ints("dilations", &[i64::MAX, 1]),
            ints("pads", &[i64::MAX, 0, i64::MAX, 0]),
            ints("strides", &[i64::MAX, 1]),
        ],
    );
    check(b.finish_as(&y, "out", &[1]));
    // Reshape targets whose product overflows.
    let mut b = ModelBuilder::new("reshape", 1);
    let x = b.input("input", &[1, 2, 4, 4]);
    let shape = b.constant_i64("shape", &[i64::MAX, i64::MAX, i64::MAX, 0]);
    let y = b.op("Reshape", &[&x, &shape], vec![]);
    check(b.finish_as(&y, "out", &[1]));
}

#[test]
fn group_savings_equal_the_cost_of_switching_each_group_off() {
    for z in zoo::all() {
        let mut model = load_bytes(&z.bytes).unwrap();
        infer_shapes_with(&mut model, None, &Limits::default()).unwrap();
        let analysis = ChannelAnalysis::new(&model.graph).unwrap();
        let n = analysis.groups.len();
        let full = masked_cost(&model.graph, &analysis, &Mask::all_active(n)).macs;
        for g in &analysis.groups {
            let mut mask = Mask::all_active(n);
            mask.set(g.id, false);
            let without = masked_cost(&model.graph, &analysis, &mask).macs;
            assert_eq!(g.macs, full - without, "{} group {}", z.name, g.id);
        }
    }
}

/// A group's activation count is the feature-map elements its channels occupy: a
/// channel of a 16×16 Conv → BN → Relu chain lives in three 16×16 maps, one of the
/// 8×8 map after a stride-2 Conv → Relu in two.
#[test]
fn group_activations_count_every_feature_map_the_channels_flow_through() {
    let mut b = ModelBuilder::new("activations", 3);
    let x = b.input("input", &[1, 3, 16, 16]);
    let y = b.conv(&x, 3, 4, 3, 1, 1);
    let y = b.batch_norm(&y, 4);
    let y = b.op("Relu", &[&y], vec![]);
    let y = b.conv(&y, 4, 6, 3, 2, 1);
    let y = b.op("Relu", &[&y], vec![]);
    let y = b.conv(&y, 6, 2, 1, 1, 1);
    let mut model = load_bytes(&b.finish_as(&y, "out", &[1, 2, 8, 8])).unwrap();
    infer_shapes(&mut model, None).unwrap();
    let analysis = ChannelAnalysis::new(&model.graph).unwrap();
    let mut counts: Vec<u64> = analysis.groups.iter().map(|g| g.activations).collect();
    counts.sort();
    let expected: Vec<u64> = [vec![2 * 64; 6], vec![3 * 256; 4]].concat();
    assert_eq!(counts, expected);
}
