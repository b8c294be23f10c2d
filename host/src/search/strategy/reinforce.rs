//! `--strategy reinforce`: policy gradient on α with rewards from
//! latencies (or energies) measured live on the device.

use clap::Args;
use edgeloop_space::Arch;
use edgeloop_train::BnMode;
use edgeloop_train::trainer::{batch_accuracy, update_alpha};
use rand::rngs::SmallRng;
use serde::{Deserialize, Serialize};
use tch::Tensor;

use super::prescreen::prescreened;
use super::{Context, SearchStrategy, StrategyColumns, alpha_columns, dual_ascent, measure_archs};
use crate::measure::Measurements;
use crate::search::state::SearchModel;
use crate::search::{Budget, Mean};

/// How REINFORCE's reward takes the budget.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize, clap::ValueEnum)]
#[serde(rename_all = "lowercase")]
pub enum RewardKind {
    /// acc − λ·(COST/T − 1), λ ≥ 0 by dual ascent on the measured costs.
    #[default]
    Lagrange,
    /// MnasNet's acc·(COST/T)^w (`--reward-w`, or `--hard-constraint`).
    Mnas,
}

/// The REINFORCE strategy's flags.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, Args)]
#[command(next_help_heading = "Strategy reinforce")]
pub struct ReinforceSettings {
    /// How the reward takes the budget: lagrange (acc − λ·(COST/T − 1))
    /// or mnas (acc·(COST/T)^w, see --reward-w and --hard-constraint).
    #[arg(long, value_enum, default_value_t = RewardKind::Lagrange)]
    #[serde(default)]
    pub reward: RewardKind,
    /// Archs sampled (and measured) per update.
    #[arg(long, value_name = "M", default_value_t = 4)]
    pub samples: usize,
    /// mnas: reward = acc·(LAT/T)^w, the soft w.
    #[arg(long, value_name = "W", default_value_t = -0.07, allow_negative_numbers = true)]
    pub reward_w: f64,
    /// mnas: w = 0 within the budget, −1 above it.
    #[arg(long)]
    pub hard_constraint: bool,
    /// baseline ← d·baseline + (1 − d)·mean reward.
    #[arg(long, value_name = "D", default_value_t = 0.99)]
    pub baseline_decay: f64,
}

impl Default for ReinforceSettings {
    fn default() -> Self {
        crate::search::settings::cli_defaults()
    }
}

impl ReinforceSettings {
    pub(super) fn check(&self) -> anyhow::Result<()> {
        anyhow::ensure!(self.samples > 0, "--samples must be at least 1");
        anyhow::ensure!((0.0..1.0).contains(&self.baseline_decay), "--baseline-decay must be in [0, 1)");
        Ok(())
    }

    /// acc · (COST/T)^w (MnasNet), COST the measured latency or energy: soft
    /// with w < 0 everywhere, or hard with w = 0 within the budget and −1 above it.
    pub fn mnas_reward(&self, acc: f64, cost: f64, budget: Budget) -> f64 {
        let ratio = cost / budget.limit;
        let w = if self.hard_constraint { if ratio <= 1.0 { 0.0 } else { -1.0 } } else { self.reward_w };
        acc * ratio.powf(w)
    }
}

/// What a REINFORCE search carries from one update to the next.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct ReinforceState {
    /// The moving-average baseline (None before the first update).
    pub baseline: Option<f64>,
    /// The budget's multiplier (`lagrange`), moved by dual ascent.
    pub lambda: f64,
}

pub(super) struct Reinforce<'a> {
    pub settings: &'a ReinforceSettings,
    pub state: ReinforceState,
    reward: Mean,
}

impl<'a> Reinforce<'a> {
    pub fn new(settings: &'a ReinforceSettings, state: ReinforceState) -> Self {
        Reinforce { settings, state, reward: Mean::default() }
    }
}

impl SearchStrategy for Reinforce<'_> {
    type State = ReinforceState;

    fn multiplier(&self) -> Option<f64> {
        (self.settings.reward == RewardKind::Lagrange).then_some(self.state.lambda)
    }

    /// One update: M archs sampled from p, each scored on a held-out batch
    /// and measured on the devices; reward acc − λ(COST/T − 1) (λ by dual
    /// ascent on the measured costs) or MnasNet's acc · (COST/T)^w; α ascends
    /// mean((R − b) ∇ log p(arch)).
    async fn arch_step(
        &mut self,
        ctx: &Context<'_>,
        pool: &mut dyn Measurements,
        m: &mut SearchModel,
        (x, y): (&Tensor, &Tensor),
        _train: (&Tensor, &Tensor),
        rng: &mut SmallRng,
    ) -> anyhow::Result<()> {
        let s = self.settings;
        let st = &mut self.state;
        let draws = ctx.settings.prescreen.draws(s.samples);
        let drawn: Vec<Vec<usize>> = (0..draws).map(|_| m.alpha.sample(rng)).collect();
        let selections = prescreened(ctx, m, drawn, s.samples, |s| s)?;
        let archs: Vec<Arch> = selections.iter().map(|sel| m.model.net.arch(sel)).collect();
        let accs: Vec<f64> =
            selections.iter().map(|sel| batch_accuracy(&m.model.net, sel, x, y, BnMode::BatchStats)).collect();
        let measured = measure_archs(ctx, pool, &m.model.vs, &archs).await?;
        let costs: Vec<f64> = measured.iter().map(|m| ctx.budget.measured(m)).collect();
        let rewards: Vec<f64> = match s.reward {
            RewardKind::Lagrange => {
                accs.iter().zip(&costs).map(|(&a, &c)| a - st.lambda * (c / ctx.target() - 1.0)).collect()
            }
            RewardKind::Mnas => accs.iter().zip(&costs).map(|(&a, &c)| s.mnas_reward(a, c, ctx.budget)).collect(),
        };
        if s.reward == RewardKind::Lagrange {
            let mean_cost = costs.iter().sum::<f64>() / costs.len() as f64;
            st.lambda = dual_ascent(st.lambda, ctx.settings.budget.lambda_lr, mean_cost / ctx.target());
        }
        let mean = rewards.iter().sum::<f64>() / rewards.len() as f64;
        let baseline = st.baseline.unwrap_or(mean);
        let mut grads: Vec<Vec<f64>> = m.model.net.candidate_counts().iter().map(|&n| vec![0.0; n]).collect();
        for (sel, r) in selections.iter().zip(&rewards) {
            for (g, lp) in grads.iter_mut().zip(m.alpha.log_prob_grad(sel)) {
                // Adam descends: the gradient of −J.
                g.iter_mut().zip(lp).for_each(|(g, lp)| *g -= (r - baseline) * lp / rewards.len() as f64);
            }
        }
        update_alpha(&m.alpha, &mut m.adam, &grads, None);
        st.baseline = Some(s.baseline_decay * baseline + (1.0 - s.baseline_decay) * mean);
        self.reward.add(mean);
        Ok(())
    }

    /// The updates' mean reward and the baseline, then α's columns.
    fn end_epoch(&mut self, ctx: &Context<'_>, m: &SearchModel) -> StrategyColumns {
        let mut columns =
            vec![("mean_reward", self.reward.mean()), ("baseline", self.state.baseline.unwrap_or(f64::NAN))];
        columns.extend(alpha_columns(ctx, m, self.multiplier()));
        self.reward = Mean::default();
        columns
    }

    fn state(&self) -> &ReinforceState {
        &self.state
    }
}
