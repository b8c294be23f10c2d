//! `edgeloop quantize`: flags, and the summary of the run.

use std::path::PathBuf;

use clap::Args;

use super::flags::{DevicesArgs, RunOn};
use super::progress::Terminal;
use crate::quantize::{self, Constraint, QuantizeEnv, QuantizeSettings};

/// `edgeloop quantize`: see README "Mixed-precision quantization".
#[derive(Args)]
#[command(group(clap::ArgGroup::new("budget").required(true).args(["latency_ms", "energy_mj", "size_kb"])))]
pub struct QuantizeArgs {
    /// A finished `edgeloop search --out` directory: its retrained network is quantized.
    #[arg(long, value_name = "DIR")]
    run: PathBuf,
    #[command(flatten)]
    agents: DevicesArgs,
    /// Latency budget: p50 on the device, ms.
    #[arg(long, value_name = "MS")]
    latency_ms: Option<f64>,
    /// Energy budget: mJ per inference above idle, from the agent's power sensor.
    #[arg(long, value_name = "MJ")]
    energy_mj: Option<f64>,
    /// Size budget: the weights' Σ bits·params, kB.
    #[arg(long, value_name = "KB")]
    size_kb: Option<f64>,
    /// DDPG episodes (each a policy, fine-tuned and scored).
    #[arg(long, value_name = "N", default_value_t = 60)]
    episodes: usize,
    /// Episodes of random policies before the agent's actor acts.
    #[arg(long, value_name = "N", default_value_t = 20)]
    warmup_episodes: usize,
    /// Fine-tune steps of each episode's policy before its accuracy is taken.
    #[arg(long, value_name = "N", default_value_t = 30)]
    finetune_steps: usize,
    /// Fine-tune steps of the chosen policy (and of uniform int8, to compare).
    #[arg(long, value_name = "N", default_value_t = 300)]
    final_steps: usize,
    /// Learning rate of the fine-tunes (SGD, Nesterov).
    #[arg(long, value_name = "LR", default_value_t = 0.005)]
    lr: f64,
    /// Held-out images each episode's accuracy is taken on.
    #[arg(long, value_name = "N", default_value_t = 500)]
    eval_images: usize,
    /// Training images the activation ranges are calibrated on.
    #[arg(long, value_name = "N", default_value_t = 64)]
    calibration_images: usize,
    /// Keep every layer integer (2–8 bits); by default a layer may also stay fp32.
    #[arg(long)]
    no_fp32: bool,
    #[command(flatten)]
    run_on: RunOn,
    /// The device's fp32 table [default: latency-tables/<device_id>--<runtime>--<space>.csv; built when rows are missing].
    #[arg(long, value_name = "FILE")]
    fp32_table: Option<PathBuf>,
    /// The device's int8 table [default: …--int8.csv next to it].
    #[arg(long, value_name = "FILE")]
    int8_table: Option<PathBuf>,
    /// Output directory [default: <run>/quant].
    #[arg(long, value_name = "DIR")]
    out: Option<PathBuf>,
    /// Continue the search checkpointed in --out.
    #[arg(long)]
    resume: bool,
}

pub async fn execute(args: QuantizeArgs) -> anyhow::Result<()> {
    let constraint = match (args.latency_ms, args.energy_mj, args.size_kb) {
        (Some(ms), _, _) => Constraint::LatencyMs(ms),
        (_, Some(mj), _) => Constraint::EnergyMj(mj),
        (_, _, Some(kb)) => Constraint::SizeKb(kb),
        _ => unreachable!("clap requires one budget"),
    };
    let settings = QuantizeSettings {
        constraint,
        episodes: args.episodes,
        warmup_episodes: args.warmup_episodes,
        finetune_steps: args.finetune_steps,
        final_steps: args.final_steps,
        lr: args.lr,
        eval_images: args.eval_images,
        calibration_images: args.calibration_images,
        allow_fp32: !args.no_fp32,
        seed: args.run_on.seed,
        runtime: args.run_on.runtime.clone(),
        measure_threads: args.run_on.measure_threads,
    };
    let out = args.out.unwrap_or_else(|| args.run.join("quant"));
    let env = QuantizeEnv {
        run: args.run,
        out: out.clone(),
        resume: args.resume,
        devices: args.agents.devices(crate::farm::Priority::Hi)?,
        fp32_table: args.fp32_table,
        int8_table: args.int8_table,
        device_kind: args.run_on.device_kind,
        probe_request: args.run_on.probe_request(),
        final_request: args.run_on.final_request(),
        events: std::sync::Arc::new(Terminal::default()),
    };
    let result = quantize::run(settings, env).await?;
    print!("{}", quantize::render_summary(&result, &out));
    Ok(())
}
