//! `edgeloop-agent`: parses flags and wires the library; nothing else.

mod cli;
mod logging;

use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use anyhow::{Context, Result};
use cli::{BenchArgs, Cli, CommonArgs, CompareArgs, Exit, InfoArgs, IsolationMode, ServeArgs};
use edgeloop_agent::device::{MachineFacts, device_info};
use edgeloop_agent::limits::Limits;
use edgeloop_agent::runtime::{Runtime, Runtimes};
use edgeloop_agent::{Agent, AgentConfig, Isolation, check_listen_addr, engine};
use edgeloop_cli::token::resolve_token;
use logging::LogFilter;

/// What is logged when neither --log-level nor RUST_LOG says.
const DEFAULT_LOG_FILTER: &str = "edgeloop_agent=info";

/// Logs to stderr, filtered by --log-level, else RUST_LOG, else the default.
fn init_logging(flag: Option<LogFilter>) {
    let default = || DEFAULT_LOG_FILTER.parse::<LogFilter>().expect("valid default log filter");
    let mut unreadable_env = None;
    let filter = flag.unwrap_or_else(|| match std::env::var("RUST_LOG") {
        Ok(value) if !value.trim().is_empty() => value.parse().unwrap_or_else(|e| {
            unreadable_env = Some((value, e));
            default()
        }),
        _ => default(),
    });
    logging::init(filter);
    if let Some((value, e)) = unreadable_env {
        log::warn!("ignoring RUST_LOG={value:?} ({e}); logging {DEFAULT_LOG_FILTER}");
    }
}

fn default_cache_dir() -> PathBuf {
    // Android shells have no XDG dirs; fall back next to the binary's cwd.
    dirs::cache_dir().map(|d| d.join("edgeloop-agent")).unwrap_or_else(|| PathBuf::from("edgeloop-agent-cache"))
}

impl CommonArgs {
    /// The agent's configuration these flags ask for.
    fn config(&self) -> AgentConfig {
        let mut config = AgentConfig::new(self.cache_dir().unwrap_or_else(default_cache_dir));
        config.device_id = self.device_id.clone();
        config.roots.sys = self.sysfs_root.clone();
        config.energy_sensor = self.energy_sensor.clone();
        config.meter.sample_rate_hz = self.energy_sample_hz;
        config.monitor.max_freq_drop = self.throttle_drop_pct / 100.0;
        config.runtimes = self.runtimes.settings.clone();
        config
    }
}

/// This machine's facts and device id under `config`, as `serve` would report them.
fn local_device(config: &AgentConfig) -> Result<(MachineFacts, String)> {
    let facts = MachineFacts::read(&config.roots);
    let id = edgeloop_agent::device::device_id(&config.cache_dir, &facts, config.device_id.as_deref())
        .with_context(|| format!("reading the device id in {}", config.cache_dir.display()))?;
    Ok((facts, id))
}

fn main() -> Result<ExitCode> {
    let cli: Cli = match cli::parse(std::env::args_os().skip(1)) {
        Ok(cli) => cli,
        Err(Exit::Print(text)) => {
            print!("{text}");
            return Ok(ExitCode::SUCCESS);
        }
        Err(usage) => {
            eprintln!("{usage}");
            return Ok(ExitCode::from(2));
        }
    };
    init_logging(cli.log_level);
    match cli.command {
        cli::Command::Serve(args) => serve(args),
        cli::Command::Worker => edgeloop_agent::serve_worker().map_err(anyhow::Error::msg),
        cli::Command::Bench(args) => bench(args),
        cli::Command::Info(args) => info(args),
        cli::Command::Compare(args) => compare(args),
    }
    .map(|()| ExitCode::SUCCESS)
}

fn serve(args: ServeArgs) -> Result<()> {
    let token = resolve_token(args.token_file.as_deref(), args.token().as_deref())?;
    check_listen_addr(args.listen, token.is_some()).map_err(anyhow::Error::msg)?;
    let mut config = args.common.config();
    config.token = token;
    config.max_model_bytes = args.max_model_mb << 20;
    config.cache_max_bytes = args.cache_max_mb << 20;
    config.limits = Limits { max_input_bytes: args.max_input_mb << 20, max_nodes: args.max_nodes };
    anyhow::ensure!(args.max_queue >= 1, "--max-queue must be at least 1");
    anyhow::ensure!(args.job_timeout_s >= 1 && args.read_timeout_s >= 1, "timeouts must be at least 1 s");
    config.worker.max_queue = args.max_queue;
    config.worker.job_timeout = Duration::from_secs(args.job_timeout_s);
    config.read_timeout = Duration::from_secs(args.read_timeout_s);
    config.worker.isolation = match args.isolation {
        IsolationMode::Process => Isolation::Process { program: worker_program()? },
        IsolationMode::Thread => Isolation::Thread,
    };
    let memory_mb = args.max_worker_mb.unwrap_or_else(|| MachineFacts::read(&config.roots).memory_mb * 3 / 4);
    config.worker.max_worker_bytes = (memory_mb > 0).then_some(memory_mb << 20);
    let cache_dir = config.cache_dir.clone();
    let runtimes = Runtimes::detect(&config.runtimes);
    for (name, reason) in runtimes.unavailable() {
        log::info!("runtime {name} unavailable: {reason}");
    }
    let agent = Agent::new(config, runtimes)
        .with_context(|| format!("starting the agent with cache dir {}", cache_dir.display()))?;
    // One async thread is plenty: it only moves requests and bytes (uploads
    // are hashed on the blocking pool, measurements run on their own thread),
    // and it leaves the device's other cores quiet while a model is timed.
    let runtime = tokio::runtime::Builder::new_current_thread().enable_all().build()?;
    runtime.block_on(async move {
        let listener =
            tokio::net::TcpListener::bind(args.listen).await.with_context(|| format!("binding {}", args.listen))?;
        let addr = listener.local_addr()?;
        if let Some(path) = &args.addr_file {
            std::fs::write(path, addr.to_string()).with_context(|| format!("writing {}", path.display()))?;
        }
        log::info!(
            "edgeloop-agent listening on {addr} (device id {}, cache {})",
            agent.device_id(),
            cache_dir.display()
        );
        let shutdown = async {
            let _ = tokio::signal::ctrl_c().await;
        };
        agent.serve(listener, shutdown).await.context("serving")
    })
}

/// This very binary, to run as measuring workers: `/proc/self/exe` where
/// there is one, so that a binary replaced on disk while the agent runs
/// (a new deploy) still starts workers of the agent's own version.
fn worker_program() -> Result<PathBuf> {
    let this = PathBuf::from("/proc/self/exe");
    if this.exists() {
        Ok(this)
    } else {
        std::env::current_exe().context("finding this binary, to run measuring workers")
    }
}

fn bench(args: BenchArgs) -> Result<()> {
    let bytes = std::fs::read(&args.model).with_context(|| format!("reading {}", args.model.display()))?;
    let config = args.common.config();
    let runtimes = Runtimes::detect(&config.runtimes);
    let runtime = runtime_named(&runtimes, &args.measure.runtime)?;
    let (_, device_id) = local_device(&config)?;
    let sensors = config.sensors();
    let request = args.measure.request(edgeloop_agent::store::sha256_hex(&bytes));
    let measurement = engine::measure(runtime, &bytes, &request, &sensors, &Limits::default())
        .with_context(|| format!("measuring {}", args.model.display()))?
        .into_measurement(&request, &device_id, runtime);
    if args.output.json {
        println!("{}", serde_json::to_string_pretty(&measurement)?);
    } else {
        print!("{}", edgeloop_cli::display::measurement_table(&measurement));
    }
    Ok(())
}

fn info(args: InfoArgs) -> Result<()> {
    let config = args.common.config();
    let (facts, device_id) = local_device(&config)?;
    let runtimes = Runtimes::detect(&config.runtimes);
    let info = device_info(&device_id, &facts, &config.roots, &runtimes, &config.energy_sensor);
    if args.output.json {
        println!("{}", serde_json::to_string_pretty(&info)?);
    } else {
        print!("{}", edgeloop_cli::display::device_table(&info));
    }
    Ok(())
}

fn runtime_named<'r>(runtimes: &'r Runtimes, name: &str) -> Result<&'r dyn Runtime> {
    runtimes.get(name).map(|r| r.as_ref()).ok_or_else(|| anyhow::anyhow!(runtimes.unavailable_reason(name)))
}

fn compare(args: CompareArgs) -> Result<()> {
    anyhow::ensure!(args.tolerance >= 0.0, "--tolerance must be a non-negative number");
    let bytes = std::fs::read(&args.model).with_context(|| format!("reading {}", args.model.display()))?;
    let runtimes = Runtimes::detect(&args.runtime_args.settings);
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
