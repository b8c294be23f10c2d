//! `edgeloop search`: flags, and the summary of the run.

use std::path::PathBuf;

use clap::Args;

use super::flags::{DevicesArgs, RecipeArgs, RunOn, SpaceArgs};
use super::progress::Terminal;
use crate::search::{
    self, BudgetSettings, DeriveSettings, PrescreenSettings, ScheduleSettings, SearchEnv, SearchSettings, StrategyArgs,
};

/// `edgeloop search`: see README "Search".
#[derive(Args)]
pub struct SearchArgs {
    #[command(flatten)]
    space: SpaceArgs,
    #[command(flatten)]
    recipe: RecipeArgs,
    #[command(flatten)]
    agents: DevicesArgs,
    #[command(flatten)]
    budget: BudgetSettings,
    /// Latency table of the device [default: latency-tables/<device_id>--<runtime>--<space>.csv,
    /// or …--energy.csv with --energy-budget-mj; built through the agent when rows are missing].
    #[arg(long, value_name = "FILE")]
    table: Option<PathBuf>,
    #[command(flatten)]
    schedule: ScheduleSettings,
    #[command(flatten)]
    derive: DeriveSettings,
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
    // Last: each strategy's group opens its own help heading.
    #[command(flatten)]
    strategy: StrategyArgs,
    #[command(flatten)]
    prescreen: PrescreenSettings,
}

pub async fn execute(args: SearchArgs) -> anyhow::Result<()> {
    let devices = args.agents.devices(crate::farm::Priority::Hi)?;
    if let Some(n) = args.threads {
        tch::set_num_threads(n);
    }
    let settings = SearchSettings {
        space: args.space.space.clone(),
        width: args.space.width,
        recipe: args.recipe.recipe(args.run_on.seed),
        budget: args.budget,
        schedule: args.schedule,
        strategy: args.strategy.settings(),
        prescreen: args.prescreen,
        derive: args.derive,
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
