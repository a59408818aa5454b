//! A small builder for ONNX models, so tests can make exactly the graph they need.

use onnx_protobuf::attribute_proto::AttributeType;
use onnx_protobuf::tensor_shape_proto::{Dimension, dimension};
use onnx_protobuf::type_proto;
use onnx_protobuf::{
    AttributeProto, GraphProto, Message, ModelProto, NodeProto, OperatorSetIdProto, TensorProto,
    TensorShapeProto, TypeProto, ValueInfoProto,
};

/// Where the builder puts weights.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum WeightStorage {
    /// As graph initializers (what most exporters do).
    Initializer,
    /// As outputs of `Constant` nodes (what some exporters and tools do).
    ConstantNode,
}

/// Builds an opset-17 ONNX model node by node with deterministic pseudo-random weights.
pub struct ModelBuilder {
    graph: GraphProto,
    storage: WeightStorage,
    seed: u64,
    counter: usize,
    opset: i64,
}

impl ModelBuilder {
    /// A builder whose weights come from `seed`.
    pub fn new(name: &str, seed: u64) -> Self {
        let mut graph = GraphProto::new();
        graph.name = name.to_string();
        Self {
            graph,
            storage: WeightStorage::Initializer,
            seed: seed | 1,
            counter: 0,
            opset: 17,
        }
    }

    /// Stores the weights made from now on this way.
    pub fn weights_in(mut self, storage: WeightStorage) -> Self {
        self.storage = storage;
        self
    }

    /// Uses another default-domain opset version.
    pub fn opset(mut self, version: i64) -> Self {
        self.opset = version;
        self
    }

    fn fresh(&mut self, prefix: &str) -> String {
        self.counter += 1;
        format!("{prefix}_{}", self.counter)
    }

    fn random(&mut self) -> f32 {
        // xorshift64*: enough for weights that are not all alike.
        self.seed ^= self.seed >> 12;
        self.seed ^= self.seed << 25;
        self.seed ^= self.seed >> 27;
        let v = self.seed.wrapping_mul(0x2545_f491_4f6c_dd1d) >> 40;
        v as f32 / (1u64 << 24) as f32 * 2.0 - 1.0
    }

    /// Declares a float32 graph input.
    pub fn input(&mut self, name: &str, dims: &[i64]) -> String {
        self.graph.input.push(value_info(name, dims));
        name.to_string()
    }

    /// Declares a float32 graph output of the given shape.
    pub fn output(&mut self, name: &str, dims: &[i64]) {
        self.graph.output.push(value_info(name, dims));
    }

    /// Adds a float32 constant with the given values.
    pub fn constant(&mut self, prefix: &str, dims: &[i64], values: &[f32]) -> String {
        let name = self.fresh(prefix);
        let mut t = TensorProto::new();
        t.data_type = 1;
        t.dims = dims.to_vec();
        t.raw_data = values.iter().flat_map(|v| v.to_le_bytes()).collect();
        self.push_tensor(&name, t);
        name
    }

    /// Adds an int64 constant (shapes, axes, sizes).
    pub fn constant_i64(&mut self, prefix: &str, values: &[i64]) -> String {
        let name = self.fresh(prefix);
        let mut t = TensorProto::new();
        t.data_type = 7;
        t.dims = vec![values.len() as i64];
        t.int64_data = values.to_vec();
        self.push_tensor(&name, t);
        name
    }

    /// Adds a float32 constant filled with pseudo-random values in `[lo, hi)`.
    pub fn random_constant(&mut self, prefix: &str, dims: &[i64], lo: f32, hi: f32) -> String {
        let n: i64 = dims.iter().product();
        let values: Vec<f32> = (0..n)
            .map(|_| lo + (self.random() + 1.0) * 0.5 * (hi - lo))
            .collect();
        self.constant(prefix, dims, &values)
    }

    fn push_tensor(&mut self, name: &str, mut t: TensorProto) {
        match self.storage {
            WeightStorage::Initializer => {
                t.name = name.to_string();
                self.graph.initializer.push(t);
            }
            WeightStorage::ConstantNode => {
                let mut a = AttributeProto::new();
                a.name = "value".into();
                a.type_ = AttributeType::TENSOR.into();
                a.t = Some(t).into();
                let mut n = NodeProto::new();
                n.op_type = "Constant".into();
                n.name = format!("{name}_const");
                n.output = vec![name.to_string()];
                n.attribute.push(a);
                self.graph.node.push(n);
            }
        }
    }

    /// Adds a node and returns its output names (`outputs` of them).
    pub fn node(
        &mut self,
        op: &str,
        inputs: &[&str],
        outputs: usize,
        attrs: Vec<AttributeProto>,
    ) -> Vec<String> {
        let outs: Vec<String> = (0..outputs)
            .map(|_| self.fresh(&op.to_lowercase()))
            .collect();
        let mut n = NodeProto::new();
        n.op_type = op.to_string();
        n.name = self.fresh(op);
        n.input = inputs.iter().map(|s| s.to_string()).collect();
        n.output = outs.clone();
        n.attribute = attrs;
        self.graph.node.push(n);
        outs
    }

    /// A single-output node.
    pub fn op(&mut self, op: &str, inputs: &[&str], attrs: Vec<AttributeProto>) -> String {
        self.node(op, inputs, 1, attrs).remove(0)
    }

    /// A Conv with random weights and bias, "same" padding for odd kernels.
    pub fn conv(
        &mut self,
        x: &str,
        cin: i64,
        cout: i64,
        k: i64,
        stride: i64,
        group: i64,
    ) -> String {
        let fan_in = (cin / group * k * k) as f32;
        let bound = 1.0 / fan_in.sqrt();
        let w = self.random_constant("w", &[cout, cin / group, k, k], -bound, bound);
        let b = self.random_constant("b", &[cout], -0.1, 0.1);
        let p = k / 2;
        self.op(
            "Conv",
            &[x, &w, &b],
            vec![
                ints("kernel_shape", &[k, k]),
                ints("strides", &[stride, stride]),
                ints("pads", &[p, p, p, p]),
                int("group", group),
            ],
        )
    }

    /// A BatchNormalization with random, valid statistics.
    pub fn batch_norm(&mut self, x: &str, c: i64) -> String {
        let scale = self.random_constant("bn_scale", &[c], 0.5, 1.5);
        let bias = self.random_constant("bn_bias", &[c], -0.2, 0.2);
        let mean = self.random_constant("bn_mean", &[c], -0.2, 0.2);
        let var = self.random_constant("bn_var", &[c], 0.5, 2.0);
        self.op(
            "BatchNormalization",
            &[x, &scale, &bias, &mean, &var],
            vec![float("epsilon", 1e-3)],
        )
    }

    /// Renames the value `last` to `output`, declares it the graph output with shape
    /// `dims` and encodes the model.
    pub fn finish_as(mut self, last: &str, output: &str, dims: &[i64]) -> Vec<u8> {
        for n in &mut self.graph.node {
            for name in n.input.iter_mut().chain(n.output.iter_mut()) {
                if name == last {
                    *name = output.to_string();
                }
            }
        }
        self.output(output, dims);
        self.build_bytes()
    }

    /// Encodes the model.
    pub fn build(self) -> ModelProto {
        let mut m = ModelProto::new();
        m.ir_version = 8;
        m.producer_name = "effp-testkit".into();
        let mut o = OperatorSetIdProto::new();
        o.version = self.opset;
        m.opset_import.push(o);
        m.graph = Some(self.graph).into();
        m
    }

    /// Encodes the model to bytes.
    pub fn build_bytes(self) -> Vec<u8> {
        self.build()
            .write_to_bytes()
            .expect("a built model encodes")
    }
}

fn value_info(name: &str, dims: &[i64]) -> ValueInfoProto {
    let mut shape = TensorShapeProto::new();
    shape.dim = dims
        .iter()
        .map(|&d| {
            let mut dim = Dimension::new();
            dim.value = Some(if d < 0 {
                dimension::Value::DimParam("batch".into())
            } else {
                dimension::Value::DimValue(d)
            });
            dim
        })
        .collect();
    let mut t = type_proto::Tensor::new();
    t.elem_type = 1;
    t.shape = Some(shape).into();
    let mut tp = TypeProto::new();
    tp.value = Some(type_proto::Value::TensorType(t));
    let mut vi = ValueInfoProto::new();
    vi.name = name.to_string();
    vi.type_ = Some(tp).into();
    vi
}

/// An integer attribute.
pub fn int(name: &str, v: i64) -> AttributeProto {
    let mut a = AttributeProto::new();
    a.name = name.into();
    a.type_ = AttributeType::INT.into();
    a.i = v;
    a
}

/// An integer-list attribute.
pub fn ints(name: &str, v: &[i64]) -> AttributeProto {
    let mut a = AttributeProto::new();
    a.name = name.into();
    a.type_ = AttributeType::INTS.into();
    a.ints = v.to_vec();
    a
}

/// A float attribute.
pub fn float(name: &str, v: f32) -> AttributeProto {
    let mut a = AttributeProto::new();
    a.name = name.into();
    a.type_ = AttributeType::FLOAT.into();
    a.f = v;
    a
}

/// A string attribute.
pub fn string(name: &str, v: &str) -> AttributeProto {
    let mut a = AttributeProto::new();
    a.name = name.into();
    a.type_ = AttributeType::STRING.into();
    a.s = v.as_bytes().to_vec();
    a
}
