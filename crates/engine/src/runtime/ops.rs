//! One function per op: ONNX semantics on tch tensors.

use effp_graph::ir::{AutoPad, Graph, Node, Op, PoolAttrs, ResizeAttrs, Window};
use tch::{Kind, TchError, Tensor};

use crate::error::EngineError;

type R<T> = Result<T, TchError>;

/// What an op may need besides its inputs.
pub(crate) struct Context<'g> {
    pub graph: &'g Graph,
    /// Batch size of this forward pass.
    pub batch: i64,
    /// Batch size the graph's shapes were inferred with.
    pub reference_batch: i64,
    /// Convolutions in full float32 (no TF32 on GPUs that have it), for checks that
    /// compare two networks to float tolerance.
    pub precise: bool,
}

/// A convolution, in full float32 when `precise` (cuDNN otherwise uses TF32, with
/// about three decimal digits, for float32 convolutions on GPUs that have it).
#[allow(clippy::too_many_arguments)]
fn convolution(
    precise: bool,
    input: &Tensor,
    weight: &Tensor,
    bias: Option<&Tensor>,
    strides: &[i64],
    padding: &[i64],
    dilations: &[i64],
    transposed: bool,
    output_padding: &[i64],
    groups: i64,
) -> R<Tensor> {
    if precise {
        input.f_internal_convolution(
            weight,
            bias,
            strides,
            padding,
            dilations,
            transposed,
            output_padding,
            groups,
            false,
            false,
            true,
            false,
        )
    } else {
        input.f_convolution(
            weight,
            bias,
            strides,
            padding,
            dilations,
            transposed,
            output_padding,
            groups,
        )
    }
}

fn err(msg: impl Into<String>) -> TchError {
    TchError::Kind(msg.into())
}

/// Refuses, before anything runs, what the runtime cannot execute.
pub(crate) fn check_supported(g: &Graph, node: &Node) -> Result<(), EngineError> {
    let unsupported = |reason: &str| EngineError::Unsupported {
        node: node.name.clone(),
        op: node.op.op_type().to_string(),
        reason: reason.to_string(),
    };
    let rank = node
        .input(0)
        .and_then(|x| g.shape(x))
        .map_or(0, <[usize]>::len);
    match &node.op {
        Op::MaxPool(p) | Op::AveragePool(p) => {
            if rank != 4 {
                return Err(unsupported("only 2-D pooling (N×C×H×W) is supported"));
            }
            let asymmetric = !symmetric(&p.window.pads);
            if matches!(node.op, Op::AveragePool(_)) && asymmetric && !p.count_include_pad {
                return Err(unsupported("asymmetric padding without count_include_pad"));
            }
        }
        Op::Resize(r) => {
            if rank != 4 {
                return Err(unsupported("only 2-D resizing (N×C×H×W) is supported"));
            }
            resize_kind(r).map_err(|e| unsupported(&e))?;
        }
        Op::Pad { mode, .. } if !["constant", "reflect", "edge"].contains(&mode.as_str()) => {
            return Err(unsupported("pad mode must be constant, reflect or edge"));
        }
        Op::ConvTranspose(c) if !symmetric(&c.window.pads) => {
            return Err(unsupported("asymmetric padding in ConvTranspose"));
        }
        _ if g.is_folded(node) => {}
        Op::Shape { .. } | Op::Range | Op::ConstantOfShape { .. } => {
            return Err(unsupported(
                "its result depends on the image data, not only on sizes; effp folds size \
                 computations at the input size and cannot run data-dependent ones",
            ));
        }
        Op::Gather { .. } => {
            let scalar_or_vector = node
                .input(1)
                .and_then(|i| g.shape(i))
                .is_some_and(|s| s.len() <= 1);
            if !scalar_or_vector || node.input(1).and_then(|i| g.known(i)).is_none() {
                return Err(unsupported(
                    "Gather of a feature map needs constant scalar or vector indices",
                ));
            }
        }
        Op::Unsqueeze { axes } | Op::Squeeze { axes }
            if axes.is_none() && node.input(1).is_some_and(|i| g.known(i).is_none()) =>
        {
            return Err(unsupported("the axes are computed from the image data"));
        }
        Op::Expand if node.input(1).and_then(|i| g.known(i)).is_none() => {
            return Err(unsupported(
                "the target shape is computed from the image data",
            ));
        }
        _ => {}
    }
    Ok(())
}

fn symmetric(pads: &[i64]) -> bool {
    let n = pads.len() / 2;
    (0..n).all(|i| pads[i] == pads[i + n])
}

/// Integer values of a constant or folded input (shapes, sizes, axes).
fn ints(ctx: &Context<'_>, node: &Node, position: usize) -> Option<Vec<i64>> {
    node.input(position)
        .and_then(|id| ctx.graph.known(id))
        .and_then(|t| t.to_i64_vec())
}

fn floats(ctx: &Context<'_>, node: &Node, position: usize) -> Option<Vec<f32>> {
    node.input(position)
        .and_then(|id| ctx.graph.known(id))
        .map(|t| t.to_f32_vec())
}

/// Numpy broadcasting of a tensor's size and a target shape (ONNX Expand).
fn expanded(size: &[i64], target: &[i64]) -> Vec<i64> {
    let rank = size.len().max(target.len());
    (0..rank)
        .map(|i| {
            let pick = |s: &[i64]| {
                if i + s.len() >= rank {
                    s[i + s.len() - rank]
                } else {
                    1
                }
            };
            let (a, b) = (pick(size), pick(target));
            if a == 1 { b } else { a }
        })
        .collect()
}

fn arg<'a>(args: &[Option<&'a Tensor>], i: usize) -> R<&'a Tensor> {
    args.get(i)
        .copied()
        .flatten()
        .ok_or_else(|| err(format!("input #{i} is missing")))
}

fn norm(axis: i64, rank: usize) -> i64 {
    if axis < 0 { axis + rank as i64 } else { axis }
}

/// Executes one node.
pub(crate) fn run(
    ctx: &Context<'_>,
    node: &Node,
    args: &[Option<&Tensor>],
    gate: Option<&Tensor>,
) -> R<Vec<Tensor>> {
    let x = arg(args, 0)?;
    let one = |t: Tensor| Ok(vec![t]);
    match &node.op {
        Op::Conv(c) => {
            let mut w = arg(args, 1)?.shallow_clone();
            if let Some(gate) = gate {
                let mut shape = vec![1i64; w.dim()];
                shape[1] = -1;
                w = w.f_mul(&gate.f_reshape(&shape)?)?;
            }
            let spatial = x.dim() - 2;
            let (input, padding) = pad_input(x, &c.window, spatial, &w.size()[2..], 0.0)?;
            let strides = window_vec(&c.window.strides, spatial, 1);
            let dilations = window_vec(&c.window.dilations, spatial, 1);
            one(convolution(
                ctx.precise,
                &input,
                &w,
                args.get(2).copied().flatten(),
                &strides,
                &padding,
                &dilations,
                false,
                &vec![0; spatial],
                c.group,
            )?)
        }
        Op::ConvTranspose(c) => {
            let mut w = arg(args, 1)?.shallow_clone();
            if let Some(gate) = gate {
                let mut shape = vec![1i64; w.dim()];
                shape[0] = -1;
                w = w.f_mul(&gate.f_reshape(&shape)?)?;
            }
            let spatial = x.dim() - 2;
            let padding: Vec<i64> = (0..spatial)
                .map(|i| c.window.pads.get(i).copied().unwrap_or(0))
                .collect();
            let out_pad: Vec<i64> = (0..spatial)
                .map(|i| c.output_padding.get(i).copied().unwrap_or(0))
                .collect();
            let strides = window_vec(&c.window.strides, spatial, 1);
            let dilations = window_vec(&c.window.dilations, spatial, 1);
            one(convolution(
                ctx.precise,
                x,
                &w,
                args.get(2).copied().flatten(),
                &strides,
                &padding,
                &dilations,
                true,
                &out_pad,
                c.group,
            )?)
        }
        Op::BatchNormalization { epsilon, .. } => one(x.f_batch_norm(
            Some(arg(args, 1)?),
            Some(arg(args, 2)?),
            Some(arg(args, 3)?),
            Some(arg(args, 4)?),
            false,
            0.0,
            *epsilon as f64,
            true,
        )?),
        Op::Gemm {
            alpha,
            beta,
            trans_a,
            trans_b,
        } => {
            let a = if *trans_a {
                x.f_transpose(0, 1)?
            } else {
                x.shallow_clone()
            };
            let mut b = arg(args, 1)?.shallow_clone();
            if let Some(gate) = gate {
                let g = if *trans_b {
                    gate.f_reshape([1, -1])?
                } else {
                    gate.f_reshape([-1, 1])?
                };
                b = b.f_mul(&g)?;
            }
            let b = if *trans_b { b.f_transpose(0, 1)? } else { b };
            let mut y = a.f_matmul(&b)?;
            if *alpha != 1.0 {
                y = y.f_mul_scalar(*alpha as f64)?;
            }
            if let Some(c) = args.get(2).copied().flatten() {
                y = y.f_add(&c.f_mul_scalar(*beta as f64)?)?;
            }
            one(y)
        }
        Op::MatMul => one(x.f_matmul(arg(args, 1)?)?),
        Op::Add => one(x.f_add(arg(args, 1)?)?),
        Op::Sub => one(x.f_sub(arg(args, 1)?)?),
        Op::Mul => one(x.f_mul(arg(args, 1)?)?),
        Op::Div => one(x.f_div(arg(args, 1)?)?),
        Op::Relu => one(x.f_relu()?),
        Op::LeakyRelu { alpha } => {
            one(x.f_where_self(&x.f_ge(0.0)?, &x.f_mul_scalar(*alpha as f64)?)?)
        }
        Op::Sigmoid => one(x.f_sigmoid()?),
        Op::HardSigmoid { alpha, beta } => one(x
            .f_mul_scalar(*alpha as f64)?
            .f_add_scalar(*beta as f64)?
            .f_clamp(0.0, 1.0)?),
        Op::HardSwish => one(x.f_hardswish()?),
        Op::Clip { min, max } => {
            let lo = min.or_else(|| floats(ctx, node, 1).and_then(|v| v.first().copied()));
            let hi = max.or_else(|| floats(ctx, node, 2).and_then(|v| v.first().copied()));
            let mut y = x.shallow_clone();
            if let Some(lo) = lo {
                y = y.f_clamp_min(lo as f64)?;
            }
            if let Some(hi) = hi {
                y = y.f_clamp_max(hi as f64)?;
            }
            one(y)
        }
        Op::Softmax {
            axis,
            flatten_to_2d,
        } => {
            let rank = x.dim();
            let a = norm(*axis, rank);
            if *flatten_to_2d {
                let size = x.size();
                let lead: i64 = size[..a as usize].iter().product();
                one(x
                    .f_reshape([lead, -1])?
                    .f_softmax(1, Kind::Float)?
                    .f_reshape(&size)?)
            } else {
                one(x.f_softmax(a, Kind::Float)?)
            }
        }
        Op::Concat { axis } => {
            let parts: Vec<&Tensor> = args.iter().flatten().copied().collect();
            one(Tensor::f_cat(&parts, norm(*axis, x.dim()))?)
        }
        Op::Split {
            axis,
            split,
            num_outputs,
        } => {
            let a = norm(*axis, x.dim());
            let total = x.size()[a as usize];
            let n = node.outputs.len() as i64;
            let sizes: Vec<i64> = match ints(ctx, node, 1).or_else(|| split.clone()) {
                Some(s) => s,
                None => {
                    let parts = num_outputs.unwrap_or(n);
                    let chunk = (total + parts - 1) / parts;
                    (0..parts).map(|i| chunk.min(total - i * chunk)).collect()
                }
            };
            x.f_split_with_sizes(&sizes, a)
        }
        Op::Slice { legacy } => {
            let (starts, ends, axes, steps) = match legacy {
                Some((s, e, a)) => (
                    s.clone(),
                    e.clone(),
                    (!a.is_empty()).then(|| a.clone()),
                    None,
                ),
                None => (
                    ints(ctx, node, 1).ok_or_else(|| err("starts are not constant"))?,
                    ints(ctx, node, 2).ok_or_else(|| err("ends are not constant"))?,
                    ints(ctx, node, 3),
                    ints(ctx, node, 4),
                ),
            };
            let axes = axes.unwrap_or_else(|| (0..starts.len() as i64).collect());
            let steps = steps.unwrap_or_else(|| vec![1; starts.len()]);
            let mut y = x.shallow_clone();
            for i in 0..starts.len() {
                let a = norm(axes[i], x.dim());
                let d = y.size()[a as usize];
                let fix = |v: i64| if v < 0 { v.saturating_add(d) } else { v };
                let step = steps[i];
                if step > 0 {
                    let (s, e) = (fix(starts[i]).clamp(0, d), fix(ends[i]).clamp(0, d));
                    y = y.f_slice(a, s, e.max(s), step)?;
                } else {
                    let (s, e) = (
                        fix(starts[i]).clamp(0, d - 1),
                        fix(ends[i]).clamp(-1, d - 1),
                    );
                    let index: Vec<i64> =
                        (0..).map(|k| s + k * step).take_while(|&v| v > e).collect();
                    y = y.f_index_select(a, &Tensor::from_slice(&index).to_device(y.device()))?;
                }
            }
            one(y)
        }
        Op::Reshape { allowzero } => {
            let mut target = ints(ctx, node, 1).ok_or_else(|| err("the shape is not constant"))?;
            let size = x.size();
            for (i, t) in target.iter_mut().enumerate() {
                if *t == 0 && !allowzero {
                    *t = size.get(i).copied().unwrap_or(0);
                }
            }
            if ctx.batch != ctx.reference_batch
                && target.first() == Some(&ctx.reference_batch)
                && size.first() == Some(&ctx.batch)
            {
                target[0] = ctx.batch;
            }
            one(x.f_reshape(&target)?)
        }
        Op::Transpose { perm } => {
            let perm: Vec<i64> = perm
                .clone()
                .unwrap_or_else(|| (0..x.dim() as i64).rev().collect());
            one(x.f_permute(&perm)?)
        }
        Op::Flatten { axis } => {
            let a = norm(*axis, x.dim()) as usize;
            let lead: i64 = x.size()[..a].iter().product();
            one(x.f_reshape([lead, -1])?)
        }
        Op::MaxPool(p) => one(pool(x, p, true)?),
        Op::AveragePool(p) => one(pool(x, p, false)?),
        Op::GlobalAveragePool => {
            let dims: Vec<i64> = (2..x.dim() as i64).collect();
            one(x.f_mean_dim(Some(dims.as_slice()), true, Kind::Float)?)
        }
        Op::Resize(r) => one(resize(ctx, node, x, r)?),
        Op::Pad { mode, pads, value } => {
            let rank = x.dim();
            let pads = pads
                .clone()
                .or_else(|| ints(ctx, node, 1))
                .ok_or_else(|| err("pads are not constant"))?;
            let fill = floats(ctx, node, 2)
                .and_then(|v| v.first().copied())
                .unwrap_or(*value);
            let axes: Vec<usize> = ints(ctx, node, 3)
                .map(|a| a.iter().map(|&v| norm(v, rank) as usize).collect())
                .unwrap_or_else(|| (0..rank).collect());
            let k = axes.len();
            let mut begin = vec![0i64; rank];
            let mut end = vec![0i64; rank];
            for (i, &a) in axes.iter().enumerate() {
                begin[a] = pads[i];
                end[a] = pads[i + k];
            }
            let torch_pads: Vec<i64> = (0..rank).rev().flat_map(|a| [begin[a], end[a]]).collect();
            let torch_mode = match mode.as_str() {
                "reflect" => "reflect",
                "edge" => "replicate",
                _ => "constant",
            };
            if torch_mode == "constant" {
                if fill == 0.0 {
                    one(x.f_constant_pad_nd(&torch_pads)?)
                } else {
                    one(x.f_pad(&torch_pads, "constant", fill as f64)?)
                }
            } else {
                let inner = 2 * (rank - 2);
                if torch_pads[inner..].iter().any(|&p| p != 0) {
                    return Err(err("reflect/edge padding of the batch or channel axis"));
                }
                one(x.f_pad(&torch_pads[..inner], torch_mode, None)?)
            }
        }
        Op::Identity => one(x.shallow_clone()),
        Op::Gather { axis } => {
            let a = norm(*axis, x.dim());
            let n = x.size()[a as usize];
            let indices: Vec<i64> = ints(ctx, node, 1)
                .ok_or_else(|| err("indices are not constant"))?
                .into_iter()
                .map(|i| if i < 0 { i + n } else { i })
                .collect();
            let picked =
                x.f_index_select(a, &Tensor::from_slice(&indices).to_device(x.device()))?;
            let scalar = node
                .input(1)
                .and_then(|i| ctx.graph.shape(i))
                .is_some_and(<[usize]>::is_empty);
            one(if scalar {
                picked.f_squeeze_dim(a)?
            } else {
                picked
            })
        }
        Op::Unsqueeze { axes } => {
            let axes = axes
                .clone()
                .or_else(|| ints(ctx, node, 1))
                .ok_or_else(|| err("axes are not constant"))?;
            let rank = x.dim() + axes.len();
            let mut axes: Vec<i64> = axes.iter().map(|&a| norm(a, rank)).collect();
            axes.sort_unstable();
            let mut y = x.shallow_clone();
            for a in axes {
                y = y.f_unsqueeze(a)?;
            }
            one(y)
        }
        Op::Squeeze { axes } => match axes.clone().or_else(|| ints(ctx, node, 1)) {
            Some(axes) => {
                let mut axes: Vec<i64> = axes.iter().map(|&a| norm(a, x.dim())).collect();
                axes.sort_unstable_by(|a, b| b.cmp(a));
                let mut y = x.shallow_clone();
                for a in axes {
                    y = y.f_squeeze_dim(a)?;
                }
                one(y)
            }
            None => one(x.f_squeeze()?),
        },
        Op::Cast { to } => {
            // The runtime computes in float32: casting to an integer type truncates.
            use effp_graph::ir::DataType;
            one(match to {
                t if t.is_float() => x.shallow_clone(),
                DataType::Bool => x.f_ne(0.0)?.f_to_kind(Kind::Float)?,
                _ => x.f_trunc()?,
            })
        }
        Op::Expand => {
            let target = ints(ctx, node, 1).ok_or_else(|| err("the shape is not constant"))?;
            one(x.f_broadcast_to(expanded(&x.size(), &target).as_slice())?)
        }
        Op::Compare(c) => {
            use effp_graph::ir::Comparison;
            let y = arg(args, 1)?;
            let b = match c {
                Comparison::Equal => x.f_eq_tensor(y)?,
                Comparison::Less => x.f_lt_tensor(y)?,
                Comparison::Greater => x.f_gt_tensor(y)?,
                Comparison::LessOrEqual => x.f_le_tensor(y)?,
                Comparison::GreaterOrEqual => x.f_ge_tensor(y)?,
            };
            one(b.f_to_kind(Kind::Float)?)
        }
        Op::Not => one(x.f_eq(0.0)?.f_to_kind(Kind::Float)?),
        Op::Where => {
            let (a, b) = (arg(args, 1)?, arg(args, 2)?);
            one(a.f_where_self(&x.f_ne(0.0)?, b)?)
        }
        Op::Shape { .. } | Op::Range | Op::ConstantOfShape { .. } => {
            Err(err("size computations are folded at build time"))
        }
        Op::Constant(_) | Op::Unsupported { .. } => Err(err("not executable")),
    }
}

fn window_vec(v: &[i64], n: usize, default: i64) -> Vec<i64> {
    (0..n)
        .map(|i| v.get(i).copied().unwrap_or(default))
        .collect()
}

/// Applies explicit or automatic padding: symmetric padding is passed to the kernel,
/// anything else is applied to the input first with `fill`.
fn pad_input(
    x: &Tensor,
    w: &Window,
    spatial: usize,
    kernel: &[i64],
    fill: f64,
) -> R<(Tensor, Vec<i64>)> {
    let size = x.size();
    let (begin, end): (Vec<i64>, Vec<i64>) = match w.auto_pad {
        AutoPad::NotSet => (
            (0..spatial)
                .map(|i| w.pads.get(i).copied().unwrap_or(0))
                .collect(),
            (0..spatial)
                .map(|i| w.pads.get(i + spatial).copied().unwrap_or(0))
                .collect(),
        ),
        AutoPad::Valid => (vec![0; spatial], vec![0; spatial]),
        AutoPad::SameUpper | AutoPad::SameLower => {
            let mut b = Vec::new();
            let mut e = Vec::new();
            for i in 0..spatial {
                let input = size[2 + i];
                let s = w.strides.get(i).copied().unwrap_or(1);
                let d = w.dilations.get(i).copied().unwrap_or(1);
                let out = (input + s - 1) / s;
                let total = ((out - 1) * s + (kernel[i] - 1) * d + 1 - input).max(0);
                let small = total / 2;
                if w.auto_pad == AutoPad::SameUpper {
                    b.push(small);
                    e.push(total - small);
                } else {
                    b.push(total - small);
                    e.push(small);
                }
            }
            (b, e)
        }
    };
    if begin == end {
        return Ok((x.shallow_clone(), begin));
    }
    let torch_pads: Vec<i64> = (0..spatial)
        .rev()
        .flat_map(|i| [begin[i], end[i]])
        .collect();
    let padded = if fill == 0.0 {
        x.f_constant_pad_nd(&torch_pads)?
    } else {
        x.f_pad(&torch_pads, "constant", fill)?
    };
    Ok((padded, vec![0; spatial]))
}

fn pool(x: &Tensor, p: &PoolAttrs, max: bool) -> R<Tensor> {
    let k = &p.window.kernel_shape;
    let fill = if max { f64::NEG_INFINITY } else { 0.0 };
    let (input, padding) = pad_input(x, &p.window, 2, k, fill)?;
    let strides = window_vec(&p.window.strides, 2, 1);
    if max {
        let dilations = window_vec(&p.window.dilations, 2, 1);
        input.f_max_pool2d(k.as_slice(), &strides, &padding, &dilations, p.ceil_mode)
    } else {
        input.f_avg_pool2d(
            k.as_slice(),
            &strides,
            &padding,
            p.ceil_mode,
            p.count_include_pad,
            None::<i64>,
        )
    }
}

enum ResizeKind {
    Nearest,
    Linear { align_corners: bool },
}

fn resize_kind(r: &ResizeAttrs) -> Result<ResizeKind, String> {
    let coord = r.coordinate_transformation_mode.as_str();
    match r.mode.as_str() {
        "nearest"
            if ["asymmetric", "half_pixel", "pytorch_half_pixel"].contains(&coord)
                && ["floor", "round_prefer_floor", "round_prefer_ceil"]
                    .contains(&r.nearest_mode.as_str()) =>
        {
            Ok(ResizeKind::Nearest)
        }
        "linear" if ["half_pixel", "pytorch_half_pixel"].contains(&coord) => {
            Ok(ResizeKind::Linear {
                align_corners: false,
            })
        }
        "linear" if coord == "align_corners" => Ok(ResizeKind::Linear {
            align_corners: true,
        }),
        _ => Err(format!(
            "mode '{}' with coordinate_transformation_mode '{coord}' and nearest_mode '{}' is not supported",
            r.mode, r.nearest_mode
        )),
    }
}

fn resize(ctx: &Context<'_>, node: &Node, x: &Tensor, r: &ResizeAttrs) -> R<Tensor> {
    let size = x.size();
    let (scales_at, sizes_at) = if node.inputs.len() == 2 {
        (1, usize::MAX)
    } else {
        (2, 3)
    };
    let (out, scales): (Vec<i64>, Vec<f64>) =
        match ints(ctx, node, sizes_at).filter(|v| !v.is_empty()) {
            Some(s) => (
                s[2..].to_vec(),
                (2..4).map(|i| s[i] as f64 / size[i] as f64).collect(),
            ),
            None => {
                let f = floats(ctx, node, scales_at)
                    .filter(|v| v.len() == 4)
                    .ok_or_else(|| err("scales are not constant"))?;
                (
                    (2..4)
                        .map(|i| (size[i] as f64 * f[i] as f64).floor() as i64)
                        .collect(),
                    vec![f[2] as f64, f[3] as f64],
                )
            }
        };
    match resize_kind(r).map_err(err)? {
        ResizeKind::Nearest => {
            let integer = scales.iter().all(|s| s.fract() == 0.0 && *s >= 1.0);
            if !integer && r.coordinate_transformation_mode != "asymmetric" {
                return Err(err(
                    "nearest resizing by a non-integer scale needs coordinate_transformation_mode asymmetric",
                ));
            }
            x.f_upsample_nearest2d(&out, scales[0], scales[1])
        }
        ResizeKind::Linear { align_corners } => {
            let (sh, sw) = if align_corners {
                (None, None)
            } else {
                (Some(scales[0]), Some(scales[1]))
            };
            x.f_upsample_bilinear2d(&out, align_corners, sh, sw)
        }
    }
}
