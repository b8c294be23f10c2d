//! The measurement flags `edgeloop measure` and `edgeloop-agent bench`
//! share, so both spell, default and document them the same way. The host
//! parses them with clap (feature `clap`); the static agent, which has no
//! room for clap, with its own small parser from the same help texts.

use crate::cpus::CpuList;
use edgeloop_api::MeasureRequest;

/// `--help` text of each measurement flag.
pub mod help {
    pub const RUNTIME: &str = "Inference runtime (`edgeloop devices` / `edgeloop-agent info` list those available)";
    pub const THREADS: &str = "Threads the runtime may use";
    pub const WARMUP: &str = "Untimed runs before timing starts (caches, allocators, lazy init)";
    pub const RUNS: &str = "Minimum number of timed runs";
    pub const MIN_DURATION_MS: &str = "Keep running until the timed runs took at least this long";
    pub const MAX_DURATION_MS: &str = "Stop after this long even when fewer than --runs runs were done";
    pub const SEED: &str = "Seed of the random input tensors";
    pub const CPUS: &str = "Pin the measuring threads to these CPUs, e.g. 4-7 or 0,2 (big cores on big.LITTLE)";
    pub const ENERGY: &str =
        "Measure energy per inference with the device's power sensor (the timed window lasts at least 1 s)";
    pub const PROFILE: &str = "Print where the time goes, node by node (from extra runs after the timed ones)";
    pub const COOLDOWN_C: &str =
        "Before measuring, wait until the device's thermal zones are below this temperature (°C)";
}

/// How to measure: every `MeasureRequest` field a person sets by hand. Each
/// flag's documentation is its constant in [`help`].
#[derive(Debug, Clone)]
#[cfg_attr(feature = "clap", derive(clap::Args))]
pub struct MeasureFlags {
    #[cfg_attr(feature = "clap", arg(long, value_name = "NAME", help = help::RUNTIME,
        default_value_t = MeasureRequest::default().runtime))]
    pub runtime: String,

    #[cfg_attr(feature = "clap", arg(long, value_name = "N", help = help::THREADS,
        default_value_t = MeasureRequest::default().threads))]
    pub threads: usize,

    #[cfg_attr(feature = "clap", arg(long, value_name = "N", help = help::WARMUP,
        default_value_t = MeasureRequest::default().warmup_runs))]
    pub warmup: usize,

    #[cfg_attr(feature = "clap", arg(long, value_name = "N", help = help::RUNS,
        default_value_t = MeasureRequest::default().min_runs))]
    pub runs: usize,

    #[cfg_attr(feature = "clap", arg(long, value_name = "MS", help = help::MIN_DURATION_MS,
        default_value_t = MeasureRequest::default().min_duration_ms))]
    pub min_duration_ms: u64,

    #[cfg_attr(feature = "clap", arg(long, value_name = "MS", help = help::MAX_DURATION_MS,
        default_value_t = MeasureRequest::default().max_duration_ms))]
    pub max_duration_ms: u64,

    #[cfg_attr(feature = "clap", arg(long, value_name = "N", help = help::SEED,
        default_value_t = MeasureRequest::default().seed))]
    pub seed: u64,

    #[cfg_attr(feature = "clap", arg(long, value_name = "LIST", help = help::CPUS))]
    pub cpus: Option<CpuList>,

    #[cfg_attr(feature = "clap", arg(long, help = help::ENERGY))]
    pub energy: bool,

    #[cfg_attr(feature = "clap", arg(long, help = help::PROFILE))]
    pub profile: bool,

    #[cfg_attr(feature = "clap", arg(long, value_name = "CELSIUS", help = help::COOLDOWN_C))]
    pub cooldown_c: Option<f64>,
}

/// The defaults `MeasureRequest::default()` has (clap's defaults above
/// come from the same place).
impl Default for MeasureFlags {
    fn default() -> Self {
        let request = MeasureRequest::default();
        MeasureFlags {
            runtime: request.runtime,
            threads: request.threads,
            warmup: request.warmup_runs,
            runs: request.min_runs,
            min_duration_ms: request.min_duration_ms,
            max_duration_ms: request.max_duration_ms,
            seed: request.seed,
            cpus: None,
            energy: request.energy,
            profile: request.profile_ops,
            cooldown_c: request.cooldown_c,
        }
    }
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn default_flags_ask_for_the_default_request() {
        let expected = MeasureRequest { model: "abc".into(), ..MeasureRequest::default() };
        assert_eq!(MeasureFlags::default().request("abc".into()), expected);
    }
}
