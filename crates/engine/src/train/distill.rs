//! What the student learns from: the frozen original's outputs, compared with a loss
//! that has no scale of its own.

use std::collections::HashSet;

use effp_graph::channels::{ChannelAnalysis, Mask};
use effp_graph::ir::{Graph, Op, ValueId};
use tch::{Kind, Tensor};

pub use effp_protocol::Distill;

use super::head::{LevelTaps, find_detection_head};
use crate::EngineError;

/// How much [`Distill::Foreground`] softens the box-side bins before comparing
/// them: above 1, the bins next to the most likely one carry weight too, and they
/// are what places a box edge between two bins (sub-bin precision).
pub const BOX_TEMPERATURE: f64 = 2.0;

/// What a run distils, resolved against its graph: the values tapped beside the
/// outputs, and how their tensors are compared.
#[derive(Debug, Clone, PartialEq)]
pub struct DistillTargets {
    /// Values compared channel by channel like the outputs.
    pub channelwise: Vec<ValueId>,
    /// Head levels compared as distributions ([`Distill::Foreground`]).
    pub levels: Vec<LevelTaps>,
    /// Bins per box side of those levels.
    pub reg_max: i64,
    /// Per channel-wise value, the channels compared: those of switched-on groups
    /// and frozen ones (`None`: all of them). A switched-off channel is still
    /// computed by the masked student, but nothing reads it.
    pub kept: Vec<Option<Vec<i64>>>,
    /// Whether the student is compacted: its tapped maps hold only the kept
    /// channels.
    pub compacted: bool,
}

impl DistillTargets {
    /// What a run on `graph` distils unless told otherwise: the head as
    /// distributions where it is a YOLOv8-style head (it keeps more of the
    /// original's mAP50-95 at every target measured, and label-free runs do not
    /// collapse: docs/benchmarks.md), the prediction layers' raw outputs otherwise.
    pub fn default_for(graph: &Graph, analysis: &ChannelAnalysis) -> Distill {
        if find_detection_head(graph, analysis).is_ok() {
            Distill::Foreground
        } else {
            Distill::Heads
        }
    }

    /// The targets `distill` names in `graph`. Fails when the choice needs a
    /// YOLOv8-style head and the graph has none.
    pub fn resolve(
        distill: Distill,
        graph: &Graph,
        analysis: &ChannelAnalysis,
    ) -> Result<Self, EngineError> {
        let needs_head = |e: EngineError| match e {
            EngineError::NoDetectionHead(why) => EngineError::Input(format!(
                "distill '{}' needs a YOLOv8-style detection head ({why}); use distill \
                 'heads' or 'outputs' for this model",
                distill.as_str()
            )),
            other => other,
        };
        let plain = |channelwise: Vec<ValueId>| Self {
            kept: vec![None; channelwise.len()],
            compacted: false,
            channelwise,
            levels: Vec::new(),
            reg_max: 0,
        };
        Ok(match distill {
            Distill::Outputs => plain(Vec::new()),
            Distill::Heads => plain(prediction_taps(graph, analysis)),
            Distill::Neck => {
                let head = find_detection_head(graph, analysis).map_err(needs_head)?;
                let mut taps = prediction_taps(graph, analysis);
                for level in &head.levels {
                    let neck = nearest_common_source(graph, level.boxes, level.classes)
                        .ok_or_else(|| {
                            EngineError::Input(format!(
                                "distill 'neck': the box and class branches of the level of \
                                 stride {} share no feature map",
                                level.stride
                            ))
                        })?;
                    if !taps.contains(&neck) {
                        taps.push(neck);
                    }
                }
                plain(taps)
            }
            Distill::Foreground => {
                let head = find_detection_head(graph, analysis).map_err(needs_head)?;
                Self {
                    channelwise: Vec::new(),
                    levels: head.levels.clone(),
                    reg_max: head.reg_max,
                    kept: Vec::new(),
                    compacted: false,
                }
            }
        })
    }

    /// The same targets for a student masked with `mask`, or compacted to it: only
    /// the channels the mask keeps are compared, so that the masked and the
    /// compacted student are taught alike.
    pub fn for_mask(&self, analysis: &ChannelAnalysis, mask: &Mask, compacted: bool) -> Self {
        let kept = self
            .channelwise
            .iter()
            .map(|&v| {
                let n = analysis.channels(v)?;
                let keep: Vec<i64> = (0..n)
                    .filter(|&c| analysis.group_of(v, c).is_none_or(|g| mask.is_active(g)))
                    .map(|c| c as i64)
                    .collect();
                (keep.len() < n).then_some(keep)
            })
            .collect();
        Self {
            kept,
            compacted,
            ..self.clone()
        }
    }

    /// The values to tap, in the order [`DistillTargets::loss`] expects them after
    /// the outputs: the channel-wise ones, then box and class per level.
    pub fn taps(&self) -> Vec<ValueId> {
        self.channelwise
            .iter()
            .copied()
            .chain(self.levels.iter().flat_map(|l| [l.boxes, l.classes]))
            .collect()
    }

    /// The distillation loss over `outputs` graph outputs followed by the tapped
    /// tensors of [`DistillTargets::taps`], student against teacher: the mean of
    /// one term per channel-wise tensor and, with head levels, one for the boxes
    /// and one for the classes.
    pub fn loss(&self, outputs: usize, student: &[Tensor], teacher: &[Tensor]) -> Tensor {
        let plain = outputs + self.channelwise.len();
        let (student_kept, teacher_kept): (Vec<Tensor>, Vec<Tensor>);
        let (student, teacher) = if self.kept.iter().any(Option::is_some) {
            let select = |i: usize, t: &Tensor, this_side: bool| match i
                .checked_sub(outputs)
                .and_then(|k| self.kept.get(k))
            {
                Some(Some(keep)) if this_side => {
                    t.index_select(1, &Tensor::from_slice(keep).to_device(t.device()))
                }
                _ => t.shallow_clone(),
            };
            student_kept = (student.iter().enumerate())
                .map(|(i, s)| select(i, s, !self.compacted))
                .collect();
            teacher_kept = (teacher.iter().enumerate())
                .map(|(i, t)| select(i, t, true))
                .collect();
            (&student_kept[..], &teacher_kept[..])
        } else {
            (student, teacher)
        };
        if self.levels.is_empty() {
            return distillation_loss(student, teacher);
        }
        let channelwise = distillation_loss(&student[..plain], &teacher[..plain]) * plain as f64;
        let (boxes, classes) =
            foreground_divergence(&student[plain..], &teacher[plain..], self.reg_max);
        (channelwise + boxes + classes) / (plain + 2) as f64
    }
}

/// The value both `a` and `b` are computed from that is computed last: for a head
/// level's box and class branches, the feature map they both read.
fn nearest_common_source(graph: &Graph, a: ValueId, b: ValueId) -> Option<ValueId> {
    let from_a = sources(graph, a);
    sources(graph, b)
        .into_iter()
        .filter(|v| from_a.contains(v))
        .filter(|&v| graph.shape(v).is_some_and(|s| s.len() == 4))
        .filter_map(|v| Some((graph.value(v).producer?.0, v)))
        .max_by_key(|&(node, _)| node)
        .map(|(_, v)| v)
}

/// Every computed value `value` depends on, itself included.
fn sources(graph: &Graph, value: ValueId) -> HashSet<ValueId> {
    let mut seen = HashSet::new();
    let mut stack = vec![value];
    while let Some(v) = stack.pop() {
        let Some(node) = graph.value(v).producer else {
            continue;
        };
        if seen.insert(v) {
            stack.extend(graph.node(node).inputs.iter().flatten().copied());
        }
    }
    seen
}

/// For head levels given as (box, class) tensor pairs, `[B, 4·reg_max, H, W]` and
/// `[B, nc, H, W]`: the box term, each side's bins compared as distributions
/// (KL divergence at [`BOX_TEMPERATURE`], scaled by its square) summed over the four
/// sides and averaged over anchors weighted by the teacher's highest class
/// probability there, since a box only matters where the detector sees an object;
/// and the class term, each class compared as a Bernoulli distribution (KL
/// divergence) summed over classes and averaged over every anchor, since a false
/// positive on background costs as much as a missed object. Both are zero where the
/// student equals the teacher.
pub fn foreground_divergence(
    student: &[Tensor],
    teacher: &[Tensor],
    reg_max: i64,
) -> (Tensor, Tensor) {
    let device = student.first().map_or(tch::Device::Cpu, Tensor::device);
    let zero = || Tensor::zeros([], (Kind::Float, device));
    let (mut box_sum, mut weight_sum, mut class_sum) = (zero(), zero(), zero());
    let mut anchors = 0i64;
    let t = BOX_TEMPERATURE;
    for (s, te) in student.chunks_exact(2).zip(teacher.chunks_exact(2)) {
        let (s_box, s_cls, t_box, t_cls) = (&s[0], &s[1], &te[0], &te[1]);
        let size = t_box.size();
        let (b, h, w) = (size[0], size[2], size[3]);
        let sides = [b, 4, reg_max, h, w];
        let t_log = (t_box.reshape(sides) / t).log_softmax(2, Kind::Float);
        let s_log = (s_box.reshape(sides) / t).log_softmax(2, Kind::Float);
        let box_kl =
            (t_log.exp() * (&t_log - s_log)).sum_dim_intlist(&[1i64, 2][..], false, Kind::Float)
                * (t * t);
        let weight = t_cls.sigmoid().amax(&[1i64][..], false).detach();
        box_sum += (box_kl * &weight).sum(Kind::Float);
        weight_sum += weight.sum(Kind::Float);
        let (t_on, t_off) = (t_cls.log_sigmoid(), (-t_cls).log_sigmoid());
        let (s_on, s_off) = (s_cls.log_sigmoid(), (-s_cls).log_sigmoid());
        let class_kl = t_on.exp() * (&t_on - s_on) + t_off.exp() * (&t_off - s_off);
        class_sum += class_kl.sum(Kind::Float);
        anchors += b * h * w;
    }
    (
        box_sum / (weight_sum + 1e-9),
        class_sum / anchors.max(1) as f64,
    )
}

/// The prediction layers' outputs: values made by a convolution or Gemm that reads
/// prunable channels but whose own channels cannot be pruned (they are what the
/// decoder interprets: box distributions, class logits).
pub fn prediction_taps(graph: &Graph, analysis: &ChannelAnalysis) -> Vec<ValueId> {
    graph
        .nodes
        .iter()
        .filter(|n| matches!(n.op, Op::Conv(_) | Op::ConvTranspose(_) | Op::Gemm { .. }))
        .filter_map(|n| {
            let x = n.input(0)?;
            let y = *n.outputs.first()?;
            let reads_prunable =
                (0..analysis.channels(x)?).any(|c| analysis.group_of(x, c).is_some());
            let frozen = (0..analysis.channels(y)?).all(|c| analysis.group_of(y, c).is_none());
            (reads_prunable && frozen).then_some(y)
        })
        .collect()
}

/// Scale-free distillation: for every tensor pair and every channel of it (axis 1),
/// the mean squared error over the teacher's variance in that channel, averaged over
/// channels and over tensors. Per channel, because detectors put box coordinates in
/// pixels and class scores in [0, 1] in one tensor: normalised as a whole, the boxes
/// would drown the scores. Over the variance rather than the mean square, because an
/// offset the channel always carries (a coordinate's mean position, a logit's
/// background level) says nothing about how precisely it must be matched.
pub fn distillation_loss(student: &[Tensor], teacher: &[Tensor]) -> Tensor {
    let device = student
        .first()
        .map_or(tch::Device::Cpu, |t: &Tensor| t.device());
    let count = student.len().max(1) as f64;
    student
        .iter()
        .zip(teacher)
        .map(|(s, t)| {
            if t.dim() < 2 {
                return (s - t).square().mean(Kind::Float) / (t.square().mean(Kind::Float) + 1e-12);
            }
            let dims: Vec<i64> = (0..t.dim() as i64).filter(|&d| d != 1).collect();
            let error = (s - t)
                .square()
                .mean_dim(dims.as_slice(), false, Kind::Float);
            let spread = t.var_dim(dims.as_slice(), false, false)
                + t.square().mean_dim(dims.as_slice(), false, Kind::Float) * 1e-6
                + 1e-12;
            (error / spread).mean(Kind::Float)
        })
        .fold(Tensor::zeros([], (Kind::Float, device)), |acc, l| acc + l)
        / count
}
