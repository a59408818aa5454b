//! Finding a YOLOv8-style detection head in a graph: per level, the convolution that
//! predicts box distributions and the one that predicts class logits — what the
//! labelled loss ([`super::detection_loss`]) reads.

use std::collections::HashMap;

use effp_graph::channels::ChannelAnalysis;
use effp_graph::ir::{Graph, NodeId, Op, ValueId};
use tch::Tensor;

use super::detection_loss::{DetectionLossConfig, HeadLevel};
use super::distill::prediction_taps;
use crate::EngineError;

/// The values of one head level to tap with [`crate::runtime::Network::forward_tapped`].
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct LevelTaps {
    /// The box-distribution convolution's output, `[B, 4·reg_max, H, W]`.
    pub boxes: ValueId,
    /// The class convolution's output, `[B, nc, H, W]`.
    pub classes: ValueId,
    /// Input pixels per cell of this level.
    pub stride: f64,
}

/// A YOLOv8-style head (Ultralytics' `Detect`, as in YOLOv8, YOLO11 and the
/// anchor-free YOLOv5u): its levels, finest first.
#[derive(Debug, Clone, PartialEq)]
pub struct DetectionHead {
    /// The levels by increasing stride.
    pub levels: Vec<LevelTaps>,
    /// Number of classes.
    pub classes: i64,
    /// Bins per box side.
    pub reg_max: i64,
    /// The graph input's (height, width) that the strides come from.
    pub image_size: (i64, i64),
}

impl DetectionHead {
    /// The values to tap, two per level in level order: boxes, then classes.
    pub fn taps(&self) -> Vec<ValueId> {
        self.levels
            .iter()
            .flat_map(|l| [l.boxes, l.classes])
            .collect()
    }

    /// The tensors `forward_tapped` returned for [`DetectionHead::taps`], as the
    /// loss's levels.
    pub fn head_levels(&self, tapped: &[Tensor]) -> Result<Vec<HeadLevel>, EngineError> {
        if tapped.len() != 2 * self.levels.len() {
            return Err(EngineError::Input(format!(
                "the head has {} levels, so {} tapped tensors, got {}",
                self.levels.len(),
                2 * self.levels.len(),
                tapped.len()
            )));
        }
        Ok(self
            .levels
            .iter()
            .zip(tapped.chunks_exact(2))
            .map(|(l, t)| HeadLevel {
                boxes: t[0].shallow_clone(),
                classes: t[1].shallow_clone(),
                stride: l.stride,
            })
            .collect())
    }

    /// The loss's default configuration with this head's `reg_max`.
    pub fn loss_config(&self) -> DetectionLossConfig {
        DetectionLossConfig {
            reg_max: self.reg_max,
            ..DetectionLossConfig::default()
        }
    }
}

/// A prediction convolution's output and its shape.
#[derive(Debug, Clone, Copy)]
struct Prediction {
    value: ValueId,
    channels: i64,
    cells: (i64, i64),
}

/// Finds the YOLOv8-style head: among the prediction convolutions (see
/// [`prediction_taps`]), the pairs that Ultralytics' export joins, either
///
/// - per level by a `Concat` on the channel axis, box branch first (exports of
///   Ultralytics up to 8.3, where the training forward concatenates the two), or
/// - across levels by two `Concat`s on the anchor axis after a `Reshape` each, one
///   for the boxes (it feeds the DFL `Softmax`) and one for the classes (Ultralytics
///   8.4), level paired with level by grid size.
///
/// Strides are the graph input's size over each level's grid. Fails with
/// [`EngineError::NoDetectionHead`] when neither pattern is there (YOLOv5 "classic"
/// anchor-based heads, non-Ultralytics detectors, classifiers).
pub fn find_detection_head(
    graph: &Graph,
    analysis: &ChannelAnalysis,
) -> Result<DetectionHead, EngineError> {
    let (height, width) = graph
        .inputs
        .first()
        .and_then(|io| graph.shape(io.value))
        .filter(|s| s.len() == 4)
        .map(|s| (s[2] as i64, s[3] as i64))
        .ok_or_else(|| {
            EngineError::NoDetectionHead(
                "the graph has no [N, C, H, W] image input of known size".into(),
            )
        })?;
    let predictions: Vec<Prediction> = prediction_taps(graph, analysis)
        .into_iter()
        .filter(|&v| {
            graph
                .value(v)
                .producer
                .is_some_and(|n| matches!(graph.node(n).op, Op::Conv(_)))
        })
        .filter_map(|v| match graph.shape(v)? {
            &[_, c, h, w] => Some(Prediction {
                value: v,
                channels: c as i64,
                cells: (h as i64, w as i64),
            }),
            _ => None,
        })
        .collect();
    let consumers = consumers(graph);

    // Where each prediction is concatenated: (concat node, position, through a reshape).
    let mut joined: HashMap<NodeId, Vec<(usize, Prediction, bool)>> = HashMap::new();
    for p in &predictions {
        if let Some((node, position, direct)) = follow_to_concat(graph, &consumers, p.value) {
            joined.entry(node).or_default().push((position, *p, direct));
        }
    }
    let mut pairs = per_level_pairs(graph, &joined);
    if pairs.is_empty() {
        pairs = cross_level_pairs(graph, &consumers, &joined)?;
    }
    if pairs.is_empty() {
        let found = if predictions.is_empty() {
            "found no prediction convolutions".to_string()
        } else {
            let list: Vec<String> = predictions
                .iter()
                .map(|p| {
                    format!(
                        "'{}' ({} channels, {}×{})",
                        graph.value(p.value).name,
                        p.channels,
                        p.cells.0,
                        p.cells.1
                    )
                })
                .collect();
            format!(
                "found prediction convolutions {}, none joined that way",
                list.join(", ")
            )
        };
        return Err(EngineError::NoDetectionHead(format!(
            "looked for prediction convolutions (convolutions whose output channels cannot be \
             pruned) paired per level into a box branch (4·reg_max channels) and a class branch, \
             joined either per level by a Concat on the channel axis, box first (Ultralytics ≤ \
             8.3 exports), or across levels by two Concats on the anchor axis, the box one \
             feeding the DFL Softmax (Ultralytics ≥ 8.4); {found}"
        )));
    }
    assemble(pairs, (height, width))
}

/// Every value's consuming nodes.
fn consumers(graph: &Graph) -> HashMap<ValueId, Vec<NodeId>> {
    let mut map: HashMap<ValueId, Vec<NodeId>> = HashMap::new();
    for (i, n) in graph.nodes.iter().enumerate() {
        for v in n.inputs.iter().flatten() {
            map.entry(*v).or_default().push(NodeId(i));
        }
    }
    map
}

/// Follows `value` through its only consumers while they only rearrange it (Reshape,
/// Flatten, Identity) to a Concat: the Concat, the position of the input there, and
/// whether it was reached directly.
fn follow_to_concat(
    graph: &Graph,
    consumers: &HashMap<ValueId, Vec<NodeId>>,
    value: ValueId,
) -> Option<(NodeId, usize, bool)> {
    let mut current = value;
    let mut direct = true;
    for _ in 0..4 {
        let &[id] = consumers.get(&current)?.as_slice() else {
            return None;
        };
        let node = graph.node(id);
        match node.op {
            Op::Concat { .. } => {
                let position = node.inputs.iter().position(|v| *v == Some(current))?;
                return Some((id, position, direct));
            }
            Op::Reshape { .. } | Op::Flatten { .. } | Op::Identity
                if node.input(0) == Some(current) =>
            {
                current = *node.outputs.first()?;
                direct = false;
            }
            _ => return None,
        }
    }
    None
}

/// Pattern 1: per-level Concats on the channel axis of exactly a box and a class
/// prediction of the same grid.
fn per_level_pairs(
    graph: &Graph,
    joined: &HashMap<NodeId, Vec<(usize, Prediction, bool)>>,
) -> Vec<(Prediction, Prediction)> {
    let mut pairs = Vec::new();
    for (&node, inputs) in joined {
        let n = graph.node(node);
        let channel_axis = matches!(n.op, Op::Concat { axis: 1 | -3 });
        if !channel_axis || n.inputs.len() != 2 || inputs.len() != 2 {
            continue;
        }
        if !inputs.iter().all(|&(_, _, direct)| direct) {
            continue;
        }
        let mut inputs = inputs.clone();
        inputs.sort_by_key(|&(position, _, _)| position);
        let (boxes, classes) = (inputs[0].1, inputs[1].1);
        if boxes.cells == classes.cells {
            pairs.push((boxes, classes));
        }
    }
    pairs
}

/// Pattern 2: two Concats that gather reshaped predictions of every level, the box
/// one feeding a Softmax (the DFL decode).
fn cross_level_pairs(
    graph: &Graph,
    consumers: &HashMap<ValueId, Vec<NodeId>>,
    joined: &HashMap<NodeId, Vec<(usize, Prediction, bool)>>,
) -> Result<Vec<(Prediction, Prediction)>, EngineError> {
    let gathers: Vec<(NodeId, Vec<Prediction>)> = joined
        .iter()
        .filter(|&(&node, inputs)| {
            inputs.len() == graph.node(node).inputs.len() && inputs.iter().all(|&(_, _, d)| !d)
        })
        .map(|(&node, inputs)| {
            let mut inputs = inputs.clone();
            inputs.sort_by_key(|&(position, _, _)| position);
            (node, inputs.into_iter().map(|(_, p, _)| p).collect())
        })
        .collect();
    if gathers.len() != 2 {
        return Ok(Vec::new());
    }
    let feeds_dfl: Vec<bool> = gathers
        .iter()
        .map(|(node, _)| reaches_softmax(graph, consumers, graph.node(*node).outputs[0]))
        .collect();
    let (boxes, classes) = match feeds_dfl.as_slice() {
        [true, false] => (&gathers[0].1, &gathers[1].1),
        [false, true] => (&gathers[1].1, &gathers[0].1),
        _ => {
            return Err(EngineError::NoDetectionHead(format!(
                "two Concats gather the prediction convolutions ('{}', '{}'), but not exactly one \
                 of them feeds a Softmax (the DFL decode of the box branch), so the box branch \
                 cannot be told from the class branch",
                graph.node(gathers[0].0).name,
                graph.node(gathers[1].0).name
            )));
        }
    };
    let mut pairs = Vec::new();
    for b in boxes {
        let mut same = classes.iter().filter(|c| c.cells == b.cells);
        match (same.next(), same.next()) {
            (Some(c), None) => pairs.push((*b, *c)),
            _ => {
                return Err(EngineError::NoDetectionHead(format!(
                    "the box prediction '{}' ({}×{} cells) has no single class prediction of \
                     the same grid",
                    graph.value(b.value).name,
                    b.cells.0,
                    b.cells.1
                )));
            }
        }
    }
    Ok(pairs)
}

/// Whether `value` reaches a Softmax through ops that only rearrange it.
fn reaches_softmax(
    graph: &Graph,
    consumers: &HashMap<ValueId, Vec<NodeId>>,
    value: ValueId,
) -> bool {
    let mut frontier = vec![value];
    for _ in 0..4 {
        let mut next = Vec::new();
        for v in frontier {
            for &id in consumers.get(&v).map(Vec::as_slice).unwrap_or(&[]) {
                let node = graph.node(id);
                match node.op {
                    Op::Softmax { .. } => return true,
                    Op::Reshape { .. }
                    | Op::Transpose { .. }
                    | Op::Flatten { .. }
                    | Op::Identity => next.extend(node.outputs.iter().copied()),
                    _ => {}
                }
            }
        }
        frontier = next;
    }
    false
}

/// Checks the pairs agree on reg_max and nc and have whole strides; orders them.
fn assemble(
    pairs: Vec<(Prediction, Prediction)>,
    (height, width): (i64, i64),
) -> Result<DetectionHead, EngineError> {
    let bad = |m: String| Err(EngineError::NoDetectionHead(m));
    let (first_boxes, first_classes) = pairs[0];
    let mut levels = Vec::with_capacity(pairs.len());
    for (boxes, classes) in &pairs {
        if boxes.channels != first_boxes.channels || classes.channels != first_classes.channels {
            return bad(format!(
                "the head's levels disagree on their channels: {} + {} against {} + {}",
                boxes.channels, classes.channels, first_boxes.channels, first_classes.channels
            ));
        }
        let (h, w) = boxes.cells;
        if h == 0 || w == 0 || height % h != 0 || width % w != 0 || height / h != width / w {
            return bad(format!(
                "a level of {h}×{w} cells has no whole stride in the {height}×{width} input"
            ));
        }
        levels.push(LevelTaps {
            boxes: boxes.value,
            classes: classes.value,
            stride: (height / h) as f64,
        });
    }
    if first_boxes.channels % 4 != 0 || first_boxes.channels < 8 {
        return bad(format!(
            "the box branch has {} channels, not 4·reg_max with reg_max ≥ 2 (a distribution \
             per side)",
            first_boxes.channels
        ));
    }
    levels.sort_by(|a, b| a.stride.total_cmp(&b.stride));
    if levels.windows(2).any(|w| w[0].stride == w[1].stride) {
        return bad("two head levels have the same stride".into());
    }
    Ok(DetectionHead {
        levels,
        classes: first_classes.channels,
        reg_max: first_boxes.channels / 4,
        image_size: (height, width),
    })
}
