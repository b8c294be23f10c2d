//! Farm overhead benchmark: the same small models measured through a
//! device farm (host → nats-server → worker → agent → KV → host) and by
//! calling the agent directly, both as the host's fleets take them (one
//! raw reading each: the clean-reading checks would re-take measurements
//! that the agents sharing this machine's cores disturb); the ratio of
//! end-to-end time per model (goal ≤ 1.1). Then
//! throughput with 1, 2, 4 agents through the farm against linear in the
//! agents (goal ≥ 0.9), beside the same through a direct pool: agents
//! that share this machine's cores cannot scale past them, whatever
//! dispatches their jobs. Run through scripts/bench-farm.sh.

use std::path::PathBuf;
use std::time::{Duration, Instant};

use anyhow::Result;
use clap::Parser;
use edgeloop::farm::server::{LocalServer, ServerSettings};
use edgeloop::farm::worker::{self, WorkerSettings};
use edgeloop::farm::{Farm, FarmAddress, FarmFleet, FarmTarget, Priority};
use edgeloop::measure::{DirectFleet, Fleet, MeasureJob, Procedure};
use edgeloop_api::MeasureRequest;
use edgeloop_e2e::TestAgent;
use edgeloop_onnx::samples::MbconvNet;

#[derive(Parser)]
struct Args {
    /// The nats-server binary.
    #[arg(long, default_value = "nats-server")]
    nats_server: PathBuf,
    /// Models measured one after another, per side, for the overhead (at
    /// 30 the ratio still moved by ±0.05 from run to run on a 2-core VM).
    #[arg(long, default_value_t = 60)]
    models: u64,
    /// Timed runs of each model (small: the overhead shows).
    #[arg(long, default_value_t = 20)]
    runs: usize,
    /// Models measured at once per agent for the throughput.
    #[arg(long, default_value_t = 8)]
    per_agent: u64,
    /// Timed duration of each model in the throughput part, ms.
    #[arg(long, default_value_t = 300)]
    duration_ms: u64,
    /// Agent counts for the throughput.
    #[arg(long, value_delimiter = ',', default_value = "1,2,4")]
    agents: Vec<usize>,
}

const CLASS: &str = "bench";

fn model(seed: u64) -> MeasureJob {
    let bytes = edgeloop_onnx::encode(&MbconvNet { seed, ..MbconvNet::small() }.to_model());
    MeasureJob::model(format!("model-{seed}"), bytes)
}

/// A farm on a fresh server, with an in-process worker serving `agents`.
struct Bench {
    server: LocalServer,
    _dir: tempfile::TempDir,
    stop: tokio::sync::watch::Sender<bool>,
}

impl Bench {
    fn start(binary: &std::path::Path, agents: &[&TestAgent]) -> Result<Bench> {
        let dir = tempfile::tempdir()?;
        let mut settings = ServerSettings::local(dir.path().join("farm"), binary.to_path_buf());
        settings.listen.set_port(0);
        let server = LocalServer::start(settings)?;
        let (stop, mut stopped) = tokio::sync::watch::channel(false);
        let url = server.url.clone();
        let clients: Vec<_> = agents.iter().map(|a| a.client()).collect();
        // The worker runs in its own thread and runtime, as its own process would.
        std::thread::spawn(move || {
            let runtime = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
            runtime.block_on(async move {
                let address = FarmAddress { url, nkey_file: None, ca_file: None };
                let farm = Farm::connect(&address, "bench worker").await.unwrap();
                let settings = WorkerSettings {
                    class: CLASS.into(),
                    ack_wait: Duration::from_secs(60),
                    retry_delay: Duration::from_secs(1),
                    name: "bench".into(),
                };
                tokio::select! {
                    outcome = worker::run(farm, settings, clients) => outcome.unwrap(),
                    _ = stopped.changed() => {}
                }
            });
        });
        Ok(Bench { server, _dir: dir, stop })
    }

    fn address(&self) -> FarmAddress {
        FarmAddress { url: self.server.url.clone(), nkey_file: None, ca_file: None }
    }

    async fn host(&self) -> Result<FarmFleet> {
        let target = FarmTarget { address: self.address(), class: CLASS.into(), priority: Priority::Hi };
        let started = Instant::now();
        loop {
            match FarmFleet::connect(target.clone()).await {
                Ok(fleet) => return Ok(fleet),
                Err(_) if started.elapsed() < Duration::from_secs(20) => {
                    tokio::time::sleep(Duration::from_millis(50)).await
                }
                Err(e) => return Err(e.into()),
            }
        }
    }
}

impl Drop for Bench {
    fn drop(&mut self) {
        let _ = self.stop.send(true);
    }
}

/// Seconds per model, measuring `seeds` one at a time.
async fn per_model(fleet: &dyn Fleet, seeds: std::ops::Range<u64>, procedure: &Procedure) -> Result<f64> {
    let n = seeds.end - seeds.start;
    let started = Instant::now();
    for seed in seeds {
        fleet.take(vec![model(seed)], procedure, false).await.1?;
    }
    Ok(started.elapsed().as_secs_f64() / n as f64)
}

/// Models per second, measuring `seeds` all at once.
async fn throughput(fleet: &dyn Fleet, seeds: std::ops::Range<u64>, procedure: &Procedure) -> Result<f64> {
    let n = seeds.end - seeds.start;
    let started = Instant::now();
    fleet.take(seeds.map(model).collect(), procedure, false).await.1?;
    Ok(n as f64 / started.elapsed().as_secs_f64())
}

#[tokio::main(flavor = "current_thread")]
async fn main() -> Result<()> {
    let args = Args::parse();
    let raw = |request| Procedure { request, clean: None };
    let quick =
        raw(MeasureRequest { warmup_runs: 2, min_runs: args.runs, min_duration_ms: 0, ..MeasureRequest::default() });
    let agents: Vec<TestAgent> = (0..args.agents.iter().copied().max().unwrap_or(1))
        .map(|i| TestAgent::start_with(|c| c.device_id = Some(format!("bench-{i}"))))
        .collect();

    // Overhead: one agent, models one after another, alternating sides in halves.
    let bench = Bench::start(&args.nats_server, &[&agents[0]])?;
    let farm = bench.host().await?;
    let direct = DirectFleet::connect(vec![agents[0].client()]).await?;
    let half = args.models / 2;
    // Warm both paths (connections, the worker's first pull).
    per_model(&farm, 1_000_000..1_000_002, &quick).await?;
    per_model(&direct, 1_000_002..1_000_004, &quick).await?;
    let d1 = per_model(&direct, 0..half, &quick).await?;
    let f1 = per_model(&farm, 10_000..10_000 + half, &quick).await?;
    let f2 = per_model(&farm, 20_000..20_000 + half, &quick).await?;
    let d2 = per_model(&direct, half..2 * half, &quick).await?;
    let (d, f) = ((d1 + d2) / 2.0, (f1 + f2) / 2.0);
    println!("## Per-measurement overhead ({} small models per side, {} runs each)", 2 * half, args.runs);
    println!();
    println!("| path | ms per model | ratio to direct |");
    println!("|---|---|---|");
    println!("| direct HTTP (DirectFleet) | {:.1} | 1.00 |", d * 1e3);
    println!("| farm | {:.1} | {:.2} (goal ≤ 1.10) |", f * 1e3, f / d);
    // Cached in the farm: a second host asks for what the first measured.
    let again = bench.host().await?;
    let cached = per_model(&again, 10_000..10_000 + half, &quick).await?;
    println!(
        "| farm, answered from its results (another host measured it) | {:.1} | {:.2} |",
        cached * 1e3,
        cached / d
    );
    drop(bench);

    // Throughput.
    let timed = raw(MeasureRequest { min_duration_ms: args.duration_ms, min_runs: 1, ..quick.request.clone() });
    println!();
    println!(
        "## Throughput ({} models per agent, {} ms each; this machine has {} cores)",
        args.per_agent,
        args.duration_ms,
        std::thread::available_parallelism()?.get()
    );
    println!();
    println!("| agents | farm models/s | farm vs linear | direct models/s | direct vs linear |");
    println!("|---|---|---|---|---|");
    let (mut farm_one, mut direct_one) = (0.0, 0.0);
    for (i, &n) in args.agents.iter().enumerate() {
        let used: Vec<&TestAgent> = agents[..n].iter().collect();
        let base = 100_000 * (i as u64 + 1);
        let jobs = args.per_agent * n as u64;
        let bench = Bench::start(&args.nats_server, &used)?;
        let farm = bench.host().await?;
        // Every agent registered before the clock starts.
        let broker = Farm::connect(&bench.address(), "bench").await?;
        while broker.devices(Some(CLASS)).await?.len() < n {
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        let f = throughput(&farm, base..base + jobs, &timed).await?;
        drop(bench);
        let clients = used.iter().map(|a| a.client()).collect();
        let direct = DirectFleet::connect(clients).await?;
        let d = throughput(&direct, base + 50_000..base + 50_000 + jobs, &timed).await?;
        if n == args.agents[0] {
            (farm_one, direct_one) = (f / n as f64, d / n as f64);
        }
        println!("| {n} | {f:.2} | {:.2} | {d:.2} | {:.2} |", f / (farm_one * n as f64), d / (direct_one * n as f64));
    }
    Ok(())
}
