//! `--strategy gradient`: ProxylessNAS's gradient through binary gates,
//! the cost term priced from the device's table (E[COST] is linear in p).

use clap::Args;
use edgeloop_train::trainer::{CostObjective, arch_gradient, update_alpha};
use edgeloop_train::{CostLoss, CostLossKind, GateMode};
use rand::rngs::SmallRng;
use serde::{Deserialize, Serialize};
use tch::Tensor;

use super::{Context, SearchStrategy, StrategyColumns, alpha_columns, dual_ascent};
use crate::search::Mean;
use crate::search::state::SearchModel;

/// The gradient strategy's flags.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, Args)]
#[command(next_help_heading = "Strategy gradient")]
pub struct GradientSettings {
    /// Binary gates of a gradient arch step: `two` sampled paths or `full`.
    #[arg(long, value_name = "MODE", default_value = "two")]
    pub gate_mode: GateMode,
    /// Cost term: lagrange (the budget as a constraint with a multiplier λ by
    /// dual ascent), mul#log, add#linear (ProxylessNAS's fixed-strength
    /// penalties) or off.
    #[arg(long, value_name = "LOSS", default_value = "lagrange")]
    pub latency_loss: CostLossKind,
    /// mul#log: L = a·CE·(log E[LAT] / log T)^b — the a.
    #[arg(long, value_name = "A", default_value_t = 0.2)]
    pub loss_a: f64,
    /// mul#log: the b.
    #[arg(long, value_name = "B", default_value_t = 0.3)]
    pub loss_b: f64,
    /// add#linear: L = CE + λ·(E[LAT] − T)/T — the λ.
    #[arg(long, value_name = "L", default_value_t = 0.1)]
    pub loss_lambda: f64,
}

impl Default for GradientSettings {
    fn default() -> Self {
        crate::search::settings::cli_defaults()
    }
}

impl GradientSettings {
    /// The cost term of an arch step with multiplier `lambda` (used by `lagrange` only).
    pub fn cost_loss(&self, lambda: f64) -> CostLoss {
        match self.latency_loss {
            CostLossKind::Lagrange => CostLoss::AddLinear { lambda },
            CostLossKind::MulLog => CostLoss::MulLog { a: self.loss_a, b: self.loss_b },
            CostLossKind::AddLinear => CostLoss::AddLinear { lambda: self.loss_lambda },
            CostLossKind::Off => CostLoss::Off,
        }
    }

    pub(super) fn uses_multiplier(&self) -> bool {
        self.latency_loss == CostLossKind::Lagrange
    }
}

/// What a gradient search carries from one arch step to the next.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct GradientState {
    /// The budget's multiplier (`lagrange`), moved by dual ascent.
    pub lambda: f64,
}

pub(super) struct Gradient<'a> {
    pub settings: &'a GradientSettings,
    pub state: GradientState,
    ce: Mean,
    loss: Mean,
}

impl<'a> Gradient<'a> {
    pub fn new(settings: &'a GradientSettings, state: GradientState) -> Self {
        Gradient { settings, state, ce: Mean::default(), loss: Mean::default() }
    }
}

impl SearchStrategy for Gradient<'_> {
    type State = GradientState;

    fn multiplier(&self) -> Option<f64> {
        self.settings.uses_multiplier().then_some(self.state.lambda)
    }

    async fn arch_step(
        &mut self,
        ctx: &Context<'_>,
        _pool: &mut dyn crate::measure::Measurements,
        m: &mut SearchModel,
        (x, y): (&Tensor, &Tensor),
        _train: (&Tensor, &Tensor),
        rng: &mut SmallRng,
    ) -> anyhow::Result<()> {
        let s = self.settings;
        let multiplier = s.uses_multiplier();
        let gates = m.alpha.gates(s.gate_mode, rng);
        // The constraint aims under the margin; the penalties take T as ProxylessNAS does.
        let target = if multiplier { ctx.target() } else { ctx.budget.limit };
        let objective =
            CostObjective { costs: ctx.budget_costs().clone(), loss: s.cost_loss(self.state.lambda), target };
        let (grads, step) = arch_gradient(&m.model.net, &m.alpha, &gates, x, y, Some(&objective));
        update_alpha(&m.alpha, &mut m.adam, &grads, Some((&gates, s.gate_mode)));
        if multiplier {
            let lambda_lr = ctx.settings.budget.lambda_lr;
            self.state.lambda = dual_ascent(self.state.lambda, lambda_lr, step.expected_cost / ctx.target());
        }
        self.ce.add(step.ce);
        self.loss.add(step.loss);
        Ok(())
    }

    /// The arch steps' mean cross-entropy and loss, then α's columns.
    fn end_epoch(&mut self, ctx: &Context<'_>, m: &SearchModel) -> StrategyColumns {
        let mut columns = vec![("arch_ce", self.ce.mean()), ("arch_loss", self.loss.mean())];
        columns.extend(alpha_columns(ctx, m, self.multiplier()));
        (self.ce, self.loss) = (Mean::default(), Mean::default());
        columns
    }

    fn state(&self) -> &GradientState {
        &self.state
    }
}
