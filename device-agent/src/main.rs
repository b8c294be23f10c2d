//! `edgeloop-agent`: parses flags and wires the library; nothing else.

use std::net::SocketAddr;
use std::num::NonZeroU32;
use std::path::PathBuf;

use anyhow::{Context, Result};
use clap::{Args, Parser, Subcommand};
use edgeloop_agent::device::{MachineFacts, device_info};
use edgeloop_agent::energy::SensorChoice;
use edgeloop_agent::runtime::{OrtOptimization, Runtime, RuntimeSettings, Runtimes};
use edgeloop_agent::{Agent, AgentConfig, check_listen_addr, engine};
use edgeloop_api::cli::MeasureFlags;
use edgeloop_api::token::resolve_token;
use tracing_subscriber::filter::Targets;
use tracing_subscriber::prelude::*;

/// What is logged when neither --log-level nor RUST_LOG says.
const DEFAULT_LOG_FILTER: &str = "edgeloop_agent=info";

#[derive(Parser)]
#[command(name = "edgeloop-agent", version, about = "Measures ONNX models on this device for edgeloop", long_about = None)]
struct Cli {
    /// What to log on stderr [default: RUST_LOG, else edgeloop_agent=info].
    /// A level for every target (off, error, warn, info, debug or trace)
    /// and/or comma-separated TARGET=LEVEL pairs, where a target is a module
    /// path prefix: e.g. `warn,edgeloop_agent=debug`. RUST_LOG takes the same
    /// syntax (EnvFilter's span and field directives are not supported; an
    /// unreadable RUST_LOG is ignored with a warning).
    #[arg(long, global = true, value_name = "FILTER", value_parser = parse_log_filter)]
    log_level: Option<Targets>,
    #[command(subcommand)]
    command: Command,
}

fn parse_log_filter(filter: &str) -> Result<Targets, String> {
    filter.parse().map_err(|e| format!("{e}: expected LEVEL and/or TARGET=LEVEL pairs separated by commas"))
}

/// Logs to stderr through a plain target/level filter: EnvFilter would add a
/// regex engine to the binary for directives the agent never needs.
fn init_logging(flag: Option<Targets>) {
    let default = || DEFAULT_LOG_FILTER.parse::<Targets>().expect("valid default log filter");
    let mut unreadable_env = None;
    let filter = flag.unwrap_or_else(|| match std::env::var("RUST_LOG") {
        Ok(value) if !value.trim().is_empty() => parse_log_filter(&value).unwrap_or_else(|e| {
            unreadable_env = Some((value, e));
            default()
        }),
        _ => default(),
    });
    tracing_subscriber::registry()
        .with(tracing_subscriber::fmt::layer().with_writer(std::io::stderr))
        .with(filter)
        .init();
    if let Some((value, e)) = unreadable_env {
        tracing::warn!("ignoring RUST_LOG={value:?} ({e}); logging {DEFAULT_LOG_FILTER}");
    }
}

#[derive(Subcommand)]
enum Command {
    /// Serve the measurement API (DESIGN §5) over HTTP.
    Serve(ServeArgs),
    /// Measure a model file locally with the same engine the server uses.
    Bench(BenchArgs),
    /// Print this device's descriptor (what GET /v1/info answers).
    Info(InfoArgs),
    /// Run a model once in each runtime on the same seeded inputs and compare
    /// the outputs; exits non-zero when any differs by more than --tolerance.
    Compare(CompareArgs),
}

#[derive(Args)]
struct RuntimeArgs {
    /// libonnxruntime.so for the `ort` runtime [default: ORT_DYLIB_PATH, else
    /// .venv/lib/python3*/site-packages/onnxruntime/capi/ in the current
    /// directory, the agent's, or a parent]. Ignored by builds without ORT.
    #[arg(long, value_name = "PATH")]
    ort_lib: Option<PathBuf>,
    /// ONNX Runtime's graph optimisations: disable, basic, extended or all.
    #[arg(long, value_name = "LEVEL", default_value_t = OrtOptimization::All)]
    ort_optimization: OrtOptimization,
}

impl RuntimeArgs {
    fn settings(&self) -> RuntimeSettings {
        RuntimeSettings { ort_lib: self.ort_lib.clone(), ort_optimization: self.ort_optimization }
    }
}

#[derive(Args)]
struct CommonArgs {
    /// Where models and the persisted device id live.
    #[arg(long, env = "EDGELOOP_CACHE_DIR")]
    cache_dir: Option<PathBuf>,
    /// Name this device explicitly instead of deriving an id from the machine.
    #[arg(long)]
    device_id: Option<String>,
    /// Where to read thermal zones, CPU frequencies and power sensors (a
    /// copy of /sys for testing).
    #[arg(long, value_name = "DIR", default_value = "/sys")]
    sysfs_root: PathBuf,
    /// Power sensor for `energy: true`: auto (RAPL, then Jetson INA3221,
    /// then Android battery), none, rapl, jetson, jetson:RAIL or android.
    #[arg(long, value_name = "SENSOR", default_value = "auto")]
    energy_sensor: SensorChoice,
    /// Power sensor readings per second while measuring energy.
    #[arg(long, value_name = "HZ", default_value_t = NonZeroU32::new(200).expect("nonzero"))]
    energy_sample_hz: NonZeroU32,
    /// Flag a measurement as throttled when the CPU frequency drops more
    /// than this many percent below where it started.
    #[arg(long, value_name = "PCT", default_value_t = 10.0)]
    throttle_drop_pct: f64,
    #[command(flatten)]
    runtimes: RuntimeArgs,
}

#[derive(Args)]
struct ServeArgs {
    /// Address to listen on. A non-loopback address requires a token.
    #[arg(long, default_value = "127.0.0.1:7878")]
    listen: SocketAddr,
    /// File holding the bearer token clients must present.
    /// Takes precedence over --token and EDGELOOP_TOKEN.
    #[arg(long)]
    token_file: Option<PathBuf>,
    /// Bearer token (prefer --token-file: environment variables leak into process listings less, files not at all).
    #[arg(long, env = "EDGELOOP_TOKEN", hide_env_values = true)]
    token: Option<String>,
    /// Largest model accepted by PUT /v1/models, in MB.
    #[arg(long, default_value_t = 256)]
    max_model_mb: u64,
    /// Models beyond this total size are evicted, least recently used first, in MB.
    #[arg(long, default_value_t = 4096)]
    cache_max_mb: u64,
    /// Write the bound address (useful with port 0) to this file once listening.
    #[arg(long)]
    addr_file: Option<PathBuf>,
    #[command(flatten)]
    common: CommonArgs,
}

#[derive(Args)]
struct BenchArgs {
    /// The ONNX model to measure.
    model: PathBuf,
    #[command(flatten)]
    measure: MeasureFlags,
    /// Print the Measurement as JSON instead of a table.
    #[arg(long)]
    json: bool,
    #[command(flatten)]
    common: CommonArgs,
}

#[derive(Args)]
struct InfoArgs {
    #[arg(long)]
    json: bool,
    #[command(flatten)]
    common: CommonArgs,
}

#[derive(Args)]
struct CompareArgs {
    /// The ONNX model to run.
    model: PathBuf,
    /// Runtimes to run it in; the first is the reference.
    #[arg(long, value_delimiter = ',', default_value = "tract,ort")]
    runtimes: Vec<String>,
    /// Seed of the random inputs.
    #[arg(long, default_value_t = 0)]
    seed: u64,
    #[arg(long, default_value_t = 1)]
    threads: usize,
    /// Largest absolute difference allowed in any output element.
    #[arg(long, default_value_t = 1e-4)]
    tolerance: f64,
    #[command(flatten)]
    runtime_args: RuntimeArgs,
}

fn default_cache_dir() -> PathBuf {
    // Android shells have no XDG dirs; fall back next to the binary's cwd.
    dirs::cache_dir().map(|d| d.join("edgeloop-agent")).unwrap_or_else(|| PathBuf::from("edgeloop-agent-cache"))
}

impl CommonArgs {
    fn config(&self) -> AgentConfig {
        let mut config = AgentConfig::new(self.cache_dir.clone().unwrap_or_else(default_cache_dir));
        config.device_id = self.device_id.clone();
        config.roots.sys = self.sysfs_root.clone();
        config.energy_sensor = self.energy_sensor.clone();
        config.meter.sample_rate_hz = self.energy_sample_hz;
        config.monitor.max_freq_drop = self.throttle_drop_pct / 100.0;
        config.runtimes = self.runtimes.settings();
        config
    }

    /// This machine's facts and device id, as `serve` would report them.
    fn local_device(&self) -> Result<(MachineFacts, String)> {
        let config = self.config();
        let facts = MachineFacts::read(&config.roots);
        let id = edgeloop_agent::device::device_id(&config.cache_dir, &facts, config.device_id.as_deref())
            .with_context(|| format!("reading the device id in {}", config.cache_dir.display()))?;
        Ok((facts, id))
    }
}

fn main() -> Result<()> {
    let cli = Cli::parse();
    init_logging(cli.log_level);
    match cli.command {
        Command::Serve(args) => serve(args),
        Command::Bench(args) => bench(args),
        Command::Info(args) => info(args),
        Command::Compare(args) => compare(args),
    }
}

fn serve(args: ServeArgs) -> Result<()> {
    let token = resolve_token(args.token_file.as_deref(), args.token.as_deref())?;
    check_listen_addr(args.listen, token.is_some()).map_err(anyhow::Error::msg)?;
    let mut config = args.common.config();
    config.token = token;
    config.max_model_bytes = args.max_model_mb << 20;
    config.cache_max_bytes = args.cache_max_mb << 20;
    let cache_dir = config.cache_dir.clone();
    let runtimes = Runtimes::detect(&config.runtimes);
    for (name, reason) in runtimes.unavailable() {
        tracing::info!(runtime = %name, "unavailable: {reason}");
    }
    let agent = Agent::new(config, runtimes)
        .with_context(|| format!("starting the agent with cache dir {}", cache_dir.display()))?;
    let runtime = tokio::runtime::Builder::new_multi_thread().enable_all().build()?;
    runtime.block_on(async move {
        let listener =
            tokio::net::TcpListener::bind(args.listen).await.with_context(|| format!("binding {}", args.listen))?;
        let addr = listener.local_addr()?;
        if let Some(path) = &args.addr_file {
            std::fs::write(path, addr.to_string()).with_context(|| format!("writing {}", path.display()))?;
        }
        tracing::info!(%addr, device_id = agent.device_id(), cache = %cache_dir.display(), "edgeloop-agent listening");
        let shutdown = async {
            let _ = tokio::signal::ctrl_c().await;
        };
        agent.serve(listener, shutdown).await.context("serving")
    })
}

fn bench(args: BenchArgs) -> Result<()> {
    let bytes = std::fs::read(&args.model).with_context(|| format!("reading {}", args.model.display()))?;
    let config = args.common.config();
    let runtimes = Runtimes::detect(&config.runtimes);
    let runtime = runtime_named(&runtimes, &args.measure.runtime)?;
    let (_, device_id) = args.common.local_device()?;
    let sensors = config.sensors();
    let request = args.measure.request(edgeloop_agent::store::sha256_hex(&bytes));
    let measurement = engine::measure(runtime, &bytes, &request, &sensors)
        .with_context(|| format!("measuring {}", args.model.display()))?
        .into_measurement(&request, &device_id, runtime);
    if args.json {
        println!("{}", serde_json::to_string_pretty(&measurement)?);
    } else {
        print!("{}", edgeloop_api::display::measurement_table(&measurement));
    }
    Ok(())
}

fn info(args: InfoArgs) -> Result<()> {
    let (facts, device_id) = args.common.local_device()?;
    let config = args.common.config();
    let runtimes = Runtimes::detect(&config.runtimes);
    let info = device_info(&device_id, &facts, &config.roots, &runtimes, &config.energy_sensor);
    if args.json {
        println!("{}", serde_json::to_string_pretty(&info)?);
    } else {
        print!("{}", edgeloop_api::display::device_table(&info));
    }
    Ok(())
}

fn runtime_named<'r>(runtimes: &'r Runtimes, name: &str) -> Result<&'r dyn Runtime> {
    runtimes.get(name).map(|r| r.as_ref()).ok_or_else(|| anyhow::anyhow!(runtimes.unavailable_reason(name)))
}

fn compare(args: CompareArgs) -> Result<()> {
    anyhow::ensure!(args.tolerance >= 0.0, "--tolerance must be a non-negative number");
    let bytes = std::fs::read(&args.model).with_context(|| format!("reading {}", args.model.display()))?;
    let runtimes = Runtimes::detect(&args.runtime_args.settings());
    let chosen = args.runtimes.iter().map(|name| runtime_named(&runtimes, name)).collect::<Result<Vec<_>>>()?;
    let diffs = edgeloop_agent::compare::compare(&bytes, &chosen, args.seed, args.threads)
        .with_context(|| format!("running {}", args.model.display()))?;
    let reference = &args.runtimes[0];
    println!("{:<24} {:<18} {:<10} {:>14}", "output", "shape", "runtime", format!("max |Δ| vs {reference}"));
    for d in &diffs {
        println!("{:<24} {:<18} {:<10} {:>14.3e}", d.output, format!("{:?}", d.shape), d.runtime, d.max_abs_diff);
    }
    let over: Vec<String> = diffs
        .iter()
        .filter(|d| d.max_abs_diff > args.tolerance)
        .map(|d| format!("`{}` in {} ({:.3e})", d.output, d.runtime, d.max_abs_diff))
        .collect();
    anyhow::ensure!(
        over.is_empty(),
        "outputs differ from {reference}'s by more than {:e}: {}",
        args.tolerance,
        over.join(", ")
    );
    println!("every output within {:e} of {reference}'s", args.tolerance);
    Ok(())
}
