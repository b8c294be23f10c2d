//! Where training runs: CUDA when libtorch sees a GPU, else the CPU, or as asked.

use std::str::FromStr;

use tch::{Cuda, Device};

use crate::TrainError;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum DeviceKind {
    /// CUDA if available, else CPU.
    #[default]
    Auto,
    Cpu,
    Cuda,
}

impl FromStr for DeviceKind {
    type Err = String;
    fn from_str(s: &str) -> Result<DeviceKind, String> {
        match s {
            "auto" => Ok(DeviceKind::Auto),
            "cpu" => Ok(DeviceKind::Cpu),
            "cuda" => Ok(DeviceKind::Cuda),
            _ => Err(format!("`{s}` is not a device kind (auto, cpu, cuda)")),
        }
    }
}

impl DeviceKind {
    pub fn resolve(self) -> Result<Device, TrainError> {
        match self {
            DeviceKind::Cpu => Ok(Device::Cpu),
            DeviceKind::Auto => Ok(Device::cuda_if_available()),
            DeviceKind::Cuda if Cuda::is_available() => Ok(Device::Cuda(0)),
            DeviceKind::Cuda => Err(TrainError::NoCuda),
        }
    }
}

/// `cpu (2 threads)` or `cuda:0 (1 of 1 GPUs)`, for logs and results.
pub fn describe(device: Device) -> String {
    match device {
        Device::Cuda(i) => format!("cuda:{i} ({} GPU(s) visible)", Cuda::device_count()),
        _ => format!("cpu ({} threads)", tch::get_num_threads()),
    }
}

/// Keeps freed memory in the process (Linux, glibc). libtorch frees and
/// reallocates every activation buffer each step; by default glibc hands
/// large blocks back to the OS (munmap, heap trim) and the next step
/// page-faults them in again, which cost 20–35% of a CPU training step of
/// `tiny` here (22–25 ms vs 18 ms). Blocks up to 32 MiB (glibc's maximum)
/// come from the heap, and up to 1 GiB of free heap is kept. Once per process.
pub fn keep_freed_memory() {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    {
        static ONCE: std::sync::Once = std::sync::Once::new();
        // SAFETY: mallopt only changes allocator thresholds.
        ONCE.call_once(|| unsafe {
            libc::mallopt(libc::M_MMAP_THRESHOLD, 32 << 20);
            libc::mallopt(libc::M_TRIM_THRESHOLD, 1 << 30);
        });
    }
}
