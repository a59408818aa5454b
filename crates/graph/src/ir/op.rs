//! Typed operators: every op effp understands, with its attributes resolved.

use super::attr::{AttrReader, AttrValue, Attribute};
use super::tensor::{DataType, Tensor, onnx_type_name};
use crate::error::GraphError;

/// How a convolution or pooling window is padded.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AutoPad {
    /// Use the explicit `pads`.
    NotSet,
    /// Pad so that output = ceil(input / stride), extra at the end.
    SameUpper,
    /// Pad so that output = ceil(input / stride), extra at the start.
    SameLower,
    /// No padding.
    Valid,
}

impl AutoPad {
    fn parse(r: &mut AttrReader<'_>) -> Result<Self, GraphError> {
        Ok(match r.string_or("auto_pad", "NOTSET")?.as_str() {
            "NOTSET" | "" => Self::NotSet,
            "SAME_UPPER" => Self::SameUpper,
            "SAME_LOWER" => Self::SameLower,
            "VALID" => Self::Valid,
            other => return Err(r.error("auto_pad", format!("has unknown value '{other}'"))),
        })
    }

    fn name(self) -> &'static str {
        match self {
            Self::NotSet => "NOTSET",
            Self::SameUpper => "SAME_UPPER",
            Self::SameLower => "SAME_LOWER",
            Self::Valid => "VALID",
        }
    }
}

/// Window geometry shared by convolutions and pooling.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Window {
    /// Kernel size per spatial axis; empty for Conv when it comes from the weight.
    pub kernel_shape: Vec<i64>,
    /// Stride per spatial axis (empty = all 1).
    pub strides: Vec<i64>,
    /// Begin pads then end pads (empty = all 0).
    pub pads: Vec<i64>,
    /// Dilation per spatial axis (empty = all 1).
    pub dilations: Vec<i64>,
    /// Automatic padding mode.
    pub auto_pad: AutoPad,
}

impl Window {
    fn parse(r: &mut AttrReader<'_>) -> Result<Self, GraphError> {
        let w = Self {
            kernel_shape: r.ints("kernel_shape")?.unwrap_or_default(),
            strides: r.ints("strides")?.unwrap_or_default(),
            pads: r.ints("pads")?.unwrap_or_default(),
            dilations: r.ints("dilations")?.unwrap_or_default(),
            auto_pad: AutoPad::parse(r)?,
        };
        for (name, v) in [
            ("kernel_shape", &w.kernel_shape),
            ("strides", &w.strides),
            ("dilations", &w.dilations),
        ] {
            if v.iter().any(|&x| x < 1) {
                return Err(r.error(name, "must hold positive integers"));
            }
        }
        if w.pads.iter().any(|&p| p < 0) {
            return Err(r.error("pads", "must not be negative"));
        }
        Ok(w)
    }

    fn write(&self, out: &mut Vec<Attribute>) {
        if self.auto_pad != AutoPad::NotSet {
            out.push(Attribute::string("auto_pad", self.auto_pad.name()));
        }
        for (name, v) in [
            ("kernel_shape", &self.kernel_shape),
            ("strides", &self.strides),
            ("pads", &self.pads),
            ("dilations", &self.dilations),
        ] {
            if !v.is_empty() {
                out.push(Attribute::ints(name, v));
            }
        }
    }

    /// Stride along spatial axis `i`.
    pub fn stride(&self, i: usize) -> i64 {
        self.strides.get(i).copied().unwrap_or(1)
    }

    /// Dilation along spatial axis `i`.
    pub fn dilation(&self, i: usize) -> i64 {
        self.dilations.get(i).copied().unwrap_or(1)
    }
}

/// Convolution attributes (Conv and ConvTranspose).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConvAttrs {
    /// Window geometry.
    pub window: Window,
    /// Number of groups.
    pub group: i64,
    /// ConvTranspose only: extra size added to one side of the output.
    pub output_padding: Vec<i64>,
    /// ConvTranspose only: explicit output spatial shape.
    pub output_shape: Vec<i64>,
}

/// Pooling attributes (MaxPool and AveragePool).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PoolAttrs {
    /// Window geometry; `kernel_shape` is required.
    pub window: Window,
    /// Round the output size up instead of down.
    pub ceil_mode: bool,
    /// AveragePool: count padded zeros in the divisor.
    pub count_include_pad: bool,
}

/// Resize attributes (opset 10–19).
#[derive(Debug, Clone, PartialEq)]
pub struct ResizeAttrs {
    /// "nearest", "linear" or "cubic".
    pub mode: String,
    /// How output coordinates map to input coordinates.
    pub coordinate_transformation_mode: String,
    /// Rounding for nearest mode.
    pub nearest_mode: String,
    /// Cubic interpolation coefficient.
    pub cubic_coeff_a: f32,
    /// Whether out-of-image weights are dropped (cubic).
    pub exclude_outside: i64,
    /// Value outside the image for tf_crop_and_resize.
    pub extrapolation_value: f32,
}

/// An elementwise comparison with broadcasting; the result is boolean.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Comparison {
    /// a == b.
    Equal,
    /// a < b.
    Less,
    /// a > b.
    Greater,
    /// a <= b.
    LessOrEqual,
    /// a >= b.
    GreaterOrEqual,
}

impl Comparison {
    /// The ONNX op type.
    pub fn op_type(self) -> &'static str {
        match self {
            Self::Equal => "Equal",
            Self::Less => "Less",
            Self::Greater => "Greater",
            Self::LessOrEqual => "LessOrEqual",
            Self::GreaterOrEqual => "GreaterOrEqual",
        }
    }
}

/// An operator with its attributes. Inputs and outputs live on the node.
#[derive(Debug, Clone, PartialEq)]
pub enum Op {
    /// Convolution: inputs X, W, optional B.
    Conv(ConvAttrs),
    /// Transposed convolution: inputs X, W, optional B.
    ConvTranspose(ConvAttrs),
    /// Batch normalisation with running statistics: X, scale, B, mean, var.
    BatchNormalization {
        /// Added to the variance.
        epsilon: f32,
        /// Running-average momentum (unused at inference, kept for round trips).
        momentum: Option<f32>,
    },
    /// General matrix multiply: A, B, optional C.
    Gemm {
        /// Scale of A·B.
        alpha: f32,
        /// Scale of C.
        beta: f32,
        /// Transpose A.
        trans_a: bool,
        /// Transpose B.
        trans_b: bool,
    },
    /// Numpy-style matrix product.
    MatMul,
    /// Elementwise addition with broadcasting.
    Add,
    /// Elementwise subtraction with broadcasting.
    Sub,
    /// Elementwise multiplication with broadcasting.
    Mul,
    /// Elementwise division with broadcasting.
    Div,
    /// max(x, 0).
    Relu,
    /// x if x ≥ 0 else alpha·x.
    LeakyRelu {
        /// Negative slope.
        alpha: f32,
    },
    /// 1 / (1 + e^-x).
    Sigmoid,
    /// max(0, min(1, alpha·x + beta)).
    HardSigmoid {
        /// Slope.
        alpha: f32,
        /// Offset.
        beta: f32,
    },
    /// x · HardSigmoid(x) with alpha 1/6, beta 0.5.
    HardSwish,
    /// Clamp to [min, max]; opset ≥ 11 takes the bounds as inputs 1 and 2 instead.
    Clip {
        /// Lower bound from the attribute (opset < 11).
        min: Option<f32>,
        /// Upper bound from the attribute (opset < 11).
        max: Option<f32>,
    },
    /// Softmax along one axis.
    Softmax {
        /// The axis (resolved default for the opset).
        axis: i64,
        /// Opset < 13 semantics: flatten to 2-D at `axis` first.
        flatten_to_2d: bool,
    },
    /// Join inputs along an axis.
    Concat {
        /// The axis.
        axis: i64,
    },
    /// Cut the input along an axis into the node's outputs.
    Split {
        /// The axis.
        axis: i64,
        /// Part sizes from the attribute (opset < 13); opset ≥ 13 uses input 1.
        split: Option<Vec<i64>>,
        /// Opset ≥ 18: number of equal parts when no sizes are given.
        num_outputs: Option<i64>,
    },
    /// Take a strided sub-range; opset ≥ 10 takes starts/ends/axes/steps as inputs.
    Slice {
        /// Opset < 10 attribute form: (starts, ends, axes).
        legacy: Option<(Vec<i64>, Vec<i64>, Vec<i64>)>,
    },
    /// Change shape, input 1 holds the target shape.
    Reshape {
        /// A 0 in the shape means zero, not "copy".
        allowzero: bool,
    },
    /// Permute axes.
    Transpose {
        /// The permutation; `None` reverses the axes.
        perm: Option<Vec<i64>>,
    },
    /// Flatten to 2-D at an axis.
    Flatten {
        /// The axis.
        axis: i64,
    },
    /// Max pooling.
    MaxPool(PoolAttrs),
    /// Average pooling.
    AveragePool(PoolAttrs),
    /// Mean over all spatial positions.
    GlobalAveragePool,
    /// Resample spatially; input 2 (scales) or 3 (sizes) gives the output size.
    Resize(ResizeAttrs),
    /// Pad with a constant; opset ≥ 11 takes pads and value as inputs.
    Pad {
        /// "constant", "reflect" or "edge".
        mode: String,
        /// Opset < 11 pads attribute.
        pads: Option<Vec<i64>>,
        /// Opset < 11 fill value.
        value: f32,
    },
    /// Pass-through.
    Identity,
    /// The input's shape as an int64 vector, axes `start..end` (opset ≥ 15).
    Shape {
        /// First axis (may be negative).
        start: i64,
        /// One past the last axis (may be negative); `None` is the rank.
        end: Option<i64>,
    },
    /// Picks entries of input 0 along an axis by the indices in input 1.
    Gather {
        /// The axis.
        axis: i64,
    },
    /// Inserts axes of size 1; opset ≥ 13 takes them as input 1.
    Unsqueeze {
        /// Opset < 13 attribute form.
        axes: Option<Vec<i64>>,
    },
    /// Removes axes of size 1; opset ≥ 13 takes them as input 1.
    Squeeze {
        /// Opset < 13 attribute form; `None` removes every axis of size 1.
        axes: Option<Vec<i64>>,
    },
    /// The sequence start, start + delta, … below limit (inputs 0, 1, 2; scalars).
    Range,
    /// Converts the element type.
    Cast {
        /// The target type.
        to: DataType,
    },
    /// A tensor of the shape given by input 0, every element `value`.
    ConstantOfShape {
        /// The one-element fill value; `None` is float32 zero.
        value: Option<Tensor>,
    },
    /// Broadcasts input 0 to the shape in input 1 (both ways, like numpy).
    Expand,
    /// Elementwise comparison with broadcasting.
    Compare(Comparison),
    /// Elementwise choice: input 1 where input 0 is true, else input 2.
    Where,
    /// Elementwise logical negation.
    Not,
    /// A constant (replaced by an initializer when a model is loaded).
    Constant(Tensor),
    /// An op effp does not support; kept so that it can be reported and written back.
    Unsupported {
        /// ONNX op type.
        op_type: String,
        /// ONNX domain ("" is the default domain).
        domain: String,
        /// Attributes, unchanged.
        attributes: Vec<Attribute>,
    },
}

/// Names of every op effp supports, for help texts and reports.
pub const SUPPORTED_OPS: &[&str] = &[
    "Conv",
    "ConvTranspose",
    "BatchNormalization",
    "Gemm",
    "MatMul",
    "Add",
    "Sub",
    "Mul",
    "Div",
    "Relu",
    "LeakyRelu",
    "Sigmoid",
    "HardSigmoid",
    "HardSwish",
    "Clip",
    "Softmax",
    "Concat",
    "Split",
    "Slice",
    "Reshape",
    "Transpose",
    "Flatten",
    "MaxPool",
    "AveragePool",
    "GlobalAveragePool",
    "Resize",
    "Pad",
    "Constant",
    "Identity",
    "Shape",
    "Gather",
    "Unsqueeze",
    "Squeeze",
    "Range",
    "Cast",
    "ConstantOfShape",
    "Expand",
    "Equal",
    "Less",
    "Greater",
    "LessOrEqual",
    "GreaterOrEqual",
    "Where",
    "Not",
];

impl Op {
    /// Builds the typed op for an ONNX node. `opset` is the default-domain version,
    /// which fixes defaults that changed between versions.
    pub fn parse(
        node: &str,
        op_type: &str,
        domain: &str,
        attrs: &[Attribute],
        opset: i64,
    ) -> Result<Self, GraphError> {
        let standard = domain.is_empty() || domain == "ai.onnx";
        if !standard || !SUPPORTED_OPS.contains(&op_type) {
            return Ok(Self::Unsupported {
                op_type: op_type.to_string(),
                domain: domain.to_string(),
                attributes: attrs.to_vec(),
            });
        }
        let mut r = AttrReader::new(node, op_type, attrs);
        let op = match op_type {
            "Conv" | "ConvTranspose" => {
                let window = Window::parse(&mut r)?;
                let group = r.int_or("group", 1)?;
                if group < 1 {
                    return Err(r.error("group", "must be at least 1"));
                }
                let transpose = op_type == "ConvTranspose";
                let (output_padding, output_shape) = if transpose {
                    (
                        r.ints("output_padding")?.unwrap_or_default(),
                        r.ints("output_shape")?.unwrap_or_default(),
                    )
                } else {
                    (Vec::new(), Vec::new())
                };
                let attrs = ConvAttrs {
                    window,
                    group,
                    output_padding,
                    output_shape,
                };
                if transpose {
                    Self::ConvTranspose(attrs)
                } else {
                    Self::Conv(attrs)
                }
            }
            "BatchNormalization" => {
                let epsilon = r.float_or("epsilon", 1e-5)?;
                let momentum = r.float("momentum")?;
                if r.int_or("training_mode", 0)? != 0 {
                    return Err(
                        r.error("training_mode", "is 1; export the model in inference mode")
                    );
                }
                if r.int_or("spatial", 1)? != 1 {
                    return Err(r.error(
                        "spatial",
                        "is 0 (per-activation statistics), which effp does not support",
                    ));
                }
                r.int("is_test")?;
                r.ints("consumed_inputs")?;
                Self::BatchNormalization { epsilon, momentum }
            }
            "Gemm" => Self::Gemm {
                alpha: r.float_or("alpha", 1.0)?,
                beta: r.float_or("beta", 1.0)?,
                trans_a: r.int_or("transA", 0)? != 0,
                trans_b: r.int_or("transB", 0)? != 0,
            },
            "MatMul" => Self::MatMul,
            "Add" | "Sub" | "Mul" | "Div" => {
                // Opset < 7 broadcast attributes: numpy broadcasting covers what exporters emit.
                r.int("broadcast")?;
                r.int("axis")?;
                r.ints("consumed_inputs")?;
                match op_type {
                    "Add" => Self::Add,
                    "Sub" => Self::Sub,
                    "Mul" => Self::Mul,
                    _ => Self::Div,
                }
            }
            "Relu" => Self::Relu,
            "LeakyRelu" => Self::LeakyRelu {
                alpha: r.float_or("alpha", 0.01)?,
            },
            "Sigmoid" => Self::Sigmoid,
            "HardSigmoid" => Self::HardSigmoid {
                alpha: r.float_or("alpha", 0.2)?,
                beta: r.float_or("beta", 0.5)?,
            },
            "HardSwish" => Self::HardSwish,
            "Clip" => Self::Clip {
                min: r.float("min")?,
                max: r.float("max")?,
            },
            "Softmax" => {
                let default_axis = if opset >= 13 { -1 } else { 1 };
                Self::Softmax {
                    axis: r.int_or("axis", default_axis)?,
                    flatten_to_2d: opset < 13,
                }
            }
            "Concat" => Self::Concat {
                axis: r
                    .int("axis")?
                    .ok_or_else(|| r.error("axis", "is required"))?,
            },
            "Split" => Self::Split {
                axis: r.int_or("axis", 0)?,
                split: r.ints("split")?,
                num_outputs: r.int("num_outputs")?,
            },
            "Slice" => {
                let starts = r.ints("starts")?;
                let ends = r.ints("ends")?;
                let axes = r.ints("axes")?;
                let legacy = match (starts, ends) {
                    (Some(s), Some(e)) => Some((s, e, axes.unwrap_or_default())),
                    (None, None) => None,
                    _ => return Err(r.error("starts", "and 'ends' must be given together")),
                };
                Self::Slice { legacy }
            }
            "Reshape" => Self::Reshape {
                allowzero: r.int_or("allowzero", 0)? != 0,
            },
            "Transpose" => Self::Transpose {
                perm: r.ints("perm")?,
            },
            "Flatten" => Self::Flatten {
                axis: r.int_or("axis", 1)?,
            },
            "MaxPool" | "AveragePool" => {
                let window = Window::parse(&mut r)?;
                if window.kernel_shape.is_empty() {
                    return Err(r.error("kernel_shape", "is required"));
                }
                let ceil_mode = r.int_or("ceil_mode", 0)? != 0;
                let count_include_pad = r.int_or("count_include_pad", 0)? != 0;
                if r.int_or("storage_order", 0)? != 0 {
                    return Err(r.error(
                        "storage_order",
                        "is column-major, which effp does not support",
                    ));
                }
                let attrs = PoolAttrs {
                    window,
                    ceil_mode,
                    count_include_pad,
                };
                if op_type == "MaxPool" {
                    Self::MaxPool(attrs)
                } else {
                    Self::AveragePool(attrs)
                }
            }
            "GlobalAveragePool" => Self::GlobalAveragePool,
            "Resize" => {
                let attrs = ResizeAttrs {
                    mode: r.string_or("mode", "nearest")?,
                    coordinate_transformation_mode: r
                        .string_or("coordinate_transformation_mode", "half_pixel")?,
                    nearest_mode: r.string_or("nearest_mode", "round_prefer_floor")?,
                    cubic_coeff_a: r.float_or("cubic_coeff_a", -0.75)?,
                    exclude_outside: r.int_or("exclude_outside", 0)?,
                    extrapolation_value: r.float_or("extrapolation_value", 0.0)?,
                };
                if r.int_or("antialias", 0)? != 0 {
                    return Err(r.error(
                        "antialias",
                        "is set; effp does not support antialiased Resize",
                    ));
                }
                if r.string_or("keep_aspect_ratio_policy", "stretch")? != "stretch" {
                    return Err(r.error(
                        "keep_aspect_ratio_policy",
                        "is not 'stretch', which effp does not support",
                    ));
                }
                if r.ints("axes")?.is_some() {
                    return Err(r.error("axes", "is set; effp supports Resize over all axes only"));
                }
                Self::Resize(attrs)
            }
            "Pad" => Self::Pad {
                mode: r.string_or("mode", "constant")?,
                pads: r.ints("pads")?.or(r.ints("paddings")?),
                value: r.float_or("value", 0.0)?,
            },
            "Identity" => Self::Identity,
            "Constant" => Self::Constant(parse_constant(&mut r)?),
            "Shape" => Self::Shape {
                start: r.int_or("start", 0)?,
                end: r.int("end")?,
            },
            "Gather" => Self::Gather {
                axis: r.int_or("axis", 0)?,
            },
            "Unsqueeze" => Self::Unsqueeze {
                axes: r.ints("axes")?,
            },
            "Squeeze" => Self::Squeeze {
                axes: r.ints("axes")?,
            },
            "Range" => Self::Range,
            "Cast" => {
                let code = r.int("to")?.ok_or_else(|| r.error("to", "is required"))?;
                let to = i32::try_from(code)
                    .ok()
                    .and_then(DataType::from_onnx)
                    .ok_or_else(|| {
                        r.error(
                            "to",
                            format!(
                                "names element type {}, which effp does not read",
                                onnx_type_name(i32::try_from(code).unwrap_or(0))
                            ),
                        )
                    })?;
                r.int("saturate")?;
                Self::Cast { to }
            }
            "ConstantOfShape" => {
                let value = r.tensor("value")?;
                if value.as_ref().is_some_and(|t| t.len() != 1) {
                    return Err(r.error("value", "must hold exactly one element"));
                }
                Self::ConstantOfShape { value }
            }
            "Expand" => Self::Expand,
            "Equal" => Self::Compare(Comparison::Equal),
            "Less" => Self::Compare(Comparison::Less),
            "Greater" => Self::Compare(Comparison::Greater),
            "LessOrEqual" => Self::Compare(Comparison::LessOrEqual),
            "GreaterOrEqual" => Self::Compare(Comparison::GreaterOrEqual),
            "Where" => Self::Where,
            "Not" => Self::Not,
            _ => unreachable!("SUPPORTED_OPS and this match list the same ops"),
        };
        r.finish()?;
        Ok(op)
    }

    /// The ONNX op type.
    pub fn op_type(&self) -> &str {
        match self {
            Self::Conv(_) => "Conv",
            Self::ConvTranspose(_) => "ConvTranspose",
            Self::BatchNormalization { .. } => "BatchNormalization",
            Self::Gemm { .. } => "Gemm",
            Self::MatMul => "MatMul",
            Self::Add => "Add",
            Self::Sub => "Sub",
            Self::Mul => "Mul",
            Self::Div => "Div",
            Self::Relu => "Relu",
            Self::LeakyRelu { .. } => "LeakyRelu",
            Self::Sigmoid => "Sigmoid",
            Self::HardSigmoid { .. } => "HardSigmoid",
            Self::HardSwish => "HardSwish",
            Self::Clip { .. } => "Clip",
            Self::Softmax { .. } => "Softmax",
            Self::Concat { .. } => "Concat",
            Self::Split { .. } => "Split",
            Self::Slice { .. } => "Slice",
            Self::Reshape { .. } => "Reshape",
            Self::Transpose { .. } => "Transpose",
            Self::Flatten { .. } => "Flatten",
            Self::MaxPool(_) => "MaxPool",
            Self::AveragePool(_) => "AveragePool",
            Self::GlobalAveragePool => "GlobalAveragePool",
            Self::Resize(_) => "Resize",
            Self::Pad { .. } => "Pad",
            Self::Identity => "Identity",
            Self::Constant(_) => "Constant",
            Self::Shape { .. } => "Shape",
            Self::Gather { .. } => "Gather",
            Self::Unsqueeze { .. } => "Unsqueeze",
            Self::Squeeze { .. } => "Squeeze",
            Self::Range => "Range",
            Self::Cast { .. } => "Cast",
            Self::ConstantOfShape { .. } => "ConstantOfShape",
            Self::Expand => "Expand",
            Self::Compare(c) => c.op_type(),
            Self::Where => "Where",
            Self::Not => "Not",
            Self::Unsupported { op_type, .. } => op_type,
        }
    }

    /// The ONNX domain ("" for the default domain).
    pub fn domain(&self) -> &str {
        match self {
            Self::Unsupported { domain, .. } => domain,
            _ => "",
        }
    }

    /// Whether effp can execute and analyse this op.
    pub fn is_supported(&self) -> bool {
        !matches!(self, Self::Unsupported { .. })
    }

    /// The attributes to write back to ONNX: those that differ from the defaults, plus
    /// those whose default depends on the opset.
    pub fn attributes(&self) -> Vec<Attribute> {
        let mut out = Vec::new();
        match self {
            Self::Conv(c) | Self::ConvTranspose(c) => {
                c.window.write(&mut out);
                if c.group != 1 {
                    out.push(Attribute::int("group", c.group));
                }
                if !c.output_padding.is_empty() {
                    out.push(Attribute::ints("output_padding", &c.output_padding));
                }
                if !c.output_shape.is_empty() {
                    out.push(Attribute::ints("output_shape", &c.output_shape));
                }
            }
            Self::BatchNormalization { epsilon, momentum } => {
                out.push(Attribute::float("epsilon", *epsilon));
                if let Some(m) = momentum {
                    out.push(Attribute::float("momentum", *m));
                }
            }
            Self::Gemm {
                alpha,
                beta,
                trans_a,
                trans_b,
            } => {
                if *alpha != 1.0 {
                    out.push(Attribute::float("alpha", *alpha));
                }
                if *beta != 1.0 {
                    out.push(Attribute::float("beta", *beta));
                }
                if *trans_a {
                    out.push(Attribute::int("transA", 1));
                }
                if *trans_b {
                    out.push(Attribute::int("transB", 1));
                }
            }
            Self::LeakyRelu { alpha } => out.push(Attribute::float("alpha", *alpha)),
            Self::HardSigmoid { alpha, beta } => {
                out.push(Attribute::float("alpha", *alpha));
                out.push(Attribute::float("beta", *beta));
            }
            Self::Clip { min, max } => {
                if let Some(v) = min {
                    out.push(Attribute::float("min", *v));
                }
                if let Some(v) = max {
                    out.push(Attribute::float("max", *v));
                }
            }
            Self::Softmax { axis, .. } | Self::Concat { axis } => {
                out.push(Attribute::int("axis", *axis))
            }
            Self::Split {
                axis,
                split,
                num_outputs,
            } => {
                out.push(Attribute::int("axis", *axis));
                if let Some(s) = split {
                    out.push(Attribute::ints("split", s));
                }
                if let Some(n) = num_outputs {
                    out.push(Attribute::int("num_outputs", *n));
                }
            }
            Self::Slice {
                legacy: Some((starts, ends, axes)),
            } => {
                out.push(Attribute::ints("starts", starts));
                out.push(Attribute::ints("ends", ends));
                if !axes.is_empty() {
                    out.push(Attribute::ints("axes", axes));
                }
            }
            Self::Reshape { allowzero: true } => out.push(Attribute::int("allowzero", 1)),
            Self::Transpose { perm: Some(p) } => out.push(Attribute::ints("perm", p)),
            Self::Flatten { axis } => out.push(Attribute::int("axis", *axis)),
            Self::MaxPool(p) | Self::AveragePool(p) => {
                p.window.write(&mut out);
                if p.ceil_mode {
                    out.push(Attribute::int("ceil_mode", 1));
                }
                if p.count_include_pad {
                    out.push(Attribute::int("count_include_pad", 1));
                }
            }
            Self::Resize(r) => {
                out.push(Attribute::string("mode", &r.mode));
                if r.coordinate_transformation_mode != "half_pixel" {
                    out.push(Attribute::string(
                        "coordinate_transformation_mode",
                        &r.coordinate_transformation_mode,
                    ));
                }
                if r.nearest_mode != "round_prefer_floor" {
                    out.push(Attribute::string("nearest_mode", &r.nearest_mode));
                }
                if r.cubic_coeff_a != -0.75 {
                    out.push(Attribute::float("cubic_coeff_a", r.cubic_coeff_a));
                }
                if r.exclude_outside != 0 {
                    out.push(Attribute::int("exclude_outside", r.exclude_outside));
                }
                if r.extrapolation_value != 0.0 {
                    out.push(Attribute::float(
                        "extrapolation_value",
                        r.extrapolation_value,
                    ));
                }
            }
            Self::Pad { mode, pads, value } => {
                if mode != "constant" {
                    out.push(Attribute::string("mode", mode));
                }
                if let Some(p) = pads {
                    out.push(Attribute::ints("pads", p));
                    if *value != 0.0 {
                        out.push(Attribute::float("value", *value));
                    }
                }
            }
            Self::Constant(t) | Self::ConstantOfShape { value: Some(t) } => out.push(Attribute {
                name: "value".into(),
                value: AttrValue::Tensor(t.clone()),
            }),
            Self::Shape { start, end } => {
                if *start != 0 {
                    out.push(Attribute::int("start", *start));
                }
                if let Some(e) = end {
                    out.push(Attribute::int("end", *e));
                }
            }
            Self::Gather { axis } => out.push(Attribute::int("axis", *axis)),
            Self::Unsqueeze { axes: Some(a) } | Self::Squeeze { axes: Some(a) } => {
                out.push(Attribute::ints("axes", a))
            }
            Self::Cast { to } => out.push(Attribute::int("to", i64::from(to.to_onnx()))),
            Self::Unsupported { attributes, .. } => out.extend(attributes.iter().cloned()),
            _ => {}
        }
        out
    }
}

fn parse_constant(r: &mut AttrReader<'_>) -> Result<Tensor, GraphError> {
    if let Some(t) = r.tensor("value")? {
        return Ok(t);
    }
    if let Some(v) = r.float("value_float")? {
        return Ok(Tensor::from_f32(vec![], &[v]));
    }
    if let Some(v) = r.int("value_int")? {
        return Ok(Tensor::from_i64(vec![], &[v]));
    }
    if let Some(v) = r.ints("value_ints")? {
        return Ok(Tensor::from_i64(vec![v.len()], &v));
    }
    if let Some(v) = r.floats("value_floats")? {
        return Ok(Tensor::from_f32(vec![v.len()], &v));
    }
    Err(r.error(
        "value",
        "is missing or of a kind effp does not read (sparse or string constants)",
    ))
}
