//! The CPU runner (tract) on a tiny graph built here and on the Ultralytics fixtures
//! (`make fixtures`; `EFFP_FIXTURES` names their folder).

use std::path::Path;
use std::time::{Duration, Instant};

use effp_agent::flag::Flag;
use effp_agent::runner::cpu::CpuRunner;
use effp_agent::runner::{Measurement, Runner, RunnerError};
use effp_protocol::{BenchmarkRequest, ModelTiming, Percentiles, Precision, Runner as RunnerKind};
use effp_testkit::builder::{ModelBuilder, ints};

fn request(iterations: u32) -> BenchmarkRequest {
    BenchmarkRequest {
        device: "cpu".into(),
        precision: Precision::Fp16,
        iterations,
    }
}

fn measure(model: &Path, iterations: u32) -> Measurement {
    let runner = CpuRunner::new(2, 2);
    assert_eq!(runner.kind(), RunnerKind::Cpu);
    let work = tempfile::tempdir().unwrap();
    runner
        .measure(model, &request(iterations), work.path(), &Flag::new())
        .unwrap_or_else(|e| panic!("{}: {e}", model.display()))
}

fn assert_sound(p: &Percentiles) {
    assert!(p.p50_ms > 0.0, "{p:?}");
    assert!(p.p50_ms <= p.p90_ms && p.p90_ms <= p.p99_ms, "{p:?}");
    assert!(
        p.mean_ms > 0.0 && p.mean_ms <= p.p99_ms.max(p.mean_ms),
        "{p:?}"
    );
}

fn assert_consistent(t: &ModelTiming) {
    assert_sound(&t.compute);
    assert_eq!(t.compute, t.end_to_end, "the CPU has no transfers");
    assert!(
        (t.throughput_per_s - 1000.0 / t.end_to_end.mean_ms).abs() < 1e-6,
        "{t:?}"
    );
}

/// Conv + SiLU + MaxPool + Resize + Concat, with a symbolic batch.
fn tiny_model(dir: &Path) -> std::path::PathBuf {
    let mut b = ModelBuilder::new("tiny", 7);
    let x = b.input("images", &[-1, 3, 32, 32]);
    let c = b.conv(&x, 3, 8, 3, 2, 1);
    let s = b.op("Sigmoid", &[&c], vec![]);
    let silu = b.op("Mul", &[&c, &s], vec![]);
    let pool = b.op(
        "MaxPool",
        &[&silu],
        vec![ints("kernel_shape", &[2, 2]), ints("strides", &[2, 2])],
    );
    let scales = b.constant("scales", &[4], &[1.0, 1.0, 2.0, 2.0]);
    let up = b
        .node(
            "Resize",
            &[&pool, "", &scales],
            1,
            vec![effp_testkit::builder::string("mode", "nearest")],
        )
        .remove(0);
    let cat = b.op(
        "Concat",
        &[&up, &silu],
        vec![effp_testkit::builder::int("axis", 1)],
    );
    let bytes = b.finish_as(&cat, "out", &[-1, 16, 16, 16]);
    let path = dir.join("tiny.onnx");
    std::fs::write(&path, bytes).unwrap();
    path
}

#[test]
fn a_tiny_model_with_a_symbolic_batch_is_timed() {
    let dir = tempfile::tempdir().unwrap();
    let m = measure(&tiny_model(dir.path()), 25);
    assert_eq!(
        m.precision,
        Precision::Fp32,
        "the CPU runner runs fp32 whatever was asked"
    );
    assert_consistent(&m.timing);
}

#[test]
fn the_ultralytics_fixtures_are_timed() {
    for (name, iterations) in [("yolov8t.onnx", 20), ("yolov8n.onnx", 3)] {
        let path = effp_testkit::fixtures::path(name);
        let start = Instant::now();
        let m = measure(&path, iterations);
        assert_consistent(&m.timing);
        eprintln!(
            "{name}: p50 {:.2} ms, p99 {:.2} ms, {:.1}/s ({:.1?} in all)",
            m.timing.compute.p50_ms,
            m.timing.compute.p99_ms,
            m.timing.throughput_per_s,
            start.elapsed()
        );
    }
}

#[test]
fn a_file_that_is_not_onnx_is_a_failure_naming_it() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("broken.onnx");
    std::fs::write(&path, b"not a model").unwrap();
    let err = CpuRunner::new(0, 1)
        .measure(&path, &request(3), dir.path(), &Flag::new())
        .unwrap_err();
    let RunnerError::Failed(message) = err else {
        panic!("{err:?}")
    };
    assert!(message.contains("broken.onnx"), "{message}");
}

#[test]
fn a_lost_lease_stops_the_cpu_runner() {
    let dir = tempfile::tempdir().unwrap();
    let model = tiny_model(dir.path());
    let cancel = Flag::new();
    cancel.raise();
    let start = Instant::now();
    let err = CpuRunner::new(1000, 1)
        .measure(&model, &request(100_000), dir.path(), &cancel)
        .unwrap_err();
    assert!(matches!(err, RunnerError::Cancelled), "{err:?}");
    assert!(start.elapsed() < Duration::from_secs(30));
}
