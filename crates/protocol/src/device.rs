//! The device a user asks a job or command to run on.

use std::fmt;
use std::str::FromStr;

/// A device request: `auto`, `cpu`, `cuda` or `cuda:N`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum DeviceChoice {
    /// CUDA when available, else CPU.
    #[default]
    Auto,
    /// The CPU.
    Cpu,
    /// A CUDA device by index.
    Cuda(usize),
}

impl FromStr for DeviceChoice {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, String> {
        match s {
            "auto" => Ok(Self::Auto),
            "cpu" => Ok(Self::Cpu),
            "cuda" => Ok(Self::Cuda(0)),
            _ => s
                .strip_prefix("cuda:")
                .and_then(|n| n.parse().ok())
                .map(Self::Cuda)
                .ok_or_else(|| format!("'{s}' is not a device: use auto, cpu, cuda or cuda:N")),
        }
    }
}

impl DeviceChoice {
    /// Where a job that asked for `asked` runs on a worker set to `self`: a worker
    /// bound to a GPU (`cuda:N`) runs every job that may use a GPU there, a CPU
    /// worker runs `auto` jobs on the CPU, and a job that asked for the CPU stays
    /// on it; an `auto` worker leaves the job's choice alone.
    pub fn place(self, asked: DeviceChoice) -> DeviceChoice {
        match (self, asked) {
            (_, Self::Cpu) | (Self::Auto, _) => asked,
            (Self::Cuda(i), _) => Self::Cuda(i),
            (Self::Cpu, Self::Auto) => Self::Cpu,
            (Self::Cpu, Self::Cuda(i)) => Self::Cuda(i),
        }
    }
}

impl fmt::Display for DeviceChoice {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Auto => f.write_str("auto"),
            Self::Cpu => f.write_str("cpu"),
            Self::Cuda(i) => write!(f, "cuda:{i}"),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::DeviceChoice::{self, Auto, Cpu, Cuda};

    #[test]
    fn a_worker_places_jobs_on_its_own_device_unless_they_asked_for_the_cpu() {
        let all = [Auto, Cpu, Cuda(0), Cuda(3)];
        for asked in all {
            assert_eq!(Auto.place(asked), asked);
            assert_eq!(
                Cuda(1).place(asked),
                if asked == Cpu { Cpu } else { Cuda(1) }
            );
        }
        assert_eq!(Cpu.place(Auto), Cpu);
        assert_eq!(Cpu.place(Cpu), Cpu);
        assert_eq!(Cpu.place(Cuda(2)), Cuda(2));
        for d in all {
            assert_eq!(d.to_string().parse::<DeviceChoice>(), Ok(d));
        }
    }
}
