//! Choosing where the network runs.

use crate::error::EngineError;

pub use effp_protocol::DeviceChoice;

/// The tch device a request names, checking that CUDA exists when it is asked for
/// by name.
pub fn resolve_device(choice: DeviceChoice) -> Result<tch::Device, EngineError> {
    match choice {
        DeviceChoice::Auto => Ok(tch::Device::cuda_if_available()),
        DeviceChoice::Cpu => Ok(tch::Device::Cpu),
        DeviceChoice::Cuda(i) => {
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
