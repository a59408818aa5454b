//! Static shape inference: every value gets its shape from the input size.

pub(crate) mod fold;
mod ops;

pub use ops::{broadcast, norm_axis};

use std::fmt;
use std::str::FromStr;

use crate::error::{GraphError, Result};
use crate::ir::{DataType, Dim, Graph, Model, Op};
use crate::limits::{
    DEFAULT_MAX_INPUT_PIXELS, Limits, MAX_INPUT_SIDE, Quantity, display_name, exceeded,
};
use ops::NodeInputs;

/// Spatial size of the image input, as `HxW` on the command line.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct InputSize {
    /// Height in pixels.
    pub height: usize,
    /// Width in pixels.
    pub width: usize,
}

impl FromStr for InputSize {
    type Err = String;

    /// Parses `640`, `640x640` or `480x640` (height × width). Each side must be at
    /// most [`MAX_INPUT_SIDE`] and the area at most the default
    /// [`Limits::max_input_pixels`].
    fn from_str(s: &str) -> Result<Self, String> {
        let shown = display_name(s);
        let bad = || {
            format!(
                "'{shown}' is not an input size: use HxW with positive integers, e.g. 640x640 or 320x480"
            )
        };
        let mut parts = s.trim().split(['x', 'X', '×']);
        let h = parts.next().ok_or_else(bad)?;
        let w = parts.next().unwrap_or(h);
        if parts.next().is_some() {
            return Err(bad());
        }
        let parse = |v: &str| {
            let v = v.trim().parse::<u64>().ok().filter(|&v| v >= 1);
            let v = v.ok_or_else(bad)?;
            usize::try_from(v)
                .ok()
                .filter(|&v| v <= MAX_INPUT_SIDE)
                .ok_or_else(|| {
                    format!(
                        "input size '{shown}' has a side of {v} pixels; effp accepts at most \
                         {MAX_INPUT_SIDE} pixels a side and {DEFAULT_MAX_INPUT_PIXELS} pixels in \
                         all (8192x8192): use a realistic size such as 640x640"
                    )
                })
        };
        let size = Self {
            height: parse(h)?,
            width: parse(w)?,
        };
        let pixels = size.height as u64 * size.width as u64;
        if pixels > DEFAULT_MAX_INPUT_PIXELS {
            return Err(format!(
                "input size '{shown}' has {pixels} pixels; effp accepts at most \
                 {DEFAULT_MAX_INPUT_PIXELS} pixels (8192x8192): use a realistic size such as \
                 640x640"
            ));
        }
        Ok(size)
    }
}

impl fmt::Display for InputSize {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}x{}", self.height, self.width)
    }
}

/// Fills in [`crate::ir::Value::shape`] for every value reachable from the inputs.
///
/// Graph inputs take their declared shape; a symbolic batch becomes 1 and, when
/// `input_size` is given, the last two axes of every 4-D input take that size.
/// Values downstream of an unsupported op stay unknown (`None`); anything that is
/// known but inconsistent is an error naming the node.
///
/// Shape subgraphs (a dynamic-shape export's `Shape`, `Gather`, `Range`, `Expand`, …
/// over sizes and constants) are evaluated at that size: their outputs get
/// [`crate::ir::Value::folded`] data, so that a `Reshape` or `Expand` fed by them
/// gets a concrete shape. The nodes stay in the graph.
///
/// Every shape is held to the default [`Limits`] as soon as it is known; see
/// [`infer_shapes_with`].
pub fn infer_shapes(model: &mut Model, input_size: Option<InputSize>) -> Result<()> {
    infer_shapes_with(model, input_size, &Limits::default())
}

/// [`infer_shapes`] under other [`Limits`] than the defaults: graph inputs (with the
/// input size applied), constants and every node output are checked against the
/// element, axis, channel and pixel caps the moment their shape is known, so that a
/// model over a cap fails here with [`GraphError::LimitExceeded`] instead of
/// allocating later.
pub fn infer_shapes_with(
    model: &mut Model,
    input_size: Option<InputSize>,
    limits: &Limits,
) -> Result<()> {
    let graph = &mut model.graph;
    for v in &mut graph.values {
        v.folded = None;
    }
    set_input_shapes(graph, input_size, limits)?;
    check_constants(graph, limits)?;
    check_constant_weights(graph)?;
    let mut folded_elements: u128 = 0;
    for index in 0..graph.nodes.len() {
        let node = &graph.nodes[index];
        let inputs = NodeInputs {
            shapes: node
                .inputs
                .iter()
                .map(|i| i.and_then(|id| graph.values[id.0].shape.as_deref()))
                .collect(),
            constants: node
                .inputs
                .iter()
                .map(|i| i.and_then(|id| graph.known(id)))
                .collect(),
            output_count: node.outputs.len(),
        };
        let upstream_unknown = node
            .inputs
            .iter()
            .flatten()
            .any(|id| graph.values[id.0].shape.is_none());
        if upstream_unknown || !node.op.is_supported() {
            continue;
        }
        let shapes = ops::infer(&node.op, &inputs).map_err(|reason| GraphError::Shape {
            node: node.name.clone(),
            op: node.op.op_type().to_string(),
            reason,
        })?;
        if shapes.len() != node.outputs.len() {
            return Err(GraphError::Shape {
                node: node.name.clone(),
                op: node.op.op_type().to_string(),
                reason: format!(
                    "declares {} outputs but computes {}",
                    node.outputs.len(),
                    shapes.len()
                ),
            });
        }
        let dtype = output_dtype(
            &node.op,
            node.inputs
                .first()
                .copied()
                .flatten()
                .and_then(|id| graph.values[id.0].dtype),
        );
        for (&id, shape) in node.outputs.iter().zip(&shapes) {
            let subject = || {
                format!(
                    "value '{}' (output of {} node '{}')",
                    display_name(&graph.values[id.0].name),
                    node.op.op_type(),
                    display_name(&node.name)
                )
            };
            limits.check_channels(subject, shape)?;
            limits.check_tensor(subject, shape)?;
        }
        let readable = node
            .inputs
            .iter()
            .flatten()
            .all(|&id| graph.known(id).is_some() || matches!(node.op, Op::Shape { .. }));
        let folded = if readable && fold::is_foldable(&node.op) {
            let elements: u128 = shapes
                .iter()
                .map(|s| crate::limits::exact_elements(s))
                .sum();
            folded_elements = folded_elements.saturating_add(elements);
            if folded_elements > u128::from(limits.max_folded_elements) {
                return Err(exceeded(
                    format!(
                        "{} node '{}' (output shape {})",
                        node.op.op_type(),
                        display_name(&node.name),
                        crate::limits::display_shape(&shapes[0])
                    ),
                    Quantity::FoldedElements,
                    folded_elements,
                    limits.max_folded_elements,
                ));
            }
            fold::eval(&node.op, &inputs.constants, &inputs.shapes, &shapes).map_err(|reason| {
                GraphError::Shape {
                    node: node.name.clone(),
                    op: node.op.op_type().to_string(),
                    reason,
                }
            })?
        } else {
            None
        };
        let outputs = node.outputs.clone();
        let mut folded = folded.map(Vec::into_iter);
        for (id, shape) in outputs.into_iter().zip(shapes) {
            let v = &mut graph.values[id.0];
            v.shape = Some(shape);
            v.dtype = dtype;
            if let Some(t) = folded.as_mut().and_then(Iterator::next) {
                v.dtype = Some(t.dtype());
                v.folded = Some(t);
            }
        }
    }
    Ok(())
}

/// Element type of an op's outputs given that of its first input.
fn output_dtype(op: &Op, first: Option<DataType>) -> Option<DataType> {
    match op {
        Op::Shape { .. } => Some(DataType::Int64),
        Op::Cast { to } => Some(*to),
        Op::Compare(_) | Op::Not => Some(DataType::Bool),
        Op::ConstantOfShape { value } => {
            Some(value.as_ref().map_or(DataType::Float32, |t| t.dtype()))
        }
        _ => first,
    }
}

/// Whether a 4-D graph input leaves its height or width free (a dynamic-shape
/// export): such a model is analysed, pruned and trained at an input size the
/// caller gives, and keeps its free sizes in the file effp writes.
pub fn has_free_input_size(graph: &Graph) -> bool {
    graph.inputs.iter().any(|io| {
        io.dims.as_ref().is_some_and(|dims| {
            dims.len() == 4 && dims[2..].iter().any(|d| !matches!(d, Dim::Fixed(_)))
        })
    })
}

/// The input size a graph's shapes were inferred at: the last two axes of its first
/// 4-D input. What compaction re-infers the smaller model at, so that a model with
/// free input sizes keeps the size it was analysed at.
pub fn inferred_input_size(graph: &Graph) -> Option<InputSize> {
    graph.inputs.iter().find_map(|io| {
        let s = graph.shape(io.value)?;
        (s.len() == 4).then(|| InputSize {
            height: s[2],
            width: s[3],
        })
    })
}

fn set_input_shapes(
    graph: &mut Graph,
    input_size: Option<InputSize>,
    limits: &Limits,
) -> Result<()> {
    let mut images = 0;
    for io in &graph.inputs {
        let name = graph.values[io.value.0].name.clone();
        let dims = io.dims.as_ref().ok_or_else(|| GraphError::InputSize {
            reason: format!(
                "graph input '{name}' declares no shape; effp needs a static input shape"
            ),
        })?;
        let mut shape = Vec::with_capacity(dims.len());
        for (axis, d) in dims.iter().enumerate() {
            let image_axis = dims.len() == 4 && axis >= 2;
            shape.push(match (d, input_size) {
                (_, Some(size)) if image_axis => {
                    if axis == 2 {
                        size.height
                    } else {
                        size.width
                    }
                }
                (Dim::Fixed(v), _) => *v,
                (_, _) if axis == 0 => 1,
                _ => {
                    return Err(GraphError::InputSize {
                        reason: format!(
                            "graph input '{}' has a free size on axis {axis} (a dynamic-shape \
                             export); pass the size to analyse and train at with --input-size HxW \
                             (the API's input_size), e.g. 640x640: the pruned model keeps its free \
                             sizes",
                            display_name(&name)
                        ),
                    });
                }
            });
        }
        if shape.contains(&0) {
            return Err(GraphError::InputSize {
                reason: format!(
                    "graph input '{}' has a zero-sized axis: {}",
                    display_name(&name),
                    crate::limits::display_shape(&shape)
                ),
            });
        }
        let subject = || format!("graph input '{}'", display_name(&name));
        if shape.len() == 4 {
            limits.check_pixels(subject, shape[2], shape[3])?;
        }
        limits.check_channels(subject, &shape)?;
        limits.check_tensor(subject, &shape)?;
        images += usize::from(dims.len() == 4);
        graph.values[io.value.0].shape = Some(shape);
    }
    if let (Some(size), 0) = (input_size, images) {
        return Err(GraphError::InputSize {
            reason: format!("the model has no 4-D image input to give the size {size}"),
        });
    }
    Ok(())
}

/// Constants are checked when loaded; a graph built in code is held to the same caps.
fn check_constants(graph: &Graph, limits: &Limits) -> Result<()> {
    for v in graph.values.iter().filter(|v| v.constant.is_some()) {
        if let Some(shape) = &v.shape {
            limits.check_tensor(|| format!("constant '{}'", display_name(&v.name)), shape)?;
        }
    }
    Ok(())
}

/// Convolution and Gemm weights and BatchNormalization parameters must be constants:
/// they are what effp prunes.
fn check_constant_weights(graph: &Graph) -> Result<()> {
    for node in &graph.nodes {
        let roles: &[(usize, &'static str)] = match node.op {
            Op::Conv(_) | Op::ConvTranspose(_) => &[(1, "weight"), (2, "bias")],
            Op::BatchNormalization { .. } => {
                &[(1, "scale"), (2, "bias"), (3, "mean"), (4, "variance")]
            }
            _ => continue,
        };
        for &(index, role) in roles {
            let Some(id) = node.input(index) else {
                if role == "bias" {
                    continue;
                }
                return Err(GraphError::MissingInput {
                    node: node.name.clone(),
                    op: node.op.op_type().to_string(),
                    index,
                    role,
                });
            };
            let value = graph.value(id);
            if value.constant.is_none() {
                return Err(GraphError::MissingWeight {
                    node: node.name.clone(),
                    op: node.op.op_type().to_string(),
                    role,
                    input: value.name.clone(),
                    reason: if value.producer.is_some() {
                        "it is computed by another node"
                    } else {
                        "it is a graph input with no initializer"
                    },
                });
            }
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn input_size_parses_square_and_rectangular_forms() {
        assert_eq!(
            "640".parse::<InputSize>().unwrap(),
            InputSize {
                height: 640,
                width: 640
            }
        );
        assert_eq!(
            "320x480".parse::<InputSize>().unwrap(),
            InputSize {
                height: 320,
                width: 480
            }
        );
        for bad in ["0x320", "-1x320", "axb", "1x2x3", "", "320x0"] {
            let err = bad.parse::<InputSize>().unwrap_err();
            assert!(err.contains("positive integers"), "{bad}: {err}");
        }
    }
}
