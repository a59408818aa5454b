//! The task-aligned assigner of YOLOv8 (TOOD): which anchors learn which labelled
//! box, and how strongly. A port of Ultralytics' `TaskAlignedAssigner`
//! (`utils/tal.py`) with the same operations in the same order, so that ties and
//! near-ties resolve as they do there.

use tch::{Kind, Tensor};

use super::boxes::{ciou, xywh_to_xyxy, xyxy_to_xywh};

/// The assigner's parameters.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Assigner {
    /// Candidates per box, by alignment.
    pub topk: i64,
    /// Exponent of the class score in the alignment metric.
    pub alpha: f64,
    /// Exponent of the CIoU in the alignment metric.
    pub beta: f64,
    /// Boxes narrower or lower than this (pixels) are widened to it about their
    /// centre when looking for anchors inside them (Ultralytics: the second level's
    /// stride), so that tiny boxes still get candidates.
    pub min_side: f64,
    /// Guards divisions and the inside-the-box test.
    pub eps: f64,
}

/// What the assigner decided, per image and anchor.
#[derive(Debug)]
pub(crate) struct Assignment {
    /// Assigned box (x1, y1, x2, y2) in pixels, `[B, A, 4]` (box 0 of the image where
    /// no box is assigned).
    pub boxes: Tensor,
    /// Soft class targets `[B, A, nc]`: the normalised alignment on the assigned
    /// class, 0 elsewhere.
    pub scores: Tensor,
    /// Whether the anchor is assigned a box, `[B, A]` bool.
    pub foreground: Tensor,
}

impl Assigner {
    /// Assigns the labelled boxes `gt_boxes` `[B, n, 4]` (x1, y1, x2, y2 in pixels;
    /// padded rows where `gt_mask` `[B, n, 1]` is 0) of classes `gt_labels` `[B, n, 1]`
    /// to anchors at `anchors` `[A, 2]` (pixels), given the predicted class
    /// probabilities `scores` `[B, A, nc]` and boxes `boxes` `[B, A, 4]` (pixels).
    pub fn assign(
        &self,
        scores: &Tensor,
        boxes: &Tensor,
        anchors: &Tensor,
        gt_labels: &Tensor,
        gt_boxes: &Tensor,
        gt_mask: &Tensor,
    ) -> Assignment {
        tch::no_grad(|| self.assign_inner(scores, boxes, anchors, gt_labels, gt_boxes, gt_mask))
    }

    fn assign_inner(
        &self,
        scores: &Tensor,
        boxes: &Tensor,
        anchors: &Tensor,
        gt_labels: &Tensor,
        gt_boxes: &Tensor,
        gt_mask: &Tensor,
    ) -> Assignment {
        let (bs, na, nc) = scores.size3().expect("scores are [B, A, nc]");
        let n_max = gt_boxes.size()[1];
        let device = scores.device();
        if n_max == 0 {
            return Assignment {
                boxes: boxes.zeros_like(),
                scores: scores.zeros_like(),
                foreground: Tensor::zeros([bs, na], (Kind::Bool, device)),
            };
        }

        // get_pos_mask
        let in_gts = self.select_candidates_in_gts(anchors, gt_boxes, gt_mask);
        let (align_metric, overlaps) = self.box_metrics(
            scores,
            boxes,
            gt_labels,
            gt_boxes,
            &(in_gts.to_kind(Kind::Float) * gt_mask),
            (bs, n_max, na),
        );
        let topk_mask = gt_mask
            .expand([-1, -1, self.topk.min(na)], false)
            .to_kind(Kind::Bool);
        let mask_topk = self.select_topk_candidates(&align_metric, &topk_mask);
        let mask_pos = mask_topk * in_gts * gt_mask.to_kind(Kind::Bool);

        // select_highest_overlaps: an anchor claimed by several boxes keeps the one it
        // overlaps most (even if that box did not pick it: Ultralytics' rule).
        let fg = mask_pos.sum_dim_intlist(-2, false, None::<Kind>);
        let multi = fg.unsqueeze(1).gt(1).expand([-1, n_max, -1], false);
        let (_, max_overlap_idx) = overlaps.max_dim(1, false);
        let mut is_max = mask_pos.zeros_like();
        let _ = is_max.scatter_value_(1, &max_overlap_idx.unsqueeze(1), 1);
        let mask_pos = is_max.where_self(&multi, &mask_pos);
        let (foreground, gt_idx) = mask_pos.max_dim(-2, false);

        // get_targets
        let batch_ind = Tensor::arange(bs, (Kind::Int64, device)).unsqueeze(-1);
        let gt_idx = gt_idx + batch_ind * n_max;
        let labels = gt_labels
            .to_kind(Kind::Int64)
            .flatten(0, -1)
            .index_select(0, &gt_idx.flatten(0, -1))
            .view([bs, na])
            .clamp_min(0);
        let target_boxes = gt_boxes
            .view([-1, 4])
            .index_select(0, &gt_idx.flatten(0, -1))
            .view([bs, na, 4]);
        let mut target_scores = Tensor::zeros([bs, na, nc], (Kind::Int8, device));
        let _ = target_scores.scatter_value_(2, &labels.unsqueeze(-1), 1);
        let target_scores = target_scores * foreground.unsqueeze(-1).gt(0);

        // Normalise: each box's best anchor gets the box's best overlap as its target.
        let align_metric = align_metric * &mask_pos;
        let pos_align = align_metric.amax(-1, true);
        let overlaps = overlaps * &mask_pos;
        let pos_overlaps = overlaps.amax(-1, true);
        let align_metric = align_metric * pos_overlaps / (pos_align + self.eps);
        let norm = align_metric.amax(-2, false).unsqueeze(-1);
        Assignment {
            boxes: target_boxes,
            scores: target_scores * norm,
            foreground: foreground.to_kind(Kind::Bool),
        }
    }

    /// `[B, n, A]` bool: anchors strictly inside each box, boxes first widened to
    /// `min_side`.
    fn select_candidates_in_gts(
        &self,
        anchors: &Tensor,
        gt_boxes: &Tensor,
        gt_mask: &Tensor,
    ) -> Tensor {
        let xywh = xyxy_to_xywh(gt_boxes);
        let wh = xywh.narrow(-1, 2, 2);
        let small = (wh.lt(self.min_side).to_kind(Kind::Float) * gt_mask).to_kind(Kind::Bool);
        let floor = Tensor::full([], self.min_side, (xywh.kind(), xywh.device()));
        let wh = floor.where_self(&small, &wh);
        let widened = xywh_to_xyxy(&Tensor::cat(&[xywh.narrow(-1, 0, 2), wh], -1));
        let corners = widened.unsqueeze(2).chunk(2, 3);
        let (lt, rb) = (&corners[0], &corners[1]);
        let ax = anchors.select(1, 0);
        let ay = anchors.select(1, 1);
        (&ax - lt.select(-1, 0))
            .gt(self.eps)
            .logical_and(&(&ay - lt.select(-1, 1)).gt(self.eps))
            .logical_and(&(rb.select(-1, 0) - &ax).gt(self.eps))
            .logical_and(&(rb.select(-1, 1) - &ay).gt(self.eps))
    }

    /// Alignment metric score^α · CIoU^β and CIoU, `[B, n, A]` each, for the
    /// (image, box, anchor) triples in `mask`, 0 elsewhere.
    fn box_metrics(
        &self,
        scores: &Tensor,
        boxes: &Tensor,
        gt_labels: &Tensor,
        gt_boxes: &Tensor,
        mask: &Tensor,
        shape: (i64, i64, i64),
    ) -> (Tensor, Tensor) {
        let idx = mask.to_kind(Kind::Bool).nonzero_numpy();
        let (bi, gi, ai) = (&idx[0], &idx[1], &idx[2]);
        let labels = gt_labels
            .index(&[Some(bi), Some(gi), None])
            .select(-1, 0)
            .to_kind(Kind::Int64);
        let box_scores = scores.index(&[Some(bi), Some(ai), Some(&labels)]);
        let overlap = ciou(
            &gt_boxes.index(&[Some(bi), Some(gi)]),
            &boxes.index(&[Some(bi), Some(ai)]),
        )
        .squeeze_dim(-1)
        .clamp_min(0.0);
        let align = box_scores.pow_tensor_scalar(self.alpha) * overlap.pow_tensor_scalar(self.beta);
        let (b, n, a) = shape;
        let indices = [
            Some(bi.shallow_clone()),
            Some(gi.shallow_clone()),
            Some(ai.shallow_clone()),
        ];
        let mut overlaps = Tensor::zeros([b, n, a], (boxes.kind(), boxes.device()));
        let _ = overlaps.index_put_(&indices, &overlap, false);
        let mut align_metric = Tensor::zeros([b, n, a], (align.kind(), scores.device()));
        let _ = align_metric.index_put_(&indices, &align, false);
        (align_metric, overlaps)
    }

    /// `[B, n, A]` int8: 1 for each box's `topk` best-aligned anchors (an anchor in
    /// the top-k of a row twice, as padding indices are, counts as none).
    fn select_topk_candidates(&self, metrics: &Tensor, topk_mask: &Tensor) -> Tensor {
        let k = topk_mask.size()[2];
        let (_, idx) = metrics.topk(k, -1, true, true);
        let idx = idx.masked_fill(&topk_mask.logical_not(), 0);
        let mut count = Tensor::zeros(metrics.size(), (Kind::Int8, metrics.device()));
        let _ = count.scatter_add_(-1, &idx, &idx.ones_like().to_kind(Kind::Int8));
        let over = count.gt(1);
        count.masked_fill(&over, 0)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn assigner() -> Assigner {
        Assigner {
            topk: 10,
            alpha: 0.5,
            beta: 6.0,
            min_side: 16.0,
            eps: 1e-9,
        }
    }

    /// A 4×4 grid of anchors at stride 8 (pixel centres 4, 12, 20, 28).
    fn anchors() -> Tensor {
        let v: Vec<f32> = (0..16)
            .flat_map(|i| [(i % 4) as f32 * 8.0 + 4.0, (i / 4) as f32 * 8.0 + 4.0])
            .collect();
        Tensor::from_slice(&v).view([16, 2])
    }

    #[test]
    fn an_image_without_boxes_gets_no_foreground() {
        let a = assigner();
        let scores = Tensor::full([2, 16, 2], 0.5, (Kind::Float, tch::Device::Cpu));
        let boxes = Tensor::zeros([2, 16, 4], (Kind::Float, tch::Device::Cpu));
        let gt = Tensor::zeros([2, 0, 4], (Kind::Float, tch::Device::Cpu));
        let out = a.assign(
            &scores,
            &boxes,
            &anchors(),
            &gt.narrow(2, 0, 1),
            &gt,
            &gt.narrow(2, 0, 1),
        );
        assert_eq!(out.foreground.sum(Kind::Int64).int64_value(&[]), 0);
        assert_eq!(out.scores.size(), [2, 16, 2]);
    }

    #[test]
    fn a_box_gets_the_anchors_inside_it_and_padding_gets_none() {
        let a = assigner();
        // Image 0: one box covering the four top-left anchors, class 1, predicted
        // exactly at every anchor. Image 1: only padding.
        let gt_boxes =
            Tensor::from_slice(&[0.0f32, 0.0, 16.0, 16.0, 0.0, 0.0, 0.0, 0.0]).view([2, 1, 4]);
        let gt_labels = Tensor::from_slice(&[1.0f32, 0.0]).view([2, 1, 1]);
        let gt_mask = Tensor::from_slice(&[1.0f32, 0.0]).view([2, 1, 1]);
        let pred = gt_boxes.expand([2, 16, 4], false).contiguous();
        let scores = Tensor::full([2, 16, 2], 0.5, (Kind::Float, tch::Device::Cpu));
        let out = a.assign(&scores, &pred, &anchors(), &gt_labels, &gt_boxes, &gt_mask);
        let fg: Vec<bool> = Vec::try_from(out.foreground.flatten(0, -1)).unwrap();
        let expected: Vec<bool> = (0..32).map(|i| [0, 1, 4, 5].contains(&i)).collect();
        assert_eq!(fg, expected);
        // Perfect boxes: target score of the assigned class is the CIoU, 1.
        let s = out.scores.select(0, 0).select(0, 0);
        assert!((s.double_value(&[1]) - 1.0).abs() < 1e-5);
        assert_eq!(s.double_value(&[0]), 0.0);
    }
}
