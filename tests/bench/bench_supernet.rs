//! Supernet training-step benchmark, the tch side. Times weight steps
//! (forward, backward of the active path, SGD-Nesterov) of a space's
//! binarized supernet and of a standalone subnet, and UNAS's relaxed
//! mixture step (every op of every block, backward to α), on random data
//! already on the device, and reports the resident set size before the
//! first step and at its peak (one process per network:
//! scripts/bench-supernet.sh).
//! `--layout` prints the network layout so that scripts/bench_supernet.py
//! builds the very same network in PyTorch; scripts/bench-supernet.sh
//! prints the ratios.

use std::time::Instant;

use anyhow::{Result, bail};
use clap::Parser;
use edgeloop_space::{Op, Space};
use edgeloop_train::optim::Sgd;
use edgeloop_train::trainer::weight_step;
use edgeloop_train::{BnMode, DeviceKind, Supernet};
use serde_json::json;
use tch::nn::VarStore;
use tch::{Device, Kind, Tensor};

#[derive(Parser)]
struct Args {
    #[arg(long, default_value = "tiny")]
    space: String,
    #[arg(long, default_value_t = 1.0)]
    width: f64,
    #[arg(long, default_value_t = 64)]
    batch: i64,
    #[arg(long, default_value_t = 50)]
    steps: usize,
    #[arg(long, default_value_t = 10)]
    warmup_steps: usize,
    #[arg(long, default_value = "cpu")]
    device_kind: DeviceKind,
    /// `supernet` (a path per step, as the search trains), `standalone` (path 0
    /// only, its own network) or `mixture` (UNAS's arch step: the relaxed
    /// mixture of every op, backward to α; tch only).
    #[arg(long, default_value = "supernet")]
    mode: String,
    #[arg(long)]
    threads: Option<i32>,
    /// Print the layout JSON and exit.
    #[arg(long)]
    layout: bool,
}

/// The path of step `step`: the same formula as bench_supernet.py.
pub fn path(step: usize, counts: &[usize]) -> Vec<usize> {
    counts.iter().enumerate().map(|(b, &n)| (step * 7 + b * 3) % n).collect()
}

fn layout(space: &Space) -> serde_json::Value {
    let [stem, first] = space.prefix_layers().try_into().unwrap();
    let [head, logits] = space.suffix_layers().try_into().unwrap();
    let blocks: Vec<_> = space
        .blocks
        .iter()
        .map(|b| {
            let candidates: Vec<_> = b
                .candidates
                .iter()
                .map(|op| match op {
                    Op::MbConv { kernel, expand } => json!([kernel, expand]),
                    Op::Zero => serde_json::Value::Null,
                })
                .collect();
            json!({"cin": b.input.channels, "cout": b.out_channels, "stride": b.stride,
                   "shortcut": b.has_shortcut(), "candidates": candidates})
        })
        .collect();
    json!({
        "input": [space.spec.input.channels, space.spec.input.height, space.spec.input.width],
        "stem": {"cin": stem.input.channels, "cout": stem.out_channels, "kernel": stem.kernel, "stride": stem.stride},
        "first": {"cin": first.input.channels, "cout": first.out_channels, "kernel": first.kernel,
                  "expand": first.expand, "shortcut": first.idskip},
        "blocks": blocks,
        "head": {"cin": head.input.channels, "cout": head.out_channels},
        "classes": logits.out_channels,
    })
}

/// Resident set size (kB) now and at its peak, from /proc/self/status.
fn rss_kb() -> (u64, u64) {
    let status = std::fs::read_to_string("/proc/self/status").unwrap_or_default();
    let field = |name: &str| {
        status
            .lines()
            .find_map(|l| l.strip_prefix(name))
            .and_then(|v| v.split_whitespace().next()?.parse().ok())
            .unwrap_or(0)
    };
    (field("VmRSS:"), field("VmHWM:"))
}

/// UNAS's arch-step work: the mixture weighted by softmax(α) forward, and
/// the loss differentiated to α (autograd keeps every op's activations).
fn mixture_step(net: &Supernet, alpha: &[Tensor], x: &Tensor, y: &Tensor) -> f64 {
    let weights: Vec<Tensor> = alpha.iter().map(|a| a.softmax(0, Kind::Float)).collect();
    let loss = net.forward_mixed(x, &weights, BnMode::BatchStats).cross_entropy_for_logits(y);
    let grads = Tensor::run_backward(&[&loss], alpha, false, false);
    grads.iter().map(|g| g.abs().sum(Kind::Float).double_value(&[])).sum()
}

fn main() -> Result<()> {
    let args = Args::parse();
    if let Some(n) = args.threads {
        tch::set_num_threads(n);
    }
    let space = Space::load(&args.space, args.width)?;
    if args.layout {
        println!("{}", layout(&space));
        return Ok(());
    }
    let device = args.device_kind.resolve()?;
    edgeloop_train::device::keep_freed_memory();
    tch::manual_seed(0);
    let vs = VarStore::new(device);
    let net = match args.mode.as_str() {
        "supernet" | "mixture" => Supernet::new(&vs.root(), &space),
        "standalone" => {
            let counts: Vec<usize> = space.blocks.iter().map(|b| b.candidates.len()).collect();
            let ops = space.blocks.iter().zip(path(0, &counts)).map(|(b, i)| b.candidates[i]).collect();
            let arch = edgeloop_space::Arch { space: space.name().into(), width: space.width, ops };
            Supernet::for_arch(&vs.root(), &space, &arch)?
        }
        other => bail!("--mode {other}: supernet, standalone or mixture"),
    };
    let counts = net.candidate_counts();
    let input = &space.spec.input;
    let x = Tensor::randn(
        [args.batch, input.channels as i64, input.height as i64, input.width as i64],
        (Kind::Float, device),
    );
    let y = Tensor::randint(space.spec.classes as i64, [args.batch], (Kind::Int64, device));
    let mut sgd = Sgd::nesterov(0.9, 4e-5);
    let sync = || {
        if let Device::Cuda(i) = device {
            tch::Cuda::synchronize(i as i64);
        }
    };
    let alpha: Vec<Tensor> =
        counts.iter().map(|&k| Tensor::zeros([k as i64], (Kind::Float, device)).set_requires_grad(true)).collect();
    let mut step = |i: usize| match args.mode.as_str() {
        "mixture" => mixture_step(&net, &alpha, &x, &y),
        _ => weight_step(&net, &mut sgd, &x, &y, &path(i, &counts), 0.01),
    };
    let (rss_before, _) = rss_kb();
    for i in 0..args.warmup_steps {
        step(i);
    }
    sync();
    let started = Instant::now();
    for i in 0..args.steps {
        step(args.warmup_steps + i);
    }
    sync();
    let step_ms = started.elapsed().as_secs_f64() * 1000.0 / args.steps as f64;
    let (_, rss_peak) = rss_kb();
    let params: i64 = vs.trainable_variables().iter().map(|t| t.numel() as i64).sum();
    println!(
        "{}",
        json!({"side": "tch", "mode": args.mode, "device": edgeloop_train::device::describe(device),
               "step_ms": step_ms, "params": params, "rss_before_kb": rss_before, "rss_peak_kb": rss_peak})
    );
    Ok(())
}
