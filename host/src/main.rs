//! The `edgeloop` command line: parses arguments and hands over to the library.

use std::process::ExitCode;

use clap::{Parser, Subcommand};
use edgeloop::client::error_line;
use edgeloop::commands::{
    baseline, devices, export, farm, measure, proxy, quantize, report, search, space, table, train,
};
use tracing_subscriber::EnvFilter;

/// Hardware-in-the-loop neural architecture search: measure models on real devices.
#[derive(Parser)]
#[command(name = "edgeloop", version, propagate_version = true)]
#[command(after_help = "Log verbosity: EDGELOOP_LOG=debug (default: warn).")]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Upload an ONNX model to an agent (unless it has it) and measure its latency there.
    Measure(measure::MeasureArgs),
    /// Show the device behind each agent: CPU, memory, runtimes and precisions.
    Devices(devices::DevicesArgs),
    /// Inspect search spaces.
    #[command(subcommand)]
    Space(space::SpaceCommand),
    /// Export an architecture of a space to ONNX (seeded random weights, BatchNorm folded).
    Export(export::ExportArgs),
    /// Per-layer latency tables of a device: build one, predict networks from one.
    #[command(subcommand)]
    Table(table::TableCommand),
    /// Score sampled architectures at initialisation with training-free proxies, beside params and MACs.
    Proxy(proxy::ProxyArgs),
    /// Search an architecture under a latency budget measured on a device (ProxylessNAS).
    Search(Box<search::SearchArgs>),
    /// Train one fixed architecture (a file, or MobileNetV2's block) with a search's final recipe and measure it.
    Train(Box<train::TrainArgs>),
    /// Train and measure MobileNetV2's block at a sweep of widths: the baseline a search must beat.
    Baseline(Box<baseline::BaselineArgs>),
    /// Runs and a baseline sweep in one report: report.md, pareto.png, latency.png.
    Report(report::ReportArgs),
    /// Choose per-layer precisions of a searched network under a latency, energy or size budget (HAQ).
    Quantize(Box<quantize::QuantizeArgs>),
    /// A shared device farm on NATS JetStream: its broker, workers serving agents to it, its state.
    #[command(subcommand)]
    Farm(farm::FarmCommand),
}

#[tokio::main(flavor = "current_thread")]
async fn main() -> ExitCode {
    let cli = Cli::parse();
    tracing_subscriber::fmt()
        .with_env_filter(EnvFilter::try_from_env("EDGELOOP_LOG").unwrap_or_else(|_| "warn".into()))
        .with_writer(std::io::stderr)
        .without_time()
        .with_target(false)
        .init();
    let outcome = match cli.command {
        Command::Measure(args) => measure::execute(args).await,
        Command::Devices(args) => devices::execute(args).await,
        Command::Space(command) => space::execute(command),
        Command::Export(args) => export::execute(args),
        Command::Table(command) => table::execute(command).await,
        Command::Proxy(args) => proxy::execute(args),
        Command::Search(args) => search::execute(*args).await,
        Command::Train(args) => train::execute(*args).await,
        Command::Baseline(args) => baseline::execute(*args).await,
        Command::Report(args) => report::execute(args),
        Command::Quantize(args) => quantize::execute(*args).await,
        Command::Farm(command) => farm::execute(command).await,
    };
    // One line, not anyhow's multi-line report (with a backtrace under RUST_BACKTRACE).
    match outcome {
        Ok(()) => ExitCode::SUCCESS,
        Err(error) => {
            eprintln!("error: {}", error_line(error.as_ref()));
            ExitCode::FAILURE
        }
    }
}
