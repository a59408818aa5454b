//! Runners: what times one model file for a benchmark request. trtexec builds a
//! TensorRT engine and times it on the GPU; the CPU runner times the model with a
//! pure-Rust ONNX runtime.

pub mod cpu;
pub mod trtexec;

use std::path::{Path, PathBuf};

use effp_protocol::{BenchmarkRequest, ModelTiming, Precision, Runner as RunnerKind};

use crate::flag::Flag;
use crate::settings::{RunnerChoice, Settings};

/// Where trtexec is when it is not on PATH (JetPack installs it there).
pub const JETPACK_TRTEXEC: &str = "/usr/src/tensorrt/bin/trtexec";

/// One model's timings and the precision they were measured at.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Measurement {
    /// The timings.
    pub timing: ModelTiming,
    /// The precision the model ran at.
    pub precision: Precision,
}

/// Why a model could not be measured.
#[derive(Debug, thiserror::Error)]
pub enum RunnerError {
    /// The measurement was stopped (the lease was lost or the agent is stopping now).
    #[error("the measurement was cancelled")]
    Cancelled,
    /// The runner failed; the message is the runner's own (TensorRT's error lines, the
    /// ONNX runtime's error).
    #[error("{0}")]
    Failed(String),
}

/// Times one model file.
pub trait Runner {
    /// How this runner measures, as reports name it.
    fn kind(&self) -> RunnerKind;

    /// Times the model at `model` as `request` asks: a warm-up, then
    /// `request.iterations` timed runs. Checks `cancel` between runs (and stops a
    /// child process when it is raised).
    fn measure(
        &self,
        model: &Path,
        request: &BenchmarkRequest,
        work_dir: &Path,
        cancel: &Flag,
    ) -> Result<Measurement, RunnerError>;

    /// The TensorRT version the last measurement used, when the runner knows it.
    fn tensorrt_version(&self) -> Option<String> {
        None
    }
}

/// Why no runner could be set up.
#[derive(Debug, thiserror::Error)]
pub enum SelectError {
    /// `--runner trtexec` but no trtexec.
    #[error(
        "--runner trtexec: trtexec was not found on PATH nor at {JETPACK_TRTEXEC}; install \
         TensorRT (JetPack's tensorrt package) or give its path with --trtexec"
    )]
    TrtexecNotFound,
    /// `--trtexec PATH` names no program.
    #[error("--trtexec {}: no such file; give the path of TensorRT's trtexec", .0.display())]
    TrtexecMissing(PathBuf),
}

/// The runner `settings` ask for: with `auto`, trtexec when found, else the CPU
/// runner.
pub fn select(settings: &Settings) -> Result<Box<dyn Runner>, SelectError> {
    let found = match &settings.trtexec {
        Some(path) if path.is_file() => Some(path.clone()),
        Some(path) => return Err(SelectError::TrtexecMissing(path.clone())),
        None => find_trtexec(),
    };
    let cpu = || -> Box<dyn Runner> {
        Box::new(cpu::CpuRunner::new(
            settings.cpu_warmup_runs(),
            settings.cpu_threads(),
        ))
    };
    match (settings.runner, found) {
        (RunnerChoice::Cpu, _) => Ok(cpu()),
        (RunnerChoice::Trtexec | RunnerChoice::Auto, Some(program)) => Ok(Box::new(
            trtexec::TrtexecRunner::new(program, settings.trtexec_warmup_ms()),
        )),
        (RunnerChoice::Trtexec, None) => Err(SelectError::TrtexecNotFound),
        (RunnerChoice::Auto, None) => Ok(cpu()),
    }
}

/// `trtexec` on PATH, else JetPack's [`JETPACK_TRTEXEC`].
pub fn find_trtexec() -> Option<PathBuf> {
    let on_path = std::env::var_os("PATH").and_then(|path| {
        std::env::split_paths(&path)
            .map(|dir| dir.join("trtexec"))
            .find(|candidate| is_executable(candidate))
    });
    on_path.or_else(|| {
        let jetpack = PathBuf::from(JETPACK_TRTEXEC);
        is_executable(&jetpack).then_some(jetpack)
    })
}

fn is_executable(path: &Path) -> bool {
    use std::os::unix::fs::PermissionsExt;
    path.metadata()
        .is_ok_and(|m| m.is_file() && m.permissions().mode() & 0o111 != 0)
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::Parser as _;

    fn settings(extra: &[&str]) -> Settings {
        let mut argv = vec![
            "effp-agent",
            "--server",
            "http://x",
            "--key",
            "0123456789abcdef",
            "--device",
            "cpu",
        ];
        argv.extend_from_slice(extra);
        Settings::try_parse_from(argv).unwrap()
    }

    #[test]
    fn the_runner_is_the_one_asked_for() {
        assert_eq!(
            select(&settings(&["--runner", "cpu"])).unwrap().kind(),
            RunnerKind::Cpu
        );
        let missing = select(&settings(&[
            "--runner",
            "trtexec",
            "--trtexec",
            "/no/such/trtexec",
        ]));
        assert!(matches!(missing, Err(SelectError::TrtexecMissing(_))));
        let dir = tempfile::tempdir().unwrap();
        let fake = dir.path().join("trtexec");
        std::fs::write(&fake, "#!/bin/sh\n").unwrap();
        let given = fake.to_str().unwrap();
        assert_eq!(
            select(&settings(&["--trtexec", given])).unwrap().kind(),
            RunnerKind::Trtexec
        );
    }
}
