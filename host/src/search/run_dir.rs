//! The files of one search run (`--out runs/NAME`).

use std::path::{Path, PathBuf};

use edgeloop_durable::write_atomic;
use serde::Serialize;

pub struct RunDir {
    pub root: PathBuf,
}

impl RunDir {
    pub fn new(root: &Path) -> RunDir {
        RunDir { root: root.to_path_buf() }
    }

    pub fn checkpoint(&self) -> PathBuf {
        self.root.join("checkpoint")
    }
    pub fn final_checkpoint(&self) -> PathBuf {
        self.root.join("final.checkpoint")
    }
    pub fn search_csv(&self) -> PathBuf {
        self.root.join("search.csv")
    }
    pub fn measurements(&self) -> PathBuf {
        self.root.join("measurements.jsonl")
    }
    pub fn arch(&self) -> PathBuf {
        self.root.join("arch.json")
    }
    pub fn model(&self) -> PathBuf {
        self.root.join("model.onnx")
    }
    pub fn result(&self) -> PathBuf {
        self.root.join("result.json")
    }
    /// Every architecture measured during the search (see `decide`).
    pub fn archs_csv(&self) -> PathBuf {
        self.root.join("archs.csv")
    }
}

/// One row of `search.csv` per epoch.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct EpochRow {
    pub epoch: usize,
    /// `warmup` (weights only) or `search`.
    pub phase: &'static str,
    pub lr: f64,
    pub train_loss: f64,
    /// Cross-entropy and total loss of the arch steps (gradient), NaN otherwise.
    pub arch_ce: f64,
    pub arch_loss: f64,
    /// Mean reward and baseline of the REINFORCE updates, NaN otherwise.
    pub mean_reward: f64,
    pub baseline: f64,
    /// Accuracy of the most likely arch on the held-out split (supernet weights).
    pub valid_acc: f64,
    /// E[latency] under p = softmax(α), from the table (ms).
    pub expected_latency_ms: f64,
    /// E[energy] likewise (mJ), in an energy search; NaN otherwise.
    pub expected_energy_mj: f64,
    /// E[COST]/T of the budget's figure (latency or energy) at the end of the epoch.
    pub expected_cost_ratio: f64,
    /// The budget's multiplier λ at the end of the epoch (`lagrange`); NaN otherwise.
    pub lambda: f64,
    /// Mean entropy of p per block (nats).
    pub alpha_entropy: f64,
    pub argmax_arch: String,
    /// The most likely arch measured on the device (p50, ms).
    pub argmax_measured_ms: f64,
    /// Its energy per inference (mJ), in an energy search; NaN otherwise.
    pub argmax_measured_mj: f64,
    pub seconds: f64,
}

/// `search.csv`: one row per finished epoch, each appended and fsynced. On
/// resume, rows past the checkpoint's epoch (written after it) are dropped.
pub fn open_search_csv(path: &Path, keep_epochs: usize) -> std::io::Result<csv::Writer<std::fs::File>> {
    let kept: Vec<String> = match std::fs::read_to_string(path) {
        Ok(text) => text.lines().take(1 + keep_epochs).map(str::to_owned).collect(),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Vec::new(),
        Err(e) => return Err(e),
    };
    let has_header = !kept.is_empty();
    let mut text = kept.join("\n");
    if has_header {
        text.push('\n');
    }
    write_atomic(path, text.as_bytes())?;
    let file = std::fs::OpenOptions::new().append(true).open(path)?;
    Ok(csv::WriterBuilder::new().has_headers(!has_header).from_writer(file))
}

pub fn append_row(writer: &mut csv::Writer<std::fs::File>, row: &EpochRow) -> std::io::Result<()> {
    writer.serialize(row).map_err(std::io::Error::other)?;
    writer.flush()?;
    writer.get_ref().sync_data()
}
