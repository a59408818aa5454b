//! Turning a detector's raw output into boxes: layout detection, confidence filter,
//! class-aware NMS.

use std::str::FromStr;

use serde::Serialize;

use super::map::{Xyxy, iou};

/// The output layouts effp decodes.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Layout {
    /// Ultralytics YOLOv8/YOLO11/YOLOv5u: `[N, 4 + nc, A]`, cx cy w h in input
    /// pixels, then one sigmoid score per class.
    Ultralytics,
    /// Classic YOLOv5: `[N, A, 5 + nc]`, cx cy w h, objectness, class scores;
    /// confidence = objectness × class score.
    Yolov5,
}

impl FromStr for Layout {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        match s {
            "ultralytics" => Ok(Self::Ultralytics),
            "yolov5" => Ok(Self::Yolov5),
            _ => Err(format!("'{s}' is not a decoder: use ultralytics or yolov5")),
        }
    }
}

/// Picks the layout from the output shape and the dataset's class count.
pub fn detect_layout(shape: &[usize], classes: usize) -> Result<Layout, String> {
    match shape {
        [_, c, _] if *c == 4 + classes => Ok(Layout::Ultralytics),
        [_, _, c] if *c == 5 + classes => Ok(Layout::Yolov5),
        _ => Err(format!(
            "cannot tell how to decode an output of shape {shape:?} for {classes} classes: \
             expected [N, {}, anchors] (Ultralytics) or [N, anchors, {}] (YOLOv5); \
             check that the dataset matches the model, or choose --decoder",
            4 + classes,
            5 + classes
        )),
    }
}

/// NMS settings; the defaults are Ultralytics' validation settings.
#[derive(Debug, Clone, Copy, PartialEq, Serialize)]
pub struct NmsOptions {
    /// Minimum confidence.
    pub confidence: f32,
    /// Boxes overlapping a better one of the same class by more than this are dropped.
    pub iou: f32,
    /// Detections kept per image.
    pub max_detections: usize,
    /// Candidates considered per image (the most confident ones).
    pub max_candidates: usize,
}

impl Default for NmsOptions {
    fn default() -> Self {
        Self {
            confidence: 0.001,
            iou: 0.7,
            max_detections: 300,
            max_candidates: 30_000,
        }
    }
}

/// A decoded box in input pixels.
#[derive(Debug, Clone, Copy, PartialEq, Serialize)]
pub struct Candidate {
    /// (x1, y1, x2, y2).
    pub bbox: Xyxy,
    /// Confidence.
    pub score: f32,
    /// Class id.
    pub class: usize,
}

/// Decodes one image's output (`values` is that image's slice, row-major in the
/// layout's own order) and applies class-aware NMS. Every class above the confidence
/// threshold makes a candidate (multi-label), as in Ultralytics' validation.
pub fn decode_image(
    values: &[f32],
    anchors: usize,
    classes: usize,
    layout: Layout,
    nms: &NmsOptions,
) -> Vec<Candidate> {
    let mut candidates = Vec::new();
    for a in 0..anchors {
        let at = |k: usize| match layout {
            Layout::Ultralytics => values[k * anchors + a],
            Layout::Yolov5 => values[a * (5 + classes) + k],
        };
        let (cx, cy, w, h) = (at(0), at(1), at(2), at(3));
        let (objectness, first) = match layout {
            Layout::Ultralytics => (1.0, 4),
            Layout::Yolov5 => (at(4), 5),
        };
        if layout == Layout::Yolov5 && objectness <= nms.confidence {
            continue;
        }
        let bbox = [
            (cx - w / 2.0) as f64,
            (cy - h / 2.0) as f64,
            (cx + w / 2.0) as f64,
            (cy + h / 2.0) as f64,
        ];
        for class in 0..classes {
            let score = at(first + class) * objectness;
            if score > nms.confidence {
                candidates.push(Candidate { bbox, score, class });
            }
        }
    }
    non_max_suppression(candidates, nms)
}

/// Greedy NMS per class, most confident first.
pub fn non_max_suppression(mut candidates: Vec<Candidate>, nms: &NmsOptions) -> Vec<Candidate> {
    candidates.sort_by(|a, b| b.score.total_cmp(&a.score));
    candidates.truncate(nms.max_candidates);
    let mut kept: Vec<Candidate> = Vec::new();
    for c in candidates {
        if kept.len() == nms.max_detections {
            break;
        }
        let suppressed = kept
            .iter()
            .any(|k| k.class == c.class && iou(&k.bbox, &c.bbox) > nms.iou as f64);
        if !suppressed {
            kept.push(c);
        }
    }
    kept
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn layouts_are_told_apart_by_shape_and_class_count() {
        assert_eq!(
            detect_layout(&[1, 84, 8400], 80).unwrap(),
            Layout::Ultralytics
        );
        assert_eq!(detect_layout(&[1, 25200, 85], 80).unwrap(), Layout::Yolov5);
        assert!(
            detect_layout(&[1, 84, 8400], 3)
                .unwrap_err()
                .contains("--decoder")
        );
    }

    #[test]
    fn nms_keeps_the_best_box_per_class_and_both_classes() {
        // Two anchors at the same place: class 0 twice (one suppressed), class 1 once.
        // Ultralytics layout, 2 classes: rows cx, cy, w, h, s0, s1; columns anchors.
        let values = [
            50.0, 51.0, // cx
            50.0, 50.0, // cy
            20.0, 20.0, // w
            20.0, 20.0, // h
            0.9, 0.8, // class 0
            0.0, 0.7, // class 1
        ];
        let out = decode_image(&values, 2, 2, Layout::Ultralytics, &NmsOptions::default());
        assert_eq!(out.len(), 2);
        assert_eq!((out[0].class, out[0].score), (0, 0.9));
        assert_eq!(out[1].class, 1);
        assert_eq!(out[0].bbox, [40.0, 40.0, 60.0, 60.0]);
    }

    #[test]
    fn yolov5_confidence_is_objectness_times_class() {
        let values = [10.0, 10.0, 4.0, 4.0, 0.5, 0.4, 0.8];
        let out = decode_image(&values, 1, 2, Layout::Yolov5, &NmsOptions::default());
        assert_eq!(out.len(), 2);
        assert!((out[0].score - 0.4).abs() < 1e-6 && out[0].class == 1);
    }
}
