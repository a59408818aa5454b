//! A job's memory, estimated before it runs: jobs that could not fit in the worker
//! process's budget (`EFFP_JOB_MEMORY_LIMIT`) are refused when submitted, with the
//! largest input size and batch that would fit.

use axum::http::StatusCode;

use super::AppState;
use super::api::jobs::{JobSpec, field};
use super::limits::ByteSize;
use super::problem::Problem;
use effp_store::ModelRecord;

/// Private memory a worker process holds besides the job's tensors: libtorch's own
/// allocations, the dataset index, evaluation buffers and the allocator's slack
/// (about 215 MiB measured on the fixture detector, with room to spare).
const RUNTIME_BYTES: f64 = 320.0 * (1 << 20) as f64;
/// Copies of the weights alive while training: the student, its gradients, the
/// optimiser's two moments, the frozen teacher and the masked/compacted pair
/// checked at the end.
const WEIGHT_COPIES: f64 = 7.0;
/// Bytes per activation element per image of a training step: the student's
/// activations kept for the backward pass, their gradients, the teacher's forward
/// pass and the gates, in float32. Measured: about 4.3 on the fixture detector
/// (batch 2 → 16 adds 71 MiB for 1.21 M elements per image; docs/benchmarks.md);
/// this keeps a margin of three for other architectures and fragmentation.
const TRAIN_BYTES_PER_ELEMENT: f64 = 12.0;
/// Bytes per activation element per image when a network only runs forward
/// (checking the compacted model, scoring mAP): float32 and the libtorch buffers
/// that are alive at once.
const INFER_BYTES_PER_ELEMENT: f64 = 6.0;
/// Images per batch when the pipeline only runs forward.
const INFER_BATCH: f64 = 8.0;

/// The sizes a job's memory depends on.
#[derive(Debug, Clone, Copy)]
pub struct Workload {
    /// Sum of every node's output elements for one image at the job's input size.
    pub activation_elements: f64,
    /// Parameters of the model.
    pub params: f64,
    /// Images per training step.
    pub batch: f64,
    /// Whether the job trains (or only prunes once and checks).
    pub trains: bool,
}

/// Bytes a worker process is expected to use at most for `w`.
pub fn estimate(w: &Workload) -> f64 {
    let per_image = if w.trains {
        (TRAIN_BYTES_PER_ELEMENT * w.batch.max(1.0)).max(INFER_BYTES_PER_ELEMENT * INFER_BATCH)
    } else {
        INFER_BYTES_PER_ELEMENT * INFER_BATCH
    };
    RUNTIME_BYTES + WEIGHT_COPIES * 4.0 * w.params + per_image * w.activation_elements
}

/// The activation size of a model per image, and the input it was measured at, as
/// recorded at upload (`inspect.activations`).
fn activations(model: &ModelRecord) -> Option<(f64, f64, f64)> {
    let a = &model.inspect["activations"];
    Some((
        a["elements_per_image"].as_f64()?,
        a["input_height"].as_f64()?,
        a["input_width"].as_f64()?,
    ))
}

/// Refuses (422) a job whose estimated memory is over the job memory limit, naming
/// the fields to change and how far.
pub async fn check_job(
    state: &AppState,
    model: &ModelRecord,
    spec: &JobSpec,
) -> Result<(), Problem> {
    let Some((elements, height, width)) = activations(model) else {
        // A model recorded before uploads measured activations: the limit is
        // still enforced while the job runs.
        return Ok(());
    };
    let (h, w) = match spec
        .input_size
        .as_deref()
        .and_then(|s| s.parse::<effp_graph::shape::InputSize>().ok())
    {
        Some(size) => (size.height as f64, size.width as f64),
        None => (height, width),
    };
    let per_pixel = elements / (height * width).max(1.0);
    let trains = spec.trains();
    let params = model.inspect["totals"]["params"].as_f64().unwrap_or(0.0);
    let workload = Workload {
        activation_elements: per_pixel * h * w,
        params,
        batch: f64::from(spec.training.batch),
        trains,
    };
    let need = estimate(&workload);
    let limit = state.job_memory_limit as f64;
    if need <= limit {
        return Ok(());
    }
    // How far the job could go: the largest square input at this batch, and the
    // largest batch at this input.
    let per_element = estimate(&Workload {
        activation_elements: 1.0,
        ..workload
    }) - estimate(&Workload {
        activation_elements: 0.0,
        ..workload
    });
    let fixed = estimate(&Workload {
        activation_elements: 0.0,
        ..workload
    });
    let room = (limit - fixed).max(0.0);
    let max_pixels = room / per_element / per_pixel.max(1e-9);
    let side = (max_pixels.sqrt() / 32.0).floor() * 32.0;
    let mut errors = Vec::new();
    let summary = format!(
        "the job needs about {} of memory, more than the job memory limit of {} (EFFP_JOB_MEMORY_LIMIT)",
        ByteSize(need as u64),
        ByteSize(state.job_memory_limit)
    );
    let size_hint = if side >= 32.0 {
        format!("at most about {side}x{side} fits at this batch")
    } else {
        "no input size fits at this batch".to_string()
    };
    errors.push(field(
        "/input_size",
        format!("{}x{} is too large: {size_hint}", h, w),
    ));
    if trains {
        let one = estimate(&Workload {
            batch: 1.0,
            ..workload
        });
        let per_batch = estimate(&Workload {
            batch: 2.0,
            ..workload
        }) - one;
        let max_batch = if one <= limit {
            1 + ((limit - one) / per_batch.max(1.0)).floor() as u64
        } else {
            0
        };
        errors.push(field(
            "/training/batch",
            if max_batch > 0 {
                format!(
                    "{} images a step is too many at this size: at most {max_batch} fit",
                    spec.training.batch
                )
            } else {
                "even one image a step does not fit at this size".to_string()
            },
        ));
    }
    let mut p = Problem::new(
        StatusCode::UNPROCESSABLE_ENTITY,
        "over-memory-budget",
        summary,
    );
    p.errors = errors;
    Err(p)
}

#[cfg(test)]
mod tests {
    use super::*;

    const FIXTURE: Workload = Workload {
        activation_elements: 1_210_960.0,
        params: 606_489.0,
        batch: 8.0,
        trains: true,
    };

    #[test]
    fn the_estimate_grows_with_input_batch_and_weights() {
        let base = estimate(&FIXTURE);
        let bigger = |w: Workload| estimate(&w) > base;
        assert!(bigger(Workload {
            activation_elements: 4.0 * FIXTURE.activation_elements,
            ..FIXTURE
        }));
        assert!(bigger(Workload {
            batch: 16.0,
            ..FIXTURE
        }));
        assert!(bigger(Workload {
            params: 10.0 * FIXTURE.params,
            ..FIXTURE
        }));
        assert!(
            estimate(&Workload {
                trains: false,
                ..FIXTURE
            }) < base
        );
        // Measured on the fixture detector: 225 MiB of private memory at batch 2 and
        // 296 MiB at batch 16 (docs/benchmarks.md). The estimate covers both, within
        // a factor of two.
        for (batch, measured_mib) in [(2.0, 225.0), (16.0, 296.0)] {
            let mib = estimate(&Workload { batch, ..FIXTURE }) / f64::from(1 << 20);
            assert!(
                mib >= measured_mib && mib <= 2.0 * measured_mib,
                "batch {batch}: {mib} MiB"
            );
        }
    }
}
