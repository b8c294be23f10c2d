//! The measurement flags `edgeloop measure` and `edgeloop-agent bench`
//! share, so both spell, default and document them the same way.

use clap::Args;

use crate::MeasureRequest;
use crate::cpus::CpuList;

/// How to measure: every `MeasureRequest` field a person sets by hand.
#[derive(Debug, Clone, Args)]
pub struct MeasureFlags {
    /// Inference runtime (`edgeloop devices` / `edgeloop-agent info` list those available).
    #[arg(long, value_name = "NAME", default_value_t = MeasureRequest::default().runtime)]
    pub runtime: String,

    /// Threads the runtime may use.
    #[arg(long, value_name = "N", default_value_t = MeasureRequest::default().threads)]
    pub threads: usize,

    /// Untimed runs before timing starts (caches, allocators, lazy init).
    #[arg(long, value_name = "N", default_value_t = MeasureRequest::default().warmup_runs)]
    pub warmup: usize,

    /// Minimum number of timed runs.
    #[arg(long, value_name = "N", default_value_t = MeasureRequest::default().min_runs)]
    pub runs: usize,

    /// Keep running until the timed runs took at least this long.
    #[arg(long, value_name = "MS", default_value_t = MeasureRequest::default().min_duration_ms)]
    pub min_duration_ms: u64,

    /// Stop after this long even when fewer than --runs runs were done.
    #[arg(long, value_name = "MS", default_value_t = MeasureRequest::default().max_duration_ms)]
    pub max_duration_ms: u64,

    /// Seed of the random input tensors.
    #[arg(long, value_name = "N", default_value_t = MeasureRequest::default().seed)]
    pub seed: u64,

    /// Pin the measuring threads to these CPUs, e.g. 4-7 or 0,2 (big cores on big.LITTLE).
    #[arg(long, value_name = "LIST")]
    pub cpus: Option<CpuList>,

    /// Measure energy per inference with the device's power sensor (the timed window lasts at least 1 s).
    #[arg(long)]
    pub energy: bool,

    /// Print where the time goes, node by node (from extra runs after the timed ones).
    #[arg(long)]
    pub profile: bool,

    /// Before measuring, wait until the device's thermal zones are below this temperature (°C).
    #[arg(long, value_name = "CELSIUS")]
    pub cooldown_c: Option<f64>,
}

impl MeasureFlags {
    /// The request these flags ask for, of the model with this sha256.
    pub fn request(&self, model: String) -> MeasureRequest {
        MeasureRequest {
            model,
            runtime: self.runtime.clone(),
            threads: self.threads,
            warmup_runs: self.warmup,
            min_runs: self.runs,
            min_duration_ms: self.min_duration_ms,
            max_duration_ms: self.max_duration_ms,
            seed: self.seed,
            cpus: self.cpus.clone().map(|c| c.0),
            energy: self.energy,
            profile_ops: self.profile,
            cooldown_c: self.cooldown_c,
            ..MeasureRequest::default()
        }
    }
}
