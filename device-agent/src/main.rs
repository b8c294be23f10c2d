//! `edgeloop-agent`: parses flags and wires the library; nothing else.

use std::net::SocketAddr;
use std::path::PathBuf;

use anyhow::{Context, Result};
use clap::{Args, Parser, Subcommand};
use edgeloop_agent::device::{MachineFacts, SystemRoots, device_info};
use edgeloop_agent::runtime::Runtimes;
use edgeloop_agent::{Agent, AgentConfig, check_listen_addr, engine};
use edgeloop_api::MeasureRequest;
use edgeloop_api::token::resolve_token;

#[derive(Parser)]
#[command(name = "edgeloop-agent", version, about = "Measures ONNX models on this device for edgeloop", long_about = None)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Serve the measurement API (DESIGN §5) over HTTP.
    Serve(ServeArgs),
    /// Measure a model file locally with the same engine the server uses.
    Bench(BenchArgs),
    /// Print this device's descriptor (what GET /v1/info answers).
    Info(InfoArgs),
}

#[derive(Args)]
struct CommonArgs {
    /// Where models and the persisted device id live.
    #[arg(long, env = "EDGELOOP_CACHE_DIR")]
    cache_dir: Option<PathBuf>,
    /// Name this device explicitly instead of deriving an id from the machine.
    #[arg(long)]
    device_id: Option<String>,
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
    #[arg(long, default_value = "tract")]
    runtime: String,
    #[arg(long, default_value_t = 1)]
    threads: usize,
    /// Runs before timing starts (discarded).
    #[arg(long, default_value_t = MeasureRequest::default().warmup_runs)]
    warmup: usize,
    /// Timed runs at least.
    #[arg(long, default_value_t = MeasureRequest::default().min_runs)]
    runs: usize,
    /// Timed duration at least, in ms.
    #[arg(long, default_value_t = MeasureRequest::default().min_duration_ms)]
    min_duration_ms: u64,
    /// Stop timing after this long even if --runs is not reached, in ms.
    #[arg(long, default_value_t = MeasureRequest::default().max_duration_ms)]
    max_duration_ms: u64,
    /// Seed of the random inputs.
    #[arg(long, default_value_t = 0)]
    seed: u64,
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

fn default_cache_dir() -> PathBuf {
    // Android shells have no XDG dirs; fall back next to the binary's cwd.
    dirs::cache_dir().map(|d| d.join("edgeloop-agent")).unwrap_or_else(|| PathBuf::from("edgeloop-agent-cache"))
}

impl CommonArgs {
    fn config(&self) -> AgentConfig {
        let mut config = AgentConfig::new(self.cache_dir.clone().unwrap_or_else(default_cache_dir));
        config.device_id = self.device_id.clone();
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
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env().unwrap_or_else(|_| "edgeloop_agent=info".into()),
        )
        .with_writer(std::io::stderr)
        .init();
    match Cli::parse().command {
        Command::Serve(args) => serve(args),
        Command::Bench(args) => bench(args),
        Command::Info(args) => info(args),
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
    let agent = Agent::new(config, Runtimes::detect())
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
    let runtimes = Runtimes::detect();
    let runtime =
        runtimes.get(&args.runtime).ok_or_else(|| anyhow::anyhow!(runtimes.unavailable_reason(&args.runtime)))?;
    let (_, device_id) = args.common.local_device()?;
    let request = MeasureRequest {
        model: edgeloop_agent::store::sha256_hex(&bytes),
        runtime: args.runtime.clone(),
        threads: args.threads,
        warmup_runs: args.warmup,
        min_runs: args.runs,
        min_duration_ms: args.min_duration_ms,
        max_duration_ms: args.max_duration_ms,
        seed: args.seed,
        ..Default::default()
    };
    let measurement = engine::measure(runtime.as_ref(), &bytes, &request)
        .with_context(|| format!("measuring {}", args.model.display()))?
        .into_measurement(&request, &device_id, runtime.as_ref());
    if args.json {
        println!("{}", serde_json::to_string_pretty(&measurement)?);
    } else {
        print!("{}", edgeloop_api::display::measurement_table(&measurement));
    }
    Ok(())
}

fn info(args: InfoArgs) -> Result<()> {
    let (facts, device_id) = args.common.local_device()?;
    let info = device_info(&device_id, &facts, &SystemRoots::default(), &Runtimes::detect());
    if args.json {
        println!("{}", serde_json::to_string_pretty(&info)?);
    } else {
        print!("{}", edgeloop_api::display::device_table(&info));
    }
    Ok(())
}
