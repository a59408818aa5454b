//! Evaluation of shape subgraphs at a fixed input size (constant folding).
//!
//! A dynamic-shape export computes sizes while it runs: `Shape` reads a feature
//! map's size, `Gather`, `Concat` and integer arithmetic turn it into the target of
//! a `Reshape` or `Expand`, and `Range`, `Cast` and `ConstantOfShape` build anchor
//! grids and strides. Once the input size is fixed all of it is constant. This
//! module computes those values so that shape inference, the channel analysis and
//! the runtime see concrete data; the nodes that compute them stay in the graph.
//!
//! Output shapes come from the shape rules in [`super::ops`], which shape inference
//! has checked against the [`Limits`](crate::Limits) before anything here allocates.

use crate::ir::{Comparison, DataType, Op, Tensor};

use super::ops::{ShapeResult, norm_axis};

/// Whether shape inference folds `op` when every input it reads is known.
pub(crate) fn is_foldable(op: &Op) -> bool {
    matches!(
        op,
        Op::Shape { .. }
            | Op::Gather { .. }
            | Op::Unsqueeze { .. }
            | Op::Squeeze { .. }
            | Op::Range
            | Op::Cast { .. }
            | Op::ConstantOfShape { .. }
            | Op::Expand
            | Op::Compare(_)
            | Op::Where
            | Op::Not
            | Op::Add
            | Op::Sub
            | Op::Mul
            | Op::Div
            | Op::Concat { .. }
            | Op::Reshape { .. }
            | Op::Slice { .. }
            | Op::Transpose { .. }
            | Op::Identity
            | Op::Split { .. }
            | Op::Flatten { .. }
    )
}

/// Positions of the inputs whose elements an op moves without combining them
/// (`Gather`'s data, every part of a `Concat`, …), when it is such an op. The other
/// inputs only say where elements go (indices, axes, target shapes). The channel
/// analysis pushes per-element facts through these ops with [`eval`].
pub(crate) fn moved_inputs(op: &Op, inputs: usize) -> Option<Vec<usize>> {
    match op {
        Op::Gather { .. }
        | Op::Unsqueeze { .. }
        | Op::Squeeze { .. }
        | Op::Expand
        | Op::Reshape { .. }
        | Op::Slice { .. }
        | Op::Transpose { .. }
        | Op::Identity
        | Op::Split { .. }
        | Op::Flatten { .. }
        | Op::Cast { .. } => Some(vec![0]),
        Op::Concat { .. } => Some((0..inputs).collect()),
        _ => None,
    }
}

/// Elements of a tensor while it is computed on: integers (and booleans) exactly,
/// floats in f64 (rounded back to the stored type after each op, as a runtime
/// computing in that type would).
#[derive(Debug, Clone)]
enum Vals {
    I(Vec<i64>),
    F(Vec<f64>),
}

impl Vals {
    fn len(&self) -> usize {
        match self {
            Self::I(v) => v.len(),
            Self::F(v) => v.len(),
        }
    }

    fn as_f64(&self) -> Vec<f64> {
        match self {
            Self::I(v) => v.iter().map(|&x| x as f64).collect(),
            Self::F(v) => v.clone(),
        }
    }

    fn as_i64(&self) -> Vec<i64> {
        match self {
            Self::I(v) => v.clone(),
            // Float to integer truncates toward zero, as a C cast does.
            Self::F(v) => v.iter().map(|&x| x as i64).collect(),
        }
    }

    /// Elements picked by offsets.
    fn pick(&self, offsets: &[usize]) -> Self {
        match self {
            Self::I(v) => Self::I(offsets.iter().map(|&o| v[o]).collect()),
            Self::F(v) => Self::F(offsets.iter().map(|&o| v[o]).collect()),
        }
    }
}

/// A decoded tensor.
#[derive(Debug, Clone)]
struct Data {
    dtype: DataType,
    dims: Vec<usize>,
    vals: Vals,
}

/// Decodes a tensor of a type folding computes with; `None` for half precision.
fn decode(t: &Tensor) -> Option<Data> {
    let vals = match t.dtype() {
        DataType::Float32 => Vals::F(t.to_f32_vec().into_iter().map(f64::from).collect()),
        DataType::Float64 => Vals::F(
            t.bytes()
                .chunks_exact(8)
                .map(|c| f64::from_le_bytes(c.try_into().expect("8 bytes")))
                .collect(),
        ),
        DataType::Float16 | DataType::BFloat16 => return None,
        _ => Vals::I(t.to_i64_vec()?),
    };
    Some(Data {
        dtype: t.dtype(),
        dims: t.dims().to_vec(),
        vals,
    })
}

/// Encodes elements in a type; `None` for half precision (never folded).
fn encode(dtype: DataType, dims: Vec<usize>, vals: &Vals) -> Option<Tensor> {
    fn ints<const N: usize>(v: &[i64], f: impl Fn(i64) -> [u8; N]) -> Vec<u8> {
        v.iter().flat_map(|&x| f(x)).collect()
    }
    let bytes = match dtype {
        DataType::Float32 => vals
            .as_f64()
            .iter()
            .flat_map(|&x| (x as f32).to_le_bytes())
            .collect(),
        DataType::Float64 => vals.as_f64().iter().flat_map(|x| x.to_le_bytes()).collect(),
        DataType::Float16 | DataType::BFloat16 => return None,
        DataType::Bool => vals.as_bool().into_iter().map(u8::from).collect(),
        DataType::Int64 => ints(&vals.as_i64(), i64::to_le_bytes),
        DataType::Uint64 => ints(&vals.as_i64(), |x| (x as u64).to_le_bytes()),
        DataType::Int32 => ints(&vals.as_i64(), |x| (x as i32).to_le_bytes()),
        DataType::Uint32 => ints(&vals.as_i64(), |x| (x as u32).to_le_bytes()),
        DataType::Int16 => ints(&vals.as_i64(), |x| (x as i16).to_le_bytes()),
        DataType::Uint16 => ints(&vals.as_i64(), |x| (x as u16).to_le_bytes()),
        DataType::Int8 => ints(&vals.as_i64(), |x| (x as i8).to_le_bytes()),
        DataType::Uint8 => ints(&vals.as_i64(), |x| (x as u8).to_le_bytes()),
    };
    Tensor::from_bytes(dtype, dims, bytes)
}

impl Vals {
    fn as_bool(&self) -> Vec<bool> {
        match self {
            Self::I(v) => v.iter().map(|&x| x != 0).collect(),
            Self::F(v) => v.iter().map(|&x| x != 0.0).collect(),
        }
    }
}

/// Row-major strides of a shape.
fn strides(dims: &[usize]) -> Vec<usize> {
    let mut s = vec![1; dims.len()];
    for i in (0..dims.len().saturating_sub(1)).rev() {
        s[i] = s[i + 1] * dims[i + 1];
    }
    s
}

/// Offsets into a source for an output whose axis k walks `axes[k].1` (source
/// indices along that axis) with source stride `axes[k].0`, in row-major order.
fn offsets(axes: &[(usize, Vec<usize>)]) -> Vec<usize> {
    let total: usize = axes.iter().map(|(_, idx)| idx.len()).product();
    let mut out = Vec::with_capacity(total);
    if total == 0 {
        return out;
    }
    let mut counter = vec![0usize; axes.len()];
    loop {
        out.push(
            axes.iter()
                .zip(&counter)
                .map(|((stride, idx), &c)| idx[c] * stride)
                .sum(),
        );
        let mut k = axes.len();
        loop {
            if k == 0 {
                return out;
            }
            k -= 1;
            counter[k] += 1;
            if counter[k] < axes[k].1.len() {
                break;
            }
            counter[k] = 0;
        }
    }
}

/// `d` broadcast to `out` (numpy rules; the shape rule has checked they fit).
fn broadcast_to(d: &Data, out: &[usize]) -> Vals {
    let lead = out.len() - d.dims.len();
    let s = strides(&d.dims);
    let axes: Vec<(usize, Vec<usize>)> = out
        .iter()
        .enumerate()
        .map(|(k, &n)| {
            if k < lead || d.dims[k - lead] == 1 {
                (0, vec![0; n])
            } else {
                (s[k - lead], (0..n).collect())
            }
        })
        .collect();
    d.vals.pick(&offsets(&axes))
}

fn ints_of(x: &[Option<Data>], i: usize) -> Option<Vec<i64>> {
    x.get(i)?.as_ref().map(|d| d.vals.as_i64())
}

/// Computes the outputs of a foldable node whose inputs are all known (`inputs`
/// holds their data; `shapes` the inputs' shapes, which `Shape` reads) and whose
/// output shapes the shape rule gave as `out`. `Ok(None)` when an element type is
/// one folding does not compute in (half precision).
pub(crate) fn eval(
    op: &Op,
    inputs: &[Option<&Tensor>],
    shapes: &[Option<&[usize]>],
    out: &[Vec<usize>],
) -> ShapeResult<Option<Vec<Tensor>>> {
    let mut x = Vec::with_capacity(inputs.len());
    for t in inputs {
        match t {
            Some(t) => match decode(t) {
                Some(d) => x.push(Some(d)),
                None => return Ok(None),
            },
            None => x.push(None),
        }
    }
    let data = |i: usize| -> ShapeResult<&Data> {
        x.get(i)
            .and_then(Option::as_ref)
            .ok_or_else(|| format!("is missing input #{i}"))
    };
    let first = out.first().cloned().unwrap_or_default();
    let same = |d: &Data| Some((d.dtype, d.vals.clone()));
    let one: Option<(DataType, Vals)> = match op {
        Op::Shape { .. } => {
            let s = shapes
                .first()
                .copied()
                .flatten()
                .ok_or("is missing its data input")?;
            let (start, end) = shape_range(op, s.len());
            Some((
                DataType::Int64,
                Vals::I(s[start..end].iter().map(|&d| d as i64).collect()),
            ))
        }
        Op::Identity
        | Op::Reshape { .. }
        | Op::Flatten { .. }
        | Op::Unsqueeze { .. }
        | Op::Squeeze { .. } => same(data(0)?),
        Op::Cast { to } => Some((*to, data(0)?.vals.clone())),
        Op::Gather { axis } => {
            let d = data(0)?;
            let a = norm_axis(*axis, d.dims.len())?;
            let n = d.dims[a] as i64;
            let mut picked = Vec::new();
            for i in data(1)?.vals.as_i64() {
                let j = if i < 0 { i + n } else { i };
                if !(0..n).contains(&j) {
                    return Err(format!(
                        "index {i} is out of range for axis {a} of size {n}"
                    ));
                }
                picked.push(j as usize);
            }
            let s = strides(&d.dims);
            let mut axes: Vec<(usize, Vec<usize>)> =
                (0..a).map(|k| (s[k], (0..d.dims[k]).collect())).collect();
            axes.push((s[a], picked));
            axes.extend((a + 1..d.dims.len()).map(|k| (s[k], (0..d.dims[k]).collect())));
            Some((d.dtype, d.vals.pick(&offsets(&axes))))
        }
        Op::Transpose { perm } => {
            let d = data(0)?;
            let perm: Vec<usize> = match perm {
                Some(p) => p.iter().map(|&v| v as usize).collect(),
                None => (0..d.dims.len()).rev().collect(),
            };
            let s = strides(&d.dims);
            let axes: Vec<(usize, Vec<usize>)> = perm
                .iter()
                .map(|&p| (s[p], (0..d.dims[p]).collect()))
                .collect();
            Some((d.dtype, d.vals.pick(&offsets(&axes))))
        }
        Op::Slice { legacy } => {
            let d = data(0)?;
            let (starts, ends, axes, steps) = match legacy {
                Some((s, e, a)) => (
                    s.clone(),
                    e.clone(),
                    (!a.is_empty()).then(|| a.clone()),
                    None,
                ),
                None => (
                    ints_of(&x, 1).ok_or("is missing its starts input")?,
                    ints_of(&x, 2).ok_or("is missing its ends input")?,
                    ints_of(&x, 3),
                    ints_of(&x, 4),
                ),
            };
            let axes = axes.unwrap_or_else(|| (0..starts.len() as i64).collect());
            let steps = steps.unwrap_or_else(|| vec![1; starts.len()]);
            let s = strides(&d.dims);
            let mut walk: Vec<(usize, Vec<usize>)> = d
                .dims
                .iter()
                .zip(&s)
                .map(|(&n, &st)| (st, (0..n).collect()))
                .collect();
            for i in 0..starts.len() {
                let a = norm_axis(axes[i], d.dims.len())?;
                let n = d.dims[a] as i128;
                let step = steps[i] as i128;
                let fix = |v: i64| if v < 0 { v as i128 + n } else { v as i128 };
                let (start, end) = if step > 0 {
                    (fix(starts[i]).clamp(0, n), fix(ends[i]).clamp(0, n))
                } else {
                    (
                        fix(starts[i]).clamp(0, n - 1),
                        fix(ends[i]).clamp(-1, n - 1),
                    )
                };
                let len = first[a];
                walk[a].1 = (0..len as i128)
                    .map(|k| (start + k * step) as usize)
                    .collect();
                debug_assert!(step > 0 || len == 0 || start > end);
            }
            Some((d.dtype, d.vals.pick(&offsets(&walk))))
        }
        Op::Split { axis, .. } => {
            let d = data(0)?;
            let a = norm_axis(*axis, d.dims.len())?;
            let s = strides(&d.dims);
            let mut parts = Vec::with_capacity(out.len());
            let mut at = 0;
            for shape in out {
                let axes: Vec<(usize, Vec<usize>)> = (0..d.dims.len())
                    .map(|k| {
                        if k == a {
                            (s[k], (at..at + shape[a]).collect())
                        } else {
                            (s[k], (0..d.dims[k]).collect())
                        }
                    })
                    .collect();
                at += shape[a];
                let vals = d.vals.pick(&offsets(&axes));
                match encode(d.dtype, shape.clone(), &vals) {
                    Some(t) => parts.push(t),
                    None => return Ok(None),
                }
            }
            return Ok(Some(parts));
        }
        Op::Concat { axis } => {
            let parts: Vec<&Data> = x.iter().flatten().collect();
            let d0 = parts.first().ok_or("has no inputs")?;
            let a = norm_axis(*axis, d0.dims.len())?;
            let inner: usize = first[a + 1..].iter().product();
            let outer: usize = first[..a].iter().product();
            let mut vals = match d0.vals {
                Vals::I(_) => Vals::I(Vec::new()),
                Vals::F(_) => Vals::F(Vec::new()),
            };
            for o in 0..outer {
                for p in &parts {
                    let chunk = p.dims[a] * inner;
                    let range = o * chunk..(o + 1) * chunk;
                    match (&mut vals, &p.vals) {
                        (Vals::I(v), Vals::I(s)) => v.extend_from_slice(&s[range]),
                        (Vals::F(v), Vals::F(s)) => v.extend_from_slice(&s[range]),
                        _ => return Err("joins inputs of different element types".into()),
                    }
                }
            }
            Some((d0.dtype, vals))
        }
        Op::Expand => {
            let d = data(0)?;
            Some((d.dtype, broadcast_to(d, &first)))
        }
        Op::Range => {
            let (start, delta) = (data(0)?, data(2)?);
            let n = first[0];
            let vals = match (&start.vals, &delta.vals) {
                (Vals::I(s), Vals::I(d)) => {
                    let (s, d) = (s[0], d[0]);
                    Vals::I(
                        (0..n as i64)
                            .map(|k| s.wrapping_add(k.wrapping_mul(d)))
                            .collect(),
                    )
                }
                _ => {
                    // The runtime accumulates in the element type: so does this.
                    let (s, d) = (start.vals.as_f64()[0], delta.vals.as_f64()[0]);
                    let f32_type = start.dtype == DataType::Float32;
                    let mut v = Vec::with_capacity(n);
                    let mut value = s;
                    for _ in 0..n {
                        v.push(value);
                        value += d;
                        if f32_type {
                            value = value as f32 as f64;
                        }
                    }
                    Vals::F(v)
                }
            };
            Some((start.dtype, vals))
        }
        Op::ConstantOfShape { value } => {
            let n: usize = first.iter().product();
            let fill = match value {
                Some(t) => decode(t),
                None => decode(&Tensor::from_f32(vec![1], &[0.0])),
            };
            let Some(fill) = fill else { return Ok(None) };
            let vals = match fill.vals {
                Vals::I(v) => Vals::I(vec![v[0]; n]),
                Vals::F(v) => Vals::F(vec![v[0]; n]),
            };
            Some((fill.dtype, vals))
        }
        Op::Add | Op::Sub | Op::Mul | Op::Div => {
            let (a, b) = (data(0)?, data(1)?);
            let (va, vb) = (broadcast_to(a, &first), broadcast_to(b, &first));
            let vals = match (va, vb) {
                (Vals::I(p), Vals::I(q)) => {
                    let mut v = Vec::with_capacity(p.len());
                    for (&p, &q) in p.iter().zip(&q) {
                        v.push(match op {
                            Op::Add => p.wrapping_add(q),
                            Op::Sub => p.wrapping_sub(q),
                            Op::Mul => p.wrapping_mul(q),
                            _ => {
                                if q == 0 {
                                    return Err("divides an integer by zero".into());
                                }
                                p.wrapping_div(q)
                            }
                        });
                    }
                    Vals::I(v)
                }
                (p, q) => Vals::F(
                    p.as_f64()
                        .iter()
                        .zip(q.as_f64())
                        .map(|(&p, q)| match op {
                            Op::Add => p + q,
                            Op::Sub => p - q,
                            Op::Mul => p * q,
                            _ => p / q,
                        })
                        .collect(),
                ),
            };
            Some((a.dtype, vals))
        }
        Op::Compare(c) => {
            let (a, b) = (data(0)?, data(1)?);
            let (va, vb) = (broadcast_to(a, &first), broadcast_to(b, &first));
            let vals = match (va, vb) {
                (Vals::I(p), Vals::I(q)) => {
                    p.iter().zip(&q).map(|(p, q)| compare(*c, p, q)).collect()
                }
                (p, q) => p
                    .as_f64()
                    .iter()
                    .zip(&q.as_f64())
                    .map(|(p, q)| compare(*c, p, q))
                    .collect(),
            };
            Some((DataType::Bool, Vals::I(vals)))
        }
        Op::Not => {
            let d = data(0)?;
            Some((
                DataType::Bool,
                Vals::I(d.vals.as_bool().iter().map(|&b| i64::from(!b)).collect()),
            ))
        }
        Op::Where => {
            let (c, a, b) = (data(0)?, data(1)?, data(2)?);
            let cond = broadcast_to(c, &first).as_bool();
            let vals = match (broadcast_to(a, &first), broadcast_to(b, &first)) {
                (Vals::I(p), Vals::I(q)) => Vals::I(
                    cond.iter()
                        .zip(p.iter().zip(&q))
                        .map(|(&c, (&p, &q))| if c { p } else { q })
                        .collect(),
                ),
                (p, q) => Vals::F(
                    cond.iter()
                        .zip(p.as_f64().iter().zip(&q.as_f64()))
                        .map(|(&c, (&p, &q))| if c { p } else { q })
                        .collect(),
                ),
            };
            Some((a.dtype, vals))
        }
        _ => None,
    };
    let Some((dtype, vals)) = one else {
        return Ok(None);
    };
    if vals.len() != first.iter().product::<usize>() {
        return Err(format!(
            "computes {} elements for the output shape {first:?}",
            vals.len()
        ));
    }
    Ok(encode(dtype, first, &vals).map(|t| vec![t]))
}

fn compare<T: PartialOrd>(c: Comparison, p: &T, q: &T) -> i64 {
    i64::from(match c {
        Comparison::Equal => p == q,
        Comparison::Less => p < q,
        Comparison::Greater => p > q,
        Comparison::LessOrEqual => p <= q,
        Comparison::GreaterOrEqual => p >= q,
    })
}

/// The axes `Shape` reports, `start..end` clamped to the rank.
pub(crate) fn shape_range(op: &Op, rank: usize) -> (usize, usize) {
    let Op::Shape { start, end } = op else {
        return (0, rank);
    };
    let r = rank as i64;
    let fix = |v: i64| (if v < 0 { v + r } else { v }).clamp(0, r) as usize;
    let (s, e) = (fix(*start), fix(end.unwrap_or(r)));
    (s, e.max(s))
}
