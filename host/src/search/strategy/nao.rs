//! `--strategy nao`: NAO with weight sharing (SEEDS §1, NAO-WS and SemiNAS)
//! and the device in the loop. A pool of architectures (seeded uniformly)
//! shares the supernet, each weight step training one pool architecture
//! drawn uniformly. Every few epochs a round: each pool architecture is
//! scored with the supernet's weights on a held-out batch and priced by
//! the budget's figure (measured on the device where the cache has it, else
//! the table's prediction); NAO's encoder–predictor–decoder learns both;
//! the top K take gradient steps of growing size in embedding space on
//! predicted accuracy minus a hinge on the predicted cost over the budget;
//! decoded architectures that are new and that the table puts within the
//! budget are measured on the device and join the pool — topped up with
//! archs drawn uniformly within the budget when the decoder finds too few
//! (NAO-WS adds random archs every round). Derivation ranks the pool by
//! held-out accuracy.

use clap::Args;
use edgeloop_space::Arch;
use edgeloop_train::BnMode;
use edgeloop_train::nao::{Epd, EpdConfig, Example, Vocabulary, pairwise_accuracy};
use edgeloop_train::trainer::{batch_accuracy, batch_tensors};
use rand::rngs::SmallRng;
use rand::seq::SliceRandom;
use rand::{Rng, SeedableRng};
use serde::{Deserialize, Serialize};
use tch::Device;

use super::prescreen::prescreened;
use super::{Context, SearchStrategy, StrategyColumns, leave_out, measure_archs, most_accurate_first};
use crate::measure::Measurements;
use crate::search::derive::{self, Derived};
use crate::search::state::SearchModel;

/// Held-out images a round scores each pool architecture on (NAO: one batch).
const SCORE_IMAGES: usize = 256;

/// Share of the pool a round keeps out of the EPD's training, to report
/// how well its heads rank architectures they have not seen.
const HELD_OUT: f64 = 0.2;

/// The largest step a round takes in embedding space.
const MAX_ETA: usize = 30;

/// The NAO strategy's flags.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, Args)]
#[command(next_help_heading = "Strategy nao")]
pub struct NaoSettings {
    /// Architectures in the first pool, drawn uniformly from the space.
    #[arg(long, value_name = "N", default_value_t = 100)]
    pub nao_seeds: usize,
    /// Controller rounds, spread evenly over the search epochs.
    #[arg(long, value_name = "R", default_value_t = 3)]
    pub nao_rounds: usize,
    /// New architectures a round adds to the pool (after --prescreen).
    #[arg(long, value_name = "N", default_value_t = 50)]
    pub nao_new: usize,
    /// Pool architectures (most accurate first) a round moves in embedding space.
    #[arg(long, value_name = "K", default_value_t = 50)]
    pub nao_top: usize,
    /// Training epochs of the encoder–predictor–decoder per round.
    #[arg(long, value_name = "N", default_value_t = 300)]
    pub nao_epd_epochs: usize,
    /// Weight of the hinge on the predicted cost over the budget in the step's score.
    #[arg(long, value_name = "B", default_value_t = 1.0)]
    pub nao_hinge: f64,
    /// Weight λ of the predictors' loss (the reconstruction gets 1 − λ), as NAO's trade_off.
    #[arg(long, value_name = "L", default_value_t = 0.8)]
    pub nao_trade_off: f64,
}

impl Default for NaoSettings {
    fn default() -> Self {
        crate::search::settings::cli_defaults()
    }
}

impl NaoSettings {
    pub(super) fn check(&self) -> anyhow::Result<()> {
        anyhow::ensure!(self.nao_seeds >= 10, "--nao-seeds must be at least 10: the EPD learns from the pool");
        anyhow::ensure!(self.nao_top > 0 && self.nao_new > 0, "--nao-top and --nao-new must be at least 1");
        anyhow::ensure!((0.0..=1.0).contains(&self.nao_trade_off), "--nao-trade-off must be in [0, 1]");
        Ok(())
    }
}

/// What a NAO search carries between epochs: the pool (a selection per
/// architecture, in the order they joined) and the rounds done.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct NaoState {
    pub pool: Vec<Vec<usize>>,
    pub rounds_done: usize,
}

/// What the last round saw, for `search.csv`.
#[derive(Debug, Clone, Copy)]
struct RoundReport {
    reconstruction: f64,
    accuracy_ranking: f64,
    cost_ranking: f64,
    accepted: usize,
    random: usize,
    measured: usize,
}

pub(super) struct Nao<'a> {
    settings: &'a NaoSettings,
    state: NaoState,
    /// The most accurate pool architecture within the budget, after a round.
    best: Option<Vec<usize>>,
    report: Option<RoundReport>,
}

impl<'a> Nao<'a> {
    /// The strategy, with its first pool drawn when the search starts.
    pub fn new(settings: &'a NaoSettings, mut state: NaoState, ctx: &Context<'_>, m: &SearchModel) -> Self {
        if state.pool.is_empty() {
            let mut rng = SmallRng::seed_from_u64(ctx.settings.recipe.seed ^ 0x004e_414f);
            let counts = m.model.net.candidate_counts();
            let space_size: u128 = counts.iter().map(|&n| n as u128).product();
            let wanted = (settings.nao_seeds as u128).min(space_size) as usize;
            while state.pool.len() < wanted {
                let selection: Vec<usize> = counts.iter().map(|&n| rng.random_range(0..n)).collect();
                if !state.pool.contains(&selection) {
                    state.pool.push(selection);
                }
            }
        }
        Nao { settings, state, best: None, report: None }
    }

    /// Epochs between rounds; the rounds end with the search epochs.
    fn round_after(&self, ctx: &Context<'_>, epoch: usize) -> bool {
        let schedule = &ctx.settings.schedule;
        let Some(search_epoch) = (epoch + 1).checked_sub(schedule.warmup_epochs) else {
            return false;
        };
        let every = (schedule.epochs / self.settings.nao_rounds.max(1)).max(1);
        search_epoch > 0 && search_epoch % every == 0 && self.state.rounds_done < self.settings.nao_rounds
    }

    /// Held-out accuracy (supernet weights) of each selection on one batch.
    fn score(ctx: &Context<'_>, m: &SearchModel, selections: &[Vec<usize>]) -> Vec<f64> {
        let batch = ctx.data.loader(&ctx.data.holdout, SCORE_IMAGES, None, false).next().expect("held-out images");
        let (x, y) = batch_tensors(&batch, ctx.data.shape, ctx.device);
        selections.iter().map(|s| batch_accuracy(&m.model.net, s, &x, &y, BnMode::BatchStats)).collect()
    }

    /// The budget's figure of each selection: measured where the cache has
    /// it, else the table's prediction.
    fn costs(ctx: &Context<'_>, pool: &dyn Measurements, m: &SearchModel, selections: &[Vec<usize>]) -> Vec<f64> {
        let energy = ctx.env.probe_request.energy;
        selections
            .iter()
            .map(|s| match pool.cached(&m.model.net.arch(s).hash(), energy) {
                Some(measured) => ctx.budget.measured(measured),
                None => derive::predicted_cost(ctx.budget_costs(), s),
            })
            .collect()
    }

    async fn round(&mut self, ctx: &Context<'_>, pool: &mut dyn Measurements, m: &SearchModel) -> anyhow::Result<()> {
        let s = self.settings;
        let round = self.state.rounds_done;
        let selections = self.state.pool.clone();
        let accuracy = Self::score(ctx, m, &selections);
        let log_cost: Vec<f64> = Self::costs(ctx, pool, m, &selections).iter().map(|c| c.max(1e-9).ln()).collect();
        let scale = |v: &[f64]| {
            let (lo, hi) = v.iter().fold((f64::INFINITY, f64::NEG_INFINITY), |(l, h), &x| (l.min(x), h.max(x)));
            move |x: f64| if hi > lo { (x - lo) / (hi - lo) } else { 0.5 }
        };
        let (acc_scale, cost_scale) = (scale(&accuracy), scale(&log_cost));
        let vocab = Vocabulary::of(ctx.space);
        let examples: Vec<Example> = selections
            .iter()
            .zip(accuracy.iter().zip(&log_cost))
            .map(|(sel, (&a, &c))| Example {
                tokens: vocab.encode(sel),
                accuracy: acc_scale(a),
                latency: cost_scale(c),
            })
            .collect();
        let seed = ctx.settings.recipe.seed ^ (round as u64 + 1).wrapping_mul(0x9e37_79b9);
        let mut order: Vec<usize> = (0..examples.len()).collect();
        order.shuffle(&mut SmallRng::seed_from_u64(seed));
        let held = ((examples.len() as f64 * HELD_OUT) as usize).max(2);
        let (held_idx, train_idx) = order.split_at(held);
        let train: Vec<Example> = train_idx.iter().map(|&i| examples[i].clone()).collect();
        let config = EpdConfig { epochs: s.nao_epd_epochs, trade_off: s.nao_trade_off, ..EpdConfig::default() };
        let mut epd = Epd::new(vocab.clone(), config, seed, Device::Cpu);
        epd.train(&train, seed);

        // How well it learnt: reconstruction of what it saw, ranking of what it did not.
        let train_tokens: Vec<Vec<i64>> = train.iter().map(|e| e.tokens.clone()).collect();
        let back = epd.reconstructions(&train_tokens);
        let reconstruction =
            back.iter().zip(&train_tokens).filter(|(a, b)| a == b).count() as f64 / train_tokens.len() as f64;
        let held_tokens: Vec<Vec<i64>> = held_idx.iter().map(|&i| examples[i].tokens.clone()).collect();
        let predicted = epd.predictions(&held_tokens);
        let truth = |f: fn(&Example) -> f64| held_idx.iter().map(|&i| f(&examples[i])).collect::<Vec<_>>();
        let accuracy_ranking =
            pairwise_accuracy(&predicted.iter().map(|p| p.0).collect::<Vec<_>>(), &truth(|e| e.accuracy));
        let cost_ranking = pairwise_accuracy(&predicted.iter().map(|p| p.1).collect::<Vec<_>>(), &truth(|e| e.latency));

        // New archs: the top K stepped up the predicted score, η = 1, 2, … until enough.
        let limit = ctx.target();
        let tau = cost_scale(limit.max(1e-9).ln());
        let mut top: Vec<usize> = (0..selections.len()).collect();
        top.sort_by(|&a, &b| accuracy[b].total_cmp(&accuracy[a]));
        let top_tokens: Vec<Vec<i64>> = top.iter().take(s.nao_top).map(|&i| vocab.encode(&selections[i])).collect();
        let wanted = ctx.settings.prescreen.draws(s.nao_new);
        let mut accepted: Vec<Vec<usize>> = Vec::new();
        for eta in 1..=MAX_ETA {
            for (tokens, _, _) in epd.improve(&top_tokens, eta as f64, tau, s.nao_hinge) {
                let Some(selection) = vocab.decode(&tokens) else { continue };
                let fits = derive::predicted_cost(ctx.budget_costs(), &selection) <= limit;
                if fits && !self.state.pool.contains(&selection) && !accepted.contains(&selection) {
                    accepted.push(selection);
                }
            }
            if accepted.len() >= wanted {
                break;
            }
        }
        accepted.truncate(wanted);
        let decoded = accepted.clone();
        // Too few: archs drawn uniformly within the budget make up the rest.
        let mut rng = SmallRng::seed_from_u64(seed);
        // Enough draws that, with every pool arch among them, some are left.
        let draws = wanted + self.state.pool.len();
        let random: Vec<Vec<usize>> = derive::sample_within(ctx.budget_costs(), 0.0, limit, draws, &mut rng)
            .into_iter()
            .map(|d| d.selection)
            .filter(|s| !self.state.pool.contains(s) && !decoded.contains(s))
            .take(wanted - decoded.len())
            .collect();
        accepted.extend(random);
        let accepted = prescreened(ctx, m, accepted, s.nao_new, |s| s)?;
        let from_decoder = accepted.iter().filter(|s| decoded.contains(s)).count();
        let archs: Vec<Arch> = accepted.iter().map(|s| m.model.net.arch(s)).collect();
        let before = pool.counts().measured;
        measure_archs(ctx, pool, &m.model.vs, &archs).await?;
        let measured = pool.counts().measured - before;
        self.state.pool.extend(accepted.iter().cloned());
        self.state.rounds_done += 1;
        self.report = Some(RoundReport {
            reconstruction,
            accuracy_ranking,
            cost_ranking,
            accepted: from_decoder,
            random: accepted.len() - from_decoder,
            measured,
        });
        self.best = self.ranked(ctx, m, (0.0, limit), &[]).into_iter().next().map(|d| d.selection);
        Ok(())
    }

    /// The pool's architectures the table puts within [floor, limit], none
    /// of them `excluded`, most accurate first (held-out split, supernet weights).
    fn ranked(
        &self,
        ctx: &Context<'_>,
        m: &SearchModel,
        (floor, limit): (f64, f64),
        excluded: &[&str],
    ) -> Vec<Derived> {
        let within = self.state.pool.iter().filter_map(|s| {
            let predicted = derive::predicted_cost(ctx.budget_costs(), s);
            (floor..=limit).contains(&predicted).then(|| Derived { selection: s.clone(), score: f64::NAN, predicted })
        });
        most_accurate_first(ctx, m, leave_out(m, within.collect::<Vec<_>>(), excluded).collect())
    }
}

impl SearchStrategy for Nao<'_> {
    type State = NaoState;

    /// One pool architecture, drawn uniformly (NAO-WS's `sample_arch`).
    fn path(&self, _m: &SearchModel, _warmup: bool, rng: &mut SmallRng) -> Vec<usize> {
        self.state.pool[rng.random_range(0..self.state.pool.len())].clone()
    }

    async fn after_epoch(
        &mut self,
        ctx: &Context<'_>,
        pool: &mut dyn Measurements,
        m: &mut SearchModel,
        epoch: usize,
    ) -> anyhow::Result<()> {
        if self.round_after(ctx, epoch) { self.round(ctx, pool, m).await } else { Ok(()) }
    }

    fn end_epoch(&mut self, _ctx: &Context<'_>, _m: &SearchModel) -> StrategyColumns {
        let r = self.report.take();
        let or_nan = |f: fn(&RoundReport) -> f64| r.as_ref().map_or(f64::NAN, f);
        vec![
            ("pool", self.state.pool.len() as f64),
            ("reconstruction", or_nan(|r| r.reconstruction)),
            ("accuracy_ranking", or_nan(|r| r.accuracy_ranking)),
            ("cost_ranking", or_nan(|r| r.cost_ranking)),
            ("accepted", or_nan(|r| r.accepted as f64)),
            ("random", or_nan(|r| r.random as f64)),
            ("measured", or_nan(|r| r.measured as f64)),
        ]
    }

    fn leader(&self, _m: &SearchModel) -> Option<Vec<usize>> {
        self.best.clone()
    }

    fn ranking(&self) -> String {
        format!("most accurate on the held-out split (supernet weights) of the pool of {}", self.state.pool.len())
    }

    fn candidates(
        &self,
        ctx: &Context<'_>,
        m: &SearchModel,
        limits: (f64, f64),
        k: usize,
        excluded: &[&str],
    ) -> anyhow::Result<Vec<Derived>> {
        let mut ranked = self.ranked(ctx, m, limits, excluded);
        ranked.truncate(k);
        Ok(ranked)
    }

    fn state(&self) -> &NaoState {
        &self.state
    }
}
