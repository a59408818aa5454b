//! The labelled detection loss equals Ultralytics' own `v8DetectionLoss` on the same
//! predictions and labels (values and gradients), rewards predictions that match the
//! labels, and reads the right tensors of Ultralytics' exports.

use effp_engine::EngineError;
use effp_engine::data::dataset::load;
use effp_engine::data::loader::{LoaderOptions, epoch};
use effp_engine::runtime::Network;
use effp_engine::tch::{self, Device, Kind, Tensor};
use effp_engine::train::detection_loss::{
    DetectionLoss, DetectionLossConfig, HeadLevel, detection_loss,
};
use effp_engine::train::head::{DetectionHead, find_detection_head};
use effp_graph::channels::ChannelAnalysis;
use effp_graph::ir::Model;
use effp_graph::onnx::{load_bytes, load_file};
use effp_graph::shape::infer_shapes;
use effp_testkit::builder::{ModelBuilder, int, ints};
use effp_testkit::{fixtures, zoo};

const REG_MAX: i64 = 16;
const STRIDES: [i64; 3] = [8, 16, 32];

/// One batch of raw predictions, per level `[B, 4·reg_max + nc, H, W]` as
/// Ultralytics' training forward concatenates them, and its labels.
struct Case {
    name: &'static str,
    /// (height, width).
    image: (i64, i64),
    classes: i64,
    predictions: Vec<Tensor>,
    /// (image, class, cx, cy, w, h), normalised.
    targets: Vec<[f32; 6]>,
}

impl Case {
    /// Leaf copies of the predictions on `device` that collect gradients, and the
    /// loss's levels over them.
    fn levels(&self, device: Device) -> (Vec<Tensor>, Vec<HeadLevel>) {
        let leaves: Vec<Tensor> = self
            .predictions
            .iter()
            .map(|p| p.to_device(device).detach().copy().set_requires_grad(true))
            .collect();
        let levels = leaves
            .iter()
            .zip(STRIDES)
            .map(|(p, s)| HeadLevel::from_concatenated(p, REG_MAX, s as f64).unwrap())
            .collect();
        (leaves, levels)
    }

    fn targets(&self) -> Tensor {
        let flat: Vec<f32> = self.targets.iter().flatten().copied().collect();
        Tensor::from_slice(&flat).view([-1, 6])
    }

    fn loss(&self) -> (DetectionLoss, Vec<Tensor>) {
        self.loss_on(Device::Cpu)
    }

    /// The loss with the predictions on `device` (the labels stay on the CPU).
    fn loss_on(&self, device: Device) -> (DetectionLoss, Vec<Tensor>) {
        let (leaves, levels) = self.levels(device);
        let loss = detection_loss(
            &levels,
            &self.targets(),
            self.image,
            &DetectionLossConfig::default(),
        )
        .unwrap();
        (loss, leaves)
    }

    fn request(&self) -> serde_json::Value {
        let levels: Vec<_> = self
            .predictions
            .iter()
            .map(|p| {
                serde_json::json!({
                    "shape": p.size(),
                    // f64, exactly the float32 values, so that Python reads them back
                    // bit for bit.
                    "data": Vec::<f64>::try_from(p.reshape([-1]).to_kind(Kind::Double)).unwrap(),
                })
            })
            .collect();
        serde_json::json!({
            "nc": self.classes,
            "reg_max": REG_MAX,
            "strides": STRIDES,
            "gains": { "box": 7.5, "cls": 0.5, "dfl": 1.5 },
            "levels": levels,
            "targets": self.targets.iter().map(|r| r.map(f64::from)).collect::<Vec<_>>(),
        })
    }
}

fn grids((height, width): (i64, i64)) -> Vec<(i64, i64)> {
    STRIDES.iter().map(|s| (height / s, width / s)).collect()
}

fn random_predictions(batch: i64, image: (i64, i64), classes: i64, seed: i64) -> Vec<Tensor> {
    tch::manual_seed(seed);
    grids(image)
        .into_iter()
        .map(|(h, w)| {
            Tensor::randn(
                [batch, 4 * REG_MAX + classes, h, w],
                (Kind::Float, Device::Cpu),
            )
        })
        .collect()
}

/// A labelled box placed on a stride-8 anchor: image, class, anchor (row, column)
/// and whole distances (left, top, right, bottom) in cells.
type Placed = (i64, i64, (i64, i64), [i64; 4]);

const PLACED: [Placed; 3] = [
    (0, 1, (3, 4), [2, 2, 2, 2]),
    (0, 2, (5, 9), [1, 2, 2, 1]),
    (2, 0, (2, 2), [1, 1, 1, 1]),
];

/// Predictions that match `placed` exactly at their anchors (a sharp distribution
/// on the whole distance, a confident class), confident background everywhere else,
/// and the labels they match.
fn matching(batch: i64, image: (i64, i64), classes: i64, placed: &[Placed]) -> Case {
    let mut predictions: Vec<Tensor> = grids(image)
        .into_iter()
        .map(|(h, w)| {
            let p = Tensor::zeros(
                [batch, 4 * REG_MAX + classes, h, w],
                (Kind::Float, Device::Cpu),
            );
            let _ = p.narrow(1, 4 * REG_MAX, classes).fill_(-8.0);
            p
        })
        .collect();
    let (height, width) = image;
    let mut targets = Vec::new();
    for &(b, class, (row, col), d) in placed {
        let p = &mut predictions[0];
        for (side, &distance) in d.iter().enumerate() {
            let bins = p.narrow(1, side as i64 * REG_MAX, REG_MAX).select(0, b);
            let _ = bins.select(1, row).select(1, col).fill_(-30.0);
            let _ = bins
                .select(0, distance)
                .select(0, row)
                .select(0, col)
                .fill_(0.0);
        }
        let _ = p
            .get(b)
            .get(4 * REG_MAX + class)
            .get(row)
            .get(col)
            .fill_(8.0);
        let (cx, cy) = ((col as f32 + 0.5) * 8.0, (row as f32 + 0.5) * 8.0);
        let (x1, y1) = (cx - d[0] as f32 * 8.0, cy - d[1] as f32 * 8.0);
        let (x2, y2) = (cx + d[2] as f32 * 8.0, cy + d[3] as f32 * 8.0);
        let (w, h) = (width as f32, height as f32);
        targets.push([
            b as f32,
            class as f32,
            (x1 + x2) / 2.0 / w,
            (y1 + y2) / 2.0 / h,
            (x2 - x1) / w,
            (y2 - y1) / h,
        ]);
    }
    Case {
        name: "matching",
        image,
        classes,
        predictions,
        targets,
    }
}

fn cases() -> Vec<Case> {
    let image = (64, 96);
    let (w, h) = (96.0f32, 64.0f32);
    // Image 0: two overlapping boxes (anchors claimed twice) and one far below the
    // stride of the second level (widened for candidate search); image 1: none;
    // image 2: a box nearly the image's size and one in a corner.
    let mixed = vec![
        [0.0, 0.0, 30.0 / w, 30.0 / h, 40.0 / w, 36.0 / h],
        [0.0, 1.0, 38.0 / w, 34.0 / h, 36.0 / w, 30.0 / h],
        [0.0, 2.0, 80.0 / w, 14.0 / h, 3.0 / w, 4.0 / h],
        [2.0, 1.0, 0.5, 0.5, 0.9, 0.8],
        [2.0, 0.0, 0.1, 0.9, 0.08, 0.12],
    ];
    // Half-way to the labels: softened, noisy versions of matching predictions, so
    // that assigned anchors have good but imperfect boxes.
    let mut near = matching(3, image, 3, &PLACED);
    tch::manual_seed(5);
    near.predictions = near
        .predictions
        .iter()
        .map(|p| p * 0.2 + p.randn_like() * 0.5)
        .collect();
    near.name = "half-way to the labels";
    // Boxes wider than 15 cells at stride 8: distances clamped to the last bin.
    let large = vec![
        [0.0, 2.0, 0.5, 0.5, 150.0 / 160.0, 120.0 / 128.0],
        [0.0, 0.0, 0.3, 0.2, 0.2, 0.3],
        [1.0, 1.0, 0.6, 0.55, 0.7, 0.5],
        [1.0, 1.0, 0.62, 0.5, 0.65, 0.55],
        [1.0, 2.0, 0.05, 0.05, 0.01, 0.02],
    ];
    vec![
        Case {
            name: "random, mixed labels",
            image,
            classes: 3,
            predictions: random_predictions(3, image, 3, 1),
            targets: mixed.clone(),
        },
        Case {
            name: "random ×3, mixed labels",
            image,
            classes: 3,
            predictions: random_predictions(3, image, 3, 2)
                .into_iter()
                .map(|p| p * 3.0)
                .collect(),
            targets: mixed,
        },
        Case {
            name: "random, large boxes, 128×160",
            image: (128, 160),
            classes: 3,
            predictions: random_predictions(2, (128, 160), 3, 3),
            targets: large,
        },
        near,
        Case {
            name: "no labels in the batch",
            image,
            classes: 3,
            predictions: random_predictions(2, image, 3, 4),
            targets: Vec::new(),
        },
        Case {
            name: "one class",
            image: (64, 64),
            classes: 1,
            predictions: random_predictions(2, (64, 64), 1, 6),
            targets: vec![
                [0.0, 0.0, 0.4, 0.5, 0.3, 0.4],
                [1.0, 0.0, 0.7, 0.3, 0.2, 0.2],
            ],
        },
    ]
}

fn relative(ours: f64, reference: f64) -> f64 {
    if reference == 0.0 {
        ours.abs()
    } else {
        (ours - reference).abs() / reference.abs()
    }
}

#[test]
fn loss_and_gradients_match_ultralytics() {
    let cases = cases();
    let request =
        serde_json::json!({ "cases": cases.iter().map(Case::request).collect::<Vec<_>>() });
    let answers = fixtures::run_script("v8_loss.py", &[], &request);
    let mut worst = [0.0f64; 5];
    for (case, reference) in cases.iter().zip(answers.as_array().unwrap()) {
        let (loss, leaves) = case.loss();
        loss.total.backward();
        let ours = [
            loss.total.double_value(&[]),
            loss.box_loss,
            loss.cls,
            loss.dfl,
        ];
        let theirs = ["total", "box", "cls", "dfl"].map(|k| reference[k].as_f64().unwrap());
        // The assignment is discrete: it must be the same, not merely close.
        let assigned = reference["assigned"].as_i64().unwrap();
        assert_eq!(loss.assigned, assigned, "{}: anchors assigned", case.name);
        if !case.targets.is_empty() {
            assert!(assigned > 0, "{}: Ultralytics assigned nothing", case.name);
        }
        for (k, name) in ["total", "box", "cls", "dfl"].iter().enumerate() {
            let r = relative(ours[k], theirs[k]);
            assert!(
                r <= 1e-4,
                "{}: {name} {} vs Ultralytics {} (relative {r:e})",
                case.name,
                ours[k],
                theirs[k]
            );
            worst[k] = worst[k].max(r);
        }
        let mut grad_error = 0.0f64;
        let mut grad_scale = 0.0f64;
        for (leaf, g) in leaves.iter().zip(reference["grads"].as_array().unwrap()) {
            let g: Vec<f32> = g
                .as_array()
                .unwrap()
                .iter()
                .map(|v| v.as_f64().unwrap() as f32)
                .collect();
            let g = Tensor::from_slice(&g).view(leaf.size().as_slice());
            grad_error = grad_error.max((leaf.grad() - &g).abs().max().double_value(&[]));
            grad_scale = grad_scale.max(g.abs().max().double_value(&[]));
        }
        let r = grad_error / grad_scale;
        assert!(
            r <= 1e-4,
            "{}: gradients differ by {r:e} of their largest",
            case.name
        );
        worst[4] = worst[4].max(r);
        eprintln!(
            "{}: total {:.6} box {:.6} cls {:.6} dfl {:.6}, {assigned} anchors assigned \
             (Ultralytics {:.6} {:.6} {:.6} {:.6})",
            case.name,
            ours[0],
            ours[1],
            ours[2],
            ours[3],
            theirs[0],
            theirs[1],
            theirs[2],
            theirs[3]
        );
    }
    eprintln!(
        "largest relative differences: total {:e}, box {:e}, cls {:e}, dfl {:e}, gradient {:e}",
        worst[0], worst[1], worst[2], worst[3], worst[4]
    );
}

/// The loss on CUDA equals the loss on the CPU: values, assignment, gradients.
/// Run on a machine with a GPU: `cargo test -p effp-engine --test detection_loss --
/// --ignored`.
#[test]
#[ignore = "needs a CUDA device"]
fn cuda_computes_what_the_cpu_computes() {
    assert!(tch::Cuda::is_available(), "no CUDA device");
    let cuda = Device::Cuda(0);
    for case in cases() {
        let (cpu, cpu_leaves) = case.loss();
        cpu.total.backward();
        let (gpu, gpu_leaves) = case.loss_on(cuda);
        gpu.total.backward();
        assert_eq!(gpu.total.device(), cuda);
        assert_eq!(
            gpu.assigned, cpu.assigned,
            "{}: anchors assigned",
            case.name
        );
        let pairs = [
            (gpu.total.double_value(&[]), cpu.total.double_value(&[])),
            (gpu.box_loss, cpu.box_loss),
            (gpu.cls, cpu.cls),
            (gpu.dfl, cpu.dfl),
        ];
        for (g, c) in pairs {
            assert!(relative(g, c) <= 1e-4, "{}: CUDA {g} vs CPU {c}", case.name);
        }
        for (g, c) in gpu_leaves.iter().zip(&cpu_leaves) {
            let (g, c) = (g.grad().to_device(Device::Cpu), c.grad());
            let r = (&g - &c).abs().max().double_value(&[]) / c.abs().max().double_value(&[]);
            assert!(r <= 1e-4, "{}: gradients differ by {r:e}", case.name);
        }
        eprintln!("{}: CUDA {pairs:?}, {} assigned", case.name, gpu.assigned);
    }
}

#[test]
fn matching_predictions_cost_far_less_than_random_ones() {
    let image = (64, 96);
    let good = matching(3, image, 3, &PLACED);
    let random = Case {
        name: "random",
        image,
        classes: 3,
        predictions: random_predictions(3, image, 3, 11),
        targets: good.targets.clone(),
    };
    let (g, _) = good.loss();
    let (r, _) = random.loss();
    let (g_total, r_total) = (g.total.double_value(&[]), r.total.double_value(&[]));
    // Measured ratios: total and cls 1.4e-4 (the classification loss of a perfect
    // logit is small but not zero), box and DFL 1.5e-8 and 1.3e-8 (rounding). The
    // bounds are about seven and seventy times those.
    assert!(g_total < 1e-3 * r_total, "matching {g:?} vs random {r:?}");
    assert!(
        g.box_loss < 1e-6 * r.box_loss,
        "matching {g:?} vs random {r:?}"
    );
    assert!(g.cls < 1e-3 * r.cls, "matching {g:?} vs random {r:?}");
    assert!(g.dfl < 1e-6 * r.dfl, "matching {g:?} vs random {r:?}");

    // Moving the labels one cell off the predictions makes them wrong again.
    let mut shifted = good;
    for t in &mut shifted.targets {
        t[2] += 8.0 / 96.0;
    }
    let (s, _) = shifted.loss();
    assert!(
        s.total.double_value(&[]) > 20.0 * g_total,
        "shifted {s:?} vs matching {g:?}"
    );
}

#[test]
fn an_assigned_anchor_learns_its_class_and_others_learn_background() {
    let case = matching(3, (64, 96), 3, &PLACED);
    // The first box's anchor predicts it exactly but is unsure of its class.
    let (b, class, (row, col), _) = PLACED[0];
    let _ = case.predictions[0]
        .get(b)
        .get(4 * REG_MAX + class)
        .get(row)
        .get(col)
        .fill_(-4.0);
    let (loss, leaves) = case.loss();
    loss.total.backward();
    let grad = leaves[0].grad();
    let assigned = grad.double_value(&[b, 4 * REG_MAX + class, row, col]);
    assert!(
        assigned < -0.1,
        "the assigned anchor's class logit gradient is {assigned}"
    );
    // Image 1 has no labels: every logit is pushed down.
    let background = grad.get(1).narrow(0, 4 * REG_MAX, 3);
    assert!(background.min().double_value(&[]) > 0.0);
    // The box distributions learn too (at the anchors that are not yet exact).
    assert!(grad.narrow(1, 0, 4 * REG_MAX).abs().max().double_value(&[]) > 0.0);
}

fn prepared(model: Model) -> (Model, ChannelAnalysis) {
    let mut model = model;
    infer_shapes(&mut model, None).unwrap();
    let analysis = ChannelAnalysis::new(&model.graph).unwrap();
    (model, analysis)
}

fn head_of(model: &Model, analysis: &ChannelAnalysis) -> Result<DetectionHead, EngineError> {
    find_detection_head(&model.graph, analysis)
}

#[test]
fn finds_the_head_of_ultralytics_exports() {
    for name in [
        "trained.onnx",
        "yolov8t.onnx",
        "yolo11t.onnx",
        "yolov5t.onnx",
    ] {
        let (model, analysis) = prepared(load_file(&fixtures::path(name)).unwrap());
        let head = head_of(&model, &analysis).unwrap_or_else(|e| panic!("{name}: {e}"));
        let g = &model.graph;
        assert_eq!((head.reg_max, head.classes), (16, 3), "{name}");
        let strides: Vec<f64> = head.levels.iter().map(|l| l.stride).collect();
        assert_eq!(strides, [8.0, 16.0, 32.0], "{name}");
        for (i, l) in head.levels.iter().enumerate() {
            let (boxes, classes) = (&g.value(l.boxes).name, &g.value(l.classes).name);
            // Ultralytics' Detect names the box branch cv2 and the class branch cv3.
            assert!(boxes.contains(&format!("cv2.{i}/")), "{name}: {boxes}");
            assert!(classes.contains(&format!("cv3.{i}/")), "{name}: {classes}");
            let (h, w) = (
                head.image_size.0 / STRIDES[i],
                head.image_size.1 / STRIDES[i],
            );
            assert_eq!(g.shape(l.boxes).unwrap(), [1, 64, h as usize, w as usize]);
            assert_eq!(g.shape(l.classes).unwrap(), [1, 3, h as usize, w as usize]);
        }
        assert_eq!(head.taps().len(), 6);
    }
}

/// The trained detector's loss on its own training images is low with their labels
/// and high with wrong ones, and its gradient reaches the weights: the head's taps
/// are the right tensors in the right order.
#[test]
fn the_trained_detector_fits_its_labels() {
    let (model, analysis) = prepared(load_file(&fixtures::path("trained.onnx")).unwrap());
    let head = head_of(&model, &analysis).unwrap();
    let data = load(&fixtures::dir().join("synth")).unwrap();
    let samples = &data.split("train").unwrap()[..6];
    let options = LoaderOptions::plain(6, 128, 3);
    let batch = epoch(samples, options, 0).next().unwrap().unwrap();
    assert!(batch.targets.size()[0] > 0);
    let network = Network::new(&model, Device::Cpu).unwrap();
    let (_, tapped) = network
        .forward_tapped(&[batch.images.shallow_clone()], None, &head.taps())
        .unwrap();
    let levels = head.head_levels(&tapped).unwrap();
    let loss = |targets: &Tensor| {
        detection_loss(&levels, targets, head.image_size, &head.loss_config()).unwrap()
    };
    let right = loss(&batch.targets);
    let wrong_class = batch.targets.copy();
    wrong_class
        .narrow(1, 1, 1)
        .copy_(&((batch.targets.narrow(1, 1, 1) + 1.0).remainder(3.0)));
    let wrong_class = loss(&wrong_class);
    let moved = batch.targets.copy();
    moved
        .narrow(1, 2, 1)
        .copy_(&((batch.targets.narrow(1, 2, 1) + 0.5).remainder(1.0)));
    let moved = loss(&moved);
    eprintln!("right {right:?}\nwrong class {wrong_class:?}\nmoved {moved:?}");
    assert!(
        right.cls * 2.0 < wrong_class.cls,
        "{right:?} vs {wrong_class:?}"
    );
    let r = right.total.double_value(&[]);
    assert!(
        r * 2.0 < moved.total.double_value(&[]),
        "{right:?} vs {moved:?}"
    );

    right.total.backward();
    let reached = network
        .trainable()
        .iter()
        .filter(|p| p.grad().defined() && p.grad().abs().max().double_value(&[]) > 0.0)
        .count();
    assert!(
        reached > network.trainable().len() / 2,
        "{reached} weights got a gradient"
    );
}

/// The head-finding patterns on small graphs: per-level Concats (older Ultralytics
/// exports) and cross-level Concats (8.4), with nc = 4·reg_max so that only the graph
/// tells boxes from classes.
fn synthetic_head(per_level: bool, classes: i64) -> Vec<u8> {
    let mut b = ModelBuilder::new("synthetic_head", 3);
    let x = b.input("images", &[1, 3, 64, 64]);
    let mut f = x;
    let mut features = Vec::new();
    for i in 0..4 {
        let c = b.conv(&f, if i == 0 { 3 } else { 8 }, 8, 3, 2, 1);
        f = b.op("Relu", &[&c], vec![]);
        if i >= 2 {
            features.push(f.clone());
        }
    }
    // Levels listed coarse first, to check the ordering by stride.
    features.reverse();
    let no = 4 * REG_MAX + classes;
    let flat = |b: &mut ModelBuilder, v: &str, c: i64| {
        let shape = b.constant_i64("shape", &[1, c, -1]);
        b.op("Reshape", &[v, &shape], vec![])
    };
    let dfl = |b: &mut ModelBuilder, boxes: &str| {
        let shape = b.constant_i64("shape", &[1, 4, REG_MAX, -1]);
        let r = b.op("Reshape", &[boxes, &shape], vec![]);
        let t = b.op("Transpose", &[&r], vec![ints("perm", &[0, 2, 1, 3])]);
        let s = b.op("Softmax", &[&t], vec![int("axis", 1)]);
        let shape = b.constant_i64("shape", &[1, 4 * REG_MAX, -1]);
        b.op("Reshape", &[&s, &shape], vec![])
    };
    let (boxes, scores) = if per_level {
        let mut joined = Vec::new();
        for f in &features {
            let bx = b.conv(f, 8, 4 * REG_MAX, 1, 1, 1);
            let cl = b.conv(f, 8, classes, 1, 1, 1);
            let cat = b.op("Concat", &[&bx, &cl], vec![int("axis", 1)]);
            joined.push(flat(&mut b, &cat, no));
        }
        let refs: Vec<&str> = joined.iter().map(String::as_str).collect();
        let all = b.op("Concat", &refs, vec![int("axis", 2)]);
        let sizes = b.constant_i64("split", &[4 * REG_MAX, classes]);
        let parts = b.node("Split", &[&all, &sizes], 2, vec![int("axis", 1)]);
        (parts[0].clone(), parts[1].clone())
    } else {
        let (mut bx, mut cl) = (Vec::new(), Vec::new());
        for f in &features {
            let v = b.conv(f, 8, 4 * REG_MAX, 1, 1, 1);
            bx.push(flat(&mut b, &v, 4 * REG_MAX));
            let v = b.conv(f, 8, classes, 1, 1, 1);
            cl.push(flat(&mut b, &v, classes));
        }
        let refs: Vec<&str> = bx.iter().map(String::as_str).collect();
        let boxes = b.op("Concat", &refs, vec![int("axis", -1)]);
        let refs: Vec<&str> = cl.iter().map(String::as_str).collect();
        (boxes, b.op("Concat", &refs, vec![int("axis", -1)]))
    };
    let decoded = dfl(&mut b, &boxes);
    let probabilities = b.op("Sigmoid", &[&scores], vec![]);
    let out = b.op("Concat", &[&decoded, &probabilities], vec![int("axis", 1)]);
    b.finish_as(&out, "output0", &[1, no, 80])
}

/// A YOLOv5-style anchor-based head: per level one convolution predicting
/// 3 anchors × (box, objectness, classes), reshaped, transposed and squashed.
fn anchor_based_head() -> Vec<u8> {
    let mut b = ModelBuilder::new("anchor_based_head", 5);
    let x = b.input("images", &[1, 3, 64, 64]);
    let mut f = x;
    let mut outputs = Vec::new();
    for i in 0..4 {
        let c = b.conv(&f, if i == 0 { 3 } else { 8 }, 8, 3, 2, 1);
        f = b.op("Relu", &[&c], vec![]);
        if i >= 2 {
            let side = 64 / (2 << i);
            let p = b.conv(&f, 8, 3 * 8, 1, 1, 1);
            let shape = b.constant_i64("shape", &[1, 3, 8, side, side]);
            let r = b.op("Reshape", &[&p, &shape], vec![]);
            let t = b.op("Transpose", &[&r], vec![ints("perm", &[0, 1, 3, 4, 2])]);
            let s = b.op("Sigmoid", &[&t], vec![]);
            let shape = b.constant_i64("shape", &[1, -1, 8]);
            outputs.push(b.op("Reshape", &[&s, &shape], vec![]));
        }
    }
    let refs: Vec<&str> = outputs.iter().map(String::as_str).collect();
    let out = b.op("Concat", &refs, vec![int("axis", 1)]);
    b.finish_as(&out, "output0", &[1, 240, 8])
}

#[test]
fn finds_both_export_patterns_even_when_nc_equals_the_box_channels() {
    for per_level in [true, false] {
        let (model, analysis) = prepared(load_bytes(&synthetic_head(per_level, 64)).unwrap());
        let head =
            head_of(&model, &analysis).unwrap_or_else(|e| panic!("per level {per_level}: {e}"));
        let g = &model.graph;
        assert_eq!((head.reg_max, head.classes), (16, 64));
        let strides: Vec<f64> = head.levels.iter().map(|l| l.stride).collect();
        assert_eq!(strides, [8.0, 16.0]);
        for l in &head.levels {
            // The builder creates each level's box convolution just before its class
            // one, so the box value comes first.
            assert!(l.boxes.0 < l.classes.0, "per level {per_level}: {head:?}");
            let node = |v| g.value(v).producer.unwrap();
            assert_eq!(
                g.node(node(l.boxes)).inputs[0],
                g.node(node(l.classes)).inputs[0]
            );
        }
    }
}

#[test]
fn models_without_such_a_head_are_refused_with_what_was_looked_for() {
    let graphs = [
        ("anchor-based head", anchor_based_head()),
        ("classifier", zoo::gemm_head()),
        ("reshape-transpose head", zoo::reshape_transpose_head()),
    ];
    for (name, bytes) in graphs {
        let (model, analysis) = prepared(load_bytes(&bytes).unwrap());
        match head_of(&model, &analysis) {
            Err(e @ EngineError::NoDetectionHead(_)) => {
                let m = e.to_string();
                assert!(
                    m.contains("box branch") && m.contains("Concat"),
                    "{name}: {m}"
                );
            }
            other => panic!("{name}: expected NoDetectionHead, got {other:?}"),
        }
    }
}

/// What feeds the loss in training — the loader's images and targets, the head's taps
/// of the ONNX export, their levels — gives the trained detector the loss Ultralytics
/// computes for its own checkpoint on the same clean images: the whole labelled path,
/// not only the loss on given predictions. (Measured: equal to 6 digits, 3.65743 per
/// image on these 32 images; 3.6909 on the first 64 in both.)
#[test]
fn the_trained_detector_has_ultralytics_loss_on_clean_images() {
    let (model, analysis) = prepared(load_file(&fixtures::path("trained.onnx")).unwrap());
    let head = head_of(&model, &analysis).unwrap();
    let data = load(&fixtures::dir().join("synth")).unwrap();
    let samples = &data.split("train").unwrap()[..32];
    let options = LoaderOptions::plain(samples.len(), 128, 5);
    let batch = epoch(samples, options, 0).next().unwrap().unwrap();
    let network = Network::new(&model, Device::Cpu).unwrap();
    let (_, tapped) = tch::no_grad(|| {
        network.forward_tapped(&[batch.images.shallow_clone()], None, &head.taps())
    })
    .unwrap();
    let levels = head.head_levels(&tapped).unwrap();
    let ours = detection_loss(
        &levels,
        &batch.targets,
        head.image_size,
        &head.loss_config(),
    )
    .unwrap();
    let per_image = ours.total.double_value(&[]) / samples.len() as f64;

    let request = serde_json::json!({
        "weights": fixtures::path("trained.pt"),
        "images": samples.iter().map(|s| s.image.clone()).collect::<Vec<_>>(),
    });
    let reference = fixtures::run_script("ultralytics_model_loss.py", &[], &request);
    let value = |k: &str| reference[k].as_f64().unwrap();
    eprintln!("ours {ours:?} ({per_image} per image)\nUltralytics {reference}");
    // Float32 differences between the fused ONNX convolutions and PyTorch's Conv+BN,
    // and the order of images in the batch (measured: 1e-7 relative).
    for (name, ours, theirs) in [
        ("per image", per_image, value("per_image")),
        ("box", ours.box_loss, value("box")),
        ("cls", ours.cls, value("cls")),
        ("dfl", ours.dfl, value("dfl")),
    ] {
        assert!(
            relative(ours, theirs) < 1e-4,
            "{name}: effp {ours} against Ultralytics {theirs}"
        );
    }
}
