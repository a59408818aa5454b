//! Box arithmetic of the YOLOv8 loss, op for op as Ultralytics writes it
//! (`utils/metrics.py` `bbox_iou`, `utils/tal.py` `dist2bbox`/`bbox2dist`,
//! `utils/ops.py` `xywh2xyxy`/`xyxy2xywh`): the assigner's discrete choices (top-k,
//! highest overlap) depend on these values, so the same operations in the same
//! order keep the choices the same.

use tch::Tensor;

/// Complete IoU of boxes `box1` and `box2` given as (x1, y1, x2, y2) in the last
/// dimension (broadcasting), shape `[..., 1]`.
pub(crate) fn ciou(box1: &Tensor, box2: &Tensor) -> Tensor {
    const EPS: f64 = 1e-7;
    let b1 = box1.chunk(4, -1);
    let b2 = box2.chunk(4, -1);
    let (b1_x1, b1_y1, b1_x2, b1_y2) = (&b1[0], &b1[1], &b1[2], &b1[3]);
    let (b2_x1, b2_y1, b2_x2, b2_y2) = (&b2[0], &b2[1], &b2[2], &b2[3]);
    // Ultralytics adds eps to the heights only.
    let (w1, h1) = (b1_x2 - b1_x1, b1_y2 - b1_y1 + EPS);
    let (w2, h2) = (b2_x2 - b2_x1, b2_y2 - b2_y1 + EPS);

    let inter = (b1_x2.minimum(b2_x2) - b1_x1.maximum(b2_x1)).clamp_min(0.0)
        * (b1_y2.minimum(b2_y2) - b1_y1.maximum(b2_y1)).clamp_min(0.0);
    let union = &w1 * &h1 + &w2 * &h2 - &inter + EPS;
    let iou = inter / union;

    let cw = b1_x2.maximum(b2_x2) - b1_x1.minimum(b2_x1);
    let ch = b1_y2.maximum(b2_y2) - b1_y1.minimum(b2_y1);
    let c2 = cw.pow_tensor_scalar(2) + ch.pow_tensor_scalar(2) + EPS;
    let rho2 = ((b2_x1 + b2_x2 - b1_x1 - b1_x2).pow_tensor_scalar(2)
        + (b2_y1 + b2_y2 - b1_y1 - b1_y2).pow_tensor_scalar(2))
        / 4.0;
    let v = ((w2 / h2).atan() - (w1 / h1).atan()).pow_tensor_scalar(2)
        * (4.0 / (std::f64::consts::PI * std::f64::consts::PI));
    // The trade-off weight is a constant to autograd, as in the CIoU paper.
    let alpha = tch::no_grad(|| &v / ((1f64 - &iou) + &v + EPS));
    &iou - (rho2 / c2 + v * alpha)
}

/// (cx, cy, w, h) → (x1, y1, x2, y2) in the last dimension.
pub(crate) fn xywh_to_xyxy(x: &Tensor) -> Tensor {
    let xy = x.narrow(-1, 0, 2);
    let wh = x.narrow(-1, 2, 2) / 2.0;
    Tensor::cat(&[&xy - &wh, &xy + &wh], -1)
}

/// (x1, y1, x2, y2) → (cx, cy, w, h) in the last dimension.
pub(crate) fn xyxy_to_xywh(x: &Tensor) -> Tensor {
    let p = x.chunk(4, -1);
    let (x1, y1, x2, y2) = (&p[0], &p[1], &p[2], &p[3]);
    Tensor::cat(&[(x1 + x2) / 2.0, (y1 + y2) / 2.0, x2 - x1, y2 - y1], -1)
}

/// Distances (left, top, right, bottom) from `anchors` → (x1, y1, x2, y2).
pub(crate) fn dist_to_xyxy(distance: &Tensor, anchors: &Tensor) -> Tensor {
    let d = distance.chunk(2, -1);
    Tensor::cat(&[anchors - &d[0], anchors + &d[1]], -1)
}

/// (x1, y1, x2, y2) → distances (left, top, right, bottom) from `anchors`, clamped to
/// `[0, max - 0.01]` so that a distance always has a bin to its right.
pub(crate) fn xyxy_to_dist(anchors: &Tensor, bbox: &Tensor, max: f64) -> Tensor {
    let b = bbox.chunk(2, -1);
    Tensor::cat(&[anchors - &b[0], &b[1] - anchors], -1).clamp(0.0, max - 0.01)
}

#[cfg(test)]
mod tests {
    use super::*;
    use tch::Kind;

    fn boxes(v: &[f32]) -> Tensor {
        Tensor::from_slice(v).reshape([-1, 4])
    }

    #[test]
    fn ciou_of_a_box_with_itself_is_one() {
        let b = boxes(&[1.0, 2.0, 5.0, 9.0, 0.0, 0.0, 3.0, 3.0]);
        let c = ciou(&b, &b);
        assert_eq!(c.size(), [2, 1]);
        assert!((c - 1.0).abs().max().double_value(&[]) < 1e-6);
    }

    #[test]
    fn ciou_penalises_distance_and_aspect_beyond_iou() {
        // Disjoint boxes: IoU 0, CIoU negative by the centre distance term.
        let a = boxes(&[0.0, 0.0, 2.0, 2.0]);
        let b = boxes(&[4.0, 0.0, 6.0, 2.0]);
        let c = ciou(&a, &b).double_value(&[0, 0]);
        // rho² = 16, c² = 36 + 4: CIoU = -0.4 (same aspect, v = 0).
        assert!((c + 0.4).abs() < 1e-5, "{c}");
        // Same centre, other aspect: v > 0 lowers CIoU below IoU.
        let a = boxes(&[0.0, 0.0, 4.0, 4.0]);
        let b = boxes(&[1.0, 0.0, 3.0, 4.0]);
        let c = ciou(&a, &b).double_value(&[0, 0]);
        assert!(c < 0.5 - 1e-3 && c > 0.4, "{c}");
    }

    #[test]
    fn ciou_gradient_flows_to_the_first_box_only_through_iou_terms() {
        let a = boxes(&[0.0, 0.0, 2.0, 3.0]).set_requires_grad(true);
        let b = boxes(&[0.5, 0.2, 2.5, 2.0]);
        ciou(&a, &b).sum(Kind::Float).backward();
        assert!(a.grad().abs().sum(Kind::Float).double_value(&[]) > 0.0);
    }

    #[test]
    fn conversions_round_trip() {
        let xyxy = boxes(&[1.0, 2.0, 5.0, 10.0]);
        let xywh = xyxy_to_xywh(&xyxy);
        assert_eq!(
            Vec::<f32>::try_from(xywh.view([-1])).unwrap(),
            [3.0, 6.0, 4.0, 8.0]
        );
        assert!(xywh_to_xyxy(&xywh).equal(&xyxy));
        let anchors = Tensor::from_slice(&[3.0f32, 4.0]).reshape([1, 2]);
        let d = xyxy_to_dist(&anchors, &xyxy, 15.0);
        assert_eq!(
            Vec::<f32>::try_from(d.view([-1])).unwrap(),
            [2.0, 2.0, 2.0, 6.0]
        );
        assert!(dist_to_xyxy(&d, &anchors).equal(&xyxy));
        let far = boxes(&[-40.0, 3.0, 5.0, 4.5]);
        let d = xyxy_to_dist(&anchors, &far, 15.0);
        let d = Vec::<f32>::try_from(d.view([-1])).unwrap();
        assert_eq!(d, [14.99, 1.0, 2.0, 0.5]);
    }
}
