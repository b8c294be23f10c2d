//! The lifecycle of a run directory (`--out` of search, train, quantize):
//! created, locked by this process for the whole run (two `--resume` of one
//! run would interleave its files), refused when it already holds a run
//! and `--resume` was not given, and when `--resume` finds nothing to resume;
//! a resumed run must have the settings its checkpoint was made with.

use std::path::{Path, PathBuf};

use anyhow::{Context as _, bail};
use edgeloop_durable::DirLock;
use serde::Serialize;

/// Opens the run directory `root` for a `what` (e.g. "search"), whose
/// checkpoints are `checkpoints` (any of them means a run is there). The
/// lock is held until the returned value is dropped.
pub fn open_run_dir(root: &Path, resume: bool, checkpoints: &[PathBuf], what: &str) -> anyhow::Result<DirLock> {
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

/// Refuses to resume with other settings than the checkpoint at `path` was
/// made with, naming each that differs.
pub fn check_settings<S: Serialize + PartialEq>(saved: &S, now: &S, path: &Path) -> anyhow::Result<()> {
    if saved == now {
        return Ok(());
    }
    let (a, b) = (serde_json::to_value(saved)?, serde_json::to_value(now)?);
    let differ: Vec<String> = a
        .as_object()
        .expect("settings are an object")
        .iter()
        .filter(|(k, v)| b.get(k.as_str()) != Some(v))
        .map(|(k, v)| format!("{k} (checkpoint {v}, now {})", b[k.as_str()]))
        .collect();
    bail!("{} was made with other settings: {}; resume with the same flags", path.display(), differ.join(", "))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_run_directory_is_refused_resumed_and_held_by_one_process() {
        let dir = tempfile::tempdir().unwrap();
        let root = dir.path().join("run");
        let checkpoint = root.join("checkpoint");
        let error = open_run_dir(&root, true, std::slice::from_ref(&checkpoint), "search").unwrap_err().to_string();
        assert!(error.contains("holds no checkpoint to resume"), "{error}");

        let lock = open_run_dir(&root, false, std::slice::from_ref(&checkpoint), "search").unwrap();
        std::fs::write(&checkpoint, b"state").unwrap();
        let error = open_run_dir(&root, true, std::slice::from_ref(&checkpoint), "search").unwrap_err().to_string();
        assert!(error.contains("in use by another process"), "{error}");
        drop(lock);

        let error = open_run_dir(&root, false, std::slice::from_ref(&checkpoint), "search").unwrap_err().to_string();
        assert!(error.contains("already holds a search; pass --resume"), "{error}");
        open_run_dir(&root, true, &[checkpoint], "search").unwrap();
    }

    #[test]
    fn other_settings_are_named() {
        #[derive(Serialize, PartialEq)]
        struct Settings {
            lr: f64,
            epochs: usize,
        }
        let path = Path::new("run/checkpoint");
        check_settings(&Settings { lr: 0.1, epochs: 3 }, &Settings { lr: 0.1, epochs: 3 }, path).unwrap();
        let error = check_settings(&Settings { lr: 0.1, epochs: 3 }, &Settings { lr: 0.2, epochs: 3 }, path)
            .unwrap_err()
            .to_string();
        assert_eq!(
            error,
            "run/checkpoint was made with other settings: lr (checkpoint 0.1, now 0.2); resume with the same flags"
        );
    }
}
