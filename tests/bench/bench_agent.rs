//! Agent overhead benchmark: the agent's p50 measured through HTTP versus a
//! tight in-process tract loop on the same model and threads. Prints one
//! row per (model, threads) with the ratio agent / in-process (goal: within
//! [0.97, 1.03]). Run through scripts/bench-agent.sh.

use std::path::PathBuf;
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
}

struct Served(Child);

impl Drop for Served {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn start_agent(bin: &PathBuf, dir: &std::path::Path) -> Result<(Served, String)> {
    let addr_file = dir.join("addr");
    let child = Command::new(bin)
        .args(["serve", "--listen", "127.0.0.1:0", "--addr-file"])
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

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(f64::total_cmp);
    v[v.len() / 2]
}

#[tokio::main(flavor = "current_thread")]
async fn main() -> Result<()> {
    let args = Args::parse();
    let dir = tempfile::tempdir()?;
    let (_served, url) = start_agent(&args.agent_bin, dir.path())?;
    let client = AgentClient::new(&url, None)?;
    let duration = Duration::from_millis(args.duration_ms);
    println!("{:<14} {:>7} {:>13} {:>13} {:>7}", "model", "threads", "agent p50 ms", "tract p50 ms", "ratio");
    for (name, net) in [("small-mbconv", MbconvNet::small()), ("large-mbconv", MbconvNet::large())] {
        let model = edgeloop_onnx::encode(&net.to_model());
        let sha = client.upload(&model).await?.sha256;
        for &threads in &args.threads {
            let (mut agent, mut local) = (Vec::new(), Vec::new());
            for _ in 0..args.rounds {
                let req = MeasureRequest {
                    threads,
                    min_duration_ms: args.duration_ms,
                    max_duration_ms: args.duration_ms * 10,
                    ..MeasureRequest::for_model(&sha)
                };
                agent.push(client.measure(&req).await?.latency_ms.p50);
                local.push(in_process_p50(&model, threads, duration)?.0);
            }
            let (a, l) = (median(agent), median(local));
            println!("{name:<14} {threads:>7} {a:>13.4} {l:>13.4} {:>7.3}", a / l);
        }
    }
    Ok(())
}
