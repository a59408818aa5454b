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
        schema(example = "jetson-xavier-nx", max_length = 64)
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
    pub kind: String,
    /// Board or CPU model.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub model: Option<String>,
    /// L4T release (Jetson).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub l4t: Option<String>,
    /// JetPack release (Jetson).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub jetpack: Option<String>,
    /// TensorRT version.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tensorrt: Option<String>,
    /// `nvpmodel` power mode (Jetson).
    #[serde(default, skip_serializing_if = "Option::is_none")]
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
