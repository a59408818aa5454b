//! Small graphs, one per structural pattern the channel analysis and runtime must get
//! right. Every graph takes `input` (1×3×32×32, float32) and produces `out`.

use crate::builder::{ModelBuilder, WeightStorage, float, int, ints, string};

/// A named, encoded test model.
pub struct ZooModel {
    /// Short name used in test messages and file names.
    pub name: &'static str,
    /// The ONNX bytes.
    pub bytes: Vec<u8>,
}

/// A function that encodes one zoo graph.
type Maker = fn() -> Vec<u8>;

/// Every graph of the zoo.
pub fn all() -> Vec<ZooModel> {
    let makers: [(&'static str, Maker); 14] = [
        ("residual_add", residual_add),
        ("concat_same_tensor_twice", concat_same_tensor_twice),
        ("split", split),
        ("depthwise_conv", depthwise_conv),
        ("unfused_batchnorm", unfused_batchnorm),
        ("constant_node_weights", constant_node_weights),
        ("se_block", se_block),
        ("hardswish_decomposed", hardswish_decomposed),
        ("resize", resize),
        ("maxpool", maxpool),
        ("reshape_transpose_head", reshape_transpose_head),
        ("gemm_head", gemm_head),
        ("conv_transpose", conv_transpose),
        ("misc_ops", misc_ops),
    ];
    makers
        .into_iter()
        .map(|(name, make)| ZooModel {
            name,
            bytes: make(),
        })
        .collect()
}

fn start(name: &str) -> (ModelBuilder, String) {
    let mut b = ModelBuilder::new(name, name.len() as u64 * 7919);
    let x = b.input("input", &[1, 3, 32, 32]);
    (b, x)
}

fn finish(b: ModelBuilder, last: &str, dims: &[i64]) -> Vec<u8> {
    b.finish_as(last, "out", dims)
}

/// conv → relu → conv, added back to the first conv's output (a residual block).
pub fn residual_add() -> Vec<u8> {
    let (mut b, x) = start("residual_add");
    let a = b.conv(&x, 3, 8, 3, 1, 1);
    let a = b.op("Relu", &[&a], vec![]);
    let c = b.conv(&a, 8, 8, 3, 1, 1);
    let c = b.op("Relu", &[&c], vec![]);
    let s = b.op("Add", &[&a, &c], vec![]);
    let o = b.conv(&s, 8, 4, 1, 1, 1);
    finish(b, &o, &[1, 4, 32, 32])
}

/// The same tensor concatenated twice, next to another branch.
pub fn concat_same_tensor_twice() -> Vec<u8> {
    let (mut b, x) = start("concat_same_tensor_twice");
    let a = b.conv(&x, 3, 6, 3, 1, 1);
    let a = b.op("Sigmoid", &[&a], vec![]);
    let c = b.conv(&x, 3, 4, 3, 1, 1);
    let cat = b.op("Concat", &[&a, &c, &a], vec![int("axis", 1)]);
    let o = b.conv(&cat, 16, 5, 1, 1, 1);
    finish(b, &o, &[1, 5, 32, 32])
}

/// A C2f-like split: uneven Split (sizes as an input), one part processed, all joined.
pub fn split() -> Vec<u8> {
    let (mut b, x) = start("split");
    let a = b.conv(&x, 3, 8, 1, 1, 1);
    let sizes = b.constant_i64("split_sizes", &[3, 5]);
    let parts = b.node("Split", &[&a, &sizes], 2, vec![int("axis", 1)]);
    let p = b.conv(&parts[1], 5, 5, 3, 1, 1);
    let r = b.op("Add", &[&p, &parts[1]], vec![]);
    let cat = b.op("Concat", &[&parts[0], &parts[1], &r], vec![int("axis", 1)]);
    let o = b.conv(&cat, 13, 4, 1, 1, 1);
    finish(b, &o, &[1, 4, 32, 32])
}

/// Depthwise convolution (groups = channels) between pointwise ones.
pub fn depthwise_conv() -> Vec<u8> {
    let (mut b, x) = start("depthwise_conv");
    let a = b.conv(&x, 3, 8, 1, 1, 1);
    let d = b.conv(&a, 8, 8, 3, 2, 8);
    let d = b.op("Relu", &[&d], vec![]);
    let o = b.conv(&d, 8, 4, 1, 1, 1);
    finish(b, &o, &[1, 4, 16, 16])
}

/// BatchNormalization kept as its own node, as un-fused exports have it.
pub fn unfused_batchnorm() -> Vec<u8> {
    let (mut b, x) = start("unfused_batchnorm");
    let a = b.conv(&x, 3, 8, 3, 1, 1);
    let a = b.batch_norm(&a, 8);
    let a = b.op("Relu", &[&a], vec![]);
    let c = b.conv(&a, 8, 6, 3, 2, 1);
    let c = b.batch_norm(&c, 6);
    let c = b.op("LeakyRelu", &[&c], vec![float("alpha", 0.1)]);
    let o = b.conv(&c, 6, 4, 1, 1, 1);
    finish(b, &o, &[1, 4, 16, 16])
}

/// Weights that arrive as `Constant` nodes instead of initializers.
pub fn constant_node_weights() -> Vec<u8> {
    let mut b =
        ModelBuilder::new("constant_node_weights", 4242).weights_in(WeightStorage::ConstantNode);
    let x = b.input("input", &[1, 3, 32, 32]);
    let a = b.conv(&x, 3, 8, 3, 1, 1);
    let a = b.batch_norm(&a, 8);
    let a = b.op("Relu", &[&a], vec![]);
    let o = b.conv(&a, 8, 4, 3, 1, 1);
    finish(b, &o, &[1, 4, 32, 32])
}

/// Squeeze-and-excitation: GlobalAveragePool → Conv → Relu → Conv → HardSigmoid → Mul.
pub fn se_block() -> Vec<u8> {
    let (mut b, x) = start("se_block");
    let a = b.conv(&x, 3, 16, 3, 1, 1);
    let a = b.op("Relu", &[&a], vec![]);
    let s = b.op("GlobalAveragePool", &[&a], vec![]);
    let s = b.conv(&s, 16, 4, 1, 1, 1);
    let s = b.op("Relu", &[&s], vec![]);
    let s = b.conv(&s, 4, 16, 1, 1, 1);
    let s = b.op(
        "HardSigmoid",
        &[&s],
        vec![float("alpha", 1.0 / 6.0), float("beta", 0.5)],
    );
    let m = b.op("Mul", &[&a, &s], vec![]);
    let o = b.conv(&m, 16, 8, 1, 1, 1);
    finish(b, &o, &[1, 8, 32, 32])
}

/// HardSwish written out as x · Clip(x + 3, 0, 6) / 6.
pub fn hardswish_decomposed() -> Vec<u8> {
    let (mut b, x) = start("hardswish_decomposed");
    let a = b.conv(&x, 3, 8, 3, 1, 1);
    let three = b.constant("three", &[], &[3.0]);
    let zero = b.constant("zero", &[], &[0.0]);
    let six = b.constant("six", &[], &[6.0]);
    let t = b.op("Add", &[&a, &three], vec![]);
    let t = b.op("Clip", &[&t, &zero, &six], vec![]);
    let t = b.op("Div", &[&t, &six], vec![]);
    let h = b.op("Mul", &[&a, &t], vec![]);
    let o = b.conv(&h, 8, 4, 3, 1, 1);
    finish(b, &o, &[1, 4, 32, 32])
}

/// Nearest-neighbour upsampling joined with a skip connection, as in a YOLO neck.
pub fn resize() -> Vec<u8> {
    let (mut b, x) = start("resize");
    let a = b.conv(&x, 3, 6, 3, 1, 1);
    let d = b.conv(&a, 6, 8, 3, 2, 1);
    let scales = b.constant("scales", &[4], &[1.0, 1.0, 2.0, 2.0]);
    let u = b.op(
        "Resize",
        &[&d, "", &scales],
        vec![
            string("mode", "nearest"),
            string("coordinate_transformation_mode", "asymmetric"),
            string("nearest_mode", "floor"),
        ],
    );
    let cat = b.op("Concat", &[&u, &a], vec![int("axis", 1)]);
    let o = b.conv(&cat, 14, 4, 1, 1, 1);
    finish(b, &o, &[1, 4, 32, 32])
}

/// SPPF-like max pooling.
pub fn maxpool() -> Vec<u8> {
    let (mut b, x) = start("maxpool");
    let a = b.conv(&x, 3, 8, 3, 1, 1);
    let p1 = b.op(
        "MaxPool",
        &[&a],
        vec![
            ints("kernel_shape", &[5, 5]),
            ints("strides", &[1, 1]),
            ints("pads", &[2, 2, 2, 2]),
        ],
    );
    let p2 = b.op(
        "MaxPool",
        &[&p1],
        vec![ints("kernel_shape", &[2, 2]), ints("strides", &[2, 2])],
    );
    let o = b.conv(&p2, 8, 4, 1, 1, 1);
    finish(b, &o, &[1, 4, 16, 16])
}

/// A detection-style head: Reshape and Transpose after the last conv, Softmax over a
/// non-channel axis.
pub fn reshape_transpose_head() -> Vec<u8> {
    let (mut b, x) = start("reshape_transpose_head");
    let a = b.conv(&x, 3, 8, 3, 2, 1);
    let a = b.op("Sigmoid", &[&a], vec![]);
    let h = b.conv(&a, 8, 12, 1, 1, 1);
    let shape = b.constant_i64("shape", &[1, 3, 4, -1]);
    let r = b.op("Reshape", &[&h, &shape], vec![]);
    let t = b.op("Transpose", &[&r], vec![ints("perm", &[0, 1, 3, 2])]);
    let s = b.op("Softmax", &[&t], vec![int("axis", -1)]);
    finish(b, &s, &[1, 3, 256, 4])
}

/// A classifier head: GlobalAveragePool → Flatten → Gemm.
pub fn gemm_head() -> Vec<u8> {
    let (mut b, x) = start("gemm_head");
    let a = b.conv(&x, 3, 8, 3, 2, 1);
    let a = b.op("Relu", &[&a], vec![]);
    let g = b.op("GlobalAveragePool", &[&a], vec![]);
    let f = b.op("Flatten", &[&g], vec![int("axis", 1)]);
    let w = b.random_constant("fc_w", &[5, 8], -0.3, 0.3);
    let bias = b.random_constant("fc_b", &[5], -0.1, 0.1);
    let o = b.op("Gemm", &[&f, &w, &bias], vec![int("transB", 1)]);
    finish(b, &o, &[1, 5])
}

/// Learned upsampling with ConvTranspose.
pub fn conv_transpose() -> Vec<u8> {
    let (mut b, x) = start("conv_transpose");
    let a = b.conv(&x, 3, 8, 3, 2, 1);
    let a = b.op("Relu", &[&a], vec![]);
    let w = b.random_constant("up_w", &[8, 6, 2, 2], -0.3, 0.3);
    let bias = b.random_constant("up_b", &[6], -0.1, 0.1);
    let u = b.op(
        "ConvTranspose",
        &[&a, &w, &bias],
        vec![ints("kernel_shape", &[2, 2]), ints("strides", &[2, 2])],
    );
    let o = b.conv(&u, 6, 4, 3, 1, 1);
    finish(b, &o, &[1, 4, 32, 32])
}

/// The remaining ops: Pad, AveragePool, Slice, HardSwish, Sub, MatMul.
pub fn misc_ops() -> Vec<u8> {
    let (mut b, x) = start("misc_ops");
    let a = b.conv(&x, 3, 8, 3, 1, 1);
    let a = b.op("HardSwish", &[&a], vec![]);
    let pads = b.constant_i64("pads", &[0, 0, 1, 1, 0, 0, 1, 1]);
    let p = b.op("Pad", &[&a, &pads], vec![string("mode", "constant")]);
    let p = b.op(
        "AveragePool",
        &[&p],
        vec![
            ints("kernel_shape", &[3, 3]),
            ints("strides", &[2, 2]),
            int("count_include_pad", 1),
        ],
    );
    let starts = b.constant_i64("starts", &[1, 1]);
    let ends = b.constant_i64("ends", &[15, 15]);
    let axes = b.constant_i64("axes", &[2, 3]);
    let s = b.op("Slice", &[&p, &starts, &ends, &axes], vec![]);
    let mean = b.random_constant("mean", &[1, 8, 1, 1], -0.1, 0.1);
    let s = b.op("Sub", &[&s, &mean], vec![]);
    let c = b.conv(&s, 8, 4, 3, 1, 1);
    let m = b.random_constant("proj", &[14, 6], -0.3, 0.3);
    let o = b.op("MatMul", &[&c, &m], vec![]);
    finish(b, &o, &[1, 4, 14, 6])
}
