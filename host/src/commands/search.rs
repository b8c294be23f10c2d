//! `edgeloop search`: flags, and the summary of the run.

use std::path::PathBuf;

use clap::Args;
use edgeloop_train::{CostLossKind, GateMode};

use super::flags::{Auth, RecipeArgs, RunOn, SpaceArgs};
use super::progress::Terminal;
use crate::AgentClient;
use crate::predict::Stat;
use crate::search::{self, RewardKind, SearchEnv, SearchSettings, Strategy};

/// `edgeloop search`: see README "Search".
#[derive(Args)]
#[command(group(clap::ArgGroup::new("budget").required(true).args(["budget_ms", "energy_budget_mj"])))]
pub struct SearchArgs {
    #[command(flatten)]
    space: SpaceArgs,
    #[command(flatten)]
    recipe: RecipeArgs,
    /// Base URL of an agent on the target device; repeat for several devices of one class.
    #[arg(long = "device", value_name = "URL", required = true)]
    devices: Vec<String>,
    #[command(flatten)]
    auth: Auth,
    /// Latency budget on the device, ms (judged on the final model's --budget-stat).
    #[arg(long, value_name = "MS")]
    budget_ms: Option<f64>,
    /// The statistic of the device's runs a latency budget is judged (and predicted) on.
    #[arg(long, value_enum, value_name = "STAT", default_value_t = Stat::P50)]
    budget_stat: Stat,
    /// Energy budget instead: mJ per inference above idle, read from the
    /// agent's power sensor (RAPL, Jetson INA3221 or Android battery).
    #[arg(long, value_name = "MJ")]
    energy_budget_mj: Option<f64>,
    /// Latency table of the device [default: latency-tables/<device_id>--<runtime>--<space>.csv,
    /// or …--energy.csv with --energy-budget-mj; built through the agent when rows are missing].
    #[arg(long, value_name = "FILE")]
    table: Option<PathBuf>,
    #[arg(long, value_enum, default_value_t = Strategy::Gradient)]
    strategy: Strategy,
    /// Search epochs (after the warm-up).
    #[arg(long, value_name = "N", default_value_t = 30)]
    epochs: usize,
    /// Weight-only epochs first, on uniformly sampled paths. A supernet
    /// learns far slower than one network (each op trains on a fraction of
    /// the steps): on `tiny` its loss leaves chance level after about 5 epochs.
    #[arg(long, value_name = "N", default_value_t = 20)]
    warmup_epochs: usize,
    /// Adam learning rate of α (betas 0, 0.999). ProxylessNAS's 1e-3 is for
    /// hundreds of epochs: at a few thousand arch steps α hardly moves.
    #[arg(long, value_name = "LR", default_value_t = 1e-2)]
    arch_lr: f64,
    /// Weight steps per architecture update.
    #[arg(long, value_name = "N", default_value_t = 5)]
    arch_every: usize,
    /// Binary gates of a gradient arch step: `two` sampled paths or `full`.
    #[arg(long, value_name = "MODE", default_value = "two")]
    gate_mode: GateMode,
    /// Cost term of the gradient strategy: lagrange (the budget as a constraint
    /// with a multiplier λ by dual ascent), mul#log, add#linear (ProxylessNAS's
    /// fixed-strength penalties) or off.
    #[arg(long, value_name = "LOSS", default_value = "lagrange")]
    latency_loss: CostLossKind,
    /// mul#log: L = a·CE·(log E[LAT] / log T)^b — the a.
    #[arg(long, value_name = "A", default_value_t = 0.2)]
    loss_a: f64,
    /// mul#log: the b.
    #[arg(long, value_name = "B", default_value_t = 0.3)]
    loss_b: f64,
    /// add#linear: L = CE + λ·(E[LAT] − T)/T — the λ.
    #[arg(long, value_name = "L", default_value_t = 0.1)]
    loss_lambda: f64,
    /// lagrange: the multiplier's step: λ ← λ + η·(E[COST]/T′ − 1) after each arch step
    /// while E[COST] > T′ = T·(1 − margin), halved while under (0 below 0.001).
    #[arg(long, value_name = "ETA", default_value_t = search::DEFAULT_LAMBDA_LR)]
    lambda_lr: f64,
    /// REINFORCE: how the reward takes the budget: lagrange (acc − λ·(COST/T − 1))
    /// or mnas (acc·(COST/T)^w, see --reward-w and --hard-constraint).
    #[arg(long, value_enum, default_value_t = RewardKind::Lagrange)]
    reward: RewardKind,
    /// REINFORCE: archs sampled (and measured) per update.
    #[arg(long, value_name = "M", default_value_t = 4)]
    samples: usize,
    /// REINFORCE (mnas): reward = acc·(LAT/T)^w, the soft w.
    #[arg(long, value_name = "W", default_value_t = -0.07, allow_negative_numbers = true)]
    reward_w: f64,
    /// REINFORCE (mnas): w = 0 within the budget, −1 above it.
    #[arg(long)]
    hard_constraint: bool,
    /// REINFORCE: baseline ← d·baseline + (1 − d)·mean reward.
    #[arg(long, value_name = "D", default_value_t = 0.99)]
    baseline_decay: f64,
    /// Architectures derived under the budget (most likely first) and measured on the device.
    #[arg(long, value_name = "K", default_value_t = search::DEFAULT_CANDIDATES)]
    derive_candidates: usize,
    /// Final trainings at most: when the final model misses the budget on the
    /// device, derive again with a larger margin and retrain, up to this many times in all.
    #[arg(long, value_name = "N", default_value_t = search::DEFAULT_ROUNDS)]
    max_rounds: usize,
    #[command(flatten)]
    run_on: RunOn,
    /// CPU threads for training [default: libtorch's choice].
    #[arg(long, value_name = "N")]
    threads: Option<i32>,
    /// Run directory: arch.json, search.csv, archs.csv, checkpoint, model.onnx, result.json.
    #[arg(long, value_name = "DIR")]
    out: PathBuf,
    /// Continue the search (or final training) checkpointed in --out.
    #[arg(long)]
    resume: bool,
}

pub async fn execute(args: SearchArgs) -> anyhow::Result<()> {
    let token = args.auth.token()?;
    let devices = args.devices.iter().map(|url| AgentClient::new(url, token.clone())).collect::<Result<Vec<_>, _>>()?;
    if let Some(n) = args.threads {
        tch::set_num_threads(n);
    }
    let settings = SearchSettings {
        space: args.space.space.clone(),
        width: args.space.width,
        recipe: args.recipe.recipe(args.run_on.seed),
        budget_ms: args.budget_ms,
        energy_budget_mj: args.energy_budget_mj,
        budget_stat: args.budget_stat,
        strategy: args.strategy,
        warmup_epochs: args.warmup_epochs,
        epochs: args.epochs,
        arch_lr: args.arch_lr,
        arch_every: args.arch_every,
        gate_mode: args.gate_mode,
        latency_loss: args.latency_loss,
        loss_a: args.loss_a,
        loss_b: args.loss_b,
        loss_lambda: args.loss_lambda,
        lambda_lr: args.lambda_lr,
        reward: args.reward,
        samples: args.samples,
        reward_w: args.reward_w,
        hard_constraint: args.hard_constraint,
        baseline_decay: args.baseline_decay,
        derive_candidates: args.derive_candidates,
        max_rounds: args.max_rounds,
        runtime: args.run_on.runtime.clone(),
        measure_threads: args.run_on.measure_threads,
    };
    let env = SearchEnv {
        out: args.out.clone(),
        resume: args.resume,
        devices,
        table: args.table,
        device_kind: args.run_on.device_kind,
        probe_request: args.run_on.probe_request(),
        final_request: args.run_on.final_request(),
        events: std::sync::Arc::new(Terminal::default()),
    };
    let result = search::run(settings, env).await?;
    print!("{}", search::render_summary(&result, &args.out));
    Ok(())
}
