//! effp's job contract, one definition shared by every process: the pruning
//! methods and their settings with their one set of defaults and range checks, the
//! job request the API accepts and the worker runs, the device a job asks for and
//! the states a job goes through, the report a pruning run writes and the artifacts
//! it leaves, and the benchmark requests and results of the device agents.
//! CLI flags (feature `cli`) and the OpenAPI schemas (feature `openapi`) are derived
//! from these types, so a setting cannot mean one thing on the command line and
//! another in a job.

pub mod artifact;
pub mod benchmark;
pub mod device;
pub mod field;
pub mod job;
pub mod method;
pub mod report;
pub mod settings;
pub mod state;
pub mod webhook;

pub use artifact::{ArtifactRef, Artifacts};
pub use benchmark::{
    BenchmarkReport, BenchmarkRequest, BenchmarkResult, BenchmarkState, BenchmarkTask,
    BenchmarkView, ClaimRequest, DeviceFacts, LeaseRenewal, Measurements, ModelTiming, Percentiles,
    Precision, ReportOutcome, Runner, RunnerFailure,
};
pub use device::DeviceChoice;
pub use field::FieldError;
pub use job::{JobSpec, TargetSpec};
pub use method::{Criterion, Distill, FineTune, Method, Scope, Start};
pub use settings::{PruneOptions, TrainingSpec};
pub use state::JobState;
