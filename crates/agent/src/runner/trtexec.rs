//! The trtexec runner: builds a TensorRT engine from the ONNX file with TensorRT's
//! `trtexec` and times it on the GPU.
//!
//! trtexec writes every timed inference to `--exportTimes` (a JSON array of records
//! with `computeMs`, the GPU compute time, and `latencyMs`, host-to-device copy +
//! compute + device-to-host copy; the same fields in TensorRT 8.5, 8.6 and 10) and
//! prints `Throughput: N qps` in its summary. The flags used are the same in
//! TensorRT 8.5 to 10.x.

use std::fs::File;
use std::path::{Path, PathBuf};
use std::process::{Command, ExitStatus, Stdio};
use std::sync::Mutex;
use std::time::Duration;

use effp_protocol::benchmark::MAX_REPORT_ERROR_LEN;
use effp_protocol::{BenchmarkRequest, ModelTiming, Percentiles, Precision, Runner as RunnerKind};
use serde::Deserialize;
use tract_onnx::pb;
use tract_onnx::prelude::Framework as _;

use super::{Measurement, Runner, RunnerError};
use crate::child;
use crate::flag::Flag;

/// How often a running trtexec is checked on.
const POLL: Duration = Duration::from_millis(100);
/// Most bytes of TensorRT's error lines a failure message carries.
const MAX_ERROR_TEXT: usize = MAX_REPORT_ERROR_LEN - 512;
/// Lines of the log's end a failure message carries when it has no error lines.
const TAIL_LINES: usize = 15;

/// Times models with TensorRT's trtexec.
#[derive(Debug)]
pub struct TrtexecRunner {
    program: PathBuf,
    warmup_ms: u32,
    version: Mutex<Option<String>>,
}

/// The files of one trtexec run.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RunFiles {
    /// The serialized engine (`--saveEngine`).
    pub engine: PathBuf,
    /// The per-inference times (`--exportTimes`).
    pub times: PathBuf,
    /// trtexec's standard output and error.
    pub log: PathBuf,
}

impl RunFiles {
    /// The files for timing `model` in `work_dir`, named after the model.
    pub fn new(model: &Path, work_dir: &Path) -> Self {
        let stem = model
            .file_stem()
            .map_or_else(|| "model".into(), |s| s.to_string_lossy().into_owned());
        Self {
            engine: work_dir.join(format!("{stem}.engine")),
            times: work_dir.join(format!("{stem}.times.json")),
            log: work_dir.join(format!("{stem}.trtexec.log")),
        }
    }
}

/// trtexec's arguments for timing `model` as `request` asks: fix the inputs' free
/// dimensions (`shapes`, from [`shapes_for`]), build the engine at the requested
/// precision (fp32 needs no flag; int8 uses TensorRT's placeholder scales,
/// right for latency only), warm up for `warmup_ms`, time exactly
/// `request.iterations` inferences (`--duration=0` lifts the default 3 s minimum) and
/// export each one's times.
pub fn command_args(
    model: &Path,
    files: &RunFiles,
    request: &BenchmarkRequest,
    warmup_ms: u32,
    shapes: Option<&str>,
) -> Vec<String> {
    let mut args = vec![
        format!("--onnx={}", model.display()),
        format!("--saveEngine={}", files.engine.display()),
    ];
    if let Some(shapes) = shapes {
        args.push(format!("--shapes={shapes}"));
    }
    match request.precision {
        Precision::Fp16 => args.push("--fp16".into()),
        Precision::Int8 => args.push("--int8".into()),
        Precision::Fp32 => {}
    }
    args.extend([
        format!("--warmUp={warmup_ms}"),
        format!("--iterations={}", request.iterations),
        "--duration=0".into(),
        format!("--exportTimes={}", files.times.display()),
    ]);
    args
}

/// trtexec's `--shapes` value for a model with free input dimensions (e.g.
/// `images:1x3x640x640`), the free ones set as the CPU runner sets them (see
/// [`super::cpu::DEFAULT_IMAGE_DIMS`]); `None` when every input is fixed.
pub fn shapes_for(model: &pb::ModelProto) -> Option<String> {
    let graph = model.graph.as_ref()?;
    let weights: std::collections::HashSet<&str> =
        graph.initializer.iter().map(|t| t.name.as_str()).collect();
    let mut any_free = false;
    let mut specs = Vec::new();
    for input in graph
        .input
        .iter()
        .filter(|i| !weights.contains(i.name.as_str()))
    {
        let Some(pb::type_proto::Value::TensorType(tensor)) =
            input.r#type.as_ref().and_then(|t| t.value.as_ref())
        else {
            continue;
        };
        let dims = tensor.shape.as_ref().map_or(&[][..], |s| &s.dim[..]);
        let rank = dims.len();
        let sizes: Vec<String> = dims
            .iter()
            .enumerate()
            .map(|(i, d)| match d.value {
                Some(pb::tensor_shape_proto::dimension::Value::DimValue(v)) if v > 0 => {
                    v.to_string()
                }
                _ => {
                    any_free = true;
                    let default = if rank == 4 {
                        super::cpu::DEFAULT_IMAGE_DIMS[i]
                    } else {
                        1
                    };
                    default.to_string()
                }
            })
            .collect();
        let name = if input.name.contains([':', ',']) {
            format!("'{}'", input.name)
        } else {
            input.name.clone()
        };
        specs.push(format!("{name}:{}", sizes.join("x")));
    }
    any_free.then(|| specs.join(","))
}

/// [`shapes_for`] the ONNX file at `path`; `None` when it cannot be read (trtexec
/// then says what is wrong with it).
fn shapes_of(path: &Path) -> Option<String> {
    let model = tract_onnx::onnx().proto_model_for_path(path).ok()?;
    shapes_for(&model)
}

/// One timed inference of an `--exportTimes` file (other fields are ignored).
#[derive(Debug, Clone, Copy, Deserialize)]
struct TraceRecord {
    /// GPU compute time.
    #[serde(rename = "computeMs")]
    compute_ms: f64,
    /// Host-to-device copy + compute + device-to-host copy.
    #[serde(rename = "latencyMs")]
    latency_ms: f64,
}

/// The per-inference times of an `--exportTimes` file.
#[derive(Debug, Clone, PartialEq)]
pub struct Times {
    /// GPU compute time of each inference, ms.
    pub compute_ms: Vec<f64>,
    /// Host-to-host latency of each inference, ms.
    pub latency_ms: Vec<f64>,
}

/// Parses an `--exportTimes` file.
pub fn parse_times(json: &str) -> Result<Times, String> {
    let records: Vec<TraceRecord> = serde_json::from_str(json).map_err(|e| {
        format!("trtexec's exported times are not the JSON array of records expected: {e}")
    })?;
    if records.is_empty() {
        return Err("trtexec exported no timed inference".into());
    }
    Ok(Times {
        compute_ms: records.iter().map(|r| r.compute_ms).collect(),
        latency_ms: records.iter().map(|r| r.latency_ms).collect(),
    })
}

/// The throughput in trtexec's summary (`Throughput: 97.8649 qps`).
pub fn parse_throughput(log: &str) -> Option<f64> {
    log.lines().find_map(|line| {
        let rest = line.split_once("Throughput: ")?.1;
        let number = rest
            .strip_suffix("qps")
            .or_else(|| rest.split_once(" qps").map(|(n, _)| n))?;
        number
            .trim()
            .parse::<f64>()
            .ok()
            .filter(|v| v.is_finite() && *v > 0.0)
    })
}

/// The TensorRT version trtexec ran with: its `TensorRT version: 8.6.3` line, else
/// the `[TensorRT v8502]` tag of its first and last lines (`v8502` is 8.5.2,
/// `v100900` is 10.9.0).
pub fn parse_tensorrt_version(log: &str) -> Option<String> {
    let stated = log.lines().find_map(|line| {
        let version = line.split_once("TensorRT version: ")?.1.trim();
        (!version.is_empty()).then(|| version.to_string())
    });
    stated.or_else(|| {
        log.lines().find_map(|line| {
            let tag = line.split_once("[TensorRT v")?.1;
            let digits: String = tag.chars().take_while(char::is_ascii_digit).collect();
            let n: u32 = digits.parse().ok()?;
            let (major, minor) = if n >= 10_000 {
                (n / 10_000, (n / 100) % 100)
            } else {
                (n / 1000, (n / 100) % 10)
            };
            Some(format!("{major}.{minor}.{}", n % 100))
        })
    })
}

/// TensorRT's error lines in a trtexec log: `[E]` lines (timestamp dropped) with
/// their continuation lines, assertion messages, and the closing `&&&& FAILED` line.
pub fn error_lines(log: &str) -> Vec<String> {
    let mut lines = Vec::new();
    let mut in_error = false;
    for line in log.lines() {
        if let Some((severity, rest)) = split_log_line(line) {
            in_error = severity == "E";
            if in_error {
                lines.push(rest.trim_end().to_string());
            }
        } else if line.starts_with("&&&& FAILED") {
            lines.push(line.trim_end().to_string());
            in_error = false;
        } else if line.starts_with("&&&&") {
            in_error = false;
        } else if !line.trim().is_empty()
            && (in_error || line.contains("Assertion failed") || line.starts_with("ERROR"))
        {
            lines.push(line.trim().to_string());
        }
    }
    lines
}

/// `("E", rest)` for `[03/26/2022-11:00:30] [E] rest` (or `[E] rest`).
fn split_log_line(line: &str) -> Option<(&str, &str)> {
    let mut rest = line;
    if rest.starts_with('[')
        && let Some((stamp, after)) = rest[1..].split_once(']')
        && stamp.contains('/')
        && stamp.contains(':')
    {
        rest = after.trim_start();
    }
    let tag = rest.strip_prefix('[')?;
    let (severity, after) = tag.split_once(']')?;
    matches!(severity, "V" | "I" | "W" | "E" | "F").then(|| (severity, after.trim_start()))
}

/// The message of a failed run: what failed, then TensorRT's error lines (or the
/// log's last lines when it printed none).
pub fn failure_message(model: &Path, what: &str, log: &str) -> String {
    let name = model.file_name().map_or_else(
        || model.display().to_string(),
        |n| n.to_string_lossy().into_owned(),
    );
    let errors = error_lines(log);
    let body = if errors.is_empty() {
        let lines: Vec<&str> = log.lines().filter(|l| !l.trim().is_empty()).collect();
        let tail = &lines[lines.len().saturating_sub(TAIL_LINES)..];
        if tail.is_empty() {
            "it printed nothing".to_string()
        } else {
            format!("its last lines:\n{}", tail.join("\n"))
        }
    } else {
        errors.join("\n")
    };
    crate::client::truncate(
        &format!("trtexec {what} for {name}: {body}"),
        MAX_ERROR_TEXT,
    )
}

/// The timings of one run: compute and end-to-end percentiles from the exported
/// times, the throughput from the log (else 1000 / mean latency).
pub fn timing(times: &Times, log: &str) -> Result<ModelTiming, String> {
    let bad =
        || "trtexec exported times that are not finite, non-negative milliseconds".to_string();
    let compute = Percentiles::of(&times.compute_ms).ok_or_else(bad)?;
    let end_to_end = Percentiles::of(&times.latency_ms).ok_or_else(bad)?;
    let throughput_per_s = parse_throughput(log)
        .or_else(|| (end_to_end.mean_ms > 0.0).then(|| 1000.0 / end_to_end.mean_ms))
        .ok_or_else(|| "trtexec printed no throughput and its latencies are zero".to_string())?;
    Ok(ModelTiming {
        compute,
        end_to_end,
        throughput_per_s,
    })
}

impl TrtexecRunner {
    /// A runner for the trtexec at `program`, warming up for `warmup_ms`.
    pub fn new(program: PathBuf, warmup_ms: u32) -> Self {
        Self {
            program,
            warmup_ms,
            version: Mutex::new(None),
        }
    }

    /// Runs trtexec, stopping it when `cancel` is raised.
    fn run(
        &self,
        args: &[String],
        log_path: &Path,
        cancel: &Flag,
    ) -> Result<ExitStatus, RunnerError> {
        let failed = |e: std::io::Error| {
            RunnerError::Failed(format!(
                "cannot run trtexec ({}): {e}",
                self.program.display()
            ))
        };
        let log = File::create(log_path).map_err(failed)?;
        let log_err = log.try_clone().map_err(failed)?;
        tracing::debug!(program = %self.program.display(), ?args, "running trtexec");
        let mut process = Command::new(&self.program)
            .args(args)
            .stdin(Stdio::null())
            .stdout(log)
            .stderr(log_err)
            .spawn()
            .map_err(failed)?;
        let _registered = child::register(process.id());
        loop {
            if let Some(status) = process.try_wait().map_err(failed)? {
                return Ok(status);
            }
            if cancel.wait(POLL) {
                let _ = process.kill();
                let _ = process.wait();
                return Err(RunnerError::Cancelled);
            }
        }
    }
}

impl Runner for TrtexecRunner {
    fn kind(&self) -> RunnerKind {
        RunnerKind::Trtexec
    }

    fn measure(
        &self,
        model: &Path,
        request: &BenchmarkRequest,
        work_dir: &Path,
        cancel: &Flag,
    ) -> Result<Measurement, RunnerError> {
        let files = RunFiles::new(model, work_dir);
        let shapes = shapes_of(model);
        let args = command_args(model, &files, request, self.warmup_ms, shapes.as_deref());
        let status = self.run(&args, &files.log, cancel)?;
        let log = std::fs::read(&files.log)
            .map(|bytes| String::from_utf8_lossy(&bytes).into_owned())
            .unwrap_or_default();
        if let Some(version) = parse_tensorrt_version(&log)
            && let Ok(mut known) = self.version.lock()
        {
            *known = Some(version);
        }
        if !status.success() {
            let what = match status.code() {
                Some(code) => format!("failed (exit status {code})"),
                None => "was killed".to_string(),
            };
            return Err(RunnerError::Failed(failure_message(model, &what, &log)));
        }
        if !files.engine.is_file() {
            return Err(RunnerError::Failed(failure_message(
                model,
                "built no engine",
                &log,
            )));
        }
        let json = std::fs::read_to_string(&files.times).map_err(|e| {
            RunnerError::Failed(failure_message(
                model,
                &format!("wrote no times ({}: {e})", files.times.display()),
                &log,
            ))
        })?;
        let times = parse_times(&json).map_err(RunnerError::Failed)?;
        if times.latency_ms.len() < request.iterations as usize {
            tracing::warn!(
                timed = times.latency_ms.len(),
                asked = request.iterations,
                "trtexec timed fewer inferences than asked"
            );
        }
        let timing = timing(&times, &log).map_err(RunnerError::Failed)?;
        Ok(Measurement {
            timing,
            precision: request.precision,
        })
    }

    fn tensorrt_version(&self) -> Option<String> {
        self.version.lock().ok().and_then(|v| v.clone())
    }
}
