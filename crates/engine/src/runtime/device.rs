//! Choosing where the network runs.

use std::str::FromStr;

use crate::error::EngineError;

/// A device request from a user: `auto`, `cpu`, `cuda` or `cuda:N`.
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
    /// The tch device, checking that CUDA exists when it is asked for by name.
    pub fn resolve(self) -> Result<tch::Device, EngineError> {
        match self {
            Self::Auto => Ok(tch::Device::cuda_if_available()),
            Self::Cpu => Ok(tch::Device::Cpu),
            Self::Cuda(i) => {
                let count = tch::Cuda::device_count() as usize;
                if i < count {
                    Ok(tch::Device::Cuda(i))
                } else {
                    Err(EngineError::Device {
                        requested: format!("cuda:{i}"),
                        reason: format!("this machine has {count} CUDA device(s)"),
                    })
                }
            }
        }
    }
}
