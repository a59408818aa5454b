//! Output shapes of each op from its input shapes and constant inputs.

use crate::ir::{AutoPad, ConvAttrs, Op, PoolAttrs, Tensor, Window};

use super::fold::shape_range;

/// A shape rule's failure, without node context (the caller adds it).
pub(crate) type ShapeResult<T> = Result<T, String>;

/// Largest dimension accepted from a file; larger ones are treated as corrupt.
const MAX_DIM: i128 = 1 << 40;

/// What a shape rule may look at for one node.
pub(crate) struct NodeInputs<'a> {
    /// Shape of each input position (`None` for an omitted optional input).
    pub shapes: Vec<Option<&'a [usize]>>,
    /// Constant data of each input position, where it is an initializer.
    pub constants: Vec<Option<&'a Tensor>>,
    /// Number of outputs the node declares.
    pub output_count: usize,
}

impl<'a> NodeInputs<'a> {
    fn shape(&self, i: usize, role: &str) -> ShapeResult<&'a [usize]> {
        self.shapes
            .get(i)
            .copied()
            .flatten()
            .ok_or_else(|| format!("is missing its {role} input (#{i})"))
    }

    fn has(&self, i: usize) -> bool {
        self.shapes.get(i).copied().flatten().is_some()
    }

    /// Integer values of a constant input, for shape-like inputs.
    fn ints(&self, i: usize, role: &str) -> ShapeResult<Option<Vec<i64>>> {
        if !self.has(i) {
            return Ok(None);
        }
        let t = self.constants.get(i).copied().flatten().ok_or_else(|| {
            format!(
                "its {role} input (#{i}) is computed from the image data at run time, not from \
                 sizes; effp needs shapes it can compute from the input size (export with \
                 dynamic=False, or simplify the model with onnxslim/onnxsim)"
            )
        })?;
        t.to_i64_vec()
            .map(Some)
            .ok_or_else(|| format!("its {role} input (#{i}) must hold integers"))
    }

    /// A known scalar input as an exact number: integer or float.
    fn scalar(&self, i: usize, role: &str) -> ShapeResult<Scalar> {
        let t =
            self.constants.get(i).copied().flatten().ok_or_else(|| {
                format!("its {role} input (#{i}) is missing or computed at run time")
            })?;
        if t.len() != 1 {
            return Err(format!(
                "its {role} input (#{i}) has {} elements; it must be a scalar",
                t.len()
            ));
        }
        Ok(match t.to_i64_vec() {
            Some(v) if !t.dtype().is_float() => Scalar::Int(v[0]),
            _ => Scalar::Float(t.to_f32_vec()[0] as f64),
        })
    }

    fn floats(&self, i: usize, role: &str) -> ShapeResult<Option<Vec<f32>>> {
        if !self.has(i) {
            return Ok(None);
        }
        let t = self.constants.get(i).copied().flatten().ok_or_else(|| {
            format!("its {role} input (#{i}) is computed at run time; effp needs it as a constant")
        })?;
        Ok(Some(t.to_f32_vec()))
    }
}

/// A scalar input of `Range`.
#[derive(Debug, Clone, Copy)]
enum Scalar {
    Int(i64),
    Float(f64),
}

/// A computed size as a dimension, saturating at `usize::MAX`: the caller holds it
/// to the [`Limits`](crate::Limits), which report an oversized tensor properly.
fn size(v: i128, what: &str) -> ShapeResult<usize> {
    if v < 0 {
        return Err(format!("{what} would be {v}, which is not a valid size"));
    }
    Ok(usize::try_from(v).unwrap_or(usize::MAX))
}

/// Elements of a shape as i128, saturating: a zero axis gives 0 whatever the others.
fn volume(s: &[usize]) -> i128 {
    if s.contains(&0) {
        return 0;
    }
    s.iter()
        .try_fold(1i128, |acc, &d| acc.checked_mul(d as i128))
        .unwrap_or(i128::MAX)
}

/// Size arithmetic that overflows i128 is a nonsense size, reported like one.
fn overflow(what: &str) -> String {
    format!("{what} overflows; the attributes or shapes are not valid sizes")
}

fn dim(v: i128, what: &str) -> ShapeResult<usize> {
    if (0..=MAX_DIM).contains(&v) {
        Ok(v as usize)
    } else {
        Err(format!("{what} would be {v}, which is not a valid size"))
    }
}

/// Resolves a possibly negative axis against a rank.
pub fn norm_axis(axis: i64, rank: usize) -> ShapeResult<usize> {
    let r = rank as i64;
    if axis < -r || axis >= r.max(1) {
        return Err(format!(
            "axis {axis} is out of range for a rank-{rank} tensor"
        ));
    }
    Ok(if axis < 0 {
        (axis + r) as usize
    } else {
        axis as usize
    })
}

/// Numpy broadcasting of two shapes.
pub fn broadcast(a: &[usize], b: &[usize]) -> ShapeResult<Vec<usize>> {
    let rank = a.len().max(b.len());
    let mut out = vec![0; rank];
    for i in 0..rank {
        let da = if i + a.len() >= rank {
            a[i + a.len() - rank]
        } else {
            1
        };
        let db = if i + b.len() >= rank {
            b[i + b.len() - rank]
        } else {
            1
        };
        out[i] = match (da, db) {
            (x, y) if x == y => x,
            (1, y) => y,
            (x, 1) => x,
            _ => {
                return Err(format!(
                    "shapes {a:?} and {b:?} cannot be broadcast together"
                ));
            }
        };
    }
    Ok(out)
}

/// Most inputs an op takes in any opset effp reads; `None` for Concat (any number).
fn max_inputs(op: &Op) -> Option<usize> {
    Some(match op {
        Op::BatchNormalization { .. } => 5,
        Op::Slice { .. } => 5,
        Op::Resize(_) | Op::Pad { .. } => 4,
        Op::Conv(_) | Op::ConvTranspose(_) | Op::Gemm { .. } | Op::Clip { .. } => 3,
        Op::MatMul | Op::Add | Op::Sub | Op::Mul | Op::Div | Op::Split { .. } => 2,
        Op::Reshape { .. } => 2,
        Op::Range | Op::Where => 3,
        Op::Gather { .. }
        | Op::Unsqueeze { .. }
        | Op::Squeeze { .. }
        | Op::Expand
        | Op::Compare(_) => 2,
        Op::Shape { .. } | Op::Cast { .. } | Op::ConstantOfShape { .. } | Op::Not => 1,
        Op::Relu
        | Op::LeakyRelu { .. }
        | Op::Sigmoid
        | Op::HardSigmoid { .. }
        | Op::HardSwish
        | Op::Identity
        | Op::Softmax { .. }
        | Op::Transpose { .. }
        | Op::Flatten { .. }
        | Op::MaxPool(_)
        | Op::AveragePool(_)
        | Op::GlobalAveragePool => 1,
        Op::Constant(_) => 0,
        Op::Concat { .. } | Op::Unsupported { .. } => return None,
    })
}

/// The output shapes of `op` given its inputs.
pub(crate) fn infer(op: &Op, x: &NodeInputs<'_>) -> ShapeResult<Vec<Vec<usize>>> {
    // Inputs past the op's arity would be ignored here but read by later passes.
    if let Some(max) = max_inputs(op)
        && x.shapes.len() > max
    {
        return Err(format!(
            "has {} inputs, but {} takes at most {max}",
            x.shapes.len(),
            op.op_type()
        ));
    }
    let one = |s: Vec<usize>| Ok(vec![s]);
    match op {
        Op::Conv(c) => one(conv(c, x)?),
        Op::ConvTranspose(c) => one(conv_transpose(c, x)?),
        Op::MaxPool(p) | Op::AveragePool(p) => one(pool(p, x.shape(0, "data")?)?),
        Op::GlobalAveragePool => {
            let s = x.shape(0, "data")?;
            if s.len() < 3 {
                return Err(format!("expects an N×C×spatial input, got {s:?}"));
            }
            one(s[..2]
                .iter()
                .copied()
                .chain(std::iter::repeat_n(1, s.len() - 2))
                .collect())
        }
        Op::BatchNormalization { .. } => {
            let s = x.shape(0, "data")?;
            let c = *s
                .get(1)
                .ok_or_else(|| format!("expects a channel axis, got {s:?}"))?;
            for (i, role) in [(1, "scale"), (2, "bias"), (3, "mean"), (4, "variance")] {
                let p = x.shape(i, role)?;
                if p != [c] {
                    return Err(format!(
                        "{role} has shape {p:?} but the input has {c} channels"
                    ));
                }
            }
            one(s.to_vec())
        }
        Op::Relu
        | Op::LeakyRelu { .. }
        | Op::Sigmoid
        | Op::HardSigmoid { .. }
        | Op::HardSwish
        | Op::Clip { .. }
        | Op::Identity => one(x.shape(0, "data")?.to_vec()),
        Op::Softmax { axis, .. } => {
            let s = x.shape(0, "data")?;
            norm_axis(*axis, s.len())?;
            one(s.to_vec())
        }
        Op::Add | Op::Sub | Op::Mul | Op::Div => {
            one(broadcast(x.shape(0, "A")?, x.shape(1, "B")?)?)
        }
        Op::Gemm {
            trans_a, trans_b, ..
        } => {
            let (a, b) = (x.shape(0, "A")?, x.shape(1, "B")?);
            if a.len() != 2 || b.len() != 2 {
                return Err(format!("expects 2-D operands, got {a:?} and {b:?}"));
            }
            let (m, k) = if *trans_a { (a[1], a[0]) } else { (a[0], a[1]) };
            let (k2, n) = if *trans_b { (b[1], b[0]) } else { (b[0], b[1]) };
            if k != k2 {
                return Err(format!("inner dimensions differ: A is {a:?}, B is {b:?}"));
            }
            if x.has(2) {
                broadcast(&[m, n], x.shape(2, "C")?)?;
            }
            one(vec![m, n])
        }
        Op::MatMul => one(matmul(x.shape(0, "A")?, x.shape(1, "B")?)?),
        Op::Concat { axis } => {
            let first = x.shape(0, "first")?;
            let a = norm_axis(*axis, first.len())?;
            let mut out = first.to_vec();
            out[a] = 0;
            for (i, s) in x.shapes.iter().enumerate() {
                let s = s.ok_or_else(|| format!("input #{i} is empty"))?;
                if s.len() != first.len()
                    || s.iter()
                        .zip(first)
                        .enumerate()
                        .any(|(d, (p, q))| d != a && p != q)
                {
                    return Err(format!(
                        "input #{i} has shape {s:?}, which does not fit {first:?} along axis {axis}"
                    ));
                }
                out[a] = out[a]
                    .checked_add(s[a])
                    .ok_or_else(|| overflow("the concatenated size"))?;
            }
            one(out)
        }
        Op::Split {
            axis,
            split,
            num_outputs,
        } => {
            let s = x.shape(0, "data")?;
            let a = norm_axis(*axis, s.len())?;
            let sizes = split_sizes(s[a], x, split.as_deref(), *num_outputs)?;
            Ok(sizes
                .into_iter()
                .map(|n| {
                    let mut o = s.to_vec();
                    o[a] = n;
                    o
                })
                .collect())
        }
        Op::Slice { legacy } => one(slice(x, legacy.as_ref())?),
        Op::Reshape { allowzero } => one(reshape(x, *allowzero)?),
        Op::Transpose { perm } => {
            let s = x.shape(0, "data")?;
            let perm: Vec<i64> = perm
                .clone()
                .unwrap_or_else(|| (0..s.len() as i64).rev().collect());
            let mut seen = vec![false; s.len()];
            let mut out = Vec::with_capacity(s.len());
            for &p in &perm {
                let p = usize::try_from(p).ok().filter(|&p| p < s.len() && !seen[p]);
                let p = p.ok_or_else(|| {
                    format!("perm {perm:?} is not a permutation of 0..{}", s.len())
                })?;
                seen[p] = true;
                out.push(s[p]);
            }
            if out.len() != s.len() {
                return Err(format!("perm {perm:?} does not cover all {} axes", s.len()));
            }
            one(out)
        }
        Op::Flatten { axis } => {
            let s = x.shape(0, "data")?;
            let a = if *axis == s.len() as i64 {
                s.len()
            } else {
                norm_axis(*axis, s.len())?
            };
            one(vec![
                dim(volume(&s[..a]), "the leading size")?,
                dim(volume(&s[a..]), "the trailing size")?,
            ])
        }
        Op::Resize(_) => one(resize(x)?),
        Op::Pad { pads, .. } => one(pad(x, pads.as_deref())?),
        Op::Constant(t) => one(t.dims().to_vec()),
        Op::Shape { .. } => {
            let (start, end) = shape_range(op, x.shape(0, "data")?.len());
            one(vec![end - start])
        }
        Op::Gather { axis } => {
            let (s, q) = (x.shape(0, "data")?, x.shape(1, "indices")?);
            let a = norm_axis(*axis, s.len())?;
            one(s[..a].iter().chain(q).chain(&s[a + 1..]).copied().collect())
        }
        Op::Unsqueeze { axes } => {
            let s = x.shape(0, "data")?;
            let axes = match axes {
                Some(a) => a.clone(),
                None => x.ints(1, "axes")?.ok_or("is missing its axes")?,
            };
            let rank = s.len() + axes.len();
            let mut inserted = vec![false; rank];
            for &a in &axes {
                let a = norm_axis(a, rank)?;
                if std::mem::replace(&mut inserted[a], true) {
                    return Err(format!("axes {axes:?} name axis {a} twice"));
                }
            }
            let mut rest = s.iter();
            one(inserted
                .iter()
                .map(|&new| {
                    if new {
                        1
                    } else {
                        *rest.next().expect("rank adds up")
                    }
                })
                .collect())
        }
        Op::Squeeze { axes } => {
            let s = x.shape(0, "data")?;
            let axes = match axes {
                Some(a) => Some(a.clone()),
                None => x.ints(1, "axes")?,
            };
            let mut drop = vec![false; s.len()];
            match axes {
                Some(axes) => {
                    for a in axes {
                        let a = norm_axis(a, s.len())?;
                        if s[a] != 1 {
                            return Err(format!("axis {a} of {s:?} has size {}, not 1", s[a]));
                        }
                        drop[a] = true;
                    }
                }
                None => drop.iter_mut().zip(s).for_each(|(d, &n)| *d = n == 1),
            }
            one(s
                .iter()
                .zip(&drop)
                .filter(|&(_, &d)| !d)
                .map(|(&n, _)| n)
                .collect())
        }
        Op::Range => {
            let (start, limit, delta) = (
                x.scalar(0, "start")?,
                x.scalar(1, "limit")?,
                x.scalar(2, "delta")?,
            );
            let n = match (start, limit, delta) {
                (Scalar::Int(s), Scalar::Int(l), Scalar::Int(d)) => {
                    let (s, l, d) = (s as i128, l as i128, d as i128);
                    if d == 0 {
                        return Err("delta is 0".into());
                    }
                    ((l - s + d - d.signum()) / d).max(0)
                }
                _ => {
                    let f = |v| match v {
                        Scalar::Int(i) => i as f64,
                        Scalar::Float(f) => f,
                    };
                    let n = ((f(limit) - f(start)) / f(delta)).ceil();
                    if n.is_nan() || f(delta) == 0.0 {
                        return Err("start, limit and delta give no valid length".into());
                    }
                    // Saturates: +inf becomes i128::MAX, refused by the limits.
                    (n as i128).max(0)
                }
            };
            one(vec![size(n, "the range length")?])
        }
        Op::Cast { .. } | Op::Not => one(x.shape(0, "data")?.to_vec()),
        Op::ConstantOfShape { .. } => {
            let target = x.ints(0, "shape")?.ok_or("is missing its shape input")?;
            one(target
                .iter()
                .map(|&d| size(d as i128, "a dimension"))
                .collect::<ShapeResult<_>>()?)
        }
        Op::Expand => {
            let s = x.shape(0, "data")?;
            let target = x.ints(1, "shape")?.ok_or("is missing its shape input")?;
            let target: Vec<usize> = target
                .iter()
                .map(|&d| size(d as i128, "a dimension"))
                .collect::<ShapeResult<_>>()?;
            one(broadcast(s, &target)?)
        }
        Op::Compare(_) => one(broadcast(x.shape(0, "A")?, x.shape(1, "B")?)?),
        Op::Where => one(broadcast(
            &broadcast(x.shape(0, "condition")?, x.shape(1, "X")?)?,
            x.shape(2, "Y")?,
        )?),
        Op::Unsupported { .. } => Err("is not supported".into()),
    }
}

fn spatial_out(
    w: &Window,
    i: usize,
    input: usize,
    kernel: usize,
    ceil: bool,
) -> ShapeResult<usize> {
    // Every term fits i128 (i64 attributes, usize sizes); the checked operations
    // guard the products and sums of them.
    let (stride, dil) = (w.stride(i) as i128, w.dilation(i) as i128);
    let (input, kernel) = (input as i128, kernel as i128);
    let effective = (kernel - 1)
        .checked_mul(dil)
        .and_then(|v| v.checked_add(1))
        .ok_or_else(|| overflow("the dilated window"))?;
    let out = match w.auto_pad {
        AutoPad::SameUpper | AutoPad::SameLower => (input + stride - 1) / stride,
        AutoPad::Valid => {
            if input < effective {
                return Err(format!(
                    "the window {effective} is larger than the input {input} on spatial axis {i}"
                ));
            }
            (input - effective) / stride + 1
        }
        AutoPad::NotSet => {
            let n = w.kernel_shape.len().max(w.pads.len() / 2);
            let begin = w.pads.get(i).copied().unwrap_or(0) as i128;
            let end = w.pads.get(i + n).copied().unwrap_or(0) as i128;
            let padded = input + begin + end;
            let span = padded
                .checked_sub(effective)
                .ok_or_else(|| overflow("the padded window"))?;
            if span < 0 {
                return Err(format!(
                    "the window {effective} is larger than the padded input {padded} on spatial axis {i}"
                ));
            }
            let mut out = if ceil {
                (span + stride - 1) / stride + 1
            } else {
                span / stride + 1
            };
            // The last window must start inside the input or its left padding.
            if ceil && (out - 1) * stride >= input + begin {
                out -= 1;
            }
            out
        }
    };
    dim(out, "the output size")
}

fn check_window_rank(w: &Window, spatial: usize) -> ShapeResult<()> {
    for (name, len, want) in [
        ("kernel_shape", w.kernel_shape.len(), spatial),
        ("strides", w.strides.len(), spatial),
        ("dilations", w.dilations.len(), spatial),
        ("pads", w.pads.len(), 2 * spatial),
    ] {
        if len != 0 && len != want {
            return Err(format!(
                "attribute '{name}' has {len} entries, but the input has {spatial} spatial axes"
            ));
        }
    }
    Ok(())
}

/// Data and weight shapes of a (transposed) convolution, checked against each other
/// and the window attributes, with the number of spatial axes.
fn conv_operands<'a>(
    c: &ConvAttrs,
    x: &NodeInputs<'a>,
) -> ShapeResult<(&'a [usize], &'a [usize], usize)> {
    let (s, w) = (x.shape(0, "data")?, x.shape(1, "weight")?);
    if s.len() < 3 || w.len() != s.len() {
        return Err(format!(
            "expects N×C×spatial data and a weight of the same rank, got {s:?} and {w:?}"
        ));
    }
    let spatial = s.len() - 2;
    check_window_rank(&c.window, spatial)?;
    Ok((s, w, spatial))
}

fn conv(c: &ConvAttrs, x: &NodeInputs<'_>) -> ShapeResult<Vec<usize>> {
    let (s, w, spatial) = conv_operands(c, x)?;
    let group = c.group as usize;
    let expected = w[1].checked_mul(group);
    if expected != Some(s[1]) || !w[0].is_multiple_of(group) {
        return Err(format!(
            "input has {} channels but the weight {w:?} with group={group} expects {}",
            s[1],
            expected.map_or_else(|| "more than 2^64".to_string(), |e| e.to_string())
        ));
    }
    if x.has(2) && x.shape(2, "bias")? != [w[0]] {
        return Err(format!(
            "bias has shape {:?}, expected [{}]",
            x.shape(2, "bias")?,
            w[0]
        ));
    }
    let mut out = vec![s[0], w[0]];
    for i in 0..spatial {
        if let Some(&k) = c.window.kernel_shape.get(i)
            && k as usize != w[2 + i]
        {
            return Err(format!(
                "kernel_shape {:?} does not match the weight {w:?}",
                c.window.kernel_shape
            ));
        }
        out.push(spatial_out(&c.window, i, s[2 + i], w[2 + i], false)?);
    }
    Ok(out)
}

fn conv_transpose(c: &ConvAttrs, x: &NodeInputs<'_>) -> ShapeResult<Vec<usize>> {
    let (s, w, spatial) = conv_operands(c, x)?;
    if s[1] != w[0] || !s[1].is_multiple_of(c.group as usize) {
        return Err(format!(
            "input has {} channels but the weight {w:?} expects {}",
            s[1], w[0]
        ));
    }
    let cout = w[1]
        .checked_mul(c.group as usize)
        .ok_or_else(|| overflow("the output channel count (weight × group)"))?;
    let mut out = vec![s[0], cout];
    for i in 0..spatial {
        if let Some(&o) = c.output_shape.get(i) {
            out.push(dim(o as i128, "output_shape")?);
            continue;
        }
        let stride = c.window.stride(i) as i128;
        let input = s[2 + i] as i128;
        let size = match c.window.auto_pad {
            AutoPad::SameUpper | AutoPad::SameLower => input.checked_mul(stride),
            _ => {
                let k = w[2 + i] as i128;
                let begin = c.window.pads.get(i).copied().unwrap_or(0) as i128;
                let end = c.window.pads.get(i + spatial).copied().unwrap_or(0) as i128;
                let op = c.output_padding.get(i).copied().unwrap_or(0) as i128;
                let dil = c.window.dilation(i) as i128;
                (input - 1).checked_mul(stride).and_then(|v| {
                    (k - 1)
                        .checked_mul(dil)
                        .and_then(|kd| v.checked_add(kd))
                        .and_then(|v| v.checked_add(op + 1 - begin - end))
                })
            }
        };
        let size = size.ok_or_else(|| overflow("the output size"))?;
        out.push(dim(size, "the output size")?);
    }
    Ok(out)
}

fn pool(p: &PoolAttrs, s: &[usize]) -> ShapeResult<Vec<usize>> {
    let spatial = p.window.kernel_shape.len();
    if s.len() != spatial + 2 {
        return Err(format!(
            "kernel_shape has {spatial} axes but the input is {s:?}"
        ));
    }
    check_window_rank(&p.window, spatial)?;
    let mut out = s[..2].to_vec();
    for i in 0..spatial {
        out.push(spatial_out(
            &p.window,
            i,
            s[2 + i],
            p.window.kernel_shape[i] as usize,
            p.ceil_mode,
        )?);
    }
    Ok(out)
}

fn matmul(a: &[usize], b: &[usize]) -> ShapeResult<Vec<usize>> {
    if a.is_empty() || b.is_empty() {
        return Err("MatMul operands must have at least one axis".into());
    }
    let a2: Vec<usize> = if a.len() == 1 {
        vec![1, a[0]]
    } else {
        a.to_vec()
    };
    let b2: Vec<usize> = if b.len() == 1 {
        vec![b[0], 1]
    } else {
        b.to_vec()
    };
    let (m, k) = (a2[a2.len() - 2], a2[a2.len() - 1]);
    let (k2, n) = (b2[b2.len() - 2], b2[b2.len() - 1]);
    if k != k2 {
        return Err(format!("inner dimensions differ: {a:?} × {b:?}"));
    }
    let mut out = broadcast(&a2[..a2.len() - 2], &b2[..b2.len() - 2])?;
    if a.len() > 1 {
        out.push(m);
    }
    if b.len() > 1 {
        out.push(n);
    }
    Ok(out)
}

fn split_sizes(
    total: usize,
    x: &NodeInputs<'_>,
    attr: Option<&[i64]>,
    num_outputs: Option<i64>,
) -> ShapeResult<Vec<usize>> {
    let given = match x.ints(1, "split")? {
        Some(v) => Some(v),
        None => attr.map(<[i64]>::to_vec),
    };
    let sizes: Vec<usize> = if let Some(v) = given {
        if v.len() != x.output_count {
            return Err(format!(
                "split sizes {v:?} do not match the {} outputs",
                x.output_count
            ));
        }
        v.iter()
            .map(|&n| dim(n as i128, "a split size"))
            .collect::<ShapeResult<_>>()?
    } else {
        let parts = num_outputs.map_or(x.output_count, |n| n.max(1) as usize);
        if parts != x.output_count || parts == 0 {
            return Err(format!(
                "num_outputs {parts} does not match the {} outputs",
                x.output_count
            ));
        }
        let chunk = total.div_ceil(parts);
        if num_outputs.is_none() && !total.is_multiple_of(parts) {
            return Err(format!("cannot split {total} into {parts} equal parts"));
        }
        (0..parts)
            .map(|i| chunk.min(total.saturating_sub(i.saturating_mul(chunk))))
            .collect()
    };
    let sum = sizes.iter().try_fold(0usize, |acc, &n| acc.checked_add(n));
    if sum != Some(total) {
        return Err(format!(
            "split sizes {sizes:?} do not add up to the axis size {total}"
        ));
    }
    Ok(sizes)
}

fn slice(
    x: &NodeInputs<'_>,
    legacy: Option<&(Vec<i64>, Vec<i64>, Vec<i64>)>,
) -> ShapeResult<Vec<usize>> {
    let s = x.shape(0, "data")?;
    let (starts, ends, axes, steps) = match legacy {
        Some((st, en, ax)) => (
            st.clone(),
            en.clone(),
            (!ax.is_empty()).then(|| ax.clone()),
            None,
        ),
        None => (
            x.ints(1, "starts")?.ok_or("is missing its starts input")?,
            x.ints(2, "ends")?.ok_or("is missing its ends input")?,
            x.ints(3, "axes")?,
            x.ints(4, "steps")?,
        ),
    };
    let axes = axes.unwrap_or_else(|| (0..starts.len() as i64).collect());
    let steps = steps.unwrap_or_else(|| vec![1; starts.len()]);
    if ends.len() != starts.len() || axes.len() != starts.len() || steps.len() != starts.len() {
        return Err("starts, ends, axes and steps must have the same length".into());
    }
    let mut out = s.to_vec();
    for i in 0..starts.len() {
        let a = norm_axis(axes[i], s.len())?;
        let d = s[a] as i128;
        let step = steps[i] as i128;
        if step == 0 {
            return Err("a slice step is 0".into());
        }
        let fix = |v: i64| if v < 0 { v as i128 + d } else { v as i128 };
        let (start, end) = if step > 0 {
            (fix(starts[i]).clamp(0, d), fix(ends[i]).clamp(0, d))
        } else {
            (
                fix(starts[i]).clamp(0, d - 1),
                fix(ends[i]).clamp(-1, d - 1),
            )
        };
        let len = if step > 0 {
            (end - start + step - 1) / step
        } else {
            (start - end + (-step) - 1) / (-step)
        };
        out[a] = dim(len.max(0), "the sliced size")?;
    }
    Ok(out)
}

fn reshape(x: &NodeInputs<'_>, allowzero: bool) -> ShapeResult<Vec<usize>> {
    let s = x.shape(0, "data")?;
    let target = x.ints(1, "shape")?.ok_or("is missing its shape input")?;
    let total = volume(s);
    let mut out = Vec::with_capacity(target.len());
    let mut infer_at = None;
    for (i, &t) in target.iter().enumerate() {
        match t {
            -1 if infer_at.is_none() => {
                infer_at = Some(i);
                out.push(1);
            }
            0 if !allowzero => out.push(*s.get(i).ok_or_else(|| {
                format!("shape {target:?} copies axis {i}, which the input {s:?} lacks")
            })? as i128),
            t if t >= 0 => out.push(t as i128),
            _ => return Err(format!("shape {target:?} is not a valid reshape target")),
        }
    }
    let known = out
        .iter()
        .try_fold(1i128, |acc, &d| acc.checked_mul(d))
        .ok_or_else(|| format!("shape {target:?} is not a valid reshape target"))?;
    if let Some(i) = infer_at {
        if known == 0 || total % known != 0 {
            return Err(format!("cannot reshape {s:?} into {target:?}"));
        }
        out[i] = total / known;
    } else if known != total {
        return Err(format!(
            "cannot reshape {s:?} ({total} elements) into {target:?}"
        ));
    }
    out.into_iter().map(|d| dim(d, "a reshaped size")).collect()
}

fn resize(x: &NodeInputs<'_>) -> ShapeResult<Vec<usize>> {
    let s = x.shape(0, "data")?;
    // Opset 10 takes scales at #1; opset ≥ 11 has roi at #1, scales at #2, sizes at #3.
    let (scales_at, sizes_at) = if x.shapes.len() == 2 {
        (1, usize::MAX)
    } else {
        (2, 3)
    };
    if let Some(sizes) = x.ints(sizes_at, "sizes")?.filter(|v| !v.is_empty()) {
        if sizes.len() != s.len() {
            return Err(format!(
                "sizes {sizes:?} do not match the input rank {}",
                s.len()
            ));
        }
        return sizes
            .iter()
            .map(|&v| dim(v as i128, "a resized size"))
            .collect();
    }
    let scales = x
        .floats(scales_at, "scales")?
        .filter(|v| !v.is_empty())
        .ok_or("needs constant scales or sizes")?;
    if scales.len() != s.len() {
        return Err(format!(
            "scales {scales:?} do not match the input rank {}",
            s.len()
        ));
    }
    s.iter()
        .zip(&scales)
        .map(|(&d, &f)| {
            if !(f.is_finite() && f > 0.0) {
                return Err(format!("scale {f} is not a positive number"));
            }
            dim((d as f64 * f as f64).floor() as i128, "a resized size")
        })
        .collect()
}

fn pad(x: &NodeInputs<'_>, attr: Option<&[i64]>) -> ShapeResult<Vec<usize>> {
    let s = x.shape(0, "data")?;
    let pads = match attr {
        Some(p) => p.to_vec(),
        None => x.ints(1, "pads")?.ok_or("is missing its pads input")?,
    };
    let axes: Vec<usize> = match x.ints(3, "axes")? {
        Some(a) => a
            .iter()
            .map(|&v| norm_axis(v, s.len()))
            .collect::<ShapeResult<_>>()?,
        None => (0..s.len()).collect(),
    };
    if pads.len() != 2 * axes.len() {
        return Err(format!("pads {pads:?} need {} entries", 2 * axes.len()));
    }
    let mut out = s.to_vec();
    for (i, &a) in axes.iter().enumerate() {
        let v = s[a] as i128 + pads[i] as i128 + pads[i + axes.len()] as i128;
        out[a] = dim(v, "a padded size")?;
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn broadcasting_follows_numpy() {
        assert_eq!(broadcast(&[1, 3, 4], &[2, 1, 4]).unwrap(), vec![2, 3, 4]);
        assert_eq!(broadcast(&[5], &[2, 3, 1]).unwrap(), vec![2, 3, 5]);
        assert!(broadcast(&[3], &[4]).is_err());
    }

    #[test]
    fn matmul_promotes_vectors_and_broadcasts_batches() {
        assert_eq!(matmul(&[2, 1, 3, 4], &[5, 4, 6]).unwrap(), vec![2, 5, 3, 6]);
        assert_eq!(matmul(&[4], &[4, 6]).unwrap(), vec![6]);
        assert!(matmul(&[3, 4], &[5, 6]).is_err());
    }

    #[test]
    fn pooling_ceil_mode_rounds_up_but_never_starts_in_the_padding() {
        let attrs = |ceil, pads: Vec<i64>| PoolAttrs {
            window: Window {
                kernel_shape: vec![2, 2],
                strides: vec![2, 2],
                pads,
                dilations: vec![],
                auto_pad: AutoPad::NotSet,
            },
            ceil_mode: ceil,
            count_include_pad: false,
        };
        assert_eq!(
            pool(&attrs(false, vec![]), &[1, 1, 5, 5]).unwrap(),
            vec![1, 1, 2, 2]
        );
        assert_eq!(
            pool(&attrs(true, vec![]), &[1, 1, 5, 5]).unwrap(),
            vec![1, 1, 3, 3]
        );
        // A fourth window would start at 6, inside the end padding only: dropped.
        assert_eq!(
            pool(&attrs(true, vec![0, 0, 1, 1]), &[1, 1, 6, 6]).unwrap(),
            vec![1, 1, 3, 3]
        );
    }
}
