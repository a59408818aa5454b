//! The distillation targets: the neck's feature maps are the maps both branches of a
//! head level read, the detector-aware divergence weighs box errors by the
//! original's confidence and equals its definition, and a compacted student is
//! taught exactly as the masked one.

use effp_engine::tch::{Device, Kind, Tensor};
use effp_engine::train::distill::{
    BOX_TEMPERATURE, Distill, DistillTargets, foreground_divergence, prediction_taps,
};
use effp_engine::train::head::find_detection_head;
use effp_graph::channels::{ChannelAnalysis, Mask};
use effp_graph::ir::{Model, Op, ValueId};
use effp_graph::onnx::{load_bytes, load_file};
use effp_graph::shape::infer_shapes;
use effp_testkit::{fixtures, zoo};

const REG_MAX: i64 = 16;

fn prepared(name: &str) -> (Model, ChannelAnalysis) {
    let mut model = load_file(&fixtures::path(name)).unwrap();
    infer_shapes(&mut model, None).unwrap();
    let analysis = ChannelAnalysis::new(&model.graph).unwrap();
    (model, analysis)
}

fn softmax(v: &[f64]) -> Vec<f64> {
    let m = v.iter().cloned().fold(f64::MIN, f64::max);
    let e: Vec<f64> = v.iter().map(|x| (x - m).exp()).collect();
    let z: f64 = e.iter().sum();
    e.iter().map(|x| x / z).collect()
}

fn sigmoid(x: f64) -> f64 {
    1.0 / (1.0 + (-x).exp())
}

/// One level of two anchors (1×2 grid), three classes: anchor 0 is an object the
/// teacher is sure of, anchor 1 background.
struct Level {
    boxes: Vec<f64>,
    classes: Vec<f64>,
}

impl Level {
    fn teacher() -> Self {
        let boxes = (0..4 * REG_MAX * 2)
            .map(|i| ((i / 2 * 37 % 23) as f64 - 11.0) / 4.0)
            .collect();
        // [c, anchor]: anchor 0 class 1 at logit 6, everything else at −6.
        let classes = vec![-6.0, -6.0, 6.0, -6.0, -6.0, -6.0];
        Level { boxes, classes }
    }

    fn tensors(&self) -> [Tensor; 2] {
        let f = |v: &[f64], c: i64| {
            Tensor::from_slice(&v.iter().map(|&x| x as f32).collect::<Vec<_>>())
                .reshape([1, c, 1, 2])
        };
        [f(&self.boxes, 4 * REG_MAX), f(&self.classes, 3)]
    }

    /// The bins of side `side` at `anchor`.
    fn bins(&self, side: usize, anchor: usize) -> Vec<f64> {
        (0..REG_MAX as usize)
            .map(|b| self.boxes[(side * REG_MAX as usize + b) * 2 + anchor])
            .collect()
    }
}

/// The definition, in f64: Σ over sides of KL(softmax(t/T) ‖ softmax(s/T))·T².
fn box_kl(s: &Level, t: &Level, anchor: usize) -> f64 {
    let temp = BOX_TEMPERATURE;
    (0..4)
        .map(|side| {
            let scaled = |v: Vec<f64>| v.iter().map(|x| x / temp).collect::<Vec<_>>();
            let p = softmax(&scaled(t.bins(side, anchor)));
            let q = softmax(&scaled(s.bins(side, anchor)));
            p.iter().zip(&q).map(|(p, q)| p * (p / q).ln()).sum::<f64>() * temp * temp
        })
        .sum()
}

fn divergence(s: &Level, t: &Level) -> (f64, f64) {
    let (b, c) = foreground_divergence(&s.tensors(), &t.tensors(), REG_MAX);
    (b.double_value(&[]), c.double_value(&[]))
}

#[test]
fn the_divergence_is_zero_at_the_teacher_and_equals_its_definition() {
    let teacher = Level::teacher();
    let (b, c) = divergence(&Level::teacher(), &teacher);
    assert!(b.abs() < 1e-6 && c.abs() < 1e-6, "{b} {c}");

    // The same box error at the object and at the background anchor.
    let mut at_object = Level::teacher();
    let mut at_background = Level::teacher();
    for side in 0..4 {
        for bin in 0..REG_MAX as usize {
            let delta = ((side * 5 + bin) % 7) as f64 / 3.0 - 1.0;
            at_object.boxes[(side * REG_MAX as usize + bin) * 2] += delta;
            at_background.boxes[(side * REG_MAX as usize + bin) * 2 + 1] += delta;
        }
    }
    let (w0, w1) = (sigmoid(6.0), sigmoid(-6.0));
    let kl_object = box_kl(&at_object, &teacher, 0);
    let kl_background = box_kl(&at_background, &teacher, 1);
    assert!(
        (kl_object - kl_background).abs() < 1e-9 * kl_object,
        "the same error"
    );
    let (b_object, c_object) = divergence(&at_object, &teacher);
    let (b_background, _) = divergence(&at_background, &teacher);
    let expected = w0 * kl_object / (w0 + w1);
    assert!(
        (b_object - expected).abs() <= 1e-5 * expected,
        "{b_object} vs {expected}"
    );
    let expected = w1 * kl_background / (w0 + w1);
    assert!(
        (b_background - expected).abs() <= 1e-4 * expected,
        "{b_background} vs {expected}"
    );
    // Weighted by confidence: the error at the object costs w0 / w1 = e^6 ≈ 403 times
    // more.
    let ratio = b_object / b_background;
    assert!((ratio - w0 / w1).abs() <= 1e-3 * w0 / w1, "{ratio}");
    assert!(
        c_object.abs() < 1e-6,
        "the classes were untouched: {c_object}"
    );

    // A false positive at the background anchor: the class term is the Bernoulli
    // divergence of that class, over the two anchors.
    let mut false_positive = Level::teacher();
    false_positive.classes[2 * 2 + 1] = 1.0;
    let (b, c) = divergence(&false_positive, &teacher);
    let (p, q) = (sigmoid(-6.0), sigmoid(1.0));
    let expected = (p * (p / q).ln() + (1.0 - p) * ((1.0 - p) / (1.0 - q)).ln()) / 2.0;
    assert!(b.abs() < 1e-6, "{b}");
    assert!((c - expected).abs() <= 1e-4 * expected, "{c} vs {expected}");
}

#[test]
fn the_neck_targets_are_the_maps_both_branches_of_each_level_read() {
    let (model, analysis) = prepared("yolov8t.onnx");
    let g = &model.graph;
    let head = find_detection_head(g, &analysis).unwrap();
    let heads = DistillTargets::resolve(Distill::Heads, g, &analysis).unwrap();
    let neck = DistillTargets::resolve(Distill::Neck, g, &analysis).unwrap();
    assert_eq!(heads.channelwise, prediction_taps(g, &analysis));
    assert_eq!(
        &neck.channelwise[..heads.channelwise.len()],
        &heads.channelwise[..]
    );
    let maps = &neck.channelwise[heads.channelwise.len()..];
    assert_eq!(maps.len(), head.levels.len());
    let convs_reading = |v| {
        g.nodes
            .iter()
            .filter(|n| matches!(n.op, Op::Conv(_)) && n.input(0) == Some(v))
            .count()
    };
    for (&map, level) in maps.iter().zip(&head.levels) {
        let shape = g.shape(map).unwrap();
        let (h, w) = (head.image_size.0 as f64, head.image_size.1 as f64);
        assert_eq!(
            (shape[2] as f64, shape[3] as f64),
            (h / level.stride, w / level.stride),
            "a map of the level's grid"
        );
        assert!(
            convs_reading(map) >= 2,
            "the first convolution of each branch reads it"
        );
        for tap in [level.boxes, level.classes] {
            assert!(
                reaches(g, tap, map, 8),
                "the level's branches are computed from it"
            );
        }
        assert!(
            (0..shape[1]).any(|c| analysis.group_of(map, c).is_some()),
            "its channels can be pruned"
        );
    }
}

/// Whether `to` is among the values `from` is computed from within `depth` nodes.
fn reaches(g: &effp_graph::ir::Graph, from: ValueId, to: ValueId, depth: usize) -> bool {
    if from == to {
        return true;
    }
    let Some(node) = g.value(from).producer.filter(|_| depth > 0) else {
        return false;
    };
    g.node(node)
        .inputs
        .iter()
        .flatten()
        .any(|&v| reaches(g, v, to, depth - 1))
}

#[test]
fn the_detector_targets_need_a_detection_head() {
    let mut model = load_bytes(&zoo::gemm_head()).unwrap();
    infer_shapes(&mut model, None).unwrap();
    let analysis = ChannelAnalysis::new(&model.graph).unwrap();
    for distill in [Distill::Neck, Distill::Foreground] {
        let err = DistillTargets::resolve(distill, &model.graph, &analysis).unwrap_err();
        let text = err.to_string();
        assert!(
            text.contains(distill.as_str()) && text.contains("YOLOv8-style detection head"),
            "{text}"
        );
    }
    assert!(DistillTargets::resolve(Distill::Heads, &model.graph, &analysis).is_ok());
    // Unless a run names one, such a model distils its prediction layers.
    assert_eq!(
        DistillTargets::default_for(&model.graph, &analysis),
        Distill::Heads
    );
}

#[test]
fn a_compacted_student_is_taught_as_the_masked_one() {
    let (model, analysis) = prepared("yolov8t.onnx");
    let g = &model.graph;
    let neck = DistillTargets::resolve(Distill::Neck, g, &analysis).unwrap();
    let map = *neck.channelwise.last().unwrap();
    let channels = analysis.channels(map).unwrap();
    // Switch off every other group the map's channels belong to.
    let mut mask = Mask::all_active(analysis.groups.len());
    let mut off = Vec::new();
    for c in 0..channels {
        if let Some(group) = analysis.group_of(map, c)
            && c % 2 == 0
        {
            mask.set(group, false);
            off.push(c as i64);
        }
    }
    assert!(!off.is_empty());
    let masked_targets = neck.for_mask(&analysis, &mask, false);
    let compacted_targets = neck.for_mask(&analysis, &mask, true);
    let k = neck.channelwise.len() - 1;
    let kept = compacted_targets.kept[k]
        .clone()
        .expect("the map lost channels");
    assert_eq!(kept.len() + off.len(), channels);
    assert!(kept.iter().all(|c| !off.contains(c)));

    // The masked student still computes the switched-off channels (nothing reads
    // them); the compacted one lacks them. Both are taught the same loss, and what
    // the masked student computes in those channels does not count.
    let outputs = 1;
    let (mut teacher, mut masked, mut small) = (Vec::new(), Vec::new(), Vec::new());
    let shapes: Vec<Vec<i64>> = std::iter::once(vec![1, 7, 20])
        .chain(
            neck.channelwise
                .iter()
                .map(|&v| g.shape(v).unwrap().iter().map(|&d| d as i64).collect()),
        )
        .collect();
    for (i, shape) in shapes.iter().enumerate() {
        let t = Tensor::randn(shape.as_slice(), (Kind::Float, Device::Cpu));
        let s = &t + Tensor::randn(shape.as_slice(), (Kind::Float, Device::Cpu)) * 0.1;
        if i == outputs + k {
            small.push(s.index_select(1, &Tensor::from_slice(&kept)));
            masked.push(s.index_fill(1, &Tensor::from_slice(&off), 5.0));
        } else {
            small.push(s.shallow_clone());
            masked.push(s);
        }
        teacher.push(t);
    }
    let a = masked_targets
        .loss(outputs, &masked, &teacher)
        .double_value(&[]);
    let b = compacted_targets
        .loss(outputs, &small, &teacher)
        .double_value(&[]);
    assert!(a > 0.0 && (a - b).abs() <= 1e-6 * a, "{a} vs {b}");
    // Counted, the switched-off channels would have changed it.
    let all = neck.loss(outputs, &masked, &teacher).double_value(&[]);
    assert!(all > 2.0 * a, "{all} vs {a}");
}
