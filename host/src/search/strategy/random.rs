//! `--strategy random`: the supernet trains on paths drawn uniformly; at
//! derivation, architectures drawn uniformly among those the table puts
//! within the budget are ranked by held-out accuracy with the supernet's
//! weights, and the best are measured on the device. Every other strategy
//! must beat it at equal device measurements.

use clap::Args;
use rand::SeedableRng;
use rand::rngs::SmallRng;
use serde::{Deserialize, Serialize};

use super::prescreen::prescreened;
use super::{Context, SearchStrategy, StrategyColumns, leave_out, most_accurate_first, uniform_path};
use crate::search::derive::{self, Derived};
use crate::search::state::SearchModel;

/// The random strategy's flags.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, Args)]
#[command(next_help_heading = "Strategy random")]
pub struct RandomSettings {
    /// Archs drawn per derivation, uniformly among those the table puts
    /// within the budget (after --prescreen), each scored on the held-out
    /// split (supernet weights): the best --derive-candidates are measured
    /// on the device.
    #[arg(long, value_name = "N", default_value_t = 100)]
    pub random_samples: usize,
}

impl Default for RandomSettings {
    fn default() -> Self {
        crate::search::settings::cli_defaults()
    }
}

impl RandomSettings {
    pub(super) fn check(&self) -> anyhow::Result<()> {
        anyhow::ensure!(self.random_samples > 0, "--random-samples must be at least 1");
        Ok(())
    }
}

/// Random search keeps nothing between epochs: its draws are seeded.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct RandomState {}

pub(super) struct Random<'a> {
    settings: &'a RandomSettings,
    state: RandomState,
}

impl<'a> Random<'a> {
    pub fn new(settings: &'a RandomSettings, state: RandomState) -> Self {
        Random { settings, state }
    }
}

impl SearchStrategy for Random<'_> {
    type State = RandomState;

    fn path(&self, m: &SearchModel, _warmup: bool, rng: &mut SmallRng) -> Vec<usize> {
        uniform_path(m, rng)
    }

    fn end_epoch(&mut self, _ctx: &Context<'_>, _m: &SearchModel) -> StrategyColumns {
        Vec::new()
    }

    fn leader(&self, _m: &SearchModel) -> Option<Vec<usize>> {
        None
    }

    fn ranking(&self) -> String {
        format!(
            "most accurate on the held-out split (supernet weights) of {} drawn uniformly within the limits",
            self.settings.random_samples
        )
    }

    fn candidates(
        &self,
        ctx: &Context<'_>,
        m: &SearchModel,
        (floor, limit): (f64, f64),
        k: usize,
        excluded: &[&str],
    ) -> anyhow::Result<Vec<Derived>> {
        let n = self.settings.random_samples;
        // Seeded by the limits: a resumed run draws (and measures) the same archs.
        let mut rng =
            SmallRng::seed_from_u64(ctx.settings.recipe.seed ^ limit.to_bits() ^ floor.to_bits().rotate_left(17));
        let drawn = derive::sample_within(ctx.budget_costs(), floor, limit, ctx.settings.prescreen.draws(n), &mut rng);
        let drawn = prescreened(ctx, m, leave_out(m, drawn, excluded).collect(), n, |d| &d.selection)?;
        let mut ranked = most_accurate_first(ctx, m, drawn);
        ranked.truncate(k);
        Ok(ranked)
    }

    fn state(&self) -> &RandomState {
        &self.state
    }
}
