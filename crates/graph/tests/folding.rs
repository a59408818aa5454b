//! Folding of shape subgraphs: what effp computes at an input size agrees with
//! onnxruntime running the same graph, and hostile size computations are refused
//! before anything is allocated for them.

use effp_graph::ir::Model;
use effp_graph::limits::Quantity;
use effp_graph::onnx::load_bytes;
use effp_graph::shape::InputSize;
use effp_graph::{GraphError, Limits, analyse_with};
use effp_testkit::builder::{ModelBuilder, int};
use effp_testkit::fixtures;
use onnx_protobuf::Message;
use onnx_protobuf::tensor_shape_proto::dimension;
use proptest::prelude::*;
use proptest::strategy::ValueTree;
use proptest::test_runner::{Config, TestRunner};

/// One step of a generated size computation over an int64 vector.
#[derive(Debug, Clone)]
enum Step {
    /// Gather with these raw indices (mapped into [-n, n)).
    Gather(Vec<u8>),
    /// Slice from raw start to raw end (mapped to a non-empty range).
    Slice(u8, u8),
    /// Add, Sub or Mul (by op % 3) a scalar.
    Arith(u8, i8),
    /// Integer division by a positive scalar.
    Div(u8),
    /// Concat a constant vector.
    Concat(Vec<i8>),
    /// Where(Equal(v, a), v, b).
    Select(i8, i8),
    /// Cast to float, add k + 0.5, cast back to int64 (truncation).
    RoundTrip(i8),
    /// Unsqueeze to [1, n], then Squeeze back.
    Reaxis,
}

fn step() -> impl Strategy<Value = Step> {
    prop_oneof![
        proptest::collection::vec(any::<u8>(), 1..4).prop_map(Step::Gather),
        (any::<u8>(), any::<u8>()).prop_map(|(a, b)| Step::Slice(a, b)),
        (any::<u8>(), -3i8..=3).prop_map(|(o, k)| Step::Arith(o, k)),
        (1u8..=4).prop_map(Step::Div),
        proptest::collection::vec(-5i8..=5, 1..3).prop_map(Step::Concat),
        (-2i8..=70, -5i8..=5).prop_map(|(a, b)| Step::Select(a, b)),
        (-3i8..=3).prop_map(Step::RoundTrip),
        Just(Step::Reaxis),
    ]
}

/// Sets the free axes of the first graph input to distinct names.
fn name_free_axes(bytes: Vec<u8>, names: &[&str]) -> Vec<u8> {
    let mut proto = onnx_protobuf::ModelProto::parse_from_bytes(&bytes).unwrap();
    let g = proto.graph.as_mut().unwrap();
    let onnx_protobuf::type_proto::Value::TensorType(t) =
        g.input[0].type_.as_mut().unwrap().value.as_mut().unwrap()
    else {
        unreachable!()
    };
    for (d, name) in t.shape.as_mut().unwrap().dim.iter_mut().zip(names) {
        if !name.is_empty() {
            d.value = Some(dimension::Value::DimParam(name.to_string()));
        }
    }
    proto.write_to_bytes().unwrap()
}

/// A model computing `steps` from the shape of its `[1, 3, H, W]` input, output as
/// float32.
fn program(steps: &[Step]) -> Vec<u8> {
    let mut b = ModelBuilder::new("sizes", 3).opset(13);
    let x = b.input("x", &[1, 3, 1, 1]);
    let mut v = b.op("Shape", &[&x], vec![]);
    let mut n = 4usize;
    for s in steps {
        match s {
            Step::Gather(raw) => {
                let idx: Vec<i64> = raw
                    .iter()
                    .map(|&r| (r as i64).rem_euclid(2 * n as i64) - n as i64)
                    .collect();
                let i = b.constant_i64("idx", &idx);
                v = b.op("Gather", &[&v, &i], vec![int("axis", 0)]);
                n = idx.len();
            }
            Step::Slice(a, e) => {
                let start = *a as usize % n;
                let end = start + 1 + *e as usize % (n - start);
                let (s0, e0, ax) = (
                    b.constant_i64("start", &[start as i64]),
                    b.constant_i64("end", &[end as i64]),
                    b.constant_i64("axes", &[0]),
                );
                v = b.op("Slice", &[&v, &s0, &e0, &ax], vec![]);
                n = end - start;
            }
            Step::Arith(o, k) => {
                let c = b.constant_i64("k", &[*k as i64]);
                v = b.op(["Add", "Sub", "Mul"][*o as usize % 3], &[&v, &c], vec![]);
            }
            Step::Div(k) => {
                let c = b.constant_i64("d", &[*k as i64]);
                v = b.op("Div", &[&v, &c], vec![]);
            }
            Step::Concat(vals) => {
                let vals: Vec<i64> = vals.iter().map(|&x| x as i64).collect();
                let c = b.constant_i64("tail", &vals);
                v = b.op("Concat", &[&v, &c], vec![int("axis", 0)]);
                n += vals.len();
            }
            Step::Select(a, other) => {
                let (ca, co) = (
                    b.constant_i64("a", &[*a as i64]),
                    b.constant_i64("o", &[*other as i64]),
                );
                let eq = b.op("Equal", &[&v, &ca], vec![]);
                v = b.op("Where", &[&eq, &v, &co], vec![]);
            }
            Step::RoundTrip(k) => {
                let f = b.op("Cast", &[&v], vec![int("to", 1)]);
                let c = b.constant("half", &[1], &[*k as f32 + 0.5]);
                let f = b.op("Add", &[&f, &c], vec![]);
                v = b.op("Cast", &[&f], vec![int("to", 7)]);
            }
            Step::Reaxis => {
                let axes = b.constant_i64("axes", &[0]);
                let u = b.op("Unsqueeze", &[&v, &axes], vec![]);
                v = b.op("Squeeze", &[&u, &axes], vec![]);
            }
        }
    }
    let out = b.op("Cast", &[&v], vec![int("to", 1)]);
    name_free_axes(b.finish_as(&out, "out", &[n as i64]), &["", "", "H", "W"])
}

fn folded_output(model: &Model) -> Vec<f32> {
    let out = model.graph.outputs[0].value;
    model
        .graph
        .value(out)
        .folded
        .as_ref()
        .expect("the output is folded")
        .to_f32_vec()
}

#[test]
fn folding_agrees_with_onnxruntime_on_generated_size_computations() {
    let mut runner = TestRunner::new(Config::default());
    let programs = proptest::collection::vec(
        (
            proptest::collection::vec(step(), 1..6),
            1usize..64,
            1usize..64,
        ),
        24,
    )
    .new_tree(&mut runner)
    .unwrap()
    .current();
    let tmp = tempfile::tempdir().unwrap();
    let mut expected = Vec::new();
    let mut requests = Vec::new();
    for (i, (steps, h, w)) in programs.iter().enumerate() {
        let bytes = program(steps);
        let size = InputSize {
            height: *h,
            width: *w,
        };
        let (model, _) = analyse_with(load_bytes(&bytes).unwrap(), Some(size), &Limits::default())
            .unwrap_or_else(|e| panic!("{steps:?} at {size}: {e}"));
        expected.push((steps.clone(), size, folded_output(&model)));
        let path = tmp.path().join(format!("p{i}.onnx"));
        std::fs::write(&path, bytes).unwrap();
        requests.push((path, [1, 3, *h, *w]));
    }
    // One onnxruntime call for all programs keeps the Python start-ups few.
    let jobs: Vec<serde_json::Value> = requests
        .iter()
        .map(|(path, shape)| serde_json::json!({ "model": path, "input_shapes": { "x": shape } }))
        .collect();
    let answer = fixtures::reference("values", &serde_json::json!({ "models": jobs }));
    assert_eq!(answer.as_array().unwrap().len(), expected.len());
    for (a, (steps, size, ours)) in answer.as_array().unwrap().iter().zip(&expected) {
        let theirs: Vec<f32> = a["values"][0]
            .as_array()
            .unwrap()
            .iter()
            .map(|v| v.as_f64().unwrap() as f32)
            .collect();
        assert_eq!(&theirs, ours, "{steps:?} at {size}");
    }
}

fn limit_error(err: GraphError) -> (String, Quantity) {
    match err {
        GraphError::LimitExceeded {
            subject, quantity, ..
        } => (subject, quantity),
        other => panic!("expected LimitExceeded, got: {other}"),
    }
}

/// `[1, 3, H, W]` → Shape → Gather(H) → Mul(k): a computed size of k·H.
fn scaled_height(b: &mut ModelBuilder, k: i64) -> String {
    let x = b.input("x", &[1, 3, 1, 1]);
    let s = b.op("Shape", &[&x], vec![]);
    let i = b.constant_i64("h", &[2]);
    let h = b.op("Gather", &[&s, &i], vec![int("axis", 0)]);
    let k = b.constant_i64("k", &[k]);
    b.op("Mul", &[&h, &k], vec![])
}

fn at_64(bytes: Vec<u8>, limits: &Limits) -> Result<Model, GraphError> {
    let bytes = name_free_axes(bytes, &["", "", "H", "W"]);
    let size = InputSize {
        height: 64,
        width: 64,
    };
    analyse_with(load_bytes(&bytes).unwrap(), Some(size), limits).map(|(m, _)| m)
}

#[test]
fn a_huge_computed_constant_of_shape_is_refused_before_allocation() {
    let mut b = ModelBuilder::new("hostile", 1).opset(13);
    let big = scaled_height(&mut b, 1 << 20);
    let other = b.constant_i64("other", &[1 << 20]);
    let shape = b.op("Concat", &[&big, &other], vec![int("axis", 0)]);
    let filled = b.op("ConstantOfShape", &[&shape], vec![]);
    let (subject, quantity) =
        limit_error(at_64(b.finish_as(&filled, "out", &[1]), &Limits::default()).unwrap_err());
    assert!(
        matches!(quantity, Quantity::Elements | Quantity::Channels),
        "{quantity:?}"
    );
    assert!(subject.contains("ConstantOfShape"), "{subject}");
}

#[test]
fn a_range_with_a_huge_computed_count_is_refused_before_allocation() {
    let mut b = ModelBuilder::new("hostile", 1).opset(13);
    let limit = scaled_height(&mut b, 1 << 40);
    let zero = b.constant_i64("zero", &[0]);
    let one = b.constant_i64("one", &[1]);
    let axes = b.constant_i64("axes", &[0]);
    let scalar = b.op("Squeeze", &[&limit, &axes], vec![]);
    let (z, o) = (
        b.op("Squeeze", &[&zero, &axes], vec![]),
        b.op("Squeeze", &[&one, &axes], vec![]),
    );
    let r = b.op("Range", &[&z, &scalar, &o], vec![]);
    let err = at_64(b.finish_as(&r, "out", &[-1]), &Limits::default()).unwrap_err();
    let msg = err.to_string();
    let (subject, quantity) = limit_error(err);
    assert!(
        matches!(quantity, Quantity::AxisLength | Quantity::Elements),
        "{quantity:?}"
    );
    assert!(subject.contains("Range"), "{subject}");
    assert!(msg.contains("effp accepts at most"), "{msg}");
}

#[test]
fn folded_values_share_one_budget_per_graph() {
    // Ten Expands of 64×64 elements each: 40,960 in all.
    let mut b = ModelBuilder::new("many", 1).opset(13);
    let x = b.input("x", &[1, 3, 1, 1]);
    let s = b.op("Shape", &[&x], vec![]);
    let i = b.constant_i64("hw", &[2, 3]);
    let hw = b.op("Gather", &[&s, &i], vec![int("axis", 0)]);
    let one = b.constant("one", &[1], &[1.0]);
    let parts: Vec<String> = (0..10)
        .map(|_| b.op("Expand", &[&one, &hw], vec![]))
        .collect();
    let refs: Vec<&str> = parts.iter().map(String::as_str).collect();
    let all = b.op("Concat", &refs, vec![int("axis", 0)]);
    let bytes = b.finish_as(&all, "out", &[-1, -1]);
    at_64(bytes.clone(), &Limits::default()).unwrap();
    let tight = Limits {
        max_folded_elements: 30_000,
        ..Limits::default()
    };
    let err = at_64(bytes, &tight).unwrap_err();
    let msg = err.to_string();
    let (_, quantity) = limit_error(err);
    assert_eq!(quantity, Quantity::FoldedElements);
    assert!(
        msg.contains("--input-size"),
        "the message says what to do: {msg}"
    );
}
