//! The trtexec runner on real trtexec output (tests/trtexec/, see its README): the
//! summary, the exported times, failures, the command line, and the runner end to
//! end against a stand-in trtexec script.

use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use effp_agent::flag::Flag;
use effp_agent::runner::trtexec::{
    RunFiles, TrtexecRunner, command_args, error_lines, failure_message, parse_tensorrt_version,
    parse_throughput, parse_times, shapes_for, timing,
};
use effp_agent::runner::{Runner, RunnerError};
use effp_protocol::{BenchmarkRequest, Precision, Runner as RunnerKind};

fn fixture(name: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("tests/trtexec")
        .join(name)
}

fn read(name: &str) -> String {
    std::fs::read_to_string(fixture(name)).unwrap()
}

fn request(precision: Precision, iterations: u32) -> BenchmarkRequest {
    BenchmarkRequest {
        device: "jetson-xavier-nx".into(),
        precision,
        iterations,
    }
}

#[test]
fn each_version_gives_its_version_and_throughput() {
    let cases = [
        ("trt85-orin-nano-yolox-fp16.log", "8.5.2", 97.8649),
        ("trt86-yolov8s.log", "8.6.1", 215.68),
        ("trt10-fcn-resnet101.log", "10.9.0", 8.66824),
    ];
    for (file, version, qps) in cases {
        let log = read(file);
        assert_eq!(
            parse_tensorrt_version(&log).as_deref(),
            Some(version),
            "{file}"
        );
        assert_eq!(parse_throughput(&log), Some(qps), "{file}");
        assert!(
            error_lines(&log).is_empty(),
            "{file}: {:?}",
            error_lines(&log)
        );
    }
    assert_eq!(
        parse_tensorrt_version(&read("trt84-failed-resize.log")).as_deref(),
        Some("8.4.0")
    );
    assert_eq!(
        parse_tensorrt_version("&&&& PASSED TensorRT.trtexec [TensorRT v101303] [b9] #").as_deref(),
        Some("10.13.3")
    );
    assert_eq!(parse_throughput("no summary"), None);
}

/// (times file, log, summary's GPU compute min and max, latency min and max)
const TIMED: [(&str, &str, [f64; 2], [f64; 2]); 3] = [
    (
        "trt85-times.json",
        "trt85-orin-nano-yolox-fp16.log",
        [10.0343, 10.3575],
        [10.642, 10.9861],
    ),
    (
        "trt86-times.json",
        "trt86-yolov8s.log",
        [4.59161, 4.68684],
        [5.01874, 5.21875],
    ),
    (
        "trt10-times.json",
        "trt10-fcn-resnet101.log",
        [109.522, 114.185],
        [110.946, 115.703],
    ),
];

#[test]
fn exported_times_become_compute_and_end_to_end_percentiles() {
    for (times_file, log_file, compute_range, latency_range) in TIMED {
        let times = parse_times(&read(times_file)).unwrap();
        assert_eq!(times.compute_ms.len(), 20, "{times_file}");
        let t = timing(&times, &read(log_file)).unwrap();
        for (p, [lo, hi]) in [(t.compute, compute_range), (t.end_to_end, latency_range)] {
            assert!(
                p.p50_ms <= p.p90_ms && p.p90_ms <= p.p99_ms,
                "{times_file}: {p:?}"
            );
            for v in [p.p50_ms, p.p99_ms, p.mean_ms] {
                assert!(
                    (lo..=hi).contains(&v),
                    "{times_file}: {v} outside the summary's [{lo}, {hi}]"
                );
            }
        }
        assert!(
            t.end_to_end.mean_ms > t.compute.mean_ms,
            "latency includes the copies"
        );
        assert_eq!(
            t.throughput_per_s,
            parse_throughput(&read(log_file)).unwrap()
        );
    }
    // Without a summary line, the throughput is 1000 / mean latency.
    let times = parse_times(&read("trt86-times.json")).unwrap();
    let t = timing(&times, "").unwrap();
    assert!((t.throughput_per_s - 1000.0 / t.end_to_end.mean_ms).abs() < 1e-9);
}

#[test]
fn bad_exported_times_are_refused() {
    assert!(
        parse_times("[]")
            .unwrap_err()
            .contains("no timed inference")
    );
    assert!(
        parse_times("{\"a\": 1}")
            .unwrap_err()
            .contains("not the JSON array")
    );
    assert!(parse_times("[{\"computeMs\": 1}]").is_err());
}

#[test]
fn a_failed_build_carries_tensorrts_error_lines() {
    let log = read("trt84-failed-resize.log");
    let lines = error_lines(&log);
    assert_eq!(
        lines,
        [
            "[8] Assertion failed: (outDims.nbDims == 1) && \"The scales input must be 1D.\"",
            "Failed to parse onnx file",
            "Parsing model failed",
            "Failed to create engine from model.",
            "Engine set up failed",
            "&&&& FAILED TensorRT.trtexec [TensorRT v8400] # F:\\Libraries\\TensorRT-8.4.0.6\\bin\\trtexec.exe --onnx=crack_onnx.onnx --saveEngine=crack.trt",
        ]
    );
    let message = failure_message(
        Path::new("/w/original.onnx"),
        "failed (exit status 1)",
        &log,
    );
    assert!(
        message
            .starts_with("trtexec failed (exit status 1) for original.onnx: [8] Assertion failed"),
        "{message}"
    );
    assert!(message.contains("Engine set up failed"));
    assert!(
        !message.contains("Finish parsing network model"),
        "info lines are left out: {message}"
    );
    // A log without error lines is quoted by its end.
    let quiet = failure_message(Path::new("m.onnx"), "was killed", "line 1\nline 2\n");
    assert_eq!(
        quiet,
        "trtexec was killed for m.onnx: its last lines:\nline 1\nline 2"
    );
}

#[test]
fn error_lines_keep_continuations_of_an_error() {
    let log = "\
[09/02/2025-12:43:58] [E] [TRT] ModelImporter.cpp:773: input: \"model.9.cv2.conv.weight\"
input: \"/model.9/cv2/conv/_weight_quantizer/Constant_output_0\"
[09/02/2025-12:43:58] [I] Finished parsing network model. Parse time: 0.230179
plain output after an info line
[09/02/2025-12:43:58] [E] Engine set up failed
";
    assert_eq!(
        error_lines(log),
        [
            "[TRT] ModelImporter.cpp:773: input: \"model.9.cv2.conv.weight\"",
            "input: \"/model.9/cv2/conv/_weight_quantizer/Constant_output_0\"",
            "Engine set up failed",
        ]
    );
}

#[test]
fn the_command_line_is_exactly_trtexecs_flags() {
    let files = RunFiles::new(Path::new("/m/pruned.onnx"), Path::new("/w"));
    assert_eq!(
        files,
        RunFiles {
            engine: "/w/pruned.engine".into(),
            times: "/w/pruned.times.json".into(),
            log: "/w/pruned.trtexec.log".into(),
        }
    );
    let args = |precision| {
        command_args(
            Path::new("/m/pruned.onnx"),
            &files,
            &request(precision, 200),
            500,
            None,
        )
    };
    assert_eq!(
        args(Precision::Fp16),
        [
            "--onnx=/m/pruned.onnx",
            "--saveEngine=/w/pruned.engine",
            "--fp16",
            "--warmUp=500",
            "--iterations=200",
            "--duration=0",
            "--exportTimes=/w/pruned.times.json",
        ]
    );
    assert_eq!(args(Precision::Int8)[2], "--int8");
    let fp32 = args(Precision::Fp32);
    assert_eq!(fp32.len(), 6);
    assert!(!fp32.iter().any(|a| a == "--fp16" || a == "--int8"));
    let dynamic = command_args(
        Path::new("/m/pruned.onnx"),
        &files,
        &request(Precision::Fp16, 200),
        500,
        Some("images:1x3x640x640"),
    );
    assert_eq!(dynamic[2], "--shapes=images:1x3x640x640");
}

/// An ONNX model whose input is `dims` (-1: free).
fn model_with_input(dims: &[i64]) -> tract_onnx::pb::ModelProto {
    use tract_onnx::prelude::Framework as _;
    let mut b = effp_testkit::builder::ModelBuilder::new("m", 1);
    let x = b.input("images", dims);
    let y = b.op("Relu", &[&x], vec![]);
    let bytes = b.finish_as(&y, "out", dims);
    tract_onnx::onnx()
        .proto_model_for_read(&mut bytes.as_slice())
        .unwrap()
}

#[test]
fn free_input_dimensions_get_shapes() {
    assert_eq!(shapes_for(&model_with_input(&[1, 3, 640, 640])), None);
    assert_eq!(
        shapes_for(&model_with_input(&[-1, 3, 320, 320])).as_deref(),
        Some("images:1x3x320x320")
    );
}

/// A stand-in trtexec: records its arguments, prints `log`, and (when `times` is
/// given) writes the engine and copies `times` where the flags say; exits `code`.
fn fake_trtexec(dir: &Path, log: &str, times: Option<&str>, code: i32, sleep_s: u32) -> PathBuf {
    let script = dir.join("trtexec");
    let copy = match times {
        Some(times) => format!(
            "[ -n \"$engine\" ] && echo engine > \"$engine\"\n[ -n \"$times\" ] && cp '{}' \"$times\"\n",
            fixture(times).display()
        ),
        None => String::new(),
    };
    let text = format!(
        "#!/bin/sh\nengine=\"\"; times=\"\"\nfor arg in \"$@\"; do\n  case \"$arg\" in\n    \
         --saveEngine=*) engine=\"${{arg#--saveEngine=}}\" ;;\n    \
         --exportTimes=*) times=\"${{arg#--exportTimes=}}\" ;;\n  esac\ndone\n\
         printf '%s\\n' \"$@\" > '{args}'\nsleep {sleep_s}\ncat '{log}'\n{copy}exit {code}\n",
        args = dir.join("args.txt").display(),
        log = fixture(log).display(),
    );
    std::fs::write(&script, text).unwrap();
    std::fs::set_permissions(&script, std::fs::Permissions::from_mode(0o755)).unwrap();
    script
}

#[test]
fn the_runner_times_a_model_with_trtexec() {
    let dir = tempfile::tempdir().unwrap();
    let program = fake_trtexec(
        dir.path(),
        "trt86-yolov8s.log",
        Some("trt86-times.json"),
        0,
        0,
    );
    let runner = TrtexecRunner::new(program, 750);
    assert_eq!(runner.kind(), RunnerKind::Trtexec);
    let model = dir.path().join("original.onnx");
    std::fs::write(&model, b"onnx").unwrap();
    let m = runner
        .measure(
            &model,
            &request(Precision::Fp16, 20),
            dir.path(),
            &Flag::new(),
        )
        .unwrap();
    assert_eq!(m.precision, Precision::Fp16);
    assert_eq!(m.timing.throughput_per_s, 215.68);
    assert!(m.timing.compute.p50_ms > 4.5 && m.timing.end_to_end.p50_ms > m.timing.compute.p50_ms);
    assert_eq!(runner.tensorrt_version().as_deref(), Some("8.6.1"));
    let args = std::fs::read_to_string(dir.path().join("args.txt")).unwrap();
    let expected = format!(
        "--onnx={d}/original.onnx\n--saveEngine={d}/original.engine\n--fp16\n--warmUp=750\n\
         --iterations=20\n--duration=0\n--exportTimes={d}/original.times.json\n",
        d = dir.path().display()
    );
    assert_eq!(args, expected);
}

#[test]
fn a_failing_trtexec_is_a_failure_with_its_error_lines() {
    let dir = tempfile::tempdir().unwrap();
    let program = fake_trtexec(dir.path(), "trt84-failed-resize.log", None, 1, 0);
    let runner = TrtexecRunner::new(program, 500);
    let model = dir.path().join("pruned.onnx");
    let err = runner
        .measure(
            &model,
            &request(Precision::Fp16, 20),
            dir.path(),
            &Flag::new(),
        )
        .unwrap_err();
    let RunnerError::Failed(message) = err else {
        panic!("{err:?}")
    };
    assert!(
        message.starts_with("trtexec failed (exit status 1) for pruned.onnx:"),
        "{message}"
    );
    assert!(message.contains("The scales input must be 1D"), "{message}");
    assert_eq!(runner.tensorrt_version().as_deref(), Some("8.4.0"));

    // Exit status 0 but no engine: still a failure.
    let program = fake_trtexec(dir.path(), "trt85-orin-nano-yolox-fp16.log", None, 0, 0);
    let runner = TrtexecRunner::new(program, 500);
    let err = runner
        .measure(
            &model,
            &request(Precision::Fp16, 20),
            dir.path(),
            &Flag::new(),
        )
        .unwrap_err();
    assert!(err.to_string().contains("built no engine"), "{err}");
}

#[test]
fn a_lost_lease_stops_trtexec() {
    let dir = tempfile::tempdir().unwrap();
    let program = fake_trtexec(
        dir.path(),
        "trt86-yolov8s.log",
        Some("trt86-times.json"),
        0,
        30,
    );
    let runner = TrtexecRunner::new(program, 500);
    let cancel = Flag::new();
    let raiser = cancel.clone();
    std::thread::spawn(move || {
        std::thread::sleep(Duration::from_millis(300));
        raiser.raise();
    });
    let start = Instant::now();
    let err = runner
        .measure(
            &dir.path().join("m.onnx"),
            &request(Precision::Fp16, 20),
            dir.path(),
            &cancel,
        )
        .unwrap_err();
    assert!(matches!(err, RunnerError::Cancelled), "{err:?}");
    assert!(start.elapsed() < Duration::from_secs(10));
}
