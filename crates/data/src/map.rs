//! Mean average precision the COCO way, matching pycocotools' `COCOeval` for boxes:
//! IoU thresholds 0.50:0.05:0.95, 101-point interpolated precision, at most 100
//! detections per image and class, crowd regions ignored the COCO way, all areas.
//!
//! A crowd region (`iscrowd=1`) is neither found nor missed: it does not count among
//! the objects to recall, and a detection matched to it is dropped (neither a true
//! nor a false positive). A detection is matched to a crowd region only when no
//! ordinary object is left for it, its overlap with the region is the intersection
//! over the detection's own area, and one region may absorb any number of
//! detections.

use serde::Serialize;

/// An axis-aligned box in pixels: (x1, y1, x2, y2).
pub type Xyxy = [f64; 4];

/// A labelled object.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct GroundTruth {
    /// Index of the image.
    pub image: usize,
    /// Class id.
    pub class: usize,
    /// The box.
    pub bbox: Xyxy,
    /// A crowd region (COCO's `iscrowd=1`): detections on it are ignored, and it is
    /// not an object to find.
    pub crowd: bool,
}

/// A predicted object.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Detection {
    /// Index of the image.
    pub image: usize,
    /// Class id.
    pub class: usize,
    /// The box.
    pub bbox: Xyxy,
    /// Confidence.
    pub score: f64,
}

/// Average precision of one class.
#[derive(Debug, Clone, Serialize)]
pub struct ClassAp {
    /// Class id.
    pub class: usize,
    /// Labelled objects of this class (crowd regions not counted).
    pub instances: usize,
    /// AP averaged over IoU 0.50:0.95.
    pub ap50_95: f64,
    /// AP at IoU 0.50.
    pub ap50: f64,
}

/// The evaluation of a set of detections.
#[derive(Debug, Clone, Serialize)]
pub struct MapReport {
    /// mAP@[.5:.95] over classes that have labels.
    pub map50_95: f64,
    /// mAP@.5 over classes that have labels.
    pub map50: f64,
    /// Precision at the confidence threshold with the best F1 (IoU 0.5, all classes).
    pub precision: f64,
    /// Recall at that threshold.
    pub recall: f64,
    /// That F1.
    pub f1: f64,
    /// That confidence threshold.
    pub confidence: f64,
    /// Per-class APs (classes without labels other than crowd regions are left out).
    pub per_class: Vec<ClassAp>,
}

/// Detections kept per image and class, as COCO's last `maxDets`.
pub const MAX_DETECTIONS: usize = 100;
const RECALL_POINTS: usize = 101;

/// `numpy.linspace(start, stop, N)` to the last bit: pycocotools' thresholds are made
/// this way, and a threshold one ulp off moves a `searchsorted` by one.
fn linspace<const N: usize>(start: f64, stop: f64) -> [f64; N] {
    let step = (stop - start) / (N - 1) as f64;
    let mut t = [0.0; N];
    for (i, v) in t.iter_mut().enumerate() {
        *v = i as f64 * step + start;
    }
    t[N - 1] = stop;
    t
}

/// IoU thresholds 0.50, 0.55, …, 0.95.
fn iou_thresholds() -> [f64; 10] {
    linspace::<10>(0.5, 0.95)
}

/// Intersection over union of two boxes.
pub fn iou(a: &Xyxy, b: &Xyxy) -> f64 {
    let inter = intersection(a, b);
    let union = area(a) + area(b) - inter;
    if union <= 0.0 { 0.0 } else { inter / union }
}

/// The overlap of a detection with a crowd region, as COCO measures it: the
/// intersection over the detection's own area (a detection wholly inside the region
/// scores 1 however large the region is).
pub fn crowd_overlap(detection: &Xyxy, region: &Xyxy) -> f64 {
    let inter = intersection(detection, region);
    let own = area(detection);
    if own <= 0.0 { 0.0 } else { inter / own }
}

fn area(b: &Xyxy) -> f64 {
    (b[2] - b[0]) * (b[3] - b[1])
}

fn intersection(a: &Xyxy, b: &Xyxy) -> f64 {
    let w = (a[2].min(b[2]) - a[0].max(b[0])).max(0.0);
    let h = (a[3].min(b[3]) - a[1].max(b[1])).max(0.0);
    w * h
}

/// What became of one detection at one IoU threshold.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Outcome {
    /// Matched to an object.
    Hit,
    /// Matched to nothing.
    Miss,
    /// Matched to a crowd region: left out of the count.
    Ignored,
}

/// Matches the detections of one image and class to its labels at every threshold,
/// as `COCOeval.evaluateImg`: ordinary objects before crowd regions, each detection
/// (best score first, at most [`MAX_DETECTIONS`]) taking the free object it overlaps
/// most, ties going to the later one, and a crowd region only when no object is left
/// at the threshold.
fn match_image(
    gts: &[&GroundTruth],
    dts: &mut Vec<&Detection>,
    thresholds: &[f64; 10],
) -> Vec<(f64, [Outcome; 10])> {
    // Stable sort by descending score, as numpy's mergesort on -score.
    dts.sort_by(|a, b| b.score.total_cmp(&a.score));
    dts.truncate(MAX_DETECTIONS);
    // Stable: ordinary objects first, then crowd regions, each in label order.
    let mut gts = gts.to_vec();
    gts.sort_by_key(|g| g.crowd);
    let mut matched = vec![[false; 10]; gts.len()];
    let mut out = Vec::with_capacity(dts.len());
    for d in dts.iter() {
        let overlaps: Vec<f64> = gts
            .iter()
            .map(|g| {
                if g.crowd {
                    crowd_overlap(&d.bbox, &g.bbox)
                } else {
                    iou(&d.bbox, &g.bbox)
                }
            })
            .collect();
        let mut outcomes = [Outcome::Miss; 10];
        for (t, &threshold) in thresholds.iter().enumerate() {
            let mut best = threshold.min(1.0 - 1e-10);
            let mut m: Option<usize> = None;
            for (gi, g) in gts.iter().enumerate() {
                if matched[gi][t] && !g.crowd {
                    continue;
                }
                // Matched to an object already: crowd regions (sorted last) cannot
                // take the detection from it.
                if m.is_some_and(|k| !gts[k].crowd) && g.crowd {
                    break;
                }
                if overlaps[gi] < best {
                    continue;
                }
                best = overlaps[gi];
                m = Some(gi);
            }
            if let Some(gi) = m {
                matched[gi][t] = true;
                outcomes[t] = if gts[gi].crowd {
                    Outcome::Ignored
                } else {
                    Outcome::Hit
                };
            }
        }
        out.push((d.score, outcomes));
    }
    out
}

/// Evaluates detections against labels over `images` images and `classes` classes.
pub fn evaluate(
    labels: &[GroundTruth],
    detections: &[Detection],
    images: usize,
    classes: usize,
) -> MapReport {
    let thresholds = iou_thresholds();
    let mut per_class = Vec::new();
    // (score, true positive at IoU 0.5) over all classes, for precision/recall/F1.
    let mut pr_points: Vec<(f64, bool)> = Vec::new();
    let mut total_labels = 0usize;
    for class in 0..classes {
        let mut scored: Vec<(f64, [Outcome; 10])> = Vec::new();
        let mut instances = 0usize;
        for image in 0..images {
            let gts: Vec<&GroundTruth> = labels
                .iter()
                .filter(|g| g.image == image && g.class == class)
                .collect();
            let mut dts: Vec<&Detection> = detections
                .iter()
                .filter(|d| d.image == image && d.class == class)
                .collect();
            instances += gts.iter().filter(|g| !g.crowd).count();
            scored.extend(match_image(&gts, &mut dts, &thresholds));
        }
        total_labels += instances;
        pr_points.extend(
            scored
                .iter()
                .filter(|(_, o)| o[0] != Outcome::Ignored)
                .map(|&(s, o)| (s, o[0] == Outcome::Hit)),
        );
        if instances == 0 {
            continue;
        }
        scored.sort_by(|a, b| b.0.total_cmp(&a.0));
        let mut aps = [0.0; 10];
        for (t, ap) in aps.iter_mut().enumerate() {
            let counted = scored.iter().filter(|(_, o)| o[t] != Outcome::Ignored);
            *ap = interpolated_ap(counted.map(|(_, o)| o[t] == Outcome::Hit), instances);
        }
        per_class.push(ClassAp {
            class,
            instances,
            ap50_95: aps.iter().sum::<f64>() / aps.len() as f64,
            ap50: aps[0],
        });
    }
    let n = per_class.len().max(1) as f64;
    let (precision, recall, f1, confidence) = best_f1(pr_points, total_labels);
    MapReport {
        map50_95: per_class.iter().map(|c| c.ap50_95).sum::<f64>() / n,
        map50: per_class.iter().map(|c| c.ap50).sum::<f64>() / n,
        precision,
        recall,
        f1,
        confidence,
        per_class,
    }
}

/// COCO's 101-point interpolated AP of a ranked list of hits.
fn interpolated_ap(hits: impl Iterator<Item = bool>, positives: usize) -> f64 {
    let mut tp = 0.0f64;
    let mut fp = 0.0f64;
    let mut recall = Vec::new();
    let mut precision = Vec::new();
    for hit in hits {
        if hit {
            tp += 1.0
        } else {
            fp += 1.0
        }
        recall.push(tp / positives as f64);
        precision.push(tp / (tp + fp + f64::EPSILON));
    }
    for i in (1..precision.len()).rev() {
        if precision[i] > precision[i - 1] {
            precision[i - 1] = precision[i];
        }
    }
    let mut sum = 0.0;
    for threshold in linspace::<RECALL_POINTS>(0.0, 1.0) {
        // numpy.searchsorted(recall, threshold, side="left")
        let index = recall.partition_point(|&v| v < threshold);
        if let Some(&p) = precision.get(index) {
            sum += p;
        }
    }
    sum / RECALL_POINTS as f64
}

/// Precision and recall at the confidence threshold that maximises F1 (IoU 0.5,
/// all classes pooled).
fn best_f1(mut points: Vec<(f64, bool)>, positives: usize) -> (f64, f64, f64, f64) {
    points.sort_by(|a, b| b.0.total_cmp(&a.0));
    let (mut tp, mut fp) = (0.0f64, 0.0f64);
    let mut best = (0.0, 0.0, 0.0, 0.0);
    for (i, &(score, hit)) in points.iter().enumerate() {
        if hit {
            tp += 1.0
        } else {
            fp += 1.0
        }
        // Only at the last detection of a run of equal scores is the threshold real.
        if points.get(i + 1).is_some_and(|next| next.0 == score) {
            continue;
        }
        let p = tp / (tp + fp);
        let r = if positives == 0 {
            0.0
        } else {
            tp / positives as f64
        };
        let f1 = if p + r > 0.0 {
            2.0 * p * r / (p + r)
        } else {
            0.0
        };
        if f1 > best.2 {
            best = (p, r, f1, score);
        }
    }
    best
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn perfect_detections_score_one_and_misses_score_zero() {
        let gt = [GroundTruth {
            image: 0,
            class: 0,
            bbox: [0.0, 0.0, 10.0, 10.0],
            crowd: false,
        }];
        let hit = [Detection {
            image: 0,
            class: 0,
            bbox: [0.0, 0.0, 10.0, 10.0],
            score: 0.9,
        }];
        let r = evaluate(&gt, &hit, 1, 1);
        assert!((r.map50_95 - 1.0).abs() < 1e-12 && (r.map50 - 1.0).abs() < 1e-12);
        assert!((r.f1 - 1.0).abs() < 1e-12);
        let miss = [Detection {
            image: 0,
            class: 0,
            bbox: [20.0, 20.0, 30.0, 30.0],
            score: 0.9,
        }];
        assert_eq!(evaluate(&gt, &miss, 1, 1).map50, 0.0);
    }

    #[test]
    fn a_detection_on_a_crowd_region_is_neither_right_nor_wrong() {
        let object = GroundTruth {
            image: 0,
            class: 0,
            bbox: [0.0, 0.0, 10.0, 10.0],
            crowd: false,
        };
        let crowd = GroundTruth {
            bbox: [50.0, 50.0, 150.0, 150.0],
            crowd: true,
            ..object
        };
        let det = |bbox, score| Detection {
            image: 0,
            class: 0,
            bbox,
            score,
        };
        // Ranked first: a small box inside the crowd (IoU with it 0.01, overlap over
        // its own area 1), then the object.
        let dets = [
            det([60.0, 60.0, 70.0, 70.0], 0.9),
            det([0.0, 0.0, 10.0, 10.0], 0.8),
        ];
        let with_crowd = evaluate(&[object, crowd], &dets, 1, 1);
        assert!((with_crowd.map50_95 - 1.0).abs() < 1e-12, "{with_crowd:?}");
        assert_eq!(with_crowd.per_class[0].instances, 1);
        // Without the region the first detection is a false positive ahead of the hit.
        let without = evaluate(&[object], &dets, 1, 1);
        assert!(without.map50_95 < 0.6, "{without:?}");
        // A class with nothing but crowd regions has no AP to average.
        assert!(evaluate(&[crowd], &dets, 1, 1).per_class.is_empty());
    }

    #[test]
    fn iou_of_half_overlap() {
        assert!((iou(&[0.0, 0.0, 2.0, 1.0], &[1.0, 0.0, 3.0, 1.0]) - 1.0 / 3.0).abs() < 1e-12);
    }
}
