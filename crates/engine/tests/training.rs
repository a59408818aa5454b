//! Masked training on the trained fixture detector: EFFP and the baselines reach the
//! target through their schedules, train the weights, and their final masks compact
//! into networks that compute what the masked students compute; an interrupted run
//! resumed from its checkpoint ends exactly like an uninterrupted one.

use std::sync::atomic::{AtomicBool, Ordering};

use effp_engine::EngineError;
use effp_engine::data::dataset::{Dataset, load};
use effp_engine::prune::Target;
use effp_engine::runtime::Network;
use effp_engine::tch::{self, Device, Kind, Tensor};
use effp_engine::train::checkpoint::Checkpoint;
use effp_engine::train::distill::Distill;
use effp_engine::train::session::{
    Control, FineTune, Method, Problem, Start, TrainEvent, TrainOptions, TrainRun, train,
};
use effp_graph::channels::{ChannelAnalysis, Mask, compact};
use effp_graph::ir::Model;
use effp_graph::onnx::load_file;
use effp_graph::shape::infer_shapes;
use effp_testkit::fixtures;

fn setup() -> (Model, ChannelAnalysis, Dataset) {
    let mut model = load_file(&fixtures::path("trained.onnx")).unwrap();
    infer_shapes(&mut model, None).unwrap();
    let analysis = ChannelAnalysis::new(&model.graph).unwrap();
    let data = load(&fixtures::dir().join("synth")).unwrap();
    (model, analysis, data)
}

/// Pruning the fixture to `target` of its FLOPs on its training images.
fn problem(
    (model, analysis, data): &(Model, ChannelAnalysis, Dataset),
    target: f64,
) -> Problem<'_> {
    Problem {
        model,
        analysis,
        samples: data.split("train").unwrap(),
        target: Target::FlopsRatio(target),
    }
}

fn run(
    fx: &(Model, ChannelAnalysis, Dataset),
    target: f64,
    options: &TrainOptions,
    control: Control<'_>,
) -> Result<TrainRun, EngineError> {
    train(&problem(fx, target), options, Device::Cpu, control, |_| {})
}

fn flags(mask: &Mask) -> Vec<bool> {
    (0..mask.len()).map(|g| mask.is_active(g)).collect()
}

/// A resumed run ended where the uninterrupted one did: the same mask, the same mask
/// changes at every step, and the same losses to float tolerance.
fn assert_same_run(resumed: &TrainRun, whole: &TrainRun) {
    assert_eq!(flags(&resumed.mask), flags(&whole.mask));
    assert_eq!(resumed.history.len(), whole.history.len());
    for (a, b) in resumed.history.iter().zip(&whole.history) {
        assert_eq!(
            (a.active_groups, a.regrown, a.pruned),
            (b.active_groups, b.regrown, b.pruned),
            "step {}",
            a.step
        );
        assert!(
            (a.loss - b.loss).abs() <= 1e-5 * b.loss.abs().max(1.0),
            "step {}",
            a.step
        );
    }
}

/// Largest relative difference between the masked student and its compaction.
fn masked_vs_compacted(result: &TrainRun, analysis: &ChannelAnalysis) -> f64 {
    let masked = Network::new(&result.model, Device::Cpu)
        .unwrap()
        .with_gates(analysis);
    let gates = masked
        .gate_map()
        .unwrap()
        .gates_for(&result.mask, Device::Cpu);
    let (small, _) = compact(&result.model, analysis, &result.mask).unwrap();
    let compacted = Network::new(&small, Device::Cpu).unwrap();
    let x = Tensor::rand([2, 3, 128, 128], (Kind::Float, Device::Cpu));
    let a = tch::no_grad(|| masked.forward(&[x.shallow_clone()], Some(&gates))).unwrap();
    let b = tch::no_grad(|| compacted.forward(&[x], None)).unwrap();
    (&a[0] - &b[0]).abs().max().double_value(&[]) / b[0].abs().max().double_value(&[])
}

#[test]
fn effp_reaches_the_target_with_regrowing_and_compacts_exactly() {
    let fx = setup();
    let options = TrainOptions {
        start: Start::Full,
        steps: 40,
        interval: 4,
        batch: 8,
        fine_tune: FineTune::Masked,
        ..TrainOptions::default()
    };
    let result = run(&fx, 0.5, &options, Control::default()).unwrap();
    let h = &result.history;
    assert_eq!(h.len(), 40);
    assert!(h.iter().all(|r| r.loss.is_finite()));
    let last = h.last().unwrap();
    assert!(
        last.flops_ratio <= 0.5 && last.flops_ratio >= 0.48,
        "{}",
        last.flops_ratio
    );
    assert!(
        h[3].budget < 1.0 && h[3].flops_ratio <= h[3].budget + 1e-9,
        "the mask follows the budget"
    );
    assert!(last.regrown > 0, "some groups were revived");
    assert!(
        h.windows(2).all(|w| w[1].budget <= w[0].budget),
        "the budget only falls"
    );

    // The trained weights differ from the original ones.
    let (trained, original) = (&result.model.graph, &fx.0.graph);
    let w = conv_weight(&fx.0);
    assert_ne!(
        trained.constant(w).unwrap().to_f32_vec(),
        original.constant(w).unwrap().to_f32_vec()
    );
    let diff = masked_vs_compacted(&result, &fx.1);
    assert!(diff <= 1e-4, "{diff}");
    assert_fixed_projections_kept(&result.model, &fx.0);
}

/// The DFL decode's weights (the bin positions) came out of training as they went in.
fn assert_fixed_projections_kept(trained: &Model, original: &Model) {
    let fixed = effp_engine::train::fixed::fixed_projections(&original.graph);
    assert_eq!(fixed.len(), 1, "the fixture has one DFL decode");
    for w in fixed {
        let before = original.graph.constant(w).unwrap().to_f32_vec();
        assert_eq!(
            before,
            (0..before.len()).map(|i| i as f32).collect::<Vec<_>>()
        );
        assert_eq!(trained.graph.constant(w).unwrap().to_f32_vec(), before);
    }
}

#[test]
fn a_run_shorter_than_the_update_interval_still_ends_at_the_target() {
    let fx = setup();
    for steps in [1, 3, 7] {
        let options = TrainOptions {
            steps,
            interval: 5,
            batch: 2,
            ..TrainOptions::default()
        };
        let result = run(&fx, 0.5, &options, Control::default()).unwrap();
        let last = result.history.last().unwrap();
        assert!(
            (0.48..=0.5).contains(&last.flops_ratio),
            "{steps} steps: {}",
            last.flops_ratio
        );
    }
}

#[test]
fn without_regrowing_nothing_is_revived() {
    let fx = setup();
    let options = TrainOptions {
        steps: 12,
        interval: 3,
        batch: 4,
        regrow: 0.0,
        ..TrainOptions::default()
    };
    let result = run(&fx, 0.7, &options, Control::default()).unwrap();
    assert_eq!(result.history.last().unwrap().regrown, 0);
}

/// Started at the target, EFFP's first mask is l1's, and it trades channels there
/// rather than moving toward it: every step at the target's cost, groups revived and
/// switched off in equal measure.
#[test]
fn effp_started_at_the_target_begins_with_l1s_mask_and_trades_channels_there() {
    let fx = setup();
    let options = |method, regrow| TrainOptions {
        method,
        start: Start::Target,
        steps: 12,
        prune_share: 0.5,
        interval: 2,
        batch: 4,
        regrow,
        fine_tune: FineTune::Masked,
        ..TrainOptions::default()
    };
    let l1 = run(&fx, 0.6, &options(Method::L1, 0.0), Control::default()).unwrap();
    let kept = run(&fx, 0.6, &options(Method::Effp, 0.0), Control::default()).unwrap();
    assert_eq!(
        flags(&kept.mask),
        flags(&l1.mask),
        "without regrowing nothing moves it off l1's mask"
    );

    let traded = run(&fx, 0.6, &options(Method::Effp, 0.5), Control::default()).unwrap();
    let h = &traded.history;
    assert!(
        h.iter().all(|r| r.budget == 0.6 && r.flops_ratio <= 0.6),
        "at the target from the first step: {:?}",
        h.iter().map(|r| r.flops_ratio).collect::<Vec<_>>()
    );
    let last = h.last().unwrap();
    assert!(last.regrown > 0, "groups were revived");
    assert_eq!(
        last.pruned,
        traded.mask.pruned() + last.regrown,
        "every revived group was paid for by switching others off"
    );
    assert_ne!(flags(&traded.mask), flags(&l1.mask), "the mask moved");
    let diff = masked_vs_compacted(&traded, &fx.1);
    assert!(diff <= 1e-4, "{diff}");
}

#[test]
fn every_baseline_meets_the_budget_its_own_way_and_compacts_exactly() {
    let fx = setup();
    let steps = 16;
    for method in [
        Method::L1,
        Method::Random,
        Method::Progressive,
        Method::Uniform,
        Method::Sfp,
    ] {
        let options = TrainOptions {
            method,
            steps,
            batch: 4,
            stages: 2,
            fine_tune: FineTune::Masked,
            ..TrainOptions::default()
        };
        let result = run(&fx, 0.6, &options, Control::default()).unwrap();
        let h = &result.history;
        assert_eq!(h.len(), steps, "{method:?}");
        let last = h.last().unwrap();
        assert!(
            (0.58..=0.6).contains(&last.flops_ratio),
            "{method:?}: {}",
            last.flops_ratio
        );
        match method {
            // One-shot: the target's mask from the first step on, never changed.
            Method::L1 | Method::Random => {
                assert!(h.iter().all(|r| r.flops_ratio <= 0.6), "{method:?}");
                assert!(h.iter().all(|r| r.active_groups == last.active_groups));
                assert_eq!(last.regrown, 0);
            }
            // Two stages: 0.8 first, then 0.6; nothing comes back.
            Method::Progressive | Method::Uniform => {
                assert!(
                    (0.78..=0.8).contains(&h[0].flops_ratio),
                    "{}",
                    h[0].flops_ratio
                );
                assert!(
                    h.windows(2)
                        .all(|w| w[1].active_groups <= w[0].active_groups)
                );
                assert_eq!(last.regrown, 0);
            }
            Method::Sfp | Method::Effp => {}
        }
        let diff = masked_vs_compacted(&result, &fx.1);
        assert!(diff <= 1e-4, "{method:?}: {diff}");
    }

    // L1 and random start from different masks.
    let mask_of = |method| {
        let options = TrainOptions {
            method,
            steps: 1,
            batch: 2,
            ..TrainOptions::default()
        };
        flags(&run(&fx, 0.6, &options, Control::default()).unwrap().mask)
    };
    assert_ne!(mask_of(Method::L1), mask_of(Method::Random));
}

#[test]
fn soft_pruning_zeroes_the_weakest_columns_but_keeps_training_them() {
    let fx = setup();
    // The whole run is the pruning phase: groups are zeroed, not gated.
    let options = TrainOptions {
        method: Method::Sfp,
        steps: 6,
        batch: 4,
        prune_share: 1.0,
        ..TrainOptions::default()
    };
    let result = run(&fx, 0.6, &options, Control::default()).unwrap();
    let off = (0..result.mask.len())
        .find(|&g| !result.mask.is_active(g))
        .unwrap();
    // Some consumer of that group reads it with weights that moved away from zero
    // after the zeroing (they keep training), so ungated output differs from gated.
    let open = Network::new(&result.model, Device::Cpu).unwrap();
    let gated = Network::new(&result.model, Device::Cpu)
        .unwrap()
        .with_gates(&fx.1);
    let gates = gated
        .gate_map()
        .unwrap()
        .gates_for(&result.mask, Device::Cpu);
    let x = Tensor::rand([1, 3, 128, 128], (Kind::Float, Device::Cpu));
    let a = tch::no_grad(|| open.forward(&[x.shallow_clone()], None)).unwrap();
    let b = tch::no_grad(|| gated.forward(&[x], Some(&gates))).unwrap();
    let moved = (&a[0] - &b[0]).abs().max().double_value(&[]);
    assert!(moved > 0.0, "group {off}: zeroed weights trained on");
}

#[test]
fn a_resumed_run_ends_with_the_same_masks_as_an_uninterrupted_one() {
    let fx = setup();
    let options = TrainOptions {
        steps: 14,
        interval: 2,
        batch: 4,
        seed: 7,
        ..TrainOptions::default()
    };
    let fingerprint = "the fixture".to_string();
    let whole = run(
        &fx,
        0.6,
        &options,
        Control {
            fingerprint: fingerprint.clone(),
            ..Control::default()
        },
    )
    .unwrap();

    let tmp = tempfile::tempdir().unwrap();
    let path = tmp.path().join("run.ckpt");
    let cancel = AtomicBool::new(false);
    let problem = problem(&fx, 0.6);
    let interrupted = train(
        &problem,
        &options,
        Device::Cpu,
        Control {
            checkpoint: Some(path.clone()),
            every: 4,
            cancel: Some(&cancel),
            resume: None,
            fingerprint: fingerprint.clone(),
        },
        // Ctrl-C arrives during step 6 (mid-epoch, between checkpoints).
        |event| {
            if let TrainEvent::Step(r) = event
                && r.step == 6
            {
                cancel.store(true, Ordering::SeqCst);
            }
        },
    );
    match interrupted {
        Err(EngineError::Cancelled(c)) => {
            assert_eq!(c.step, 7);
            assert_eq!(c.checkpoint.as_deref(), Some(path.as_path()));
        }
        other => panic!("expected a cancellation, got {other:?}"),
    }
    let saved = Checkpoint::load(&path).unwrap();
    assert_eq!(saved.step(), 7);
    let resumed = run(
        &fx,
        0.6,
        &options,
        Control {
            resume: Some(saved),
            fingerprint: fingerprint.clone(),
            ..Control::default()
        },
    )
    .unwrap();
    assert_same_run(&resumed, &whole);

    // A checkpoint only continues the run it came from.
    let other = TrainOptions {
        lr: 2e-3,
        ..options
    };
    let err = run(
        &fx,
        0.6,
        &other,
        Control {
            resume: Some(Checkpoint::load(&path).unwrap()),
            fingerprint: fingerprint.clone(),
            ..Control::default()
        },
    )
    .unwrap_err()
    .to_string();
    assert!(err.contains("different settings"), "{err}");
    let err = run(
        &fx,
        0.6,
        &options,
        Control {
            resume: Some(Checkpoint::load(&path).unwrap()),
            fingerprint: "another model".into(),
            ..Control::default()
        },
    )
    .unwrap_err()
    .to_string();
    assert!(err.contains("different model"), "{err}");

    // Anything else is refused as not a checkpoint.
    let junk = tmp.path().join("junk.ckpt");
    std::fs::write(&junk, b"not a checkpoint at all").unwrap();
    let err = Checkpoint::load(&junk).unwrap_err().to_string();
    assert!(err.contains("is not an effp checkpoint"), "{err}");
}

#[test]
fn a_run_resumed_from_its_last_periodic_checkpoint_ends_like_an_uninterrupted_one() {
    // What a crash (SIGKILL) leaves behind: no cancellation, only the last checkpoint
    // written every few steps.
    let fx = setup();
    let options = TrainOptions {
        steps: 14,
        interval: 2,
        batch: 4,
        seed: 11,
        ..TrainOptions::default()
    };
    let fingerprint = "the fixture".to_string();
    let tmp = tempfile::tempdir().unwrap();
    let path = tmp.path().join("run.ckpt");
    let kept = tmp.path().join("at-step-8.ckpt");
    let late = tmp.path().join("at-step-12.ckpt");
    let problem = problem(&fx, 0.6);
    // The uninterrupted run writes a checkpoint every 4 steps; the one it announces
    // before step 8 is what a crash during step 8 or 9 would leave.
    let mut saved_at = Vec::new();
    let whole = train(
        &problem,
        &options,
        Device::Cpu,
        Control {
            checkpoint: Some(path.clone()),
            every: 4,
            fingerprint: fingerprint.clone(),
            ..Control::default()
        },
        |event| {
            if let TrainEvent::Saved { step } = event {
                saved_at.push(step);
                match step {
                    8 => std::fs::copy(&path, &kept).unwrap(),
                    12 => std::fs::copy(&path, &late).unwrap(),
                    _ => 0,
                };
            }
        },
    )
    .unwrap();
    // Every 4 steps, not after the last one (the run is over then).
    assert_eq!(saved_at, [4, 8, 12]);
    // Step 8 is in the pruning phase (10 steps), step 12 in the fine-tuning of the
    // compacted network.
    assert!(whole.compacted.is_some());
    for (file, step) in [(&kept, 8), (&late, 12)] {
        let saved = Checkpoint::load(file).unwrap();
        assert_eq!(saved.step(), step);
        let resumed = run(
            &fx,
            0.6,
            &options,
            Control {
                resume: Some(saved),
                fingerprint: fingerprint.clone(),
                ..Control::default()
            },
        )
        .unwrap();
        assert_same_run(&resumed, &whole);
        let dims = |m: &Model| {
            m.graph
                .constant(conv_weight(&fx.0))
                .unwrap()
                .dims()
                .to_vec()
        };
        assert_eq!(dims(&resumed.model), dims(&whole.model), "from step {step}");
    }
}

/// The weight of the first convolution.
fn conv_weight(model: &Model) -> effp_graph::ir::ValueId {
    model
        .graph
        .nodes
        .iter()
        .find(|n| n.op.op_type() == "Conv")
        .and_then(|n| n.input(1))
        .unwrap()
}

/// The same run to 0.5 FLOPs, half of its `steps` fine-tuning, with the masked and
/// with the compacted network.
fn masked_and_compacted(
    fx: &(Model, ChannelAnalysis, Dataset),
    steps: usize,
    distill: Distill,
) -> (TrainRun, TrainRun) {
    let masked = TrainOptions {
        steps,
        interval: 2,
        batch: 4,
        prune_share: 0.5,
        fine_tune: FineTune::Masked,
        distill: Some(distill),
        ..TrainOptions::default()
    };
    let compacted = TrainOptions {
        fine_tune: FineTune::Compacted,
        ..masked
    };
    (
        run(fx, 0.5, &masked, Control::default()).unwrap(),
        run(fx, 0.5, &compacted, Control::default()).unwrap(),
    )
}

#[test]
fn fine_tuning_the_compacted_network_ends_like_fine_tuning_the_masked_one() {
    let fx = setup();
    let (a, b) = masked_and_compacted(&fx, 16, Distill::Heads);
    assert!(a.compacted.is_none());
    let check = b.compacted.as_ref().expect("the fine-tuning ran compacted");
    assert!(check.max_relative_error <= 1e-4, "{check:?}");
    assert_eq!(flags(&a.mask), flags(&b.mask));
    // The same steps, to float tolerance: the pruning phase identically, the
    // fine-tuning phase up to the order of the sums.
    for (x, y) in a.history.iter().zip(&b.history) {
        assert!(
            (x.loss - y.loss).abs() <= 1e-4 * x.loss.abs().max(1e-3),
            "step {}: {} vs {}",
            x.step,
            x.loss,
            y.loss
        );
    }
    assert!(b.seconds.pruning > 0.0 && b.seconds.fine_tuning > 0.0);
    assert_fixed_projections_kept(&b.model, &fx.0);
    // The model is already the small one, and computes what the masked run's
    // compaction computes.
    let (small, _) = compact(&a.model, &fx.1, &a.mask).unwrap();
    let w = conv_weight(&fx.0);
    assert_eq!(
        small.graph.constant(w).unwrap().dims(),
        b.model.graph.constant(w).unwrap().dims()
    );
    let x = Tensor::rand([2, 3, 128, 128], (Kind::Float, Device::Cpu));
    let p = tch::no_grad(|| {
        Network::new(&small, Device::Cpu)
            .unwrap()
            .forward(&[x.shallow_clone()], None)
    })
    .unwrap();
    let q = tch::no_grad(|| {
        Network::new(&b.model, Device::Cpu)
            .unwrap()
            .forward(&[x], None)
    })
    .unwrap();
    let diff = effp_engine::verify::channel_relative_error(&q[0], &p[0]);
    assert!(diff <= 1e-3, "{diff}");
    // Unlike a random other network: the untrained compaction.
    let (untrained, _) = compact(&fx.0, &fx.1, &a.mask).unwrap();
    let r = tch::no_grad(|| {
        Network::new(&untrained, Device::Cpu).unwrap().forward(
            &[Tensor::rand([2, 3, 128, 128], (Kind::Float, Device::Cpu))],
            None,
        )
    })
    .unwrap();
    assert!(effp_engine::verify::channel_relative_error(&r[0], &p[0]) > 10.0 * diff.max(1e-6));
}

#[test]
fn distilling_the_neck_teaches_the_compacted_student_as_the_masked_one() {
    let fx = setup();
    let (a, b) = masked_and_compacted(&fx, 12, Distill::Neck);
    assert!(b.compacted.is_some(), "the fine-tuning ran compacted");
    assert_eq!(flags(&a.mask), flags(&b.mask));
    // The neck's maps lost channels, and the compacted student is still taught the
    // masked student's loss (on the channels both have).
    for (x, y) in a.history.iter().zip(&b.history).skip(6) {
        assert!(
            x.loss > 0.0 && (x.loss - y.loss).abs() <= 1e-4 * x.loss,
            "step {}: {} vs {}",
            x.step,
            x.loss,
            y.loss
        );
    }
}
