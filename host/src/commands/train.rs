//! `edgeloop train`: one fixed architecture trained and measured.

use std::path::PathBuf;

use clap::Args;

use super::export::load_arch;
use super::flags::{FixedRunArgs, SpaceArgs};
use crate::baseline::Baseline;
use crate::search;

/// `edgeloop train`: see README "Baselines and reports".
#[derive(Args)]
#[command(group(clap::ArgGroup::new("which").required(true).args(["arch", "baseline"])))]
pub struct TrainArgs {
    #[command(flatten)]
    space: SpaceArgs,
    /// Architecture JSON ({"space", "width", "ops": [...]}) to train.
    #[arg(long, value_name = "A.json")]
    arch: Option<PathBuf>,
    /// A hand-designed architecture of the space's layout instead.
    #[arg(long, value_enum)]
    baseline: Option<Baseline>,
    #[command(flatten)]
    run: FixedRunArgs,
    /// Judge the trained model against this latency budget, ms (optional).
    #[arg(long, value_name = "MS")]
    budget_ms: Option<f64>,
    /// Run directory: arch.json, model.onnx, result.json, final.checkpoint.
    #[arg(long, value_name = "DIR")]
    out: PathBuf,
    /// Continue the training checkpointed in --out.
    #[arg(long)]
    resume: bool,
}

pub async fn execute(args: TrainArgs) -> anyhow::Result<()> {
    let space = args.space.load()?;
    let arch = match (&args.arch, args.baseline) {
        (Some(path), _) => load_arch(&space, path)?,
        (None, baseline) => baseline.expect("clap requires --arch or --baseline").arch(&space)?,
    };
    let settings = args.run.settings(&args.space.space, args.space.width);
    let env = args.run.env(args.out.clone(), args.resume)?;
    let result = crate::train::run(&settings, &arch, args.budget_ms, args.run.budget_stat, &env).await?;
    print!("{}", search::render_summary(&result, &args.out));
    Ok(())
}
