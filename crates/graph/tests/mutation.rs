//! Mutated real models never panic or abort what an upload runs: the loader, shape
//! inference, the inspect report, the channel analysis and the encoder.
//!
//! Two generators: byte-level mutations (flips, truncations, splices) exercise the
//! decoder; structured ones decode the model, inflate the sizes and counts it
//! declares (dimensions, attributes, shape constants, node counts) and re-encode it,
//! which reaches the code that allocates from those sizes. `make soak` runs both for
//! many more cases (PROPTEST_CASES).

use effp_graph::channels::ChannelAnalysis;
use effp_graph::limits::{
    DEFAULT_MAX_CHANNEL_SLOTS, DEFAULT_MAX_CHANNELS, DEFAULT_MAX_NODES, DEFAULT_MAX_TENSOR_ELEMENTS,
};
use effp_graph::shape::InputSize;
use effp_graph::{analyse, onnx::load_bytes};
use effp_testkit::{fixtures, zoo};
use onnx_protobuf::attribute_proto::AttributeType;
use onnx_protobuf::tensor_shape_proto::{Dimension, dimension};
use onnx_protobuf::{
    AttributeProto, GraphProto, Message, ModelProto, NodeProto, TensorProto, ValueInfoProto,
    type_proto,
};
use proptest::prelude::*;

#[derive(Debug, Clone)]
enum Mutation {
    Flip { at: usize, bits: u8 },
    Truncate { keep: usize },
    Splice { from: usize, to: usize, len: usize },
    Overwrite { at: usize, bytes: Vec<u8> },
}

fn mutation() -> impl Strategy<Value = Mutation> {
    prop_oneof![
        (any::<usize>(), 1u8..=255).prop_map(|(at, bits)| Mutation::Flip { at, bits }),
        any::<usize>().prop_map(|keep| Mutation::Truncate { keep }),
        (any::<usize>(), any::<usize>(), 1usize..256)
            .prop_map(|(from, to, len)| Mutation::Splice { from, to, len }),
        (
            any::<usize>(),
            proptest::collection::vec(any::<u8>(), 1..12)
        )
            .prop_map(|(at, bytes)| Mutation::Overwrite { at, bytes }),
    ]
}

fn apply(bytes: &mut Vec<u8>, m: &Mutation) {
    let n = bytes.len();
    match m {
        Mutation::Flip { at, bits } => bytes[at % n] ^= bits,
        Mutation::Truncate { keep } => bytes.truncate(keep % n),
        Mutation::Splice { from, to, len } => {
            let from = from % n;
            let chunk: Vec<u8> = bytes[from..(from + len).min(n)].to_vec();
            let to = to % n;
            bytes.splice(to..to, chunk);
        }
        Mutation::Overwrite { at, bytes: new } => {
            for (i, b) in new.iter().enumerate() {
                let idx = (at + i) % n;
                bytes[idx] = *b;
            }
        }
    }
}

/// A change to what the decoded model declares. Indices pick an element modulo the
/// number there is, so every mutation applies to every seed.
#[derive(Debug, Clone)]
enum Structured {
    /// A graph input or output dimension: a value, or symbolic (`None`).
    IoDim {
        output: bool,
        which: usize,
        axis: usize,
        value: Option<i64>,
    },
    /// A `value_info` dimension.
    ValueInfoDim {
        which: usize,
        axis: usize,
        value: i64,
    },
    /// An initializer dimension, set or multiplied (its data left as it was).
    InitializerDim {
        which: usize,
        axis: usize,
        value: i64,
        multiply: bool,
    },
    /// One entry of an existing integer or integer-list attribute.
    AttrEntry {
        node: usize,
        attr: usize,
        index: usize,
        value: i64,
    },
    /// An integer attribute by name, set or added.
    AttrInt {
        node: usize,
        name: usize,
        value: i64,
    },
    /// An integer-list attribute by name, set or added.
    AttrInts {
        node: usize,
        name: usize,
        values: Vec<i64>,
    },
    /// One element of an int64 constant (Reshape shapes, Split sizes, Slice bounds,
    /// Resize sizes, Pad pads).
    IntData {
        which: usize,
        index: usize,
        value: i64,
    },
    /// One element of a small float constant (Resize scales).
    FloatData {
        which: usize,
        index: usize,
        value: f32,
    },
    /// Copies of a node, with fresh output names, reading the same inputs.
    Duplicate { node: usize, copies: usize },
    /// A node's first input listed again, many times.
    ExtraInputs { node: usize, copies: usize },
    /// Small Identity nodes until the graph has one node more than the cap.
    Flood,
}

const ATTRIBUTES: &[&str] = &[
    "kernel_shape",
    "strides",
    "pads",
    "dilations",
    "group",
    "axis",
    "split",
    "num_outputs",
    "perm",
    "starts",
    "ends",
    "axes",
    "output_shape",
    "output_padding",
    "allowzero",
];

/// Sizes that break naive arithmetic: zero, negatives, the extremes, the caps ± 1.
fn hostile_int() -> impl Strategy<Value = i64> {
    prop_oneof![
        3 => prop::sample::select(vec![
            0,
            1,
            -1,
            2,
            -2,
            i64::MAX,
            i64::MIN,
            i64::MAX / 2,
            1 << 62,
            1 << 40,
            1 << 32,
            (1 << 31) - 1,
            1 << 31,
            DEFAULT_MAX_TENSOR_ELEMENTS as i64,
            DEFAULT_MAX_TENSOR_ELEMENTS as i64 + 1,
            DEFAULT_MAX_CHANNEL_SLOTS as i64 + 1,
            DEFAULT_MAX_CHANNELS as i64,
            DEFAULT_MAX_CHANNELS as i64 + 1,
            65_537,
            8193,
        ]),
        2 => -8i64..2048,
        1 => any::<i64>(),
    ]
}

fn hostile_float() -> impl Strategy<Value = f32> {
    prop_oneof![
        prop::sample::select(vec![
            f32::NAN,
            f32::INFINITY,
            f32::NEG_INFINITY,
            f32::MAX,
            f32::MIN_POSITIVE,
            0.0,
            -1.0,
            1e30,
            1e-30,
            65_537.0,
        ]),
        0.0f32..1e4,
    ]
}

fn structured() -> impl Strategy<Value = Structured> {
    prop_oneof![
        30 => (
            any::<bool>(),
            any::<usize>(),
            any::<usize>(),
            prop::option::weighted(0.9, hostile_int())
        )
            .prop_map(|(output, which, axis, value)| Structured::IoDim {
                output,
                which,
                axis,
                value
            }),
        10 => (any::<usize>(), any::<usize>(), hostile_int())
            .prop_map(|(which, axis, value)| Structured::ValueInfoDim { which, axis, value }),
        20 => (any::<usize>(), any::<usize>(), hostile_int(), any::<bool>()).prop_map(
            |(which, axis, value, multiply)| Structured::InitializerDim {
                which,
                axis,
                value,
                multiply
            }
        ),
        40 => (any::<usize>(), any::<usize>(), any::<usize>(), hostile_int()).prop_map(
            |(node, attr, index, value)| Structured::AttrEntry {
                node,
                attr,
                index,
                value
            }
        ),
        20 => (any::<usize>(), 0..ATTRIBUTES.len(), hostile_int())
            .prop_map(|(node, name, value)| Structured::AttrInt { node, name, value }),
        20 => (
            any::<usize>(),
            0..ATTRIBUTES.len(),
            proptest::collection::vec(hostile_int(), 0..6)
        )
            .prop_map(|(node, name, values)| Structured::AttrInts { node, name, values }),
        40 => (any::<usize>(), any::<usize>(), hostile_int())
            .prop_map(|(which, index, value)| Structured::IntData { which, index, value }),
        20 => (any::<usize>(), any::<usize>(), hostile_float())
            .prop_map(|(which, index, value)| Structured::FloatData { which, index, value }),
        20 => (any::<usize>(), prop_oneof![9 => 1usize..64, 1 => 500usize..3000])
            .prop_map(|(node, copies)| Structured::Duplicate { node, copies }),
        10 => (any::<usize>(), 1usize..500)
            .prop_map(|(node, copies)| Structured::ExtraInputs { node, copies }),
        // Rare: each one encodes and decodes a graph of 100,001 nodes.
        1 => Just(Structured::Flood),
    ]
}

fn input_size() -> impl Strategy<Value = Option<InputSize>> {
    let sizes = vec![
        None,
        None,
        None,
        None,
        None,
        None,
        Some("8192x8192"),
        Some("1x1"),
        Some("640x480"),
        Some("1280"),
    ];
    prop::sample::select(sizes).prop_map(|s| s.map(|s| s.parse().expect("a valid input size")))
}

fn dims_of(vi: &mut ValueInfoProto) -> Option<&mut Vec<Dimension>> {
    let t = vi.type_.as_mut()?;
    match t.value.as_mut()? {
        type_proto::Value::TensorType(t) => Some(&mut t.shape.as_mut()?.dim),
        _ => None,
    }
}

fn pick<T>(items: &mut [T], i: usize) -> Option<&mut T> {
    if items.is_empty() {
        None
    } else {
        let n = items.len();
        items.get_mut(i % n)
    }
}

/// Every constant tensor of the graph: initializers and Constant nodes' values.
fn tensors(g: &mut GraphProto) -> Vec<&mut TensorProto> {
    let mut out: Vec<&mut TensorProto> = g.initializer.iter_mut().collect();
    for n in g.node.iter_mut().filter(|n| n.op_type == "Constant") {
        for a in &mut n.attribute {
            if let Some(t) = a.t.as_mut() {
                out.push(t);
            }
        }
    }
    out
}

fn set_element<const N: usize, T>(
    raw: &mut [u8],
    typed: &mut [T],
    index: usize,
    value: T,
    encode: fn(T) -> [u8; N],
) {
    if !raw.is_empty() {
        let count = raw.len() / N;
        if count > 0 {
            let at = (index % count) * N;
            raw[at..at + N].copy_from_slice(&encode(value));
        }
    } else if let Some(slot) = pick(typed, index) {
        *slot = value;
    }
}

fn duplicate(g: &mut GraphProto, node: usize, copies: usize) {
    // Constant nodes carry tensors: thousands of copies would be gigabytes here.
    let computing: Vec<usize> = (0..g.node.len())
        .filter(|&i| g.node[i].op_type != "Constant")
        .collect();
    if computing.is_empty() {
        return;
    }
    let original = g.node[computing[node % computing.len()]].clone();
    for i in 0..copies {
        let mut n = original.clone();
        n.name = format!("{}__dup{i}", n.name);
        for o in &mut n.output {
            *o = format!("{o}__dup{i}");
        }
        g.node.push(n);
    }
}

fn restructure(m: &mut ModelProto, s: &Structured) {
    let Some(g) = m.graph.as_mut() else {
        return;
    };
    match s {
        Structured::IoDim {
            output,
            which,
            axis,
            value,
        } => {
            let list = if *output { &mut g.output } else { &mut g.input };
            if let Some(dim) = pick(list, *which)
                .and_then(dims_of)
                .and_then(|d| pick(d, *axis))
            {
                dim.value = Some(match value {
                    Some(v) => dimension::Value::DimValue(*v),
                    None => dimension::Value::DimParam("n".into()),
                });
            }
        }
        Structured::ValueInfoDim { which, axis, value } => {
            if let Some(dim) = pick(&mut g.value_info, *which)
                .and_then(dims_of)
                .and_then(|d| pick(d, *axis))
            {
                dim.value = Some(dimension::Value::DimValue(*value));
            }
        }
        Structured::InitializerDim {
            which,
            axis,
            value,
            multiply,
        } => {
            if let Some(d) = pick(&mut g.initializer, *which).and_then(|t| pick(&mut t.dims, *axis))
            {
                *d = if *multiply {
                    d.saturating_mul(*value)
                } else {
                    *value
                };
            }
        }
        Structured::AttrEntry {
            node,
            attr,
            index,
            value,
        } => {
            if let Some(a) = pick(&mut g.node, *node).and_then(|n| pick(&mut n.attribute, *attr)) {
                match pick(&mut a.ints, *index) {
                    Some(v) => *v = *value,
                    None => a.i = *value,
                }
            }
        }
        Structured::AttrInt { node, name, value } => {
            if let Some(n) = pick(&mut g.node, *node) {
                let a = attribute(&mut n.attribute, ATTRIBUTES[*name], AttributeType::INT);
                a.i = *value;
            }
        }
        Structured::AttrInts { node, name, values } => {
            if let Some(n) = pick(&mut g.node, *node) {
                let a = attribute(&mut n.attribute, ATTRIBUTES[*name], AttributeType::INTS);
                a.ints = values.clone();
            }
        }
        Structured::IntData {
            which,
            index,
            value,
        } => {
            let mut ints: Vec<&mut TensorProto> = tensors(g)
                .into_iter()
                .filter(|t| t.data_type == 7)
                .collect();
            if let Some(t) = pick(&mut ints, *which) {
                let t = &mut **t;
                set_element(
                    &mut t.raw_data,
                    &mut t.int64_data,
                    *index,
                    *value,
                    i64::to_le_bytes,
                );
            }
        }
        Structured::FloatData {
            which,
            index,
            value,
        } => {
            let mut small: Vec<&mut TensorProto> = tensors(g)
                .into_iter()
                .filter(|t| t.data_type == 1 && t.dims.iter().all(|&d| (0..=16).contains(&d)))
                .collect();
            if let Some(t) = pick(&mut small, *which) {
                let t = &mut **t;
                set_element(
                    &mut t.raw_data,
                    &mut t.float_data,
                    *index,
                    *value,
                    f32::to_le_bytes,
                );
            }
        }
        Structured::Duplicate { node, copies } => duplicate(g, *node, *copies),
        Structured::ExtraInputs { node, copies } => {
            if let Some(n) = pick(&mut g.node, *node)
                && let Some(first) = n.input.first().cloned()
            {
                n.input.extend(std::iter::repeat_n(first, *copies));
            }
        }
        Structured::Flood => {
            // Fresh small nodes: copies of a node that other mutations inflated would
            // make a model of gigabytes in this test before the loader saw it.
            let Some(input) = g.input.first().map(|i| i.name.clone()) else {
                return;
            };
            let missing = (DEFAULT_MAX_NODES + 1).saturating_sub(g.node.len());
            g.node.extend((0..missing).map(|i| {
                let mut n = NodeProto::new();
                n.op_type = "Identity".into();
                n.input = vec![input.clone()];
                n.output = vec![format!("flood{i}")];
                n
            }));
        }
    }
}

/// The attribute called `name`, added with `kind` when the node has none.
fn attribute<'a>(
    attrs: &'a mut Vec<AttributeProto>,
    name: &str,
    kind: AttributeType,
) -> &'a mut AttributeProto {
    let at = match attrs.iter().position(|a| a.name == name) {
        Some(at) => at,
        None => {
            let mut a = AttributeProto::new();
            a.name = name.into();
            attrs.push(a);
            attrs.len() - 1
        }
    };
    let a = &mut attrs[at];
    a.type_ = kind.into();
    a
}

/// What an upload runs. Any outcome is fine except a panic or an abort; errors must
/// render.
fn exercise(bytes: &[u8], size: Option<InputSize>) {
    let model = match load_bytes(bytes) {
        Err(e) => {
            assert!(!e.to_string().is_empty());
            return;
        }
        Ok(model) => model,
    };
    let _ = effp_graph::onnx::to_bytes(&model);
    match analyse(model, size) {
        Err(e) => assert!(!e.to_string().is_empty()),
        Ok((model, report)) => {
            assert!(!serde_json::to_string(&report).unwrap().is_empty());
            match ChannelAnalysis::new(&model.graph) {
                Err(e) => assert!(!e.to_string().is_empty()),
                Ok(analysis) => {
                    let groups = effp_graph::inspect::groups_report(&model, &analysis);
                    assert_eq!(groups.prunable_groups, analysis.groups.len());
                }
            }
            let _ = effp_graph::onnx::to_bytes(&model);
        }
    }
}

fn seeds() -> Vec<Vec<u8>> {
    let mut s: Vec<Vec<u8>> = fixtures::TINY
        .iter()
        .map(|f| std::fs::read(fixtures::path(f)).unwrap())
        .collect();
    s.extend(zoo::all().into_iter().map(|z| z.bytes));
    s
}

thread_local!(static SEEDS: Vec<Vec<u8>> = seeds());

proptest! {
    #![proptest_config(ProptestConfig { cases: soak_cases(), failure_persistence: None, .. ProptestConfig::default() })]

    #[test]
    fn mutated_models_never_panic(seed in any::<usize>(), mutations in proptest::collection::vec(mutation(), 1..6)) {
        let mut bytes = SEEDS.with(|s| s[seed % s.len()].clone());
        for m in &mutations {
            if bytes.is_empty() {
                break;
            }
            apply(&mut bytes, m);
        }
        exercise(&bytes, None);
    }

    #[test]
    fn models_declaring_hostile_sizes_never_panic(
        seed in any::<usize>(),
        changes in proptest::collection::vec(structured(), 1..4),
        size in input_size(),
    ) {
        let mut model = SEEDS.with(|s| ModelProto::parse_from_bytes(&s[seed % s.len()]))
            .expect("seeds decode");
        for c in &changes {
            restructure(&mut model, c);
        }
        exercise(&model.write_to_bytes().expect("a decoded model encodes"), size);
    }
}

/// 256 cases by default; `PROPTEST_CASES` raises it for soak runs.
fn soak_cases() -> u32 {
    std::env::var("PROPTEST_CASES")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(256)
}
