//! The job contract's invariants: defaults are valid, every valid setting survives
//! the JSON a job is stored as, and every invalid one is reported at its own path.

use effp_protocol::{
    Criterion, DeviceChoice, Distill, FieldError, FineTune, JobSpec, Method, PruneOptions, Scope,
    Start, TargetSpec, TrainingSpec,
};
use proptest::prelude::*;

fn training() -> impl Strategy<Value = TrainingSpec> {
    (
        (
            0u32..=1_000_000,
            0.01f64..=1.0,
            1u32..50,
            0.0f64..=1.0,
            1u32..9,
        ),
        (
            1u32..=1024,
            1e-6f64..=1.0,
            any::<u64>(),
            0.0f64..=100.0,
            0.0f64..=1.0,
        ),
        (0usize..4, 0usize..5, 0usize..2, 0usize..2),
    )
        .prop_map(
            |((steps, prune_share, interval, regrow, stages), (batch, lr, seed, lw, mosaic), e)| {
                TrainingSpec {
                    steps,
                    prune_share: Some(prune_share),
                    interval,
                    regrow,
                    criterion: [
                        Some(Criterion::Curvature),
                        Some(Criterion::Taylor),
                        Some(Criterion::Magnitude),
                        None,
                    ][e.0],
                    start: [Start::Full, Start::Target][e.3],
                    stages,
                    distill: [
                        Some(Distill::Heads),
                        Some(Distill::Outputs),
                        Some(Distill::Neck),
                        Some(Distill::Foreground),
                        None,
                    ][e.1],
                    batch,
                    lr,
                    seed,
                    label_weight: lw,
                    mosaic,
                    fine_tune: [FineTune::Compacted, FineTune::Masked][e.2],
                }
            },
        )
}

fn options() -> impl Strategy<Value = PruneOptions> {
    (
        1u32..64,
        proptest::option::of(0.0f64..0.99),
        1u32..=256,
        0.0f64..=2.0,
        0.0f64..=1e6,
        proptest::option::of(prop_oneof![Just(Scope::Global), Just(Scope::Layer)]),
    )
        .prop_map(
            |(min_channels, min_fraction, round_to, cost_exponent, activation_cost, scope)| {
                PruneOptions {
                    min_channels,
                    min_fraction,
                    round_to,
                    cost_exponent,
                    activation_cost,
                    scope,
                }
            },
        )
}

#[test]
fn the_defaults_are_valid_for_every_method() {
    assert!(TrainingSpec::default().errors().is_empty());
    for method in Method::ALL {
        assert!(
            PruneOptions::default().errors(method).is_empty(),
            "{method:?}"
        );
    }
    // An empty JSON object is the defaults, field for field.
    let t: TrainingSpec = serde_json::from_str("{}").unwrap();
    assert_eq!(t, TrainingSpec::default());
    let o: PruneOptions = serde_json::from_str("{}").unwrap();
    assert_eq!(o, PruneOptions::default());
}

#[test]
fn the_default_method_follows_the_data_and_effp_keeps_its_floor() {
    let spec: JobSpec =
        serde_json::from_str(r#"{"model":"m","target":{"flops_ratio":0.5}}"#).unwrap();
    assert_eq!(spec.method(), Method::L1);
    assert!(!spec.trains());
    let spec: JobSpec =
        serde_json::from_str(r#"{"model":"m","dataset":"d","target":{"flops_ratio":0.5}}"#)
            .unwrap();
    assert_eq!(spec.method(), Method::Effp);
    assert!(spec.trains());
    assert_eq!(spec.options.min_fraction_for(Method::Effp), 0.25);
    assert_eq!(spec.options.min_fraction_for(Method::Uniform), 0.0);
    for labelled in [true, false] {
        assert_eq!(Method::Uniform.scope(None, labelled), Ok(Scope::Layer));
        assert!(
            Method::Uniform
                .scope(Some(Scope::Global), labelled)
                .is_err()
        );
        assert_eq!(
            Method::Effp.scope(Some(Scope::Global), labelled),
            Ok(Scope::Global)
        );
        assert_eq!(Method::L1.scope(None, labelled), Ok(Scope::Global));
        assert_eq!(
            spec.training.prune_share_for(Method::Uniform, labelled),
            0.7
        );
    }
    // EFFP learning from labels: per layer, first-order, mask settled early.
    assert_eq!(Method::Effp.scope(None, true), Ok(Scope::Layer));
    assert_eq!(spec.training.prune_share_for(Method::Effp, true), 0.3);
    assert_eq!(
        spec.training.criterion_for(Method::Effp, true),
        Criterion::Taylor
    );
    // Label-free: across the network, curvature, the longer schedule.
    assert_eq!(Method::Effp.scope(None, false), Ok(Scope::Global));
    assert_eq!(spec.training.prune_share_for(Method::Effp, false), 0.7);
    assert_eq!(
        spec.training.criterion_for(Method::Effp, false),
        Criterion::Curvature
    );
    // What a request asks for wins either way.
    let asked: JobSpec = serde_json::from_str(
        r#"{"model":"m","dataset":"d","target":{"flops_ratio":0.5},"training":{"prune_share":0.5,"criterion":"magnitude"}}"#,
    )
    .unwrap();
    for labelled in [true, false] {
        assert_eq!(asked.training.prune_share_for(Method::Effp, labelled), 0.5);
        assert_eq!(asked.training.prune_share_for(Method::Sfp, labelled), 0.5);
        assert_eq!(
            asked.training.criterion_for(Method::Effp, labelled),
            Criterion::Magnitude
        );
    }
}

#[test]
fn a_field_error_names_the_flag_of_the_same_setting() {
    assert_eq!(
        FieldError::new("/training/prune_share", "x").flag(),
        "--prune-share"
    );
    assert_eq!(
        FieldError::new("/options/activation_cost", "x").flag(),
        "--activation-cost"
    );
}

#[test]
fn devices_parse_and_print_the_same() {
    for text in ["auto", "cpu", "cuda:0", "cuda:3"] {
        assert_eq!(text.parse::<DeviceChoice>().unwrap().to_string(), text);
    }
    assert_eq!("cuda".parse::<DeviceChoice>(), Ok(DeviceChoice::Cuda(0)));
    assert!("tpu".parse::<DeviceChoice>().is_err());
}

#[test]
fn an_invalid_job_lists_every_bad_field() {
    let spec: JobSpec = serde_json::from_str(
        r#"{"model":"m","method":"uniform","target":{"flops_ratio":1.5,"flops":10},
            "options":{"round_to":0,"activation_cost":-1,"scope":"global","min_fraction":1},
            "training":{"batch":0,"lr":-1,"prune_share":0,"mosaic":1.5},
            "device":"tpu","input_size":"0x0"}"#,
    )
    .unwrap();
    let mut paths: Vec<String> = spec.validate().into_iter().map(|e| e.path).collect();
    paths.sort();
    assert_eq!(
        paths,
        [
            "/dataset",
            "/device",
            "/input_size",
            "/options/activation_cost",
            "/options/min_fraction",
            "/options/round_to",
            "/options/scope",
            "/target",
            "/target/flops_ratio",
            "/training/batch",
            "/training/lr",
            "/training/mosaic",
            "/training/prune_share",
        ]
    );
}

proptest! {
    /// Valid settings pass and come back unchanged from the JSON a job is stored as.
    #[test]
    fn valid_settings_pass_and_survive_json(t in training(), o in options(), m in 0usize..6) {
        let method = Method::ALL[m];
        prop_assert!(t.errors().is_empty(), "{:?}", t.errors());
        let scope_fits = method.scope(o.scope, true).is_ok();
        prop_assert_eq!(o.errors(method).is_empty(), scope_fits);
        let spec = JobSpec {
            model: "m".into(),
            dataset: Some("d".into()),
            method: Some(method),
            target: TargetSpec { flops_ratio: Some(0.5), ..TargetSpec::default() },
            options: o,
            training: t,
            input_size: None,
            device: "cpu".into(),
            notify: Some("https://hooks.example.com/effp".into()),
            benchmark: (m % 2 == 0).then(|| effp_protocol::BenchmarkRequest {
                device: "jetson-xavier-nx".into(),
                precision: effp_protocol::Precision::Int8,
                iterations: 50,
            }),
        };
        let back: JobSpec = serde_json::from_str(&serde_json::to_string(&spec).unwrap()).unwrap();
        prop_assert_eq!(back, spec);
    }

    /// One setting out of range is reported at its own path, and only there.
    #[test]
    fn one_bad_setting_is_reported_at_its_path(t in training(), which in 0usize..7, by in 1.0f64..10.0) {
        let mut t = t;
        let path = match which {
            0 => { t.steps = 1_000_000 + by as u32; "/training/steps" }
            1 => { t.prune_share = Some(1.0 + by); "/training/prune_share" }
            2 => { t.regrow = -by; "/training/regrow" }
            3 => { t.batch = 1024 + by as u32; "/training/batch" }
            4 => { t.lr = 1.0 + by; "/training/lr" }
            5 => { t.label_weight = 100.0 + by; "/training/label_weight" }
            _ => { t.mosaic = 1.0 + by; "/training/mosaic" }
        };
        let errors = t.errors();
        prop_assert_eq!(errors.len(), 1, "{:?}", errors);
        prop_assert_eq!(errors[0].path.as_str(), path);
    }
}
