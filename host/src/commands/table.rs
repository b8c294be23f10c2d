//! `edgeloop table build|predict|calibrate|validate`: flags, and the
//! rendering of what the library measured.

use std::fmt::Write as _;
use std::path::PathBuf;

use anyhow::Context as _;
use clap::{Args, Subcommand};
use edgeloop_api::MeasureRequest;
use edgeloop_space::Arch;

use super::flags::{DevicesArgs, SpaceArgs};
use super::progress::Terminal;
use crate::calibrate::Calibration;
use crate::measure::{DevicePool, Measurements as _};
use crate::predict::{Prediction, Predictor, Stat};
use crate::table::LatencyTable;
use crate::table::build::{self, TablePrecision};
use crate::validate;

#[derive(Subcommand)]
pub enum TableCommand {
    /// Measure every layer of a space on an agent into a latency table.
    /// Resumable: rows already in the file are skipped.
    Build(TableBuildArgs),
    /// Predict the latency of an architecture from a latency table.
    Predict(TablePredictArgs),
    /// Measure random whole networks on the device and report how well the table predicts them.
    Validate(TableValidateArgs),
    /// Fit the predictor's correction factor on a few whole networks (held out from validation).
    Calibrate(TableCalibrateArgs),
}

/// `edgeloop table …`.
pub async fn execute(command: TableCommand) -> anyhow::Result<()> {
    match command {
        TableCommand::Build(args) => run_build(args).await,
        TableCommand::Predict(args) => run_predict(args),
        TableCommand::Validate(args) => run_validate(args).await,
        TableCommand::Calibrate(args) => run_calibrate(args).await,
    }
}

#[derive(Args)]
pub struct TableBuildArgs {
    #[command(flatten)]
    agents: DevicesArgs,

    #[command(flatten)]
    space: SpaceArgs,

    /// Inference runtime on the device.
    #[arg(long, value_name = "NAME", default_value_t = build::default_request().runtime)]
    runtime: String,

    /// Threads the runtime may use.
    #[arg(long, value_name = "N", default_value_t = build::default_request().threads)]
    threads: usize,

    /// Untimed runs before each row's timing starts.
    #[arg(long, value_name = "N", default_value_t = build::default_request().warmup_runs)]
    warmup: usize,

    /// Minimum number of timed runs per row.
    #[arg(long, value_name = "N", default_value_t = build::default_request().min_runs)]
    runs: usize,

    /// Keep running each row until its timed runs took at least this long.
    #[arg(long, value_name = "MS", default_value_t = build::default_request().min_duration_ms)]
    min_duration_ms: u64,

    /// Stop a row after this long even when fewer than --runs runs were done.
    #[arg(long, value_name = "MS", default_value_t = build::default_request().max_duration_ms)]
    max_duration_ms: u64,

    /// Also measure each row's energy per inference (agent's power sensor)
    /// into the columns energy_mj and energy_sensor. Each row then runs at least 1 s.
    #[arg(long)]
    energy: bool,

    /// Arithmetic of the layer models: fp32, or int8 (QLinearConv / MatMulInteger;
    /// the runtime must run int8 natively, per /v1/info), for `edgeloop quantize`.
    #[arg(long, value_enum, default_value_t = TablePrecision::Fp32)]
    precision: TablePrecision,

    /// Table file to create or complete [default: latency-tables/<device_id>--<runtime>--<space>.csv,
    /// with --int8 before .csv for int8 and --energy with --energy].
    #[arg(long, value_name = "FILE")]
    out: Option<PathBuf>,
}

#[derive(Args)]
pub struct TablePredictArgs {
    /// Latency table (CSV) of the device.
    #[arg(long, value_name = "FILE")]
    table: PathBuf,

    #[command(flatten)]
    space: SpaceArgs,

    /// Architecture JSON ({"space", "width", "ops": [...]}).
    #[arg(long, value_name = "A.json")]
    arch: PathBuf,

    /// Statistic of the runs to predict: min (the table's own), p50 or p90
    /// (these need `table calibrate`).
    #[arg(long, value_enum, default_value_t = Stat::Min)]
    stat: Stat,

    /// Print the prediction as JSON instead of a table.
    #[arg(long)]
    json: bool,
}

/// Measuring random whole networks against a table.
#[derive(Args)]
pub struct WholeNetworkArgs {
    /// Latency table (CSV) of the device; its device, runtime and threads are used.
    #[arg(long, value_name = "FILE")]
    table: PathBuf,
    #[command(flatten)]
    agents: DevicesArgs,
    #[command(flatten)]
    space: SpaceArgs,
    /// Untimed runs per network.
    #[arg(long, value_name = "N", default_value_t = MeasureRequest::default().warmup_runs)]
    warmup: usize,
    /// Timed runs per network, at least [default: as a final model's measurement].
    #[arg(long, value_name = "N", default_value_t = MeasureRequest::default().min_runs)]
    runs: usize,
    /// Timed duration per network, at least, in ms.
    #[arg(long, value_name = "MS", default_value_t = MeasureRequest::default().min_duration_ms)]
    min_duration_ms: u64,
}

#[derive(Args)]
pub struct TableCalibrateArgs {
    #[command(flatten)]
    net: WholeNetworkArgs,
    /// Whole networks to fit on.
    #[arg(long, value_name = "N", default_value_t = crate::calibrate::DEFAULT_SAMPLES)]
    samples: usize,
    /// Seed of the architecture sampler (keep it apart from validation seeds).
    #[arg(long, value_name = "S", default_value_t = crate::calibrate::DEFAULT_SEED)]
    seed: u64,
}

#[derive(Args)]
pub struct TableValidateArgs {
    #[command(flatten)]
    net: WholeNetworkArgs,
    /// Random architectures to measure.
    #[arg(long, value_name = "N", default_value_t = 100)]
    samples: usize,
    /// Statistic of each network's runs to predict and compare: min (the
    /// table's own), p50 or p90 (these need a calibration).
    #[arg(long, value_enum, default_value_t = Stat::Min)]
    stat: Stat,
    /// Seed of the architecture sampler.
    #[arg(long, value_name = "S", default_value_t = 0)]
    seed: u64,
    /// Where validation.csv and validation.png go [default: next to the table, <table>.validation/].
    #[arg(long, value_name = "DIR")]
    out: Option<PathBuf>,
    /// Print the metrics as one JSON object.
    #[arg(long)]
    json: bool,
}

async fn run_build(args: TableBuildArgs) -> anyhow::Result<()> {
    let space = args.space.load()?;
    let mut devices = args.agents.pool().await?;
    let template = MeasureRequest {
        runtime: args.runtime,
        threads: args.threads,
        warmup_runs: args.warmup,
        min_runs: args.runs,
        min_duration_ms: args.min_duration_ms,
        max_duration_ms: args.max_duration_ms,
        energy: args.energy,
        ..build::default_request()
    };
    let events = Terminal::default();
    let report = build::build(&mut devices, &space, &template, args.precision, args.out.as_deref(), &events).await?;
    println!(
        "{}: {} rows measured, {} already there, {} in all",
        report.path.display(),
        report.measured,
        report.skipped,
        report.total
    );
    Ok(())
}

fn run_predict(args: TablePredictArgs) -> anyhow::Result<()> {
    let space = args.space.load()?;
    let latency = LatencyTable::load(&args.table)?;
    let text = std::fs::read_to_string(&args.arch).with_context(|| format!("cannot read {}", args.arch.display()))?;
    let arch = Arch::from_json(&text).with_context(|| format!("cannot read {}", args.arch.display()))?;
    let calibration = Calibration::load_for(&args.table)?;
    let prediction = Predictor::calibrated(&latency, calibration.as_ref(), args.stat)?.predict(&space, &arch)?;
    print!("{}", render_prediction(&prediction, args.json)?);
    Ok(())
}

/// What measuring whole networks against a table needs.
struct WholeNetworkRun {
    space: edgeloop_space::Space,
    latency: LatencyTable,
    devices: DevicePool,
    template: MeasureRequest,
}

impl WholeNetworkArgs {
    /// Loads the table and checks that the agent is the table's device.
    async fn open(&self) -> anyhow::Result<WholeNetworkRun> {
        let space = self.space.load()?;
        let latency = LatencyTable::load(&self.table)?;
        let provenance =
            latency.provenance().with_context(|| format!("latency table {} has no rows", self.table.display()))?;
        let devices = self.agents.pool().await?;
        let device_id = &devices.device().device_id;
        anyhow::ensure!(
            *device_id == provenance.device_id,
            "{} is device {device_id}, but {} was measured on {}",
            self.agents.describe(),
            self.table.display(),
            provenance.device_id
        );
        let template = MeasureRequest {
            runtime: provenance.runtime.clone(),
            threads: provenance.threads,
            warmup_runs: self.warmup,
            min_runs: self.runs,
            min_duration_ms: self.min_duration_ms,
            ..MeasureRequest::default()
        };
        Ok(WholeNetworkRun { space, latency, devices, template })
    }
}

impl WholeNetworkRun {
    /// Measures `archs` as whole networks, with a progress bar.
    async fn measure(
        &mut self,
        archs: &[edgeloop_space::Arch],
        reading: validate::Reading,
    ) -> anyhow::Result<Vec<validate::NetworkMeasurement>> {
        let bar = super::progress::bar(archs.len(), "archs");
        let measured =
            validate::measure_networks(&mut self.devices, &self.space, archs, &self.template, reading, |m| {
                bar.set_message(format!("last: p50 {:.3} ms, fastest {:.3} ms", m.stats.p50, m.stats.min));
                bar.inc(1);
            })
            .await?;
        bar.finish_and_clear();
        Ok(measured)
    }
}

async fn run_calibrate(args: TableCalibrateArgs) -> anyhow::Result<()> {
    let mut run = args.net.open().await?;
    let archs = validate::sample_archs(&run.space, args.samples, args.seed, &[]);
    let measured = run.measure(&archs, validate::Reading::Clean).await?;
    let calibration = Calibration::fit(&measured, &Predictor::new(&run.latency), &run.space)?;
    let path = calibration.save_for(&args.net.table)?;
    let scales: Vec<String> = [Stat::Min, Stat::P50, Stat::P90]
        .iter()
        .map(|&stat| {
            let margin = calibration.margin(stat).map_or(String::new(), |m| format!(", margin {:.1}%", m * 100.0));
            format!("{stat} {:.4}{margin}", calibration.scale(stat).unwrap_or(f64::NAN))
        })
        .collect();
    println!("scale {} fitted on {} archs; wrote {}", scales.join("; "), measured.len(), path.display());
    Ok(())
}

async fn run_validate(args: TableValidateArgs) -> anyhow::Result<()> {
    let mut run = args.net.open().await?;
    let calibration = Calibration::load_for(&args.net.table)?;
    let held_out = calibration.as_ref().map_or(&[][..], |c| &c.archs[..]);
    let archs = validate::sample_archs(&run.space, args.samples, args.seed, held_out);
    let measured = run.measure(&archs, validate::Reading::Raw).await?;
    let predictor = Predictor::calibrated(&run.latency, calibration.as_ref(), args.stat)?;
    let samples = validate::samples(&predictor, &run.space, &measured, args.stat)?;
    let metrics = validate::metrics(&samples);
    let out = args.out.unwrap_or_else(|| args.net.table.with_extension("validation"));
    std::fs::create_dir_all(&out).with_context(|| format!("creating {}", out.display()))?;
    validate::write_csv(&out.join("validation.csv"), &samples, args.stat)?;
    validate::write_plot(&out.join("validation.png"), &samples, &metrics, run.space.name(), args.stat)?;
    if args.json {
        println!("{}", serde_json::to_string(&metrics)?);
    } else {
        let correction = match calibration.as_ref().and_then(|c| c.scale(args.stat)) {
            Some(scale) => format!("calibrated, scale {scale:.4}"),
            None => "no calibration".to_string(),
        };
        println!(
            "{} archs, {} ({correction}): {:.1}% within ±10%, MAPE {:.2}%, RMSE {:.4} ms, Kendall τ {:.3}\nwrote {}/validation.csv and validation.png",
            metrics.samples,
            args.stat,
            metrics.within_10pct * 100.0,
            metrics.mape,
            metrics.rmse_ms,
            metrics.kendall_tau,
            out.display()
        );
    }
    Ok(())
}

/// The prediction as pretty JSON, or a table of blocks ending with the
/// overhead and the total (the sum of the lines above it).
pub fn render_prediction(prediction: &Prediction, json: bool) -> serde_json::Result<String> {
    if json {
        return Ok(serde_json::to_string_pretty(prediction)? + "\n");
    }
    let key_width = prediction.per_layer.iter().map(|l| l.key.len()).max().unwrap_or(0);
    let mut out = String::new();
    let mut line = |block: &str, op: &str, key: &str, ms: &str| {
        let _ = writeln!(out, "{block:<16} {op:<12} {key:<key_width$} {ms:>10}");
    };
    line("block", "op", "key", "ms");
    for l in &prediction.per_layer {
        line(&l.block, &l.op, &l.key, &format!("{:.4}", l.ms));
    }
    line("(per call)", "overhead", "", &format!("{:.4}", prediction.overhead_ms));
    line("total", "", "", &format!("{:.4}", prediction.total_ms));
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::predict::LayerCost;

    #[test]
    fn prediction_renders_blocks_then_overhead_and_total() {
        let p = Prediction {
            total_ms: 1.5,
            overhead_ms: 0.25,
            per_layer: vec![LayerCost { block: "stem".into(), op: "3x3_Conv".into(), key: "Conv-k".into(), ms: 1.25 }],
        };
        let text = render_prediction(&p, false).unwrap();
        let lines: Vec<&str> = text.lines().collect();
        assert_eq!(lines.len(), 4, "{text}");
        assert!(lines[0].starts_with("block") && lines[0].ends_with("ms"), "{text}");
        assert!(lines[1].starts_with("stem") && lines[1].contains("Conv-k") && lines[1].ends_with("1.2500"), "{text}");
        assert!(lines[2].contains("overhead") && lines[2].ends_with("0.2500"), "{text}");
        assert!(lines[3].starts_with("total") && lines[3].ends_with("1.5000"), "{text}");
        let json: serde_json::Value = serde_json::from_str(&render_prediction(&p, true).unwrap()).unwrap();
        assert_eq!(json["total_ms"], 1.5);
        assert_eq!(json["per_layer"][0]["key"], "Conv-k");
    }
}
