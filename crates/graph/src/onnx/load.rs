//! Reading ONNX files into the IR.

use std::collections::HashMap;
use std::fs::File;
use std::io::BufReader;
use std::path::Path;

use onnx_protobuf::attribute_proto::AttributeType;
use onnx_protobuf::tensor_proto::DataLocation;
use onnx_protobuf::tensor_shape_proto::dimension;
use onnx_protobuf::type_proto;
use onnx_protobuf::{AttributeProto, Message, ModelProto, TensorProto, ValueInfoProto};

use crate::error::{GraphError, Result};
use crate::ir::tensor::{element_count, onnx_type_name};
use crate::ir::{
    AttrValue, Attribute, DataType, Dim, Graph, GraphIo, Model, Node, NodeId, Op, Tensor, Value,
    ValueId,
};
use crate::limits::{Limits, Quantity, display_name, display_shape, exceeded};

/// Loads an ONNX model from a file.
///
/// The file is decoded as it is read, so peak memory stays close to the size of the
/// weights rather than twice the file.
pub fn load_file(path: &Path) -> Result<Model> {
    load_file_with(path, &Limits::default())
}

/// [`load_file`] under other [`Limits`] than the defaults.
pub fn load_file_with(path: &Path, limits: &Limits) -> Result<Model> {
    let io = |source| GraphError::Io {
        action: "read",
        path: path.to_path_buf(),
        source,
    };
    let file = File::open(path).map_err(io)?;
    if file.metadata().map_err(io)?.len() == 0 {
        return Err(GraphError::Empty);
    }
    let mut reader = BufReader::with_capacity(1 << 20, file);
    let proto = ModelProto::parse_from_reader(&mut reader).map_err(decode_error)?;
    from_proto_with(proto, limits)
}

/// Loads an ONNX model from bytes in memory.
pub fn load_bytes(bytes: &[u8]) -> Result<Model> {
    load_bytes_with(bytes, &Limits::default())
}

/// [`load_bytes`] under other [`Limits`] than the defaults.
pub fn load_bytes_with(bytes: &[u8], limits: &Limits) -> Result<Model> {
    if bytes.is_empty() {
        return Err(GraphError::Empty);
    }
    let proto = ModelProto::parse_from_bytes(bytes).map_err(decode_error)?;
    from_proto_with(proto, limits)
}

fn decode_error(e: protobuf::Error) -> GraphError {
    GraphError::Decode {
        reason: e.to_string(),
    }
}

/// Converts a decoded `ModelProto` into the IR: folds `Constant` nodes into
/// initializers, resolves names to ids, orders nodes, and checks that every input
/// is defined.
pub fn from_proto(proto: ModelProto) -> Result<Model> {
    from_proto_with(proto, &Limits::default())
}

/// [`from_proto`] under other [`Limits`] than the defaults: the node count and every
/// constant tensor are checked before anything is built from them.
pub fn from_proto_with(mut proto: ModelProto, limits: &Limits) -> Result<Model> {
    let Some(g) = proto.graph.take() else {
        return Err(GraphError::NoGraph);
    };
    if g.node.is_empty() && g.input.is_empty() && g.output.is_empty() {
        return Err(GraphError::NoGraph);
    }
    if g.node.len() > limits.max_nodes {
        return Err(exceeded(
            format!("the graph '{}'", display_name(&g.name)),
            Quantity::Nodes,
            g.node.len() as u128,
            limits.max_nodes as u64,
        ));
    }
    let opset_imports: Vec<(String, i64)> = proto
        .opset_import
        .iter()
        .map(|o| (o.domain.clone(), o.version))
        .collect();
    let opset = opset_imports
        .iter()
        .find(|(d, _)| d.is_empty() || d == "ai.onnx")
        .map(|(_, v)| *v)
        .ok_or_else(|| GraphError::Opset {
            reason: "the model imports no default-domain (ai.onnx) opset".into(),
        })?;
    if !(1..=30).contains(&opset) {
        return Err(GraphError::Opset {
            reason: format!("ai.onnx opset {opset} is outside 1..=30"),
        });
    }

    let mut b = Builder::default();
    for t in g.initializer {
        let name = t.name.clone();
        let tensor = tensor_from_proto(t, limits, || {
            format!("initializer '{}'", display_name(&name))
        })?;
        b.define(&name, "an initializer", |_| Value {
            name: name.clone(),
            dtype: Some(tensor.dtype()),
            shape: Some(tensor.dims().to_vec()),
            constant: Some(tensor),
            folded: None,
            producer: None,
        })?;
    }
    if !g.sparse_initializer.is_empty() {
        return Err(GraphError::UnsupportedDataType {
            tensor: "(sparse initializer)".into(),
            data_type: "sparse tensor".into(),
        });
    }
    let mut inputs = Vec::new();
    for vi in &g.input {
        if b.ids.contains_key(vi.name.as_str()) {
            // IR < 4 lists initializers as inputs too; the initializer wins.
            continue;
        }
        let (elem_type, dims) = declared_type(vi);
        let id = b.define(&vi.name, "a graph input", |_| Value {
            name: vi.name.clone(),
            dtype: DataType::from_onnx(elem_type),
            shape: None,
            constant: None,
            folded: None,
            producer: None,
        })?;
        inputs.push(GraphIo {
            value: id,
            elem_type,
            dims,
        });
    }

    // Parse nodes, fold constants, register outputs (still in file order).
    let mut raw_nodes = Vec::with_capacity(g.node.len());
    for (index, n) in g.node.into_iter().enumerate() {
        let name = if n.name.is_empty() {
            format!("{}_{index}", n.op_type)
        } else {
            n.name.clone()
        };
        let attrs = n
            .attribute
            .iter()
            .map(|a| attribute_from_proto(a, &name, &n.op_type, limits))
            .collect::<Result<Vec<_>>>()?;
        let op = Op::parse(&name, &n.op_type, &n.domain, &attrs, opset)?;
        if let Op::Constant(tensor) = op {
            let out = n.output.first().ok_or_else(|| GraphError::Shape {
                node: name.clone(),
                op: "Constant".into(),
                reason: "has no output".into(),
            })?;
            b.define(out, &format!("Constant node '{name}'"), |_| Value {
                name: out.clone(),
                dtype: Some(tensor.dtype()),
                shape: Some(tensor.dims().to_vec()),
                constant: Some(tensor),
                folded: None,
                producer: None,
            })?;
            continue;
        }
        raw_nodes.push((name, op, n.input, n.output));
    }
    let mut outputs_of = Vec::with_capacity(raw_nodes.len());
    for (i, (name, _, _, outs)) in raw_nodes.iter().enumerate() {
        let mut ids = Vec::with_capacity(outs.len());
        for out in outs {
            if out.is_empty() {
                return Err(GraphError::Shape {
                    node: name.clone(),
                    op: raw_nodes[i].1.op_type().to_string(),
                    reason: "has an unnamed output; effp needs every output named".into(),
                });
            }
            ids.push(b.define(out, &format!("node '{name}'"), |_| Value {
                name: out.clone(),
                dtype: None,
                shape: None,
                constant: None,
                folded: None,
                producer: None,
            })?);
        }
        outputs_of.push(ids);
    }
    let mut inputs_of = Vec::with_capacity(raw_nodes.len());
    for (name, op, ins, _) in &raw_nodes {
        let mut ids = Vec::with_capacity(ins.len());
        for input in ins {
            if input.is_empty() {
                ids.push(None);
                continue;
            }
            let id =
                b.ids
                    .get(input.as_str())
                    .copied()
                    .ok_or_else(|| GraphError::DanglingInput {
                        node: name.clone(),
                        op: op.op_type().to_string(),
                        input: input.clone(),
                    })?;
            ids.push(Some(id));
        }
        inputs_of.push(ids);
    }

    let order = topological_order(&raw_nodes, &inputs_of, &outputs_of, b.values.len())?;
    let mut slots: Vec<Option<(String, Op)>> = raw_nodes
        .into_iter()
        .map(|(n, op, _, _)| Some((n, op)))
        .collect();
    let mut nodes = Vec::with_capacity(order.len());
    for (new_index, old) in order.into_iter().enumerate() {
        let (name, op) = slots[old].take().expect("each node is placed once");
        for &out in &outputs_of[old] {
            b.values[out.0].producer = Some(NodeId(new_index));
        }
        nodes.push(Node {
            name,
            op,
            inputs: std::mem::take(&mut inputs_of[old]),
            outputs: std::mem::take(&mut outputs_of[old]),
        });
    }

    let mut outputs = Vec::new();
    for vi in &g.output {
        let id =
            b.ids
                .get(vi.name.as_str())
                .copied()
                .ok_or_else(|| GraphError::DanglingOutput {
                    output: vi.name.clone(),
                })?;
        let (elem_type, dims) = declared_type(vi);
        outputs.push(GraphIo {
            value: id,
            elem_type,
            dims,
        });
    }

    let metadata = proto
        .metadata_props
        .iter()
        .map(|p| (p.key.clone(), p.value.clone()))
        .collect();
    Ok(Model {
        ir_version: proto.ir_version,
        opset_imports,
        producer_name: proto.producer_name,
        producer_version: proto.producer_version,
        domain: proto.domain,
        model_version: proto.model_version,
        doc_string: proto.doc_string,
        metadata,
        graph: Graph {
            name: g.name,
            values: b.values,
            nodes,
            inputs,
            outputs,
        },
    })
}

/// Collects values while making sure each name is defined once.
#[derive(Default)]
struct Builder {
    values: Vec<Value>,
    ids: HashMap<String, ValueId>,
    definers: Vec<String>,
}

impl Builder {
    fn define(
        &mut self,
        name: &str,
        by: &str,
        make: impl FnOnce(ValueId) -> Value,
    ) -> Result<ValueId> {
        if let Some(&existing) = self.ids.get(name) {
            return Err(GraphError::DuplicateValue {
                name: name.to_string(),
                first: self.definers[existing.0].clone(),
                second: by.to_string(),
            });
        }
        let id = ValueId(self.values.len());
        self.values.push(make(id));
        self.definers.push(by.to_string());
        self.ids.insert(name.to_string(), id);
        Ok(id)
    }
}

/// Kahn's algorithm over the producer → consumer edges; a leftover node means a cycle.
fn topological_order(
    nodes: &[(String, Op, Vec<String>, Vec<String>)],
    inputs_of: &[Vec<Option<ValueId>>],
    outputs_of: &[Vec<ValueId>],
    value_count: usize,
) -> Result<Vec<usize>> {
    let mut producer = vec![usize::MAX; value_count];
    for (i, outs) in outputs_of.iter().enumerate() {
        for o in outs {
            producer[o.0] = i;
        }
    }
    let mut pending = vec![0usize; nodes.len()];
    let mut consumers: Vec<Vec<usize>> = vec![Vec::new(); nodes.len()];
    for (i, ins) in inputs_of.iter().enumerate() {
        for id in ins.iter().flatten() {
            let p = producer[id.0];
            if p != usize::MAX {
                pending[i] += 1;
                consumers[p].push(i);
            }
        }
    }
    let mut ready: std::collections::VecDeque<usize> =
        (0..nodes.len()).filter(|&i| pending[i] == 0).collect();
    let mut order = Vec::with_capacity(nodes.len());
    while let Some(i) = ready.pop_front() {
        order.push(i);
        for &c in &consumers[i] {
            pending[c] -= 1;
            if pending[c] == 0 {
                ready.push_back(c);
            }
        }
    }
    if order.len() != nodes.len() {
        let stuck: Vec<String> = (0..nodes.len())
            .filter(|&i| pending[i] > 0)
            .take(5)
            .map(|i| format!("'{}'", nodes[i].0))
            .collect();
        return Err(GraphError::Cycle { nodes: stuck });
    }
    Ok(order)
}

fn declared_type(vi: &ValueInfoProto) -> (i32, Option<Vec<Dim>>) {
    let Some(type_proto::Value::TensorType(t)) = vi.type_.as_ref().and_then(|t| t.value.as_ref())
    else {
        return (0, None);
    };
    let dims = t.shape.as_ref().map(|s| {
        s.dim
            .iter()
            .map(|d| match &d.value {
                Some(dimension::Value::DimValue(v)) if *v >= 0 => Dim::Fixed(*v as usize),
                Some(dimension::Value::DimParam(p)) if !p.is_empty() => Dim::Symbolic(p.clone()),
                _ => Dim::Unknown,
            })
            .collect()
    });
    (t.elem_type, dims)
}

/// Converts a `TensorProto`, taking its raw bytes without copying them.
///
/// The declared shape must match the stored data (a `MalformedTensor` otherwise)
/// before any byte is copied, and then fit the `limits`; `subject` names the tensor
/// for a limit error.
pub(crate) fn tensor_from_proto(
    mut t: TensorProto,
    limits: &Limits,
    subject: impl Fn() -> String,
) -> Result<Tensor> {
    let name = if t.name.is_empty() {
        "(unnamed)".to_string()
    } else {
        t.name.clone()
    };
    if !t.external_data.is_empty() || t.data_location.enum_value() == Ok(DataLocation::EXTERNAL) {
        return Err(GraphError::ExternalData { tensor: name });
    }
    let dtype =
        DataType::from_onnx(t.data_type).ok_or_else(|| GraphError::UnsupportedDataType {
            tensor: name.clone(),
            data_type: onnx_type_name(t.data_type),
        })?;
    let malformed = |reason: String| GraphError::MalformedTensor {
        tensor: name.clone(),
        reason,
    };
    if t.segment.is_some() {
        return Err(malformed("is segmented, which effp does not read".into()));
    }
    let dims: Vec<usize> = t
        .dims
        .iter()
        .map(|&d| {
            usize::try_from(d).map_err(|_| malformed(format!("has a negative dimension {d}")))
        })
        .collect::<Result<_>>()?;
    let count = element_count(&dims)
        .ok_or_else(|| malformed(format!("shape {} is too large", display_shape(&dims))))?;
    // Compare what the shape claims with what is stored before copying anything.
    let (stored, unit) = if !t.raw_data.is_empty() {
        (t.raw_data.len(), "bytes")
    } else {
        (typed_data_len(&t, dtype), "typed elements")
    };
    let expected = if t.raw_data.is_empty() {
        Some(count)
    } else {
        count.checked_mul(dtype.size())
    };
    if expected != Some(stored) {
        return Err(malformed(format!(
            "shape {} needs {count} {} elements, but the data holds {stored} {unit}",
            display_shape(&dims),
            dtype.name()
        )));
    }
    limits.check_tensor(subject, &dims)?;
    let bytes = if !t.raw_data.is_empty() {
        std::mem::take(&mut t.raw_data)
    } else {
        typed_data_bytes(&t, dtype)
    };
    Ok(Tensor::from_bytes(dtype, dims, bytes).expect("length checked above"))
}

/// Number of values in the typed repeated field that holds `dtype`.
fn typed_data_len(t: &TensorProto, dtype: DataType) -> usize {
    match dtype {
        DataType::Float32 => t.float_data.len(),
        DataType::Float64 => t.double_data.len(),
        DataType::Int64 => t.int64_data.len(),
        DataType::Uint64 | DataType::Uint32 => t.uint64_data.len(),
        DataType::Int32
        | DataType::Int16
        | DataType::Uint16
        | DataType::Float16
        | DataType::BFloat16
        | DataType::Int8
        | DataType::Uint8
        | DataType::Bool => t.int32_data.len(),
    }
}

/// Re-encodes the typed repeated fields as little-endian bytes (their length checked
/// against the shape by the caller: the result is never larger than the decoded field).
fn typed_data_bytes(t: &TensorProto, dtype: DataType) -> Vec<u8> {
    match dtype {
        DataType::Float32 => t.float_data.iter().flat_map(|v| v.to_le_bytes()).collect(),
        DataType::Float64 => t.double_data.iter().flat_map(|v| v.to_le_bytes()).collect(),
        DataType::Int64 => t.int64_data.iter().flat_map(|v| v.to_le_bytes()).collect(),
        DataType::Uint64 => t.uint64_data.iter().flat_map(|v| v.to_le_bytes()).collect(),
        DataType::Uint32 => t
            .uint64_data
            .iter()
            .flat_map(|v| (*v as u32).to_le_bytes())
            .collect(),
        DataType::Int32 => t.int32_data.iter().flat_map(|v| v.to_le_bytes()).collect(),
        DataType::Int16 | DataType::Uint16 | DataType::Float16 | DataType::BFloat16 => t
            .int32_data
            .iter()
            .flat_map(|v| (*v as u16).to_le_bytes())
            .collect(),
        DataType::Int8 | DataType::Uint8 | DataType::Bool => {
            t.int32_data.iter().map(|v| *v as u8).collect()
        }
    }
}

fn attribute_from_proto(
    a: &AttributeProto,
    node: &str,
    op: &str,
    limits: &Limits,
) -> Result<Attribute> {
    let kind = match a.type_.enum_value() {
        Ok(AttributeType::UNDEFINED) | Err(_) => infer_attribute_type(a),
        Ok(k) => k,
    };
    let value = match kind {
        AttributeType::INT => AttrValue::Int(a.i),
        AttributeType::INTS => AttrValue::Ints(a.ints.clone()),
        AttributeType::FLOAT => AttrValue::Float(a.f),
        AttributeType::FLOATS => AttrValue::Floats(a.floats.clone()),
        AttributeType::STRING => AttrValue::String(a.s.clone()),
        AttributeType::STRINGS => AttrValue::Strings(a.strings.clone()),
        AttributeType::TENSOR => match a.t.as_ref() {
            Some(t) => AttrValue::Tensor(tensor_from_proto(t.clone(), limits, || {
                format!(
                    "tensor attribute '{}' of node '{}'",
                    display_name(&a.name),
                    display_name(node)
                )
            })?),
            None => {
                return Err(GraphError::Attribute {
                    node: node.into(),
                    op: op.into(),
                    attribute: a.name.clone(),
                    reason: "is declared a tensor but holds none".into(),
                });
            }
        },
        _ => AttrValue::Opaque(a.write_to_bytes().map_err(|e| GraphError::Decode {
            reason: e.to_string(),
        })?),
    };
    Ok(Attribute {
        name: a.name.clone(),
        value,
    })
}

/// Old exporters leave `type` unset; the populated field tells what it is.
fn infer_attribute_type(a: &AttributeProto) -> AttributeType {
    if a.t.is_some() {
        AttributeType::TENSOR
    } else if a.g.is_some() {
        AttributeType::GRAPH
    } else if !a.ints.is_empty() {
        AttributeType::INTS
    } else if !a.floats.is_empty() {
        AttributeType::FLOATS
    } else if !a.strings.is_empty() {
        AttributeType::STRINGS
    } else if !a.s.is_empty() {
        AttributeType::STRING
    } else if a.f != 0.0 {
        AttributeType::FLOAT
    } else {
        AttributeType::INT
    }
}
