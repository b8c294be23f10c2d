//! `edgeloop export`: an architecture to an ONNX file.

use std::path::{Path, PathBuf};

use super::flags::SpaceArgs;
use crate::baseline::Baseline;
use anyhow::Context;
use clap::Args;
use edgeloop_export::export::{RandomWeights, arch_model};
use edgeloop_onnx::encode;
use edgeloop_space::{Arch, Space};

/// Which architecture to export.
pub enum ArchSource<'a> {
    File(&'a Path),
    Random(u64),
    Baseline(crate::baseline::Baseline),
}

/// What was written.
pub struct Exported {
    pub arch: Arch,
    pub sha256: String,
    pub bytes: usize,
}

pub fn load_arch(space: &Space, path: &Path) -> anyhow::Result<Arch> {
    let text = std::fs::read_to_string(path).with_context(|| format!("reading arch {}", path.display()))?;
    let arch = Arch::from_json(&text).with_context(|| format!("arch file {}", path.display()))?;
    arch.validate(space).with_context(|| format!("arch file {}", path.display()))?;
    Ok(arch)
}

/// Exports with seeded random weights (BN folded); same inputs, same bytes.
pub fn run(space: &Space, source: ArchSource, weights_seed: u64, out: &Path) -> anyhow::Result<Exported> {
    let arch = match source {
        ArchSource::File(path) => load_arch(space, path)?,
        ArchSource::Random(seed) => Arch::random(space, seed),
        ArchSource::Baseline(baseline) => baseline.arch(space)?,
    };
    let bytes = encode(&arch_model(space, &arch, &mut RandomWeights::new(weights_seed))?);
    if let Some(dir) = out.parent().filter(|d| !d.as_os_str().is_empty()) {
        std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
    }
    edgeloop_durable::write_atomic(out, &bytes).with_context(|| format!("writing {}", out.display()))?;
    Ok(Exported { arch, sha256: crate::client::sha256_hex(&bytes), bytes: bytes.len() })
}

#[derive(Args)]
#[command(group(clap::ArgGroup::new("which").required(true).args(["arch", "random", "baseline"])))]
pub struct ExportArgs {
    #[command(flatten)]
    space: SpaceArgs,
    /// Architecture JSON ({"space", "width", "ops": [...]}).
    #[arg(long, value_name = "A.json")]
    arch: Option<PathBuf>,
    /// Export a random architecture drawn with this seed instead.
    #[arg(long, value_name = "SEED")]
    random: Option<u64>,
    /// Export a hand-designed architecture of the space's layout instead.
    #[arg(long, value_enum)]
    baseline: Option<Baseline>,
    /// Seed of the random weights.
    #[arg(long, value_name = "N", default_value_t = 0)]
    weights_seed: u64,
    /// Where to write the model.
    #[arg(long, value_name = "FILE")]
    out: PathBuf,
    /// Also write the architecture as JSON here (useful with --random).
    #[arg(long, value_name = "FILE")]
    arch_out: Option<PathBuf>,
}

pub fn execute(args: ExportArgs) -> anyhow::Result<()> {
    let space = args.space.load()?;
    let source = match (&args.arch, args.random, args.baseline) {
        (Some(path), _, _) => ArchSource::File(path),
        (None, Some(seed), _) => ArchSource::Random(seed),
        (None, None, baseline) => ArchSource::Baseline(baseline.expect("clap requires one source")),
    };
    let exported = run(&space, source, args.weights_seed, &args.out)?;
    if let Some(path) = &args.arch_out {
        std::fs::write(path, exported.arch.to_json() + "\n").with_context(|| format!("writing {}", path.display()))?;
    }
    println!(
        "{} ({} bytes, sha256 {}, arch {})",
        args.out.display(),
        exported.bytes,
        exported.sha256,
        &exported.arch.hash()[..12]
    );
    Ok(())
}
