//! EFFP on the trained fixture detector: it reaches the FLOPs target through the
//! schedule, regrows groups, trains the weights, and its final mask compacts into a
//! network that computes what the masked student computes.

use effp_engine::data::dataset::load;
use effp_engine::prune::Target;
use effp_engine::runtime::Network;
use effp_engine::tch::{self, Device, Kind, Tensor};
use effp_engine::train::effp::{EffpOptions, run};
use effp_graph::channels::{ChannelAnalysis, compact};
use effp_graph::onnx::load_file;
use effp_graph::shape::infer_shapes;
use effp_testkit::fixtures;

#[test]
fn effp_reaches_the_target_with_regrowing_and_compacts_exactly() {
    tch::manual_seed(0);
    let mut model = load_file(&fixtures::path("trained.onnx")).unwrap();
    infer_shapes(&mut model, None).unwrap();
    let analysis = ChannelAnalysis::new(&model.graph);
    let data = load(&fixtures::dir().join("synth")).unwrap();
    let options = EffpOptions {
        steps: 40,
        interval: 4,
        batch: 8,
        ..EffpOptions::default()
    };
    let result = run(
        &model,
        &analysis,
        data.split("train").unwrap(),
        Target::FlopsRatio(0.5),
        &options,
        Device::Cpu,
        |_| {},
    )
    .unwrap();
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
    let (trained, original) = (&result.model.graph, &model.graph);
    let conv = original
        .nodes
        .iter()
        .find(|n| n.op.op_type() == "Conv")
        .unwrap();
    let w = conv.input(1).unwrap();
    assert_ne!(
        trained.constant(w).unwrap().to_f32_vec(),
        original.constant(w).unwrap().to_f32_vec()
    );

    // Masked student == compacted student.
    let masked = Network::new(&result.model, Device::Cpu)
        .unwrap()
        .with_gates(&analysis);
    let gates = masked
        .gate_map()
        .unwrap()
        .gates_for(&result.mask, Device::Cpu);
    let (small, _) = compact(&result.model, &analysis, &result.mask).unwrap();
    let compacted = Network::new(&small, Device::Cpu).unwrap();
    let x = Tensor::rand([2, 3, 128, 128], (Kind::Float, Device::Cpu));
    let a = tch::no_grad(|| masked.forward(&[x.shallow_clone()], Some(&gates))).unwrap();
    let b = tch::no_grad(|| compacted.forward(&[x], None)).unwrap();
    let diff = (&a[0] - &b[0]).abs().max().double_value(&[]) / b[0].abs().max().double_value(&[]);
    assert!(diff <= 1e-4, "{diff}");
}

#[test]
fn without_regrowing_nothing_is_revived() {
    let mut model = load_file(&fixtures::path("trained.onnx")).unwrap();
    infer_shapes(&mut model, None).unwrap();
    let analysis = ChannelAnalysis::new(&model.graph);
    let data = load(&fixtures::dir().join("synth")).unwrap();
    let options = EffpOptions {
        steps: 12,
        interval: 3,
        batch: 4,
        regrow: 0.0,
        ..EffpOptions::default()
    };
    let result = run(
        &model,
        &analysis,
        data.split("train").unwrap(),
        Target::FlopsRatio(0.7),
        &options,
        Device::Cpu,
        |_| {},
    )
    .unwrap();
    assert_eq!(result.history.last().unwrap().regrown, 0);
}
