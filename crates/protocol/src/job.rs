//! The job request: what to prune, to what target, with which settings.

use serde::{Deserialize, Serialize};

use crate::device::DeviceChoice;
use crate::field::FieldError;
use crate::method::Method;
use crate::settings::{PruneOptions, TrainingSpec};

/// What to reach: exactly one of the three.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[serde(deny_unknown_fields)]
pub struct TargetSpec {
    /// Fraction of the original FLOPs to keep, in (0, 1).
    #[serde(skip_serializing_if = "Option::is_none")]
    #[cfg_attr(
        feature = "openapi",
        schema(exclusive_minimum = 0.0, exclusive_maximum = 1.0)
    )]
    pub flops_ratio: Option<f64>,
    /// Absolute FLOPs to keep at most.
    #[serde(skip_serializing_if = "Option::is_none")]
    #[cfg_attr(feature = "openapi", schema(minimum = 1))]
    pub flops: Option<u64>,
    /// Fraction of the original parameters to keep, in (0, 1).
    #[serde(skip_serializing_if = "Option::is_none")]
    #[cfg_attr(
        feature = "openapi",
        schema(exclusive_minimum = 0.0, exclusive_maximum = 1.0)
    )]
    pub params_ratio: Option<f64>,
}

impl TargetSpec {
    /// What is wrong with the target, by path in a job request.
    pub fn errors(&self) -> Vec<FieldError> {
        let mut errors = Vec::new();
        let given = [
            self.flops_ratio.is_some(),
            self.flops.is_some(),
            self.params_ratio.is_some(),
        ]
        .iter()
        .filter(|&&b| b)
        .count();
        if given != 1 {
            errors.push(FieldError::new(
                "/target",
                "give exactly one of flops_ratio, flops, params_ratio",
            ));
        }
        for (name, r) in [
            ("flops_ratio", self.flops_ratio),
            ("params_ratio", self.params_ratio),
        ] {
            if let Some(r) = r
                && !(r > 0.0 && r < 1.0)
            {
                errors.push(FieldError::new(
                    &format!("/target/{name}"),
                    format!("{r} is not between 0 and 1 (exclusive)"),
                ));
            }
        }
        if self.flops == Some(0) {
            errors.push(FieldError::new("/target/flops", "must be positive"));
        }
        errors
    }
}

/// A job request: the model and dataset by id, the method, the target and the
/// settings.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[serde(deny_unknown_fields)]
pub struct JobSpec {
    /// The model's id.
    #[cfg_attr(feature = "openapi", schema(min_length = 1))]
    pub model: String,
    /// A dataset's id: the training images of the trained methods (which need one)
    /// and the labels for mAP before and after (any method).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub dataset: Option<String>,
    /// The method (default: effp with a dataset, l1 without).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub method: Option<Method>,
    /// The target.
    pub target: TargetSpec,
    /// Per-layer limits and the ranking's cost.
    #[serde(default)]
    pub options: PruneOptions,
    /// Schedule and optimiser settings of the trained methods.
    #[serde(default)]
    pub training: TrainingSpec,
    /// Image size as HxW (default: the model's own). Required for a model with free
    /// input sizes (a dynamic-shape export), which is pruned and trained at this size
    /// and keeps its free sizes.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[cfg_attr(
        feature = "openapi",
        schema(pattern = "^[1-9][0-9]{0,4}(x[1-9][0-9]{0,4})?$")
    )]
    pub input_size: Option<String>,
    /// auto, cpu, cuda or cuda:N.
    #[serde(default = "default_device")]
    #[cfg_attr(
        feature = "openapi",
        schema(default = "cpu", pattern = "^(auto|cpu|cuda(:[0-9]+)?)$")
    )]
    pub device: String,
    /// URL the service POSTs the job to when it ends (succeeded, failed or
    /// cancelled), signed (see `effp_protocol::webhook`); http or https, no
    /// credentials in it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[cfg_attr(feature = "openapi", schema(max_length = 2048))]
    pub notify: Option<String>,
    /// Measure the original and the pruned model on a device after pruning: a
    /// benchmark agent of that kind claims the task, and the job waits for it in
    /// phase `benchmark` (it succeeds without it if no agent claims it in time).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub benchmark: Option<crate::BenchmarkRequest>,
}

fn default_device() -> String {
    DeviceChoice::Cpu.to_string()
}

impl JobSpec {
    /// The method the job runs: the one named, else the default for its data.
    pub fn method(&self) -> Method {
        self.method
            .unwrap_or_else(|| Method::default_for(self.dataset.is_some()))
    }

    /// Whether the job trains (a trained method, or l1 fine-tuning on its data).
    pub fn trains(&self) -> bool {
        self.method().needs_data() || (self.dataset.is_some() && self.training.steps > 0)
    }

    /// Every problem with the request that can be told without looking anything
    /// up, by JSON pointer.
    pub fn validate(&self) -> Vec<FieldError> {
        let method = self.method();
        let mut errors = self.target.errors();
        errors.extend(self.options.errors(method));
        if let Some(size) = &self.input_size
            && let Err(e) = size.parse::<effp_graph::shape::InputSize>()
        {
            errors.push(FieldError::new("/input_size", e));
        }
        if self.device.parse::<DeviceChoice>().is_err() {
            errors.push(FieldError::new(
                "/device",
                "must be auto, cpu, cuda or cuda:N",
            ));
        }
        if let Some(url) = &self.notify
            && let Err(e) = crate::webhook::check_url(url)
        {
            errors.push(FieldError::new("/notify", e));
        }
        if method.needs_data() && self.dataset.is_none() {
            errors.push(FieldError::new(
                "/dataset",
                format!(
                    "method {} trains on images from the model's domain: upload them to \
                     /v1/datasets and give the dataset's id",
                    method.as_str()
                ),
            ));
        }
        errors.extend(self.training.errors());
        if let Some(benchmark) = &self.benchmark {
            errors.extend(benchmark.errors("/benchmark"));
        }
        errors
    }
}
