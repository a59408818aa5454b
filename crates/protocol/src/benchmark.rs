//! Measured latency on a device: what a job (or a later request) asks a benchmark
//! agent to measure, and what the agent reports back. The same types serve the API,
//! the queue of benchmark tasks and `effp-agent`.

use serde::{Deserialize, Serialize};

use crate::FieldError;

/// Iterations a benchmark times unless it asks otherwise.
pub const DEFAULT_ITERATIONS: u32 = 200;
/// Most iterations one benchmark may ask for.
pub const MAX_ITERATIONS: u32 = 100_000;
/// Longest device kind name.
pub const MAX_DEVICE_KIND_LEN: usize = 64;

/// Numeric precision an engine is built at.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[serde(rename_all = "lowercase")]
pub enum Precision {
    /// Half precision (TensorRT's usual deployment choice).
    #[default]
    Fp16,
    /// Single precision.
    Fp32,
    /// 8-bit integers (TensorRT calibrates without data: latency only, not accuracy).
    Int8,
}

/// What to measure: on which kind of device, at which precision, how many times.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[serde(deny_unknown_fields)]
pub struct BenchmarkRequest {
    /// The kind of device, as agents register it (`jetson-xavier-nx`, `cpu`, …).
    #[cfg_attr(
        feature = "openapi",
        schema(example = "jetson-xavier-nx", pattern = "^[a-z0-9][a-z0-9-]{0,63}$")
    )]
    pub device: String,
    /// Precision of the engine.
    #[serde(default)]
    pub precision: Precision,
    /// Timed runs of each model (after the warm-up).
    #[serde(default = "default_iterations")]
    #[cfg_attr(feature = "openapi", schema(minimum = 1, maximum = 100000))]
    pub iterations: u32,
}

fn default_iterations() -> u32 {
    DEFAULT_ITERATIONS
}

impl BenchmarkRequest {
    /// Every bad field, by its path under `at` (the request's place in a document,
    /// e.g. `/benchmark`).
    pub fn errors(&self, at: &str) -> Vec<FieldError> {
        let mut errors = Vec::new();
        if !is_device_kind(&self.device) {
            errors.push(FieldError::new(
                &format!("{at}/device"),
                format!(
                    "must be a device kind of 1 to {MAX_DEVICE_KIND_LEN} lower-case letters, digits and '-' \
                     (e.g. jetson-xavier-nx or cpu)"
                ),
            ));
        }
        if !(1..=MAX_ITERATIONS).contains(&self.iterations) {
            errors.push(FieldError::new(
                &format!("{at}/iterations"),
                format!("must be in [1, {MAX_ITERATIONS}], got {}", self.iterations),
            ));
        }
        errors
    }
}

/// Whether `kind` names a device kind: lower-case letters, digits and `-`, not
/// starting with `-`.
pub fn is_device_kind(kind: &str) -> bool {
    (1..=MAX_DEVICE_KIND_LEN).contains(&kind.len())
        && !kind.starts_with('-')
        && kind
            .bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
}

/// How an agent measured.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[serde(rename_all = "lowercase")]
pub enum Runner {
    /// TensorRT's `trtexec` (an engine built from the ONNX file on the device).
    Trtexec,
    /// The agent's built-in CPU runtime.
    Cpu,
}

/// Percentiles of many timed runs, in milliseconds.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct Percentiles {
    /// Median.
    pub p50_ms: f64,
    /// 90th percentile.
    pub p90_ms: f64,
    /// 99th percentile.
    pub p99_ms: f64,
    /// Mean.
    pub mean_ms: f64,
}

impl Percentiles {
    /// The percentiles of `samples` (milliseconds, any order); `None` when empty or
    /// when a sample is not a finite, non-negative time.
    pub fn of(samples: &[f64]) -> Option<Self> {
        if samples.is_empty() || samples.iter().any(|s| !s.is_finite() || *s < 0.0) {
            return None;
        }
        let mut sorted = samples.to_vec();
        sorted.sort_by(f64::total_cmp);
        // Nearest rank: the smallest sample with at least p of them at or below it.
        let rank = |p: f64| {
            let k = (p * sorted.len() as f64).ceil() as usize;
            sorted[k.clamp(1, sorted.len()) - 1]
        };
        Some(Self {
            p50_ms: rank(0.50),
            p90_ms: rank(0.90),
            p99_ms: rank(0.99),
            mean_ms: sorted.iter().sum::<f64>() / sorted.len() as f64,
        })
    }
}

/// One model's timings on the device.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct ModelTiming {
    /// Time of the inference itself (GPU compute time with trtexec).
    pub compute: Percentiles,
    /// From input on the host to output on the host.
    pub end_to_end: Percentiles,
    /// Inferences per second.
    pub throughput_per_s: f64,
}

/// What an agent says about the device it measured on.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct DeviceFacts {
    /// The device kind the agent registered with.
    #[cfg_attr(feature = "openapi", schema(pattern = "^[a-z0-9][a-z0-9-]{0,63}$"))]
    pub kind: String,
    /// Board or CPU model.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[cfg_attr(feature = "openapi", schema(max_length = 256))]
    pub model: Option<String>,
    /// L4T release (Jetson).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[cfg_attr(feature = "openapi", schema(max_length = 256))]
    pub l4t: Option<String>,
    /// JetPack release (Jetson).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[cfg_attr(feature = "openapi", schema(max_length = 256))]
    pub jetpack: Option<String>,
    /// TensorRT version.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[cfg_attr(feature = "openapi", schema(max_length = 256))]
    pub tensorrt: Option<String>,
    /// `nvpmodel` power mode (Jetson).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[cfg_attr(feature = "openapi", schema(max_length = 256))]
    pub power_mode: Option<String>,
    /// Whether `jetson_clocks` pinned the clocks (Jetson).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub jetson_clocks: Option<bool>,
}

/// What a benchmark measured: both models under the same settings.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct BenchmarkResult {
    /// What was asked.
    pub request: BenchmarkRequest,
    /// How it was measured.
    pub runner: Runner,
    /// The precision the engines ran at.
    pub precision: Precision,
    /// Where it was measured.
    pub device: DeviceFacts,
    /// The original model.
    pub original: ModelTiming,
    /// The pruned model.
    pub pruned: ModelTiming,
}

impl BenchmarkResult {
    /// How many times faster the pruned model's median end-to-end latency is.
    pub fn speedup(&self) -> f64 {
        self.original.end_to_end.p50_ms / self.pruned.end_to_end.p50_ms
    }
}

/// Longest an agent's claim may wait for a task, in seconds (a long poll).
pub const MAX_CLAIM_WAIT_S: u32 = 60;
/// Longest error message a report may carry, in bytes.
pub const MAX_REPORT_ERROR_LEN: usize = 8192;
/// Longest agent name or device fact, in bytes.
pub const MAX_AGENT_TEXT_LEN: usize = 256;

/// An agent asking for a benchmark task (`POST /v1/agent/claim`): who it is, what
/// device it measures on, and how long it will wait for work.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[serde(deny_unknown_fields)]
pub struct ClaimRequest {
    /// The agent's name, unique among the agents sharing a key (e.g. the host name).
    #[cfg_attr(feature = "openapi", schema(min_length = 1, max_length = 256))]
    pub agent: String,
    /// The device it measures on; `facts.kind` is the device kind it claims for.
    pub facts: DeviceFacts,
    /// Seconds to wait for a task before answering 204 (0: answer at once).
    #[serde(default)]
    #[cfg_attr(feature = "openapi", schema(maximum = 60))]
    pub wait_s: u32,
}

impl ClaimRequest {
    /// Every bad field, by JSON pointer.
    pub fn errors(&self) -> Vec<FieldError> {
        let mut errors = Vec::new();
        if self.agent.is_empty() || self.agent.len() > MAX_AGENT_TEXT_LEN {
            errors.push(FieldError::new(
                "/agent",
                format!("must be 1 to {MAX_AGENT_TEXT_LEN} bytes"),
            ));
        }
        if !is_device_kind(&self.facts.kind) {
            errors.push(FieldError::new(
                "/facts/kind",
                format!(
                    "must be a device kind of 1 to {MAX_DEVICE_KIND_LEN} lower-case letters, digits and '-'"
                ),
            ));
        }
        if self.facts.texts().any(|t| t.len() > MAX_AGENT_TEXT_LEN) {
            errors.push(FieldError::new(
                "/facts",
                format!("each fact must be at most {MAX_AGENT_TEXT_LEN} bytes"),
            ));
        }
        if self.wait_s > MAX_CLAIM_WAIT_S {
            errors.push(FieldError::new(
                "/wait_s",
                format!("must be at most {MAX_CLAIM_WAIT_S}, got {}", self.wait_s),
            ));
        }
        errors
    }
}

/// A benchmark task an agent holds: what to measure, and the lease it must renew.
/// The models are downloaded from `/v1/agent/benchmarks/{id}/original` and
/// `/pruned`, passing the same `attempt`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct BenchmarkTask {
    /// The benchmark's id (`bm_…`).
    pub id: String,
    /// The job whose models it measures.
    pub job: String,
    /// This claim's number: every later call for the task passes it, and a call
    /// with an older one (the lease ran out and another agent claimed) is refused.
    pub attempt: u32,
    /// What to measure.
    pub request: BenchmarkRequest,
    /// Seconds the lease lasts; renew well before (`POST …/lease`).
    pub lease_s: u32,
    /// Bytes of the original model.
    pub original_bytes: u64,
    /// Bytes of the pruned model.
    pub pruned_bytes: u64,
}

/// Which claim of a task a call is for (`POST /v1/agent/benchmarks/{id}/lease`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[serde(deny_unknown_fields)]
pub struct LeaseRenewal {
    /// The claim's `attempt`.
    pub attempt: u32,
}

/// What an agent reports for a task it holds (`POST
/// /v1/agent/benchmarks/{id}/report`).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[serde(deny_unknown_fields)]
pub struct BenchmarkReport {
    /// The claim's `attempt`.
    pub attempt: u32,
    /// How it measured.
    pub runner: Runner,
    /// The device, as it is now.
    pub device: DeviceFacts,
    /// Both models measured, or why not.
    pub outcome: ReportOutcome,
}

/// Both models measured, or why they could not be.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[serde(rename_all = "lowercase", deny_unknown_fields)]
pub enum ReportOutcome {
    /// Both models measured under the same settings.
    Measured(Measurements),
    /// The benchmark could not be made (e.g. TensorRT rejected an op).
    Failed(RunnerFailure),
}

/// Both models' timings, measured under the same settings.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[serde(deny_unknown_fields)]
pub struct Measurements {
    /// The precision the engines ran at (the CPU runner runs fp32 whatever was
    /// asked).
    pub precision: Precision,
    /// The original model.
    pub original: ModelTiming,
    /// The pruned model.
    pub pruned: ModelTiming,
}

/// Why a benchmark could not be made.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[serde(deny_unknown_fields)]
pub struct RunnerFailure {
    /// What went wrong, in the runner's words.
    pub error: String,
}

impl BenchmarkReport {
    /// Every bad field, by JSON pointer: timings must be finite, non-negative and
    /// ordered, the error short and the facts within bounds.
    pub fn errors(&self) -> Vec<FieldError> {
        let mut errors = Vec::new();
        if !is_device_kind(&self.device.kind) {
            errors.push(FieldError::new("/device/kind", "must be a device kind"));
        }
        if self.device.texts().any(|t| t.len() > MAX_AGENT_TEXT_LEN) {
            errors.push(FieldError::new(
                "/device",
                format!("each fact must be at most {MAX_AGENT_TEXT_LEN} bytes"),
            ));
        }
        match &self.outcome {
            ReportOutcome::Measured(Measurements {
                original, pruned, ..
            }) => {
                for (name, timing) in [("original", original), ("pruned", pruned)] {
                    if let Some(why) = timing.problem() {
                        errors.push(FieldError::new(&format!("/outcome/measured/{name}"), why));
                    }
                }
            }
            ReportOutcome::Failed(RunnerFailure { error }) => {
                if error.is_empty() || error.len() > MAX_REPORT_ERROR_LEN {
                    errors.push(FieldError::new(
                        "/outcome/failed/error",
                        format!("must be 1 to {MAX_REPORT_ERROR_LEN} bytes"),
                    ));
                }
            }
        }
        errors
    }
}

impl Percentiles {
    /// What is wrong with these percentiles, if anything.
    fn problem(&self) -> Option<String> {
        let all = [self.p50_ms, self.p90_ms, self.p99_ms, self.mean_ms];
        if all.iter().any(|v| !v.is_finite() || *v < 0.0) {
            return Some("times must be finite and non-negative".into());
        }
        (self.p50_ms > self.p90_ms || self.p90_ms > self.p99_ms)
            .then(|| "percentiles must satisfy p50 <= p90 <= p99".into())
    }
}

impl ModelTiming {
    /// What is wrong with these timings, if anything.
    fn problem(&self) -> Option<String> {
        self.compute
            .problem()
            .or_else(|| self.end_to_end.problem())
            .or_else(|| {
                (!self.throughput_per_s.is_finite() || self.throughput_per_s <= 0.0)
                    .then(|| "throughput must be finite and positive".into())
            })
    }
}

impl DeviceFacts {
    /// Every free-text fact, to bound their sizes.
    fn texts(&self) -> impl Iterator<Item = &str> {
        [
            &self.model,
            &self.l4t,
            &self.jetpack,
            &self.tensorrt,
            &self.power_mode,
        ]
        .into_iter()
        .filter_map(|t| t.as_deref())
    }
}

/// Where a benchmark stands.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[serde(rename_all = "lowercase")]
pub enum BenchmarkState {
    /// Waiting for an agent of its device kind.
    Queued,
    /// An agent holds it.
    Running,
    /// Both models measured.
    Succeeded,
    /// The agent could not measure (its error says why).
    Failed,
    /// No agent of its kind claimed it in time.
    Expired,
}

impl BenchmarkState {
    /// The state's name, as records spell it.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Queued => "queued",
            Self::Running => "running",
            Self::Succeeded => "succeeded",
            Self::Failed => "failed",
            Self::Expired => "expired",
        }
    }

    /// The state a record spells `s`.
    pub fn parse(s: &str) -> Option<Self> {
        [
            Self::Queued,
            Self::Running,
            Self::Succeeded,
            Self::Failed,
            Self::Expired,
        ]
        .into_iter()
        .find(|state| state.as_str() == s)
    }

    /// Whether it has ended.
    pub fn is_final(self) -> bool {
        matches!(self, Self::Succeeded | Self::Failed | Self::Expired)
    }
}

/// A benchmark as a job shows it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct BenchmarkView {
    /// The benchmark's id (`bm_…`).
    pub id: String,
    /// What was asked.
    pub request: BenchmarkRequest,
    /// Where it stands.
    pub state: BenchmarkState,
    /// When it was asked for (RFC 3339).
    pub created_at: String,
    /// Claims so far (a claim whose agent died is followed by another).
    pub attempts: u32,
    /// What was measured, once it succeeded.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub result: Option<BenchmarkResult>,
    /// How many times faster the pruned model's median end-to-end latency is.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub speedup: Option<f64>,
    /// Why it failed or expired.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn a_request_names_every_bad_field_and_defaults_the_rest() {
        let request: BenchmarkRequest =
            serde_json::from_str(r#"{"device": "jetson-xavier-nx"}"#).unwrap();
        assert_eq!(request.precision, Precision::Fp16);
        assert_eq!(request.iterations, DEFAULT_ITERATIONS);
        assert!(request.errors("/benchmark").is_empty());
        let bad = BenchmarkRequest {
            device: "Jetson NX".into(),
            precision: Precision::Int8,
            iterations: 0,
        };
        let paths: Vec<_> = bad
            .errors("/benchmark")
            .into_iter()
            .map(|e| e.path)
            .collect();
        assert_eq!(paths, ["/benchmark/device", "/benchmark/iterations"]);
        assert!(
            serde_json::from_str::<BenchmarkRequest>(r#"{"device": "cpu", "runs": 3}"#).is_err()
        );
    }

    #[test]
    fn percentiles_take_the_nearest_rank() {
        let samples: Vec<f64> = (1..=100).rev().map(f64::from).collect();
        let p = Percentiles::of(&samples).unwrap();
        assert_eq!((p.p50_ms, p.p90_ms, p.p99_ms), (50.0, 90.0, 99.0));
        assert_eq!(p.mean_ms, 50.5);
        assert_eq!(Percentiles::of(&[7.0]).unwrap().p99_ms, 7.0);
        assert!(Percentiles::of(&[]).is_none());
        assert!(Percentiles::of(&[1.0, f64::NAN]).is_none());
    }

    fn timing(ms: f64) -> ModelTiming {
        let p = Percentiles::of(&[ms, ms * 1.1, ms * 1.5]).unwrap();
        ModelTiming {
            compute: p,
            end_to_end: p,
            throughput_per_s: 1000.0 / p.mean_ms,
        }
    }

    fn report() -> BenchmarkReport {
        BenchmarkReport {
            attempt: 1,
            runner: Runner::Trtexec,
            device: DeviceFacts {
                kind: "jetson-xavier-nx".into(),
                tensorrt: Some("8.5.2".into()),
                ..DeviceFacts::default()
            },
            outcome: ReportOutcome::Measured(Measurements {
                precision: Precision::Fp16,
                original: timing(10.0),
                pruned: timing(6.0),
            }),
        }
    }

    #[test]
    fn a_report_names_every_bad_field() {
        assert!(report().errors().is_empty());
        let paths = |r: &BenchmarkReport| -> Vec<String> {
            r.errors().into_iter().map(|e| e.path).collect()
        };
        let measured = |edit: fn(&mut ModelTiming, &mut ModelTiming)| {
            let mut r = report();
            if let ReportOutcome::Measured(Measurements {
                original, pruned, ..
            }) = &mut r.outcome
            {
                edit(original, pruned);
            }
            r
        };
        let negative = measured(|o, _| o.end_to_end.p50_ms = -1.0);
        assert_eq!(paths(&negative), ["/outcome/measured/original"]);
        let unordered = measured(|_, p| p.compute.p90_ms = p.compute.p99_ms + 1.0);
        assert_eq!(paths(&unordered), ["/outcome/measured/pruned"]);
        let nan = measured(|o, p| {
            o.compute.mean_ms = f64::NAN;
            p.throughput_per_s = 0.0;
        });
        assert_eq!(
            paths(&nan),
            ["/outcome/measured/original", "/outcome/measured/pruned"]
        );
        let mut failed = report();
        failed.outcome = ReportOutcome::Failed(RunnerFailure {
            error: String::new(),
        });
        failed.device.kind = "Jetson".into();
        failed.device.model = Some("x".repeat(MAX_AGENT_TEXT_LEN + 1));
        assert_eq!(
            paths(&failed),
            ["/device/kind", "/device", "/outcome/failed/error"]
        );
        // The wire form is what agents send.
        let text = serde_json::to_string(&report()).unwrap();
        assert!(
            text.contains(r#""outcome":{"measured":{"precision":"fp16""#),
            "{text}"
        );
        assert_eq!(
            serde_json::from_str::<BenchmarkReport>(&text).unwrap(),
            report()
        );
    }

    #[test]
    fn a_claim_names_every_bad_field() {
        let claim = ClaimRequest {
            agent: "nx-01".into(),
            facts: DeviceFacts {
                kind: "cpu".into(),
                ..DeviceFacts::default()
            },
            wait_s: MAX_CLAIM_WAIT_S,
        };
        assert!(claim.errors().is_empty());
        let bad = ClaimRequest {
            agent: String::new(),
            facts: DeviceFacts {
                kind: "-cpu".into(),
                power_mode: Some("m".repeat(MAX_AGENT_TEXT_LEN + 1)),
                ..DeviceFacts::default()
            },
            wait_s: MAX_CLAIM_WAIT_S + 1,
        };
        let paths: Vec<_> = bad.errors().into_iter().map(|e| e.path).collect();
        assert_eq!(paths, ["/agent", "/facts/kind", "/facts", "/wait_s"]);
    }

    proptest! {
        /// Percentiles are samples, in order, and the mean lies between the extremes.
        #[test]
        fn percentiles_are_ordered_samples(samples in proptest::collection::vec(0.0f64..1e4, 1..300)) {
            let p = Percentiles::of(&samples).unwrap();
            for v in [p.p50_ms, p.p90_ms, p.p99_ms] {
                prop_assert!(samples.contains(&v));
            }
            prop_assert!(p.p50_ms <= p.p90_ms && p.p90_ms <= p.p99_ms);
            let (lo, hi) = samples.iter().fold((f64::MAX, f64::MIN), |(a, b), &s| (a.min(s), b.max(s)));
            prop_assert!(lo - 1e-9 <= p.mean_ms && p.mean_ms <= hi + 1e-9);
            let below = samples.iter().filter(|&&s| s <= p.p50_ms).count();
            prop_assert!(below * 2 >= samples.len());
        }

        /// Device kinds are exactly the names agents and requests may use.
        #[test]
        fn device_kinds_are_plain_names(kind in "[a-zA-Z0-9 _./-]{0,70}") {
            let plain = !kind.is_empty() && kind.len() <= MAX_DEVICE_KIND_LEN && !kind.starts_with('-')
                && kind.chars().all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '-');
            prop_assert_eq!(is_device_kind(&kind), plain);
        }
    }
}
