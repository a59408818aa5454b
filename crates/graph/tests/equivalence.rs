//! The equivalence invariant: the masked network computes exactly what the compacted
//! network computes. Checked in onnxruntime, an independent executor: the masked model
//! (consumer columns gated to zero) against the compacted file, for random masks.

use effp_graph::channels::{ChannelAnalysis, Mask, compact, gate};
use effp_graph::onnx::{load_file, save_file};
use effp_graph::shape::infer_shapes;
use effp_testkit::{fixtures, zoo};
use proptest::prelude::*;
use proptest::strategy::ValueTree;
use proptest::test_runner::{Config, TestRunner};

fn models() -> Vec<(String, effp_graph::ir::Model)> {
    let mut out: Vec<(String, effp_graph::ir::Model)> = fixtures::PUBLISHED
        .iter()
        .map(|(f, ..)| *f)
        .chain(fixtures::TINY.iter().copied())
        .map(|f| (f.to_string(), load_file(&fixtures::path(f)).unwrap()))
        .collect();
    for z in zoo::all() {
        out.push((
            z.name.to_string(),
            effp_graph::onnx::load_bytes(&z.bytes).unwrap(),
        ));
    }
    for (_, m) in &mut out {
        infer_shapes(m, None).unwrap();
    }
    out
}

#[test]
fn random_masks_give_identical_outputs_masked_and_compacted() {
    let tmp = tempfile::tempdir().unwrap();
    let mut runner = TestRunner::new(Config {
        cases: 1,
        ..Config::default()
    });
    let mut pairs = Vec::new();
    let mut checker = Vec::new();
    for (name, model) in models() {
        let analysis = ChannelAnalysis::new(&model.graph).unwrap();
        let groups = analysis.groups.len();
        // Three random masks per model, from 10% to 90% switched off; keep at least one
        // channel everywhere by never switching off every group of a value.
        for (i, fraction) in [0.1, 0.5, 0.9].into_iter().enumerate() {
            let flags =
                (proptest::collection::vec(proptest::bool::weighted(1.0 - fraction), groups))
                    .new_tree(&mut runner)
                    .unwrap()
                    .current();
            let mut mask = Mask::from_flags(flags);
            keep_one_per_value(&model, &analysis, &mut mask);
            let gated = gate(&model, &analysis, &mask);
            let (compacted, report) = compact(&model, &analysis, &mask).unwrap();
            assert_eq!(report.groups_removed, mask.pruned());
            let a = tmp.path().join(format!("{name}_{i}_masked.onnx"));
            let b = tmp.path().join(format!("{name}_{i}_compact.onnx"));
            save_file(&gated, &a).unwrap();
            save_file(&compacted, &b).unwrap();
            pairs.push((a, b.clone()));
            checker.push(b);
        }
    }
    let answers = fixtures::reference("compare", &serde_json::json!({ "pairs": pairs, "seed": 3 }));
    for a in answers.as_array().unwrap() {
        assert!(
            a["shapes_equal"].as_bool().unwrap(),
            "{}: {a}",
            a["candidate"]
        );
        let rel = a["max_rel"].as_f64().unwrap();
        assert!(
            rel <= 1e-4,
            "{}: masked and compacted differ by {rel}",
            a["candidate"]
        );
    }
    let checked = fixtures::reference("shapes", &serde_json::json!({ "models": checker }));
    for c in checked.as_array().unwrap() {
        assert!(
            c["checker_error"].is_null(),
            "{}: {}",
            c["model"],
            c["checker_error"]
        );
    }
}

/// Switches a group back on wherever a mask would leave a feature map with no channel.
fn keep_one_per_value(model: &effp_graph::ir::Model, analysis: &ChannelAnalysis, mask: &mut Mask) {
    for v in 0..model.graph.values.len() {
        let v = effp_graph::ir::ValueId(v);
        let Some(n) = analysis.channels(v) else {
            continue;
        };
        let alive = (0..n).any(|c| analysis.group_of(v, c).is_none_or(|g| mask.is_active(g)));
        if !alive && let Some(g) = analysis.group_of(v, 0) {
            mask.set(g, true);
        }
    }
}

#[test]
fn the_analysis_finds_the_couplings_of_real_detectors() {
    for (name, model) in models().into_iter().filter(|(n, _)| n.ends_with(".onnx")) {
        let a = ChannelAnalysis::new(&model.graph).unwrap();
        assert!(!a.groups.is_empty(), "{name}: some channels are prunable");
        let reasons: Vec<&str> = a.frozen.iter().map(|f| f.reason.as_str()).collect();
        assert!(
            reasons.iter().any(|r| r.contains("graph input")),
            "{name}: the image input is frozen"
        );
        assert!(
            reasons.iter().any(|r| r.contains("mixes axes")),
            "{name}: the Detect head's Reshape freezes its inputs"
        );
        // Every conv feeding the head's Reshape keeps all its filters.
        for f in &a.frozen {
            for &(v, c) in &f.members {
                assert_eq!(a.group_of(v, c), None);
            }
        }
    }
}

#[test]
fn a_residual_add_couples_both_branches_and_concat_twice_maps_both_positions() {
    let mut m = effp_graph::onnx::load_bytes(&zoo::residual_add()).unwrap();
    infer_shapes(&mut m, None).unwrap();
    let a = ChannelAnalysis::new(&m.graph).unwrap();
    // conv1 (8) and conv2 (8) are tied through the Add: 8 groups, each with two producers.
    let tied: Vec<_> = a.groups.iter().filter(|g| g.producers.len() == 2).collect();
    assert_eq!(tied.len(), 8);

    let mut m = effp_graph::onnx::load_bytes(&zoo::concat_same_tensor_twice()).unwrap();
    infer_shapes(&mut m, None).unwrap();
    let a = ChannelAnalysis::new(&m.graph).unwrap();
    let concat = m
        .graph
        .nodes
        .iter()
        .find(|n| n.op.op_type() == "Concat")
        .unwrap();
    let cat = concat.outputs[0];
    for c in 0..6 {
        assert_eq!(
            a.group_of(cat, c),
            a.group_of(cat, 10 + c),
            "position {c} and its second copy"
        );
    }
}
