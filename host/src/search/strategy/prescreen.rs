//! `--prescreen K`: a strategy that measures the archs it draws (random,
//! reinforce) draws K times as many and keeps the best by a training-free
//! proxy before anything is measured or scored with the supernet.

use clap::Args;
use edgeloop_train::proxy::Proxy;
use serde::{Deserialize, Serialize};

use super::Context;
use crate::proxy::{keep_best, proxy_batch};
use crate::search::state::SearchModel;

/// Images in the batch the proxies score on.
const PROXY_BATCH: usize = 64;

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, Args)]
#[command(next_help_heading = "Prescreen (random, reinforce, nao)")]
pub struct PrescreenSettings {
    /// Draw K times as many archs as are measured (reinforce: per update;
    /// random: per derivation; nao: per round) and keep the best by
    /// --prescreen-proxy; 1 is off.
    #[arg(long, value_name = "K", default_value_t = 1)]
    #[serde(default = "no_prescreen")]
    pub prescreen: usize,
    /// The training-free proxy that prescreens: synflow, naswot, grad_norm or snip
    /// (naswot ranked trained tiny archs best: scripts/bench-proxies.sh).
    #[arg(long, value_name = "PROXY", default_value = "naswot")]
    #[serde(default = "default_proxy")]
    pub prescreen_proxy: Proxy,
}

fn no_prescreen() -> usize {
    1
}

fn default_proxy() -> Proxy {
    Proxy::Naswot
}

impl Default for PrescreenSettings {
    fn default() -> Self {
        crate::search::settings::cli_defaults()
    }
}

impl PrescreenSettings {
    pub(crate) fn check(&self, prescreens: bool) -> anyhow::Result<()> {
        anyhow::ensure!(self.prescreen > 0, "--prescreen must be at least 1");
        anyhow::ensure!(
            self.prescreen == 1 || prescreens,
            "--prescreen applies to the strategies that draw archs to measure: random, reinforce and nao"
        );
        Ok(())
    }

    /// How many to draw for `keep` kept.
    pub(super) fn draws(&self, keep: usize) -> usize {
        keep.saturating_mul(self.prescreen)
    }
}

/// The `keep` best of `items` by the prescreen proxy (all of them when
/// prescreening is off); `selection` says which path of the supernet an
/// item is. Each is scored on a network of its own, initialised from the
/// search's seed, on one training batch.
pub(super) fn prescreened<T>(
    ctx: &Context<'_>,
    m: &SearchModel,
    items: Vec<T>,
    keep: usize,
    selection: impl Fn(&T) -> &[usize],
) -> anyhow::Result<Vec<T>> {
    let settings = &ctx.settings.prescreen;
    if settings.prescreen == 1 {
        return Ok(items);
    }
    let seed = ctx.settings.recipe.seed;
    let (x, y) = proxy_batch(ctx.data, PROXY_BATCH, seed, ctx.device);
    let arch_of = |item: &T| m.model.net.arch(selection(item));
    Ok(keep_best(ctx.space, items, keep, settings.prescreen_proxy, (&x, &y), seed, arch_of)?)
}
