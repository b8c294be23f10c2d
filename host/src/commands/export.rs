//! `edgeloop export`: an architecture to an ONNX file.

use std::path::Path;

use anyhow::Context;
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
