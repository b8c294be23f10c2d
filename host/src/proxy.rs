//! Training-free proxies of architectures (SEEDS §3): each scored at
//! initialisation on one batch (`edgeloop_train::proxy`), next to its
//! parameter count and MACs — the size baselines every proxy must beat,
//! since in a latency-bound space size and latency go together. `edgeloop
//! proxy` prints them; a search's `--prescreen` keeps the best candidates
//! by one before anything is measured.

use std::collections::BTreeMap;
use std::time::Instant;

use edgeloop_space::{Arch, ArchError, Space};
use edgeloop_train::Supernet;
use edgeloop_train::proxy::{PathOf, Proxy, score};
use edgeloop_train::trainer::batch_tensors;
use serde::Serialize;
use tch::nn::VarStore;
use tch::{Device, Tensor};

use crate::dataset::Data;
use crate::events::{EventSink, Work};

/// What one architecture scores.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct ArchScores {
    pub arch_hash: String,
    pub ops: Vec<String>,
    /// Trainable parameters (convolutions, BatchNorm, classifier).
    pub params: u64,
    /// Multiply-accumulates of one inference.
    pub macs: u64,
    /// Each proxy's score (higher: predicted more accurate).
    pub scores: BTreeMap<Proxy, f64>,
    /// What each proxy took, ms (its own network's initialisation included).
    pub milliseconds: BTreeMap<Proxy, f64>,
}

/// The batch proxies score on: `batch_size` training images (labels for
/// the losses), the first of the train split shuffled with `seed`.
pub fn proxy_batch(data: &Data, batch_size: usize, seed: u64, device: Device) -> (Tensor, Tensor) {
    let batch = data.loader(&data.train, batch_size, Some(seed), false).next().expect("a non-empty train split");
    batch_tensors(&batch, data.shape, device)
}

/// `arch`'s scores by `proxies`, each on a network of its own initialised
/// from `seed` (so every proxy sees the same weights, and synflow's
/// changes to them stay its own), on the batch (x, y).
pub fn score_arch(
    space: &Space,
    arch: &Arch,
    proxies: &[Proxy],
    (x, y): (&Tensor, &Tensor),
    seed: u64,
) -> Result<ArchScores, ArchError> {
    let selection = vec![0; space.blocks.len()];
    let fresh = || -> Result<(VarStore, Supernet), ArchError> {
        tch::manual_seed(seed as i64);
        let vs = VarStore::new(x.device());
        let net = Supernet::for_arch(&vs.root(), space, arch)?;
        Ok((vs, net))
    };
    let params = {
        let (_, net) = fresh()?;
        net.params(&selection).iter().map(|p| p.tensor.numel() as u64).sum()
    };
    let mut scores = BTreeMap::new();
    let mut milliseconds = BTreeMap::new();
    for &proxy in proxies {
        let started = Instant::now();
        let (mut vs, net) = fresh()?;
        scores.insert(proxy, score(proxy, &mut vs, &PathOf { net: &net, selection: &selection }, x, y));
        milliseconds.insert(proxy, started.elapsed().as_secs_f64() * 1e3);
    }
    Ok(ArchScores {
        arch_hash: arch.hash(),
        ops: arch.ops.iter().map(ToString::to_string).collect(),
        params,
        macs: arch.macs(space)?,
        scores,
        milliseconds,
    })
}

/// The `keep` items of highest `proxy` score (all when there are no more),
/// best first; `arch_of` says which architecture an item is.
pub fn keep_best<T>(
    space: &Space,
    items: Vec<T>,
    keep: usize,
    proxy: Proxy,
    batch: (&Tensor, &Tensor),
    seed: u64,
    arch_of: impl Fn(&T) -> Arch,
) -> Result<Vec<T>, ArchError> {
    if items.len() <= keep {
        return Ok(items);
    }
    let mut scored = items
        .into_iter()
        .map(|item| {
            let score = score_arch(space, &arch_of(&item), &[proxy], batch, seed)?.scores[&proxy];
            // A diverged score ranks last.
            Ok((if score.is_nan() { f64::NEG_INFINITY } else { score }, item))
        })
        .collect::<Result<Vec<_>, ArchError>>()?;
    // Best first; among equals, the order they came in.
    scored.sort_by(|a, b| b.0.total_cmp(&a.0));
    Ok(scored.into_iter().take(keep).map(|(_, item)| item).collect())
}

/// `samples` distinct architectures drawn uniformly from `space` (fewer
/// when it has fewer), seeded.
pub fn sample_archs(space: &Space, samples: usize, seed: u64) -> Vec<Arch> {
    use rand::SeedableRng;
    let mut rng = rand::rngs::SmallRng::seed_from_u64(seed);
    let mut seen = std::collections::HashSet::new();
    let total = usize::try_from(space.num_archs()).unwrap_or(usize::MAX);
    let mut archs = Vec::new();
    while archs.len() < samples.min(total) {
        let arch = Arch::sample(space, &mut rng);
        if seen.insert(arch.hash()) {
            archs.push(arch);
        }
    }
    archs
}

/// Every arch of `archs` scored by `proxies` on (x, y), one unit of work
/// each on `events`.
pub fn score_archs(
    space: &Space,
    archs: &[Arch],
    proxies: &[Proxy],
    batch: (&Tensor, &Tensor),
    seed: u64,
    events: &dyn EventSink,
) -> Result<Vec<ArchScores>, ArchError> {
    let work = Work::start(events, "archs", archs.len() as u64, 0);
    archs
        .iter()
        .map(|arch| {
            let scores = score_arch(space, arch, proxies, batch, seed)?;
            work.advance(Some(arch.hash()[..12].to_string()));
            Ok(scores)
        })
        .collect()
}
