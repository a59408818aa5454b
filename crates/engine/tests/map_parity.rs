//! effp's mAP agrees with pycocotools on random labels and detections: many seeds,
//! crowded scenes, empty images, duplicate and near-duplicate boxes.

use effp_engine::eval::map::{Detection, GroundTruth, evaluate};
use effp_testkit::fixtures;
use proptest::prelude::*;
use proptest::strategy::ValueTree;
use proptest::test_runner::{Config, TestRunner};

/// Coordinates on a 1/8-pixel grid, so that xywh ↔ xyxy conversions are exact.
fn coord(max: u32) -> impl Strategy<Value = f64> {
    (0..max * 8).prop_map(|v| v as f64 / 8.0)
}

fn xywh() -> impl Strategy<Value = [f64; 4]> {
    (
        coord(200),
        coord(200),
        (8u32..800).prop_map(|v| v as f64 / 8.0),
        (8u32..800).prop_map(|v| v as f64 / 8.0),
    )
        .prop_map(|(x, y, w, h)| [x, y, w, h])
}

#[derive(Debug, Clone)]
struct Case {
    images: usize,
    labels: Vec<(usize, usize, [f64; 4])>,
    detections: Vec<(usize, usize, [f64; 4], f64)>,
}

fn case() -> impl Strategy<Value = Case> {
    (1usize..6).prop_flat_map(|images| {
        let labels = proptest::collection::vec((0..images, 0usize..3, xywh()), 0..30);
        (Just(images), labels).prop_flat_map(move |(images, labels)| {
            // Detections: jittered copies of labels (true positives of varying quality)
            // plus free boxes (false positives); scores on a coarse grid to force ties.
            let near = labels.clone();
            let jittered = proptest::collection::vec(
                (
                    0..near.len().max(1),
                    -16i32..16,
                    -16i32..16,
                    0usize..3,
                    0u32..20,
                ),
                0..(2 * near.len() + 1),
            )
            .prop_map(move |picks| {
                picks
                    .into_iter()
                    .filter(|_| !near.is_empty())
                    .map(|(i, dx, dy, cls_shift, s)| {
                        let (img, cls, b) = near[i % near.len()];
                        let cls = if cls_shift == 0 { (cls + 1) % 3 } else { cls };
                        (
                            img,
                            cls,
                            [b[0] + dx as f64 / 4.0, b[1] + dy as f64 / 4.0, b[2], b[3]],
                            s as f64 / 20.0,
                        )
                    })
                    .collect::<Vec<_>>()
            });
            let free = proptest::collection::vec((0..images, 0usize..3, xywh(), 0u32..20), 0..20)
                .prop_map(|v| {
                    v.into_iter()
                        .map(|(i, c, b, s)| (i, c, b, s as f64 / 20.0))
                        .collect::<Vec<_>>()
                });
            (Just(images), Just(labels), jittered, free).prop_map(|(images, labels, mut j, f)| {
                j.extend(f);
                Case {
                    images,
                    labels,
                    detections: j,
                }
            })
        })
    })
}

fn to_xyxy(b: [f64; 4]) -> [f64; 4] {
    [b[0], b[1], b[0] + b[2], b[1] + b[3]]
}

#[test]
fn map_matches_pycocotools_on_random_scenes() {
    let mut runner = TestRunner::new(Config {
        rng_algorithm: proptest::test_runner::RngAlgorithm::ChaCha,
        ..Config::default()
    });
    let strategy = case();
    let cases: Vec<Case> = (0..300)
        .map(|_| strategy.new_tree(&mut runner).unwrap().current())
        .collect();
    let mut request = Vec::new();
    for c in &cases {
        let images: Vec<_> = (0..c.images)
            .map(|i| serde_json::json!({ "id": i + 1, "width": 256, "height": 256 }))
            .collect();
        let annotations: Vec<_> = c
            .labels
            .iter()
            .enumerate()
            .map(|(k, &(img, cls, b))| {
                serde_json::json!({ "id": k + 1, "image_id": img + 1, "category_id": cls + 1, "bbox": b,
                                    "area": b[2] * b[3], "iscrowd": 0 })
            })
            .collect();
        let detections: Vec<_> = c
            .detections
            .iter()
            .map(|&(img, cls, b, s)| serde_json::json!({ "image_id": img + 1, "category_id": cls + 1, "bbox": b, "score": s }))
            .collect();
        let categories: Vec<_> = (0..3)
            .map(|k| serde_json::json!({ "id": k + 1, "name": format!("c{k}") }))
            .collect();
        request.push(serde_json::json!({ "images": images, "annotations": annotations, "categories": categories, "detections": detections }));
    }
    let answers = run_reference(&serde_json::json!({ "cases": request }));
    let mut compared = 0;
    for (c, a) in cases.iter().zip(answers.as_array().unwrap()) {
        if a["empty"].as_bool().unwrap() {
            continue;
        }
        let labels: Vec<GroundTruth> = c
            .labels
            .iter()
            .map(|&(image, class, b)| GroundTruth {
                image,
                class,
                bbox: to_xyxy(b),
            })
            .collect();
        let dets: Vec<Detection> = c
            .detections
            .iter()
            .map(|&(image, class, b, score)| Detection {
                image,
                class,
                bbox: to_xyxy(b),
                score,
            })
            .collect();
        let ours = evaluate(&labels, &dets, c.images, 3);
        let (ap, ap50) = (a["ap"].as_f64().unwrap(), a["ap50"].as_f64().unwrap());
        assert!(
            (ours.map50_95 - ap).abs() <= 1e-4,
            "AP {} vs pycocotools {ap} on {c:?}",
            ours.map50_95
        );
        assert!(
            (ours.map50 - ap50).abs() <= 1e-4,
            "AP50 {} vs pycocotools {ap50} on {c:?}",
            ours.map50
        );
        compared += 1;
    }
    assert!(compared > 250, "only {compared} cases had detections");
}

fn run_reference(request: &serde_json::Value) -> serde_json::Value {
    use std::io::Write;
    use std::process::{Command, Stdio};
    let mut child = Command::new(fixtures::python())
        .arg(fixtures::support_script("coco_map.py"))
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    child
        .stdin
        .take()
        .unwrap()
        .write_all(request.to_string().as_bytes())
        .unwrap();
    let out = child.wait_with_output().unwrap();
    assert!(out.status.success());
    serde_json::from_slice(&out.stdout).unwrap()
}
