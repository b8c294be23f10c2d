//! `edgeloop report`: runs and a baseline sweep in one report.

use std::path::PathBuf;

use clap::Args;

/// `edgeloop report`.
#[derive(Args)]
pub struct ReportArgs {
    /// Run directories (of search, train or quantize) to report on.
    #[arg(value_name = "RUN", required = true)]
    runs: Vec<PathBuf>,
    /// A baseline sweep's folder (with baselines.csv).
    #[arg(long, value_name = "DIR")]
    baselines: Option<PathBuf>,
    /// Where report.md, pareto.png and latency.png go.
    #[arg(long, value_name = "DIR")]
    out: PathBuf,
}

pub fn execute(args: ReportArgs) -> anyhow::Result<()> {
    let written = crate::report::run(&args.runs, args.baselines.as_deref(), &args.out)?;
    if !written.comparisons.is_empty() {
        print!("{}", crate::report::comparison_table(&written.comparisons));
    }
    println!("wrote {} (with pareto.png and latency.png)", written.markdown.display());
    Ok(())
}
