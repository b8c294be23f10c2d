//! `--strategy unas`: UNAS's estimator (SEEDS §2, `meta_loss = rebar`) with
//! the device in the loop. Each arch step draws one architecture d from the
//! softened α (and its relaxation ζ̂) and differentiates
//! log q(d)·stopgrad[f(d) − f(ζ̂)] + f(ζ̂), where f is the loss of the held-out
//! batch plus λ·(COST/T′ − 1): for d the COST **measured on the device**
//! (through the cache), for ζ̂ the table's prediction, which is linear in the
//! one-hot architecture and so the surrogate UNAS fits — its error costs
//! variance, never bias. λ moves by the same dual ascent as the other
//! strategies. The supernet's weights train on discrete draws from the
//! same softened α (binarized, as ProxylessNAS; UNAS trains the soft
//! mixture): the weights then learn exactly the architectures the objective
//! is over, and the relaxed mixture — every op of every block — is computed
//! only in arch steps, on one batch.

use clap::Args;
use edgeloop_space::Arch;
use edgeloop_train::BnMode;
use edgeloop_train::trainer::update_alpha;
use edgeloop_train::unas::{BlockDraw, Relaxation, rebar_loss};
use rand::Rng;
use rand::rngs::SmallRng;
use serde::{Deserialize, Serialize};
use tch::{Kind, Tensor};

use super::{Context, SearchStrategy, StrategyColumns, alpha_columns, dual_ascent, measure_archs};
use crate::measure::Measurements;
use crate::search::Mean;
use crate::search::state::SearchModel;

/// The UNAS strategy's flags.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, Args)]
#[command(next_help_heading = "Strategy unas")]
pub struct UnasSettings {
    /// Gumbel-softmax temperature of the relaxation (UNAS: 0.4, constant).
    #[arg(long, value_name = "T", default_value_t = 0.4)]
    pub unas_tau: f64,
    /// Softening: each op keeps probability ≥ ε/(1 + Kε) (UNAS: 0.08).
    #[arg(long, value_name = "E", default_value_t = 0.08)]
    pub unas_eps: f64,
    /// UNAS's generalization-gap objective: the training batch's loss plus
    /// γ·|held-out − training| per example pair (UNAS: 0.5); 0 scores the
    /// held-out batch alone.
    #[arg(long, value_name = "G", default_value_t = 0.0)]
    pub gen_gap: f64,
}

impl Default for UnasSettings {
    fn default() -> Self {
        crate::search::settings::cli_defaults()
    }
}

impl UnasSettings {
    pub(super) fn check(&self) -> anyhow::Result<()> {
        anyhow::ensure!(self.unas_tau > 0.0, "--unas-tau must be positive");
        anyhow::ensure!(self.unas_eps >= 0.0, "--unas-eps must be 0 or more");
        anyhow::ensure!(self.gen_gap >= 0.0, "--gen-gap must be 0 or more");
        Ok(())
    }

    fn relaxation(&self) -> Relaxation {
        Relaxation { tau: self.unas_tau, eps: self.unas_eps }
    }
}

/// What a UNAS search carries between arch steps.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct UnasState {
    /// The budget's multiplier, moved by dual ascent on the measured costs.
    pub lambda: f64,
}

pub(super) struct Unas<'a> {
    settings: &'a UnasSettings,
    state: UnasState,
    loss: Mean,
    cost: Mean,
}

impl<'a> Unas<'a> {
    pub fn new(settings: &'a UnasSettings, state: UnasState) -> Self {
        Unas { settings, state, loss: Mean::default(), cost: Mean::default() }
    }

    /// The loss per example of the path `selection` (or, with `mixture`,
    /// of the relaxed network) on (x, y).
    fn losses(m: &SearchModel, x: &Tensor, y: &Tensor, mixture: Option<&[Tensor]>, d: &[usize]) -> Tensor {
        let logits = match mixture {
            Some(weights) => m.model.net.forward_mixed(x, weights, BnMode::BatchStats),
            None => m.model.net.forward(x, d, BnMode::BatchStats),
        };
        logits
            .log_softmax(-1, Kind::Float)
            .nll_loss_nd::<Tensor>(y, None, tch::Reduction::None, -100)
            .to_kind(Kind::Double)
    }

    /// The accuracy part of the objective: the held-out loss, or UNAS's
    /// training loss + γ·mean|held-out − training| over example pairs.
    fn objective(
        &self,
        m: &SearchModel,
        (hx, hy): (&Tensor, &Tensor),
        (tx, ty): (&Tensor, &Tensor),
        mixture: Option<&[Tensor]>,
        d: &[usize],
    ) -> Tensor {
        let held = Self::losses(m, hx, hy, mixture, d);
        if self.settings.gen_gap == 0.0 {
            return held.mean(Kind::Double);
        }
        let train = Self::losses(m, tx, ty, mixture, d);
        let n = held.size()[0].min(train.size()[0]);
        let gap = (held.narrow(0, 0, n) - train.narrow(0, 0, n)).abs().mean(Kind::Double);
        train.mean(Kind::Double) + gap * self.settings.gen_gap
    }
}

impl SearchStrategy for Unas<'_> {
    type State = UnasState;

    fn multiplier(&self) -> Option<f64> {
        Some(self.state.lambda)
    }

    /// A draw from the softened α (uniform while warming up).
    fn path(&self, m: &SearchModel, warmup: bool, rng: &mut SmallRng) -> Vec<usize> {
        if warmup {
            return super::uniform_path(m, rng);
        }
        let eps = self.settings.unas_eps;
        m.alpha
            .probs()
            .iter()
            .map(|p| {
                let softened: Vec<f64> = p.iter().map(|p| p + eps).collect();
                let mut pick = rng.random::<f64>() * softened.iter().sum::<f64>();
                softened
                    .iter()
                    .position(|&w| {
                        pick -= w;
                        pick < 0.0
                    })
                    .unwrap_or(softened.len() - 1)
            })
            .collect()
    }

    async fn arch_step(
        &mut self,
        ctx: &Context<'_>,
        pool: &mut dyn Measurements,
        m: &mut SearchModel,
        holdout: (&Tensor, &Tensor),
        train: (&Tensor, &Tensor),
        rng: &mut SmallRng,
    ) -> anyhow::Result<()> {
        let relax = self.settings.relaxation();
        let alpha: Vec<Tensor> = m.alpha.tensors().iter().map(Tensor::shallow_clone).collect();
        let draws: Vec<BlockDraw> = alpha
            .iter()
            .map(|a| {
                let k = a.size()[0];
                let u: Vec<f64> = (0..k).map(|_| rng.random()).collect();
                relax.draw(a, &Tensor::from_slice(&u).view([1, k]))
            })
            .collect();
        // One draw: the architecture measured is the one log q scores.
        let d: Vec<usize> = draws.iter().map(|b| b.choice.int64_value(&[0]) as usize).collect();
        let arch: Arch = m.model.net.arch(&d);
        let measured =
            ctx.budget.measured(&measure_archs(ctx, pool, &m.model.vs, std::slice::from_ref(&arch)).await?[0]);
        let target = ctx.target();
        let lambda = self.state.lambda;
        let costs = ctx.budget_costs();
        // f(d): the discrete architecture's loss and measured cost.
        let discrete =
            tch::no_grad(|| self.objective(m, holdout, train, None, &d)) + lambda * (measured / target - 1.0);
        // f(ζ̂): the relaxed network's loss and the table's linear prediction.
        let weights: Vec<Tensor> = draws.iter().map(|b| b.relaxed.squeeze_dim(0)).collect();
        let predicted = weights
            .iter()
            .zip(&costs.per_block)
            .map(|(w, c)| w.dot(&Tensor::from_slice(c)))
            .fold(Tensor::from(costs.fixed), |acc, c| acc + c);
        let relaxed = self.objective(m, holdout, train, Some(&weights), &d) + (predicted / target - 1.0) * lambda;
        let log_q = draws.iter().map(|b| b.log_q.shallow_clone()).reduce(|a, b| a + b).expect("blocks");
        let loss = rebar_loss(&log_q, &discrete.view([1]), &relaxed.view([1]));
        let grads = Tensor::run_backward(&[&loss], &alpha, false, false);
        let grads: Vec<Vec<f64>> = grads.iter().map(|g| Vec::<f64>::try_from(g).expect("f64 α")).collect();
        update_alpha(&m.alpha, &mut m.adam, &grads, None);
        self.state.lambda = dual_ascent(lambda, ctx.settings.budget.lambda_lr, measured / target);
        self.loss.add(discrete.double_value(&[]));
        self.cost.add(measured);
        Ok(())
    }

    /// The drawn architectures' mean objective and measured cost, then α's columns.
    fn end_epoch(&mut self, ctx: &Context<'_>, m: &SearchModel) -> StrategyColumns {
        let mut columns = vec![("arch_loss", self.loss.mean()), ("sample_cost", self.cost.mean())];
        columns.extend(alpha_columns(ctx, m, self.multiplier()));
        (self.loss, self.cost) = (Mean::default(), Mean::default());
        columns
    }

    fn state(&self) -> &UnasState {
        &self.state
    }
}
