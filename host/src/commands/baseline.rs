//! `edgeloop baseline`: MobileNetV2 at a sweep of widths.

use std::path::PathBuf;

use clap::Args;

use super::flags::FixedRunArgs;
use crate::baseline;

/// `edgeloop baseline`: see README "Baselines and reports".
#[derive(Args)]
pub struct BaselineArgs {
    /// Preset (proxyless-mobile, proxyless-cifar, tiny) or path to a space TOML file.
    #[arg(long, value_name = "NAME|FILE")]
    space: String,
    /// Width multipliers to train (widths whose channels round alike are trained once).
    #[arg(long, value_name = "W,W,…", value_delimiter = ',', default_values_t = baseline::DEFAULT_WIDTHS)]
    widths: Vec<f64>,
    /// Train only the widest width whose untrained network measures within
    /// this many ms on the device (all widths are measured first).
    #[arg(long, value_name = "MS")]
    fit_ms: Option<f64>,
    #[command(flatten)]
    run: FixedRunArgs,
    /// Folder of the sweep: baselines.csv and a run folder per width (w0.5/, …).
    /// Rerunning continues it: finished widths are read back.
    #[arg(long, value_name = "DIR")]
    out: PathBuf,
}

pub async fn execute(args: BaselineArgs) -> anyhow::Result<()> {
    anyhow::ensure!(!args.widths.is_empty(), "--widths: give at least one width");
    let settings = args.run.settings(&args.space, 1.0);
    let env = args.run.env(args.out.clone(), false)?;
    let stat = args.run.budget_stat;
    let widths = match args.fit_ms {
        Some(limit) => {
            let (widest, _) = baseline::widest_within(&args.space, &args.widths, limit, stat, &env).await?;
            println!("training width {widest}: the widest within {limit} ms {stat} (or the narrowest, if none is)");
            vec![widest]
        }
        None => args.widths.clone(),
    };
    let rows = baseline::run(&settings, &widths, stat, &args.out, &env).await?;
    println!("width  channels        accuracy  p50 ms   p90 ms   size");
    for r in &rows {
        println!(
            "{:<6} {:<15} {:>7.2}%  {:>7.3}  {:>7.3}  {:.1} kB",
            r.width,
            r.channels,
            100.0 * r.test_accuracy,
            r.measured_p50_ms,
            r.measured_p90_ms,
            r.model_kb
        );
    }
    println!("wrote {}", args.out.join("baselines.csv").display());
    Ok(())
}
