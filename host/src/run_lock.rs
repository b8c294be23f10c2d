//! The lifecycle of a run directory (`--out` of search, train, quantize):
//! created, locked by this process for the whole run (two `--resume` of one
//! run would interleave its files), refused when it already holds a run
//! and `--resume` was not given, and when `--resume` finds nothing to resume.

use std::path::{Path, PathBuf};

use anyhow::{Context as _, bail};
use edgeloop_durable::DirLock;

/// Opens the run directory `root` for a `what` (e.g. "search"), whose
/// checkpoints are `checkpoints` (any of them means a run is there). The
/// lock is held until the returned value is dropped.
pub fn open(root: &Path, resume: bool, checkpoints: &[PathBuf], what: &str) -> anyhow::Result<DirLock> {
    std::fs::create_dir_all(root).with_context(|| format!("creating {}", root.display()))?;
    let lock = DirLock::acquire(root)?;
    let holds_run = checkpoints.iter().any(|c| c.exists());
    match (holds_run, resume) {
        (true, false) => {
            bail!("{} already holds a {what}; pass --resume to continue it, or choose another --out", root.display())
        }
        (false, true) => bail!("--resume: {} holds no checkpoint to resume", root.display()),
        _ => Ok(lock),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_run_directory_is_refused_resumed_and_held_by_one_process() {
        let dir = tempfile::tempdir().unwrap();
        let root = dir.path().join("run");
        let checkpoint = root.join("checkpoint");
        let error = open(&root, true, std::slice::from_ref(&checkpoint), "search").unwrap_err().to_string();
        assert!(error.contains("holds no checkpoint to resume"), "{error}");

        let lock = open(&root, false, std::slice::from_ref(&checkpoint), "search").unwrap();
        std::fs::write(&checkpoint, b"state").unwrap();
        let error = open(&root, true, std::slice::from_ref(&checkpoint), "search").unwrap_err().to_string();
        assert!(error.contains("in use by another process"), "{error}");
        drop(lock);

        let error = open(&root, false, std::slice::from_ref(&checkpoint), "search").unwrap_err().to_string();
        assert!(error.contains("already holds a search; pass --resume"), "{error}");
        open(&root, true, &[checkpoint], "search").unwrap();
    }
}
