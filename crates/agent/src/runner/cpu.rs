//! The CPU runner: times a model with tract, a pure-Rust ONNX runtime, so that any
//! machine can measure (and the agent needs no C++ library to cross-compile).
//!
//! The model's inputs are fixed to their declared shapes (a symbolic dimension of a
//! 4-D image input becomes 1×3×640×640 at its place, any other one 1), the graph is
//! optimised for those shapes, and the timed runs feed the same seeded random input.
//! It always runs in fp32, whatever precision was asked.

use std::path::Path;
use std::time::Instant;

use effp_protocol::{BenchmarkRequest, ModelTiming, Percentiles, Precision, Runner as RunnerKind};
use tract_onnx::prelude::*;
use tract_onnx::tract_hir::infer::GenericFactoid;

use super::{Measurement, Runner, RunnerError};
use crate::flag::Flag;

/// Dimensions a symbolic dimension of a 4-D input takes, by position (batch,
/// channels, height, width): Ultralytics' default image size.
pub const DEFAULT_IMAGE_DIMS: [usize; 4] = [1, 3, 640, 640];
/// Seed of the random input.
const INPUT_SEED: u64 = 0x5eed_effa;

/// Times models on the CPU with tract.
#[derive(Debug, Clone)]
pub struct CpuRunner {
    warmup_runs: u32,
    threads: usize,
}

impl CpuRunner {
    /// A runner making `warmup_runs` untimed runs before timing, on `threads` threads.
    pub fn new(warmup_runs: u32, threads: usize) -> Self {
        Self {
            warmup_runs,
            threads: threads.max(1),
        }
    }

    /// Loads, fixes the shapes of and optimises the model at `path`; returns the plan
    /// and an input for it.
    fn prepare(&self, path: &Path) -> TractResult<(Arc<TypedRunnableModel>, TVec<TValue>)> {
        let mut model = tract_onnx::onnx().model_for_path(path)?;
        let mut inputs = TVec::new();
        let mut seed = INPUT_SEED;
        for ix in 0..model.inputs.len() {
            let fact = model.input_fact(ix)?.clone();
            let shape = input_shape(&fact);
            let datum_type = match fact.datum_type {
                GenericFactoid::Only(dt) => dt,
                GenericFactoid::Any => DatumType::F32,
            };
            if !datum_type.is_float() {
                let name = &model.node(model.inputs[ix].node).name;
                return Err(TractError::msg(format!(
                    "input {name:?} is of type {datum_type:?}: the CPU runner feeds random \
                     floats and cannot make such an input"
                )));
            }
            model.set_input_fact(ix, InferenceFact::dt_shape(datum_type, shape.clone()))?;
            let values: Vec<f32> = (0..shape.iter().product::<usize>())
                .map(|_| next_unit(&mut seed))
                .collect();
            let tensor = Tensor::from_shape(&shape, &values)?
                .cast_to_dt(datum_type)?
                .into_owned();
            inputs.push(tensor.into_tvalue());
        }
        let plan = model.into_optimized()?.into_runnable()?;
        Ok((plan, inputs))
    }
}

/// The shape an input is fed at: its declared dimensions, symbolic ones replaced (see
/// [`DEFAULT_IMAGE_DIMS`]).
fn input_shape(fact: &InferenceFact) -> Vec<usize> {
    let dims: Vec<Option<usize>> = fact
        .shape
        .dims()
        .map(|d| match d {
            GenericFactoid::Only(dim) => dim.to_i64().ok().and_then(|v| usize::try_from(v).ok()),
            GenericFactoid::Any => None,
        })
        .collect();
    let rank = dims.len();
    dims.into_iter()
        .enumerate()
        .map(|(i, d)| d.unwrap_or(if rank == 4 { DEFAULT_IMAGE_DIMS[i] } else { 1 }))
        .collect()
}

/// A pseudo-random value in [0, 1) (xorshift64*): an image-like input.
fn next_unit(state: &mut u64) -> f32 {
    *state ^= *state >> 12;
    *state ^= *state << 25;
    *state ^= *state >> 27;
    let bits = state.wrapping_mul(0x2545_f491_4f6c_dd1d) >> 40;
    bits as f32 / (1u64 << 24) as f32
}

impl Runner for CpuRunner {
    fn kind(&self) -> RunnerKind {
        RunnerKind::Cpu
    }

    /// The CPU has no transfer between host and device, so the compute and the
    /// end-to-end percentiles are the same per-run wall times; the throughput is
    /// 1000 / mean ms (one run at a time).
    fn measure(
        &self,
        model: &Path,
        request: &BenchmarkRequest,
        _work_dir: &Path,
        cancel: &Flag,
    ) -> Result<Measurement, RunnerError> {
        let failed = |what: &str, e: TractError| {
            RunnerError::Failed(format!("tract could not {what} {}: {e:#}", model.display()))
        };
        let executor = if self.threads > 1 {
            multithread::Executor::multithread(self.threads)
        } else {
            multithread::Executor::SingleThread
        };
        multithread::multithread_tract_scope(executor, || {
            let (plan, inputs) = self.prepare(model).map_err(|e| failed("load", e))?;
            let mut state = plan.spawn().map_err(|e| failed("start", e))?;
            for _ in 0..self.warmup_runs {
                if cancel.is_raised() {
                    return Err(RunnerError::Cancelled);
                }
                state.run(inputs.clone()).map_err(|e| failed("run", e))?;
            }
            let mut times = Vec::with_capacity(request.iterations as usize);
            for _ in 0..request.iterations {
                if cancel.is_raised() {
                    return Err(RunnerError::Cancelled);
                }
                let start = Instant::now();
                let outputs = state.run(inputs.clone()).map_err(|e| failed("run", e))?;
                times.push(start.elapsed().as_secs_f64() * 1000.0);
                drop(outputs);
            }
            timing(&times)
                .map(|timing| Measurement {
                    timing,
                    precision: Precision::Fp32,
                })
                .ok_or_else(|| RunnerError::Failed("no run was timed (iterations is 0)".into()))
        })
    }
}

/// The timings of per-run wall times in ms (compute = end to end on the CPU).
pub fn timing(times_ms: &[f64]) -> Option<ModelTiming> {
    let percentiles = Percentiles::of(times_ms)?;
    if percentiles.mean_ms <= 0.0 {
        return None;
    }
    Some(ModelTiming {
        compute: percentiles,
        end_to_end: percentiles,
        throughput_per_s: 1000.0 / percentiles.mean_ms,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn symbolic_dims_take_the_image_defaults() {
        let fact = InferenceFact::dt_shape(
            DatumType::F32,
            tract_onnx::tract_hir::shapefactoid![_, 3, _, _],
        );
        assert_eq!(input_shape(&fact), [1, 3, 640, 640]);
        let fixed = InferenceFact::dt_shape(DatumType::F32, [1usize, 3, 128, 96]);
        assert_eq!(input_shape(&fixed), [1, 3, 128, 96]);
    }

    #[test]
    fn the_random_input_is_in_the_unit_interval() {
        let mut seed = INPUT_SEED;
        assert!(
            (0..1000)
                .map(|_| next_unit(&mut seed))
                .all(|v| (0.0..1.0).contains(&v))
        );
    }

    #[test]
    fn throughput_is_the_inverse_of_the_mean() {
        let t = timing(&[2.0, 4.0]).unwrap();
        assert_eq!(t.compute, t.end_to_end);
        assert!((t.throughput_per_s - 1000.0 / 3.0).abs() < 1e-9);
        assert!(timing(&[]).is_none());
    }
}
