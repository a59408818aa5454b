//! What the student learns from the user's labels: YOLOv8's detection loss, a port of
//! Ultralytics' `v8DetectionLoss` (`utils/loss.py`) — task-aligned assignment of
//! labelled boxes to anchors, BCE on the class logits, CIoU and distribution focal
//! loss on the box distributions — computed on the raw prediction maps of a
//! YOLOv8-style head (`train::head` finds them in a graph).
//!
//! Ultralytics' behaviour is the specification, down to the order of operations:
//! the parity test in `crates/engine/tests/detection_loss.rs` runs Ultralytics' own
//! loss on the same predictions and labels.

use tch::{Device, Kind, Reduction, Tensor};

use super::assign::Assigner;
use super::boxes::{ciou, dist_to_xyxy, xyxy_to_dist};
use crate::EngineError;

/// One level of a YOLOv8-style head's raw predictions, as its last two convolutions
/// produce them (before the DFL decode and the sigmoid).
#[derive(Debug)]
pub struct HeadLevel {
    /// Box distributions `[B, 4·reg_max, H, W]`: for each side (left, top, right,
    /// bottom, in that channel order) `reg_max` logits over distances 0..reg_max−1
    /// in units of the stride.
    pub boxes: Tensor,
    /// Class logits `[B, nc, H, W]`.
    pub classes: Tensor,
    /// Input pixels per grid cell (input size / H).
    pub stride: f64,
}

impl HeadLevel {
    /// Splits a level as Ultralytics' training forward concatenates it,
    /// `[B, 4·reg_max + nc, H, W]` with the box channels first.
    pub fn from_concatenated(
        prediction: &Tensor,
        reg_max: i64,
        stride: f64,
    ) -> Result<Self, EngineError> {
        let size = prediction.size();
        if size.len() != 4 || size[1] <= 4 * reg_max {
            return Err(EngineError::Input(format!(
                "a concatenated head level is [B, 4·reg_max + nc, H, W] with reg_max {reg_max}, \
                 got {size:?}"
            )));
        }
        Ok(Self {
            boxes: prediction.narrow(1, 0, 4 * reg_max),
            classes: prediction.narrow(1, 4 * reg_max, size[1] - 4 * reg_max),
            stride,
        })
    }
}

/// The loss's hyperparameters; the default is Ultralytics' (`cfg/default.yaml` gains,
/// `v8DetectionLoss`'s assigner).
#[derive(Debug, Clone, PartialEq)]
pub struct DetectionLossConfig {
    /// Gain of the CIoU loss (`box`).
    pub box_gain: f64,
    /// Gain of the classification BCE (`cls`).
    pub cls_gain: f64,
    /// Gain of the distribution focal loss (`dfl`).
    pub dfl_gain: f64,
    /// Bins per box side in the head's distributions.
    pub reg_max: i64,
    /// Anchors each labelled box considers, by alignment.
    pub topk: i64,
    /// Exponent of the class score in the alignment metric.
    pub alpha: f64,
    /// Exponent of the CIoU in the alignment metric.
    pub beta: f64,
}

impl Default for DetectionLossConfig {
    fn default() -> Self {
        Self {
            box_gain: 7.5,
            cls_gain: 0.5,
            dfl_gain: 1.5,
            reg_max: 16,
            topk: 10,
            alpha: 0.5,
            beta: 6.0,
        }
    }
}

/// The loss of one batch, as Ultralytics' trainer sees it.
#[derive(Debug)]
pub struct DetectionLoss {
    /// What to minimise: (box + cls + dfl) × batch size, a differentiable scalar
    /// (Ultralytics' `loss.sum()` of `v8DetectionLoss`'s first result).
    pub total: Tensor,
    /// CIoU loss times its gain (Ultralytics' `box_loss` item).
    pub box_loss: f64,
    /// Classification BCE times its gain (`cls_loss`).
    pub cls: f64,
    /// Distribution focal loss times its gain (`dfl_loss`).
    pub dfl: f64,
    /// Anchors assigned a labelled box with a positive target score in the batch: the
    /// ones the box losses train. (The assigner also marks anchors whose alignment
    /// with their box is 0; which of those it picks depends on how the device breaks
    /// ties, and they weigh nothing, so they are not counted.)
    pub assigned: i64,
}

/// YOLOv8's detection loss of the raw head predictions `levels`, finest first (by
/// increasing stride, as [`super::head::DetectionHead::head_levels`] gives them),
/// against `targets`, `[M, 6]` rows of (image index in the batch, class, cx, cy, w,
/// h) with the box normalised to `image_size` (height, width) in pixels — the layout
/// of [`crate::data::loader::TrainBatch`]; rows of one image keep their order.
///
/// Works on the device of the predictions (the targets may be anywhere); float32.
pub fn detection_loss(
    levels: &[HeadLevel],
    targets: &Tensor,
    image_size: (i64, i64),
    config: &DetectionLossConfig,
) -> Result<DetectionLoss, EngineError> {
    let shape = check_levels(levels, image_size, config)?;
    let Shape { batch, classes } = shape;
    let r = config.reg_max;
    let device = levels[0].boxes.device();

    let (anchors, strides) = make_anchors(levels, device);
    let count = anchors.size()[0];
    let distri = Tensor::cat(
        &levels
            .iter()
            .map(|l| l.boxes.reshape([batch, 4 * r, -1]))
            .collect::<Vec<_>>(),
        2,
    )
    .permute([0, 2, 1])
    .contiguous();
    let scores = Tensor::cat(
        &levels
            .iter()
            .map(|l| l.classes.reshape([batch, classes, -1]))
            .collect::<Vec<_>>(),
        2,
    )
    .permute([0, 2, 1])
    .contiguous();

    let gt = padded_targets(targets, batch, classes, image_size)?.to_device(device);
    let gt_labels = gt.narrow(2, 0, 1);
    let gt_boxes = gt.narrow(2, 1, 4);
    let gt_mask = gt_boxes
        .sum_dim_intlist(2, true, Kind::Float)
        .gt(0.0)
        .to_kind(Kind::Float);

    // DFL decode: the expected distance under each side's softmax, in grid units.
    let proj = Tensor::arange(r, (Kind::Float, device));
    let pred_boxes = dist_to_xyxy(
        &distri
            .view([batch, count, 4, r])
            .softmax(3, Kind::Float)
            .matmul(&proj),
        &anchors,
    );

    let assigner = Assigner {
        topk: config.topk,
        alpha: config.alpha,
        beta: config.beta,
        min_side: levels.get(1).unwrap_or(&levels[0]).stride,
        eps: 1e-9,
    };
    let assigned = assigner.assign(
        &scores.detach().sigmoid(),
        &(pred_boxes.detach() * &strides),
        &(&anchors * &strides),
        &gt_labels,
        &gt_boxes,
        &gt_mask,
    );
    let score_sum = assigned.scores.sum(Kind::Float).clamp_min(1.0);

    let cls = scores
        .binary_cross_entropy_with_logits::<Tensor>(&assigned.scores, None, None, Reduction::None)
        .sum(Kind::Float)
        / &score_sum;

    // Box losses over the foreground anchors, weighted by their class targets.
    let fg = assigned.foreground.nonzero_numpy();
    let fg = [Some(&fg[0]), Some(&fg[1])];
    let weight = assigned
        .scores
        .index(&fg)
        .sum_dim_intlist(-1, true, Kind::Float);
    let count = weight.gt(0.0).sum(Kind::Int64);
    let target_boxes = &assigned.boxes / &strides;
    let iou = ciou(&pred_boxes.index(&fg), &target_boxes.index(&fg));
    let box_loss = ((1f64 - iou) * &weight).sum(Kind::Float) / &score_sum;
    let target_ltrb = xyxy_to_dist(&anchors, &target_boxes, (r - 1) as f64);
    let dfl = distribution_focal_loss(&distri.index(&fg).view([-1, r]), &target_ltrb.index(&fg), r)
        * &weight;
    let dfl = dfl.sum(Kind::Float) / &score_sum;

    let parts = Tensor::stack(
        &[
            box_loss * config.box_gain,
            cls * config.cls_gain,
            dfl * config.dfl_gain,
        ],
        0,
    );
    let total = (&parts * batch as f64).sum(Kind::Float);
    let values = Vec::<f64>::try_from(parts.detach().to_device(Device::Cpu).to_kind(Kind::Double))
        .map_err(|e| EngineError::Input(format!("reading the loss: {e}")))?;
    Ok(DetectionLoss {
        total,
        box_loss: values[0],
        cls: values[1],
        dfl: values[2],
        assigned: count.int64_value(&[]),
    })
}

struct Shape {
    batch: i64,
    classes: i64,
}

fn check_levels(
    levels: &[HeadLevel],
    (height, width): (i64, i64),
    config: &DetectionLossConfig,
) -> Result<Shape, EngineError> {
    let bad = |m: String| Err(EngineError::Input(m));
    if config.reg_max < 2 || config.topk < 1 {
        return bad(format!(
            "the detection loss needs reg_max ≥ 2 (a distribution per side) and topk ≥ 1, \
             got reg_max {} and topk {}",
            config.reg_max, config.topk
        ));
    }
    if height <= 0 || width <= 0 {
        return bad(format!("image size {height}×{width} is empty"));
    }
    let Some(first) = levels.first() else {
        return bad("the detection loss needs at least one head level".into());
    };
    let (batch, classes) = match (first.boxes.size().first(), first.classes.size().get(1)) {
        (Some(&b), Some(&c)) => (b, c),
        _ => return bad("head levels must be [B, C, H, W] tensors".into()),
    };
    let device = first.boxes.device();
    for (i, l) in levels.iter().enumerate() {
        let (b, c) = (l.boxes.size(), l.classes.size());
        let expected_boxes = [batch, 4 * config.reg_max];
        if b.len() != 4 || c.len() != 4 || b[..2] != expected_boxes || c[..2] != [batch, classes] {
            return bad(format!(
                "head level {i}: boxes {b:?} and classes {c:?}, expected [{batch}, {}, H, W] and \
                 [{batch}, {classes}, H, W]",
                4 * config.reg_max
            ));
        }
        if b[2..] != c[2..] {
            return bad(format!(
                "head level {i}: boxes are {}×{} cells, classes {}×{}",
                b[2], b[3], c[2], c[3]
            ));
        }
        if l.boxes.kind() != Kind::Float || l.classes.kind() != Kind::Float {
            return bad(format!(
                "head level {i} is {:?}/{:?}; the detection loss takes float32",
                l.boxes.kind(),
                l.classes.kind()
            ));
        }
        if l.boxes.device() != device || l.classes.device() != device {
            return bad(format!("head level {i} is not on {device:?} like level 0"));
        }
        // The grid must cover the image: catches strides or a (width, height) swap
        // that would put anchors and labels in different places.
        let s = l.stride;
        let covers = |cells: i64, pixels: i64| {
            let span = cells as f64 * s;
            span >= pixels as f64 - 1e-6 && span < pixels as f64 + s
        };
        if !(s.is_finite() && s > 0.0 && covers(b[2], height) && covers(b[3], width)) {
            return bad(format!(
                "head level {i}: {}×{} cells at stride {s} do not cover a {height}×{width} image",
                b[2], b[3]
            ));
        }
    }
    if classes < 1 {
        return bad("the head predicts no classes".into());
    }
    // Ultralytics numbers anchors finest level first and floors tiny boxes at the
    // second level's stride.
    if levels.windows(2).any(|w| w[0].stride >= w[1].stride) {
        let strides: Vec<f64> = levels.iter().map(|l| l.stride).collect();
        return bad(format!(
            "head levels must come finest first, by increasing stride; got strides {strides:?}"
        ));
    }
    Ok(Shape { batch, classes })
}

/// Anchor centres in grid units `[A, 2]` (x, y) and their strides `[A, 1]`, level
/// after level, row-major within a level (Ultralytics' `make_anchors`, offset 0.5).
fn make_anchors(levels: &[HeadLevel], device: Device) -> (Tensor, Tensor) {
    let mut points = Vec::with_capacity(levels.len());
    let mut strides = Vec::with_capacity(levels.len());
    for l in levels {
        let size = l.boxes.size();
        let (h, w) = (size[2], size[3]);
        let sx = Tensor::arange(w, (Kind::Float, device)) + 0.5;
        let sy = Tensor::arange(h, (Kind::Float, device)) + 0.5;
        let grid = Tensor::meshgrid_indexing(&[sy, sx], "ij");
        points.push(Tensor::stack(&[&grid[1], &grid[0]], -1).view([-1, 2]));
        strides.push(Tensor::full([h * w, 1], l.stride, (Kind::Float, device)));
    }
    (Tensor::cat(&points, 0), Tensor::cat(&strides, 0))
}

/// The labels as Ultralytics' `preprocess` pads them: `[B, n, 5]` rows of (class, x1,
/// y1, x2, y2) in pixels, `n` the most boxes any image has, zero rows as padding.
/// Rows keep their order within an image.
fn padded_targets(
    targets: &Tensor,
    batch: i64,
    classes: i64,
    (height, width): (i64, i64),
) -> Result<Tensor, EngineError> {
    let size = targets.size();
    if targets.numel() > 0 && (size.len() != 2 || size[1] != 6) {
        return Err(EngineError::Input(format!(
            "targets are [M, 6] rows of (image, class, cx, cy, w, h), got {size:?}"
        )));
    }
    let flat = Vec::<f32>::try_from(
        targets
            .to_device(Device::Cpu)
            .to_kind(Kind::Float)
            .reshape([-1]),
    )
    .map_err(|e| EngineError::Input(format!("reading the targets: {e}")))?;
    let (w, h) = (width as f32, height as f32);
    let mut per_image: Vec<Vec<[f32; 5]>> = vec![Vec::new(); batch as usize];
    for (k, row) in flat.chunks_exact(6).enumerate() {
        let (image, class) = (row[0], row[1]);
        let whole = |v: f32, end: i64| v.fract() == 0.0 && v >= 0.0 && (v as i64) < end;
        if !whole(image, batch) || !whole(class, classes) || row.iter().any(|v| !v.is_finite()) {
            return Err(EngineError::Input(format!(
                "target row {k} {row:?}: the image index must be a whole number below the batch \
                 size {batch}, the class one below {classes}, and all values finite"
            )));
        }
        // The same float32 operations as `xywh2xyxy(xywh * scale)`.
        let (cx, cy, bw, bh) = (row[2] * w, row[3] * h, row[4] * w, row[5] * h);
        let (hw, hh) = (bw / 2.0, bh / 2.0);
        per_image[image as usize].push([class, cx - hw, cy - hh, cx + hw, cy + hh]);
    }
    let n = per_image.iter().map(Vec::len).max().unwrap_or(0);
    let mut padded = vec![0f32; batch as usize * n * 5];
    for (b, rows) in per_image.iter().enumerate() {
        for (j, r) in rows.iter().enumerate() {
            padded[(b * n + j) * 5..][..5].copy_from_slice(r);
        }
    }
    Ok(Tensor::from_slice(&padded).view([batch, n as i64, 5]))
}

/// Distribution focal loss `[F, 1]` of the side distributions `pred` `[F·4, reg_max]`
/// against the distances `target` `[F, 4]`: cross-entropy with the two bins around
/// each distance, weighted by nearness, averaged over the sides.
fn distribution_focal_loss(pred: &Tensor, target: &Tensor, reg_max: i64) -> Tensor {
    let target = target.clamp(0.0, (reg_max - 1) as f64 - 0.01);
    let left = target.to_kind(Kind::Int64);
    let right = &left + 1;
    let w_left = &right - &target;
    let w_right = 1f64 - &w_left;
    let logp = pred.log_softmax(1, Kind::Float);
    let shape = left.size();
    let pick = |idx: &Tensor| {
        logp.gather(1, &idx.view([-1, 1]), false)
            .view(shape.as_slice())
    };
    -(pick(&left) * w_left + pick(&right) * w_right).mean_dim(-1i64, true, Kind::Float)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn level(b: i64, nc: i64, h: i64, w: i64, stride: f64) -> HeadLevel {
        let opts = (Kind::Float, Device::Cpu);
        HeadLevel {
            boxes: Tensor::randn([b, 64, h, w], opts),
            classes: Tensor::randn([b, nc, h, w], opts),
            stride,
        }
    }

    #[test]
    fn anchors_are_cell_centres_level_after_level() {
        let levels = [level(1, 2, 2, 3, 8.0), level(1, 2, 1, 2, 16.0)];
        let (points, strides) = make_anchors(&levels, Device::Cpu);
        let p = Vec::<f32>::try_from(points.view([-1])).unwrap();
        assert_eq!(
            p,
            [
                0.5, 0.5, 1.5, 0.5, 2.5, 0.5, 0.5, 1.5, 1.5, 1.5, 2.5, 1.5, 0.5, 0.5, 1.5, 0.5
            ]
        );
        let s = Vec::<f32>::try_from(strides.view([-1])).unwrap();
        assert_eq!(s, [8.0, 8.0, 8.0, 8.0, 8.0, 8.0, 16.0, 16.0]);
    }

    #[test]
    fn targets_are_padded_per_image_in_pixels() {
        let t = Tensor::from_slice(&[
            1.0f32, 2.0, 0.5, 0.5, 0.25, 0.5, //
            1.0, 0.0, 0.25, 0.75, 0.5, 0.5,
        ])
        .view([2, 6]);
        let p = padded_targets(&t, 3, 3, (64, 32)).unwrap();
        assert_eq!(p.size(), [3, 2, 5]);
        let v = Vec::<f32>::try_from(p.view([-1])).unwrap();
        let mut expected = vec![0.0; 10];
        expected.extend([2.0, 12.0, 16.0, 20.0, 48.0, 0.0, 0.0, 32.0, 16.0, 64.0]);
        expected.extend([0.0; 10]);
        assert_eq!(v, expected);
        let none = padded_targets(
            &Tensor::zeros([0, 6], (Kind::Float, Device::Cpu)),
            2,
            3,
            (8, 8),
        );
        assert_eq!(none.unwrap().size(), [2, 0, 5]);
    }

    #[test]
    fn bad_inputs_are_input_errors() {
        let cfg = DetectionLossConfig::default();
        let levels = [level(2, 3, 4, 4, 8.0)];
        let t = |rows: &[f32]| Tensor::from_slice(rows).view([-1, 6]);
        let err = |r: Result<DetectionLoss, EngineError>| match r {
            Err(EngineError::Input(m)) => m,
            other => panic!("expected an input error, got {other:?}"),
        };
        let m = err(detection_loss(
            &levels,
            &t(&[2.0, 0.0, 0.5, 0.5, 0.1, 0.1]),
            (32, 32),
            &cfg,
        ));
        assert!(m.contains("batch size 2"), "{m}");
        let m = err(detection_loss(
            &levels,
            &t(&[0.0, 3.0, 0.5, 0.5, 0.1, 0.1]),
            (32, 32),
            &cfg,
        ));
        assert!(m.contains("below 3"), "{m}");
        let m = err(detection_loss(&levels, &t(&[]), (32, 64), &cfg));
        assert!(m.contains("do not cover"), "{m}");
        let swapped = [level(2, 3, 2, 2, 16.0), level(2, 3, 4, 4, 8.0)];
        let m = err(detection_loss(&swapped, &t(&[]), (32, 32), &cfg));
        assert!(m.contains("increasing stride"), "{m}");
        let m = err(detection_loss(&[], &t(&[]), (32, 32), &cfg));
        assert!(m.contains("at least one"), "{m}");
        let narrow = HeadLevel {
            boxes: Tensor::zeros([2, 60, 4, 4], (Kind::Float, Device::Cpu)),
            ..level(2, 3, 4, 4, 8.0)
        };
        let m = err(detection_loss(&[narrow], &t(&[]), (32, 32), &cfg));
        assert!(m.contains("[2, 64, H, W]"), "{m}");
    }

    #[test]
    fn no_labels_leave_only_the_background_classification() {
        let cfg = DetectionLossConfig::default();
        let levels = [level(2, 3, 4, 4, 8.0), level(2, 3, 2, 2, 16.0)];
        let none = Tensor::zeros([0, 6], (Kind::Float, Device::Cpu));
        let loss = detection_loss(&levels, &none, (32, 32), &cfg).unwrap();
        assert_eq!((loss.box_loss, loss.dfl), (0.0, 0.0));
        let scores = Tensor::cat(
            &levels
                .iter()
                .map(|l| l.classes.reshape([2, 3, -1]))
                .collect::<Vec<_>>(),
            2,
        );
        let expected = scores
            .binary_cross_entropy_with_logits::<Tensor>(
                &scores.zeros_like(),
                None,
                None,
                Reduction::Sum,
            )
            .double_value(&[])
            * 0.5;
        assert!(
            (loss.cls - expected).abs() < 1e-4 * expected,
            "{} vs {expected}",
            loss.cls
        );
        assert!((loss.total.double_value(&[]) - 2.0 * expected).abs() < 2e-4 * expected);
    }
}
