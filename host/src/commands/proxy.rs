//! `edgeloop proxy`: training-free proxies of sampled architectures, with
//! their size baselines.

use std::fmt::Write as _;

use clap::Args;
use edgeloop_train::DeviceKind;
use edgeloop_train::proxy::Proxy;

use super::flags::SpaceArgs;
use super::progress::Terminal;
use crate::dataset::Data;
use crate::proxy::{ArchScores, proxy_batch, sample_archs, score_archs};

/// `edgeloop proxy`: see README "Training-free proxies".
#[derive(Args)]
pub struct ProxyArgs {
    #[command(flatten)]
    space: SpaceArgs,
    /// Architectures drawn uniformly from the space (distinct, seeded).
    #[arg(long, value_name = "N", default_value_t = 20)]
    samples: usize,
    /// Proxies to compute, comma-separated: synflow, naswot, grad_norm, snip.
    #[arg(long, value_name = "LIST", value_delimiter = ',', default_value = "synflow,naswot,grad_norm,snip")]
    proxies: Vec<Proxy>,
    /// The scoring batch comes from this dataset's training split:
    /// synthetic[:TRAIN,TEST], cifar10:DIR, mnist:DIR or folder:DIR.
    #[arg(long, value_name = "SPEC", default_value = "synthetic")]
    dataset: String,
    /// Images in the scoring batch (synflow uses one all-ones input instead).
    #[arg(long, value_name = "N", default_value_t = 64)]
    batch_size: usize,
    /// Seeds the architectures drawn, the batch and every network's initialisation.
    #[arg(long, value_name = "N", default_value_t = 0)]
    seed: u64,
    /// Where the networks run: auto (CUDA when available), cpu or cuda.
    #[arg(long, value_name = "KIND", default_value = "auto")]
    device_kind: DeviceKind,
    /// Print JSON (an array, one object per architecture) instead of a table.
    #[arg(long)]
    json: bool,
}

pub fn execute(args: ProxyArgs) -> anyhow::Result<()> {
    anyhow::ensure!(args.samples > 0, "--samples must be at least 1");
    anyhow::ensure!(args.batch_size > 1, "--batch-size must be at least 2 (NASWOT compares examples)");
    let space = args.space.load()?;
    let device = args.device_kind.resolve()?;
    let data = Data::load(&args.dataset, 0, args.seed, &space)?;
    let (x, y) = proxy_batch(&data, args.batch_size, args.seed, device);
    let archs = sample_archs(&space, args.samples, args.seed);
    let scores = score_archs(&space, &archs, &args.proxies, (&x, &y), args.seed, &Terminal::default())?;
    if args.json {
        println!("{}", serde_json::to_string_pretty(&scores)?);
    } else {
        print!("{}", render(&scores, &args.proxies));
    }
    Ok(())
}

/// One row per architecture: hash, size baselines, each proxy, time, ops.
pub fn render(scores: &[ArchScores], proxies: &[Proxy]) -> String {
    let mut out = format!("{:<12} {:>9} {:>9}", "arch", "params", "MMACs");
    for p in proxies {
        let _ = write!(out, " {:>11}", p.name());
    }
    out.push_str("       ms  ops\n");
    for s in scores {
        let _ = write!(out, "{:<12} {:>9} {:>9.2}", &s.arch_hash[..12], s.params, s.macs as f64 / 1e6);
        for p in proxies {
            let _ = write!(out, " {:>11.4e}", s.scores[p]);
        }
        let ms: f64 = s.milliseconds.values().sum();
        let _ = writeln!(out, " {ms:>8.1}  {}", s.ops.join(" "));
    }
    out
}
