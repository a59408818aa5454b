//! Writing the IR back to ONNX.

use std::fs::File;
use std::io::{BufWriter, Write};
use std::path::Path;

use onnx_protobuf::attribute_proto::AttributeType;
use onnx_protobuf::tensor_shape_proto::{Dimension, dimension};
use onnx_protobuf::type_proto;
use onnx_protobuf::{
    AttributeProto, GraphProto, Message, ModelProto, NodeProto, OperatorSetIdProto,
    StringStringEntryProto, TensorProto, TensorShapeProto, TypeProto, ValueInfoProto,
};

use crate::error::{GraphError, Result};
use crate::ir::{AttrValue, Attribute, Dim, Graph, GraphIo, Model, Tensor};

/// Writes the model to an ONNX file.
pub fn save_file(model: &Model, path: &Path) -> Result<()> {
    let io = |source| GraphError::Io {
        action: "write",
        path: path.to_path_buf(),
        source,
    };
    let proto = to_proto(model)?;
    let mut out = BufWriter::with_capacity(1 << 20, File::create(path).map_err(io)?);
    proto
        .write_to_writer(&mut out)
        .map_err(|e| GraphError::Encode {
            reason: e.to_string(),
        })?;
    out.flush().map_err(io)
}

/// Encodes the model as ONNX bytes.
pub fn to_bytes(model: &Model) -> Result<Vec<u8>> {
    to_proto(model)?
        .write_to_bytes()
        .map_err(|e| GraphError::Encode {
            reason: e.to_string(),
        })
}

/// Builds the `ModelProto` for a model: same opsets, names and metadata; every
/// constant the nodes use becomes an initializer with raw data.
pub fn to_proto(model: &Model) -> Result<ModelProto> {
    let g = &model.graph;
    let mut graph = GraphProto::new();
    graph.name = g.name.clone();

    let mut used = vec![false; g.values.len()];
    for node in &g.nodes {
        for id in node.inputs.iter().flatten() {
            used[id.0] = true;
        }
    }
    for io in &g.outputs {
        used[io.value.0] = true;
    }
    for (i, value) in g.values.iter().enumerate() {
        if let (true, Some(t)) = (used[i], &value.constant) {
            graph.initializer.push(tensor_to_proto(&value.name, t));
        }
    }

    graph.input = g.inputs.iter().map(|io| value_info(g, io)).collect();
    if model.ir_version < 4 {
        // Before IR 4, every initializer must also be declared as a graph input.
        for t in &graph.initializer {
            let mut vi = ValueInfoProto::new();
            vi.name = t.name.clone();
            vi.type_ = Some(tensor_type(
                t.data_type,
                Some(t.dims.iter().map(|&d| Dim::Fixed(d as usize)).collect()),
            ))
            .into();
            graph.input.push(vi);
        }
    }
    graph.output = g.outputs.iter().map(|io| value_info(g, io)).collect();

    for node in &g.nodes {
        let mut n = NodeProto::new();
        n.name = node.name.clone();
        n.op_type = node.op.op_type().to_string();
        n.domain = node.op.domain().to_string();
        n.input = node
            .inputs
            .iter()
            .map(|i| i.map(|id| g.value(id).name.clone()).unwrap_or_default())
            .collect();
        n.output = node
            .outputs
            .iter()
            .map(|&id| g.value(id).name.clone())
            .collect();
        n.attribute = node
            .op
            .attributes()
            .iter()
            .map(attribute_to_proto)
            .collect::<Result<_>>()?;
        graph.node.push(n);
    }

    let mut proto = ModelProto::new();
    proto.ir_version = model.ir_version;
    proto.producer_name = model.producer_name.clone();
    proto.producer_version = model.producer_version.clone();
    proto.domain = model.domain.clone();
    proto.model_version = model.model_version;
    proto.doc_string = model.doc_string.clone();
    proto.opset_import = model
        .opset_imports
        .iter()
        .map(|(domain, version)| {
            let mut o = OperatorSetIdProto::new();
            o.domain = domain.clone();
            o.version = *version;
            o
        })
        .collect();
    proto.metadata_props = model
        .metadata
        .iter()
        .map(|(k, v)| {
            let mut e = StringStringEntryProto::new();
            e.key = k.clone();
            e.value = v.clone();
            e
        })
        .collect();
    proto.graph = Some(graph).into();
    Ok(proto)
}

fn value_info(g: &Graph, io: &GraphIo) -> ValueInfoProto {
    let mut vi = ValueInfoProto::new();
    vi.name = g.value(io.value).name.clone();
    vi.type_ = Some(tensor_type(io.elem_type, io.dims.clone())).into();
    vi
}

fn tensor_type(elem_type: i32, dims: Option<Vec<Dim>>) -> TypeProto {
    let mut t = type_proto::Tensor::new();
    t.elem_type = elem_type;
    if let Some(dims) = dims {
        let mut shape = TensorShapeProto::new();
        shape.dim = dims
            .into_iter()
            .map(|d| {
                let mut dim = Dimension::new();
                dim.value = match d {
                    Dim::Fixed(v) => Some(dimension::Value::DimValue(v as i64)),
                    Dim::Symbolic(s) => Some(dimension::Value::DimParam(s)),
                    Dim::Unknown => None,
                };
                dim
            })
            .collect();
        t.shape = Some(shape).into();
    }
    let mut tp = TypeProto::new();
    tp.value = Some(type_proto::Value::TensorType(t));
    tp
}

/// Encodes a constant tensor with raw data.
pub(crate) fn tensor_to_proto(name: &str, t: &Tensor) -> TensorProto {
    let mut p = TensorProto::new();
    p.name = name.to_string();
    p.data_type = t.dtype().to_onnx();
    p.dims = t.dims().iter().map(|&d| d as i64).collect();
    p.raw_data = t.bytes().to_vec();
    p
}

fn attribute_to_proto(a: &Attribute) -> Result<AttributeProto> {
    let mut p = match &a.value {
        AttrValue::Opaque(bytes) => {
            return AttributeProto::parse_from_bytes(bytes).map_err(|e| GraphError::Encode {
                reason: e.to_string(),
            });
        }
        _ => AttributeProto::new(),
    };
    p.name = a.name.clone();
    let kind = match &a.value {
        AttrValue::Int(v) => {
            p.i = *v;
            AttributeType::INT
        }
        AttrValue::Ints(v) => {
            p.ints = v.clone();
            AttributeType::INTS
        }
        AttrValue::Float(v) => {
            p.f = *v;
            AttributeType::FLOAT
        }
        AttrValue::Floats(v) => {
            p.floats = v.clone();
            AttributeType::FLOATS
        }
        AttrValue::String(v) => {
            p.s = v.clone();
            AttributeType::STRING
        }
        AttrValue::Strings(v) => {
            p.strings = v.clone();
            AttributeType::STRINGS
        }
        AttrValue::Tensor(t) => {
            p.t = Some(tensor_to_proto("", t)).into();
            AttributeType::TENSOR
        }
        AttrValue::Opaque(_) => unreachable!("handled above"),
    };
    p.type_ = kind.into();
    Ok(p)
}
