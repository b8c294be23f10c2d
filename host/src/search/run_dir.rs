//! The files of one search run (`--out runs/NAME`).

use std::path::{Path, PathBuf};

use edgeloop_durable::write_atomic;

use super::strategy::StrategyColumns;

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

/// One row of `search.csv` per epoch: the columns every search has, then
/// its strategy's.
#[derive(Debug, Clone, PartialEq)]
pub struct EpochRow {
    pub epoch: usize,
    /// `warmup` (weights only) or `search`.
    pub phase: &'static str,
    pub lr: f64,
    pub train_loss: f64,
    /// Accuracy of the strategy's leading arch on the held-out split
    /// (supernet weights); NaN for a strategy without one.
    pub valid_acc: f64,
    /// The leading arch (the most likely under α); empty without one.
    pub argmax_arch: String,
    /// It measured on the device (p50, ms).
    pub argmax_measured_ms: f64,
    /// Its energy per inference (mJ), in an energy search; NaN otherwise.
    pub argmax_measured_mj: f64,
    pub seconds: f64,
    /// The strategy's own columns.
    pub strategy: StrategyColumns,
}

impl EpochRow {
    fn header(&self) -> Vec<&'static str> {
        let common = [
            "epoch",
            "phase",
            "lr",
            "train_loss",
            "valid_acc",
            "argmax_arch",
            "argmax_measured_ms",
            "argmax_measured_mj",
            "seconds",
        ];
        common.into_iter().chain(self.strategy.iter().map(|(name, _)| *name)).collect()
    }

    fn record(&self) -> Vec<String> {
        let common = [
            self.epoch.to_string(),
            self.phase.to_string(),
            self.lr.to_string(),
            self.train_loss.to_string(),
            self.valid_acc.to_string(),
            self.argmax_arch.clone(),
            self.argmax_measured_ms.to_string(),
            self.argmax_measured_mj.to_string(),
            self.seconds.to_string(),
        ];
        common.into_iter().chain(self.strategy.iter().map(|(_, v)| v.to_string())).collect()
    }
}

/// `search.csv`: one row per finished epoch, each appended and fsynced. On
/// resume, rows past the checkpoint's epoch (written after it) are dropped.
pub fn open_search_csv(path: &Path, keep_epochs: usize) -> std::io::Result<SearchCsv> {
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
    Ok(SearchCsv { needs_header: !has_header, writer: csv::Writer::from_writer(file) })
}

/// `search.csv` open for appending.
pub struct SearchCsv {
    needs_header: bool,
    writer: csv::Writer<std::fs::File>,
}

impl SearchCsv {
    /// Appends `row` (after the header, in a new file) and syncs it.
    pub fn append(&mut self, row: &EpochRow) -> std::io::Result<()> {
        if std::mem::take(&mut self.needs_header) {
            self.writer.write_record(row.header())?;
        }
        self.writer.write_record(row.record())?;
        self.writer.flush()?;
        self.writer.get_ref().sync_data()
    }
}
