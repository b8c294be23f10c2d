//! Agent overhead benchmark: the agent's p50 measured through HTTP versus
//! the runtime used directly on the same model and threads — a tight
//! in-process tract loop for `tract`, onnxruntime's Python API timing itself
//! (scripts/bench_ort.py) for `ort` — with the ratio agent / baseline (goal:
//! within [0.98, 1.02]), for each `--isolation` of the agent; then what
//! process isolation costs (a cold worker start, and a warm worker per
//! request against a thread); then tract against ort as the agent measures
//! them. Run through scripts/bench-agent.sh.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};
use clap::Parser;
use edgeloop::client::AgentClient;
use edgeloop_api::MeasureRequest;
use edgeloop_onnx::samples::MbconvNet;
use tract_onnx::prelude::*;
use tract_onnx::tract_core::runtime::RunOptions;
use tract_onnx::tract_core::tract_linalg::multithread::Executor;

#[derive(Parser)]
struct Args {
    /// The edgeloop-agent binary to serve (a release build).
    #[arg(long)]
    agent_bin: PathBuf,
    /// Thread counts to compare.
    #[arg(long, value_delimiter = ',', default_value = "1")]
    threads: Vec<usize>,
    /// Timed duration of each measurement, per side, in ms.
    #[arg(long, default_value_t = 3000)]
    duration_ms: u64,
    /// Alternating rounds per side; the median p50 of the rounds is compared.
    #[arg(long, default_value_t = 3)]
    rounds: usize,
    /// Python with onnxruntime, for ORT's own timing [default: the repo's .venv].
    #[arg(long)]
    python: Option<PathBuf>,
    /// The agent's isolation modes to compare.
    #[arg(long, value_delimiter = ',', default_value = "process,thread")]
    isolation: Vec<String>,
    /// Minimal requests timed per isolation mode for the per-request cost.
    #[arg(long, default_value_t = 200)]
    quick_requests: usize,
}

struct Served(Child);

impl Drop for Served {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn start_agent(bin: &PathBuf, dir: &std::path::Path, isolation: &str) -> Result<(Served, String)> {
    let addr_file = dir.join("addr");
    let _ = std::fs::remove_file(&addr_file);
    let child = Command::new(bin)
        .args(["serve", "--listen", "127.0.0.1:0", "--isolation", isolation, "--addr-file"])
        .arg(&addr_file)
        .arg("--cache-dir")
        .arg(dir.join("cache"))
        .env_remove("EDGELOOP_TOKEN")
        .stderr(Stdio::null())
        .spawn()
        .with_context(|| format!("starting {}", bin.display()))?;
    let served = Served(child);
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        if let Ok(addr) = std::fs::read_to_string(&addr_file)
            && !addr.is_empty()
        {
            return Ok((served, format!("http://{addr}")));
        }
        if Instant::now() > deadline {
            bail!("agent did not start within 30 s");
        }
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// The baseline: tract used directly, one state reused, clock around `run`.
fn in_process_p50(model: &[u8], threads: usize, duration: Duration) -> Result<(f64, usize)> {
    let typed = tract_onnx::onnx().model_for_read(&mut &*model)?.into_optimized()?;
    let executor = if threads > 1 { Executor::multithread(threads) } else { Executor::SingleThread };
    let plan = typed.into_runnable_with_options(&RunOptions { executor: Some(executor), ..Default::default() })?;
    let input_fact = plan.model().input_fact(0)?.clone();
    let shape: Vec<usize> = input_fact.shape.as_concrete().context("concrete input shape")?.to_vec();
    // Values in [-1, 1) like the agent's inputs; the exact values do not matter.
    let values: Vec<f32> =
        (0..shape.iter().product::<usize>()).map(|i| ((i * 7919) % 2000) as f32 / 1000.0 - 1.0).collect();
    let input = Tensor::from_shape(&shape, &values)?;
    let inputs: TVec<TValue> = tvec![input.into()];
    let mut state = plan.spawn()?;
    for _ in 0..10 {
        state.run(inputs.clone())?;
    }
    let mut samples = Vec::new();
    let start = Instant::now();
    while start.elapsed() < duration || samples.len() < 50 {
        let t = Instant::now();
        state.run(inputs.clone())?;
        samples.push(t.elapsed().as_secs_f64() * 1e3);
    }
    samples.sort_by(f64::total_cmp);
    Ok((samples[samples.len().div_ceil(2) - 1], samples.len()))
}

/// The baseline of `ort`: onnxruntime timing itself from Python, with the
/// agent's warm-up and run counts.
fn python_ort_p50(python: &Path, model: &Path, threads: usize, req: &MeasureRequest) -> Result<f64> {
    let script = edgeloop_e2e::repo_root().join("scripts/bench_ort.py");
    let out = Command::new(python)
        .arg(&script)
        .arg(model)
        .args(["--threads", &threads.to_string(), "--warmup", &req.warmup_runs.to_string()])
        .args(["--min-runs", &req.min_runs.to_string(), "--min-duration-ms", &req.min_duration_ms.to_string()])
        .args(["--max-duration-ms", &req.max_duration_ms.to_string()])
        .output()
        .with_context(|| format!("running {} {}", python.display(), script.display()))?;
    if !out.status.success() {
        bail!("{} failed: {}", script.display(), String::from_utf8_lossy(&out.stderr));
    }
    let timing: serde_json::Value = serde_json::from_slice(&out.stdout).context("bench_ort.py output")?;
    timing["p50_ms"].as_f64().context("bench_ort.py printed no p50_ms")
}

/// Median p50s of one (isolation, model, threads, runtime): through the
/// agent, and of the baseline.
struct Row {
    isolation: String,
    model: &'static str,
    threads: usize,
    runtime: &'static str,
    agent: f64,
    baseline: f64,
}

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(f64::total_cmp);
    v[v.len() / 2]
}

/// A minimal measurement (one run of the small model): what a request
/// costs beyond the runs themselves.
fn quick_request(sha: &str) -> MeasureRequest {
    MeasureRequest {
        warmup_runs: 0,
        min_runs: 1,
        min_duration_ms: 0,
        max_duration_ms: 1000,
        ..MeasureRequest::for_model(sha)
    }
}

/// Worker costs of one isolation mode: the worker's cold start (process
/// only) and a minimal request's median wall time.
struct Costs {
    isolation: String,
    cold_start_ms: Option<f64>,
    request_ms: f64,
}

#[tokio::main(flavor = "current_thread")]
async fn main() -> Result<()> {
    let args = Args::parse();
    let python = args.python.clone().unwrap_or_else(|| edgeloop_e2e::repo_root().join(".venv/bin/python"));
    let dir = tempfile::tempdir()?;
    let duration = Duration::from_millis(args.duration_ms);
    // One agent per isolation mode, all served at once so that every round
    // measures each of them (and the baseline) back to back: the VM's slow
    // stretches then hit every column alike.
    let mut agents: Vec<(String, AgentClient, Served)> = Vec::new();
    for isolation in &args.isolation {
        let agent_dir = dir.path().join(isolation);
        std::fs::create_dir_all(&agent_dir)?;
        let (agent, url) = start_agent(&args.agent_bin, &agent_dir, isolation)?;
        agents.push((isolation.clone(), AgentClient::new(&url, None)?, agent));
    }
    let info = agents[0].1.info().await?;
    let runtimes: &[&'static str] = match info.runtimes_unavailable.get("ort") {
        Some(reason) => {
            eprintln!("ort is unavailable on this agent ({reason}); measuring tract only");
            &["tract"]
        }
        None => &["tract", "ort"],
    };
    let mut rows = Vec::new();
    for (name, net) in [("small-mbconv", MbconvNet::small()), ("large-mbconv", MbconvNet::large())] {
        let model = edgeloop_onnx::encode(&net.to_model());
        let model_path = dir.path().join(format!("{name}.onnx"));
        std::fs::write(&model_path, &model)?;
        let mut sha = String::new();
        for (_, client, _) in &agents {
            sha = client.upload(&model).await?.sha256;
        }
        for &threads in &args.threads {
            for &runtime in runtimes {
                let req = MeasureRequest {
                    runtime: runtime.into(),
                    threads,
                    min_duration_ms: args.duration_ms,
                    max_duration_ms: args.duration_ms * 10,
                    ..MeasureRequest::for_model(&sha)
                };
                let mut agent = vec![Vec::new(); agents.len()];
                let mut baseline = Vec::new();
                for _ in 0..args.rounds {
                    for (i, (_, client, _)) in agents.iter().enumerate() {
                        agent[i].push(client.measure(&req).await?.latency_ms.p50);
                    }
                    baseline.push(match runtime {
                        "tract" => in_process_p50(&model, threads, duration)?.0,
                        _ => python_ort_p50(&python, &model_path, threads, &req)?,
                    });
                }
                let baseline = median(baseline);
                for ((isolation, _, _), p50s) in agents.iter().zip(agent) {
                    let row = Row {
                        isolation: isolation.clone(),
                        model: name,
                        threads,
                        runtime,
                        agent: median(p50s),
                        baseline,
                    };
                    rows.push(row);
                }
            }
        }
    }
    let small = edgeloop_onnx::encode(&MbconvNet::small().to_model());
    let small_sha = edgeloop::client::sha256_hex(&small);
    let mut times = vec![Vec::new(); agents.len()];
    for (_, client, _) in &agents {
        client.upload(&small).await?;
        // Once untimed: the first request reads the model from disk.
        client.measure(&quick_request(&small_sha)).await?;
    }
    for _ in 0..args.quick_requests {
        for (i, (_, client, _)) in agents.iter().enumerate() {
            let t = Instant::now();
            client.measure(&quick_request(&small_sha)).await?;
            times[i].push(t.elapsed().as_secs_f64() * 1e3);
        }
    }
    let mut costs = Vec::new();
    for ((isolation, client, _), t) in agents.iter().zip(times) {
        let cold_start_ms = client.info().await?.agent.and_then(|a| a.worker_start_ms);
        costs.push(Costs { isolation: isolation.clone(), cold_start_ms, request_ms: median(t) });
    }
    println!("agent overhead: p50 through the agent's HTTP API vs the runtime used directly (goal 0.98-1.02);");
    println!("each round measures every isolation mode and the baseline back to back");
    println!(
        "{:<9} {:<14} {:>7} {:<7} {:>13} {:>16} {:<22} {:>7}",
        "isolation", "model", "threads", "runtime", "agent p50 ms", "baseline p50 ms", "baseline", "ratio"
    );
    for r in &rows {
        let baseline = if r.runtime == "tract" { "tract in-process" } else { "onnxruntime (Python)" };
        println!(
            "{:<9} {:<14} {:>7} {:<7} {:>13.4} {:>16.4} {:<22} {:>7.3}",
            r.isolation,
            r.model,
            r.threads,
            r.runtime,
            r.agent,
            r.baseline,
            baseline,
            r.agent / r.baseline
        );
    }
    println!();
    println!("worker costs: cold start (spawn to ready) and a minimal measurement's wall time through the API");
    println!("{:<9} {:>14} {:>18}", "isolation", "cold start ms", "per request ms");
    for c in &costs {
        let cold = c.cold_start_ms.map_or("-".to_string(), |ms| format!("{ms:.1}"));
        println!("{:<9} {:>14} {:>18.3}", c.isolation, cold, c.request_ms);
    }
    let agent_p50 = |isolation: &str, model: &str, threads: usize, runtime: &str| {
        rows.iter()
            .find(|r| (r.isolation.as_str(), r.model, r.threads, r.runtime) == (isolation, model, threads, runtime))
            .map(|r| r.agent)
    };
    if runtimes.contains(&"ort") {
        let isolation = &args.isolation[0];
        println!();
        println!("tract vs ort, both measured by the agent (p50, isolation {isolation})");
        println!("{:<14} {:>7} {:>13} {:>13} {:>10}", "model", "threads", "tract ms", "ort ms", "tract/ort");
        for r in rows.iter().filter(|r| r.runtime == "tract" && &r.isolation == isolation) {
            if let Some(ort) = agent_p50(isolation, r.model, r.threads, "ort") {
                println!("{:<14} {:>7} {:>13.4} {:>13.4} {:>10.3}", r.model, r.threads, r.agent, ort, r.agent / ort);
            }
        }
    }
    Ok(())
}
