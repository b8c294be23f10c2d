//! Files other tools may read while a job runs: written whole or not at all.

use std::io::Write;
use std::path::Path;

use serde::Serialize;

/// Writes `bytes` to `path` through a fsynced temp file and a rename.
pub fn write_atomic(path: &Path, bytes: &[u8]) -> std::io::Result<()> {
    let tmp = path.with_extension("tmp");
    let mut file = std::fs::File::create(&tmp)?;
    file.write_all(bytes)?;
    file.sync_all()?;
    std::fs::rename(&tmp, path)
}

pub fn write_json(path: &Path, value: &impl Serialize) -> std::io::Result<()> {
    let text = serde_json::to_string_pretty(value).expect("serialises") + "\n";
    write_atomic(path, text.as_bytes())
}
