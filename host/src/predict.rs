//! Latency of a whole architecture from a [`LatencyTable`] (DESIGN §7).
//!
//! Every row of the table is one runtime call on a single-layer model, so it
//! includes the runtime's per-call overhead `c` once (measured by the table's
//! identity-model row). A network is one call too, so
//!
//! ```text
//! predicted = c + Σ_layers max(row_i − c, 0)
//! ```
//!
//! with every row taken at its fastest run (`min_ms`, see `Row::latency_ms`). The clamp only matters for
//! layers so cheap that noise puts them below the identity model.
//!
//! Energy (mJ per inference) from an energy table adds up the same way, so
//! one predictor does both; [`Metric`] says which column it sums.
//!
//! The rows are fastest runs, but budgets are judged on the median (or the
//! 90th percentile) of a whole network's runs: a calibration fitted on whole
//! networks gives the factor k of each statistic ([`Stat`]), so the
//! prediction is of the figure that is judged.

use std::path::PathBuf;

use edgeloop_api::LatencyStats;
use edgeloop_space::{Arch, ArchError, Layer, LayerKind, Op, Shape, Space};
use serde::{Deserialize, Serialize};

use crate::calibrate::Calibration;
use crate::table::{LatencyTable, TableError, Target};

#[derive(Debug, thiserror::Error)]
pub enum PredictError {
    #[error("latency table {} has no row {key}; build it for this space with `edgeloop table build`", table.display())]
    MissingKey { key: String, table: PathBuf },

    #[error(
        "latency table {} has no calibration for {stat}: run `edgeloop table calibrate` on it \
         (the table's rows are fastest runs; {stat} is fitted on whole networks)",
        table.display()
    )]
    Uncalibrated { stat: Stat, table: PathBuf },

    #[error(transparent)]
    Arch(#[from] ArchError),

    #[error(transparent)]
    Table(#[from] TableError),
}

/// What a prediction adds up.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Metric {
    /// Milliseconds per inference (`min_ms` of each row).
    Latency,
    /// Millijoules per inference above idle (`energy_mj` of each row).
    Energy,
}

impl Metric {
    pub fn unit(self) -> &'static str {
        match self {
            Metric::Latency => "ms",
            Metric::Energy => "mJ",
        }
    }
}

/// Which statistic of a network's timed runs a prediction (or a budget) is of.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize, clap::ValueEnum)]
#[serde(rename_all = "lowercase")]
pub enum Stat {
    /// The fastest run: what the hardware needs (the table's own statistic).
    Min,
    /// The median run: what a budget is judged on by default.
    P50,
    /// The 90th percentile: for applications that care about the tail.
    P90,
}

impl Stat {
    /// This statistic of a measurement's runs.
    pub fn of(self, stats: &LatencyStats) -> f64 {
        match self {
            Stat::Min => stats.min,
            Stat::P50 => stats.p50,
            Stat::P90 => stats.p90,
        }
    }

    pub fn name(self) -> &'static str {
        match self {
            Stat::Min => "min",
            Stat::P50 => "p50",
            Stat::P90 => "p90",
        }
    }
}

impl std::fmt::Display for Stat {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.name())
    }
}

/// One layer of the network and its share of the prediction.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct LayerCost {
    /// `stem`, `first_block`, the choice block's name (`stage1.block2`), `head` or `classifier`.
    pub block: String,
    /// `3x3_Conv`, `5x5_MBConv6`, `1x1_Conv` or `GAP_FC`.
    pub op: String,
    /// The table key.
    pub key: String,
    /// The layer's time (or energy, per the predictor's [`Metric`]) without
    /// the per-call overhead (times the calibration factor).
    pub ms: f64,
}

#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Prediction {
    /// `overhead_ms` plus the layers' `ms`.
    pub total_ms: f64,
    /// The per-call overhead, counted once.
    pub overhead_ms: f64,
    /// In network order; blocks set to `zero` have no layer.
    pub per_layer: Vec<LayerCost>,
}

/// Predicts latencies (or energies) from one table, with an optional fitted correction.
#[derive(Debug, Clone, Copy)]
pub struct Predictor<'a> {
    table: &'a LatencyTable,
    /// Factor on the layer sum; 1 without calibration.
    scale: f64,
    metric: Metric,
}

impl<'a> Predictor<'a> {
    /// The plain sum of latencies (no correction).
    pub fn new(table: &'a LatencyTable) -> Self {
        Predictor { table, scale: 1.0, metric: Metric::Latency }
    }

    /// Latencies of statistic `stat`, with the correction `calibration`
    /// fitted for this table. Fastest runs need none (the plain sum is
    /// their prediction); medians and tails do.
    pub fn calibrated(
        table: &'a LatencyTable,
        calibration: Option<&Calibration>,
        stat: Stat,
    ) -> Result<Self, PredictError> {
        let scale = match (calibration.and_then(|c| c.scale(stat)), stat) {
            (Some(scale), _) => scale,
            (None, Stat::Min) => 1.0,
            (None, _) => return Err(PredictError::Uncalibrated { stat, table: table.path().to_path_buf() }),
        };
        Ok(Predictor { table, scale, metric: Metric::Latency })
    }

    /// The plain sum of energies; the table must have energy columns.
    pub fn energy(table: &'a LatencyTable) -> Result<Self, PredictError> {
        if !table.has_energy() {
            return Err(TableError::NoEnergy { path: table.path().to_path_buf() }.into());
        }
        Ok(Predictor { table, scale: 1.0, metric: Metric::Energy })
    }

    pub fn metric(&self) -> Metric {
        self.metric
    }

    /// The per-call overhead row of `space`'s input.
    pub fn overhead_ms(&self, space: &Space) -> Result<f64, PredictError> {
        self.row_ms(&Target::Overhead(Shape::input(&space.spec.input)))
    }

    /// The predicted latency of `arch` (validated against `space`).
    pub fn predict(&self, space: &Space, arch: &Arch) -> Result<Prediction, PredictError> {
        let layers = arch.layers(space)?;
        let overhead_ms = self.overhead_ms(space)?;
        let per_layer = layers
            .iter()
            .zip(block_names(space, arch))
            .map(|(layer, block)| {
                let ms = self.layer_ms(layer, overhead_ms)?;
                Ok(LayerCost { block, op: op_name(layer), key: layer.key(), ms })
            })
            .collect::<Result<Vec<_>, PredictError>>()?;
        let total_ms = overhead_ms + per_layer.iter().map(|l| l.ms).sum::<f64>();
        Ok(Prediction { total_ms, overhead_ms, per_layer })
    }

    /// What `layer` adds to a network: its row net of the per-call
    /// overhead `overhead_ms`, times the calibration factor.
    pub fn layer_ms(&self, layer: &Layer, overhead_ms: f64) -> Result<f64, PredictError> {
        Ok(self.scale * (self.row_ms(&Target::Layer(*layer))? - overhead_ms).max(0.0))
    }

    fn row_ms(&self, target: &Target) -> Result<f64, PredictError> {
        let key = target.key();
        match self.table.get(&key) {
            Some(row) => Ok(match (self.metric, &row.energy) {
                (Metric::Latency, _) => row.latency_ms(),
                (Metric::Energy, Some(e)) => e.mj,
                (Metric::Energy, None) => unreachable!("Predictor::energy checked that every row has energy"),
            }),
            None => Err(PredictError::MissingKey { key, table: self.table.path().to_path_buf() }),
        }
    }
}

/// The block of each layer of `arch.layers(space)`, in the same order.
fn block_names(space: &Space, arch: &Arch) -> Vec<String> {
    let chosen = arch.ops.iter().zip(&space.blocks).filter(|(op, _)| **op != Op::Zero).map(|(_, b)| b.name.as_str());
    ["stem", "first_block"].into_iter().chain(chosen).chain(["head", "classifier"]).map(str::to_owned).collect()
}

/// The op a layer is, named like the candidate ops (`5x5_MBConv6`).
fn op_name(layer: &Layer) -> String {
    let k = layer.kernel;
    match layer.kind {
        LayerKind::Stem | LayerKind::HeadConv => format!("{k}x{k}_Conv"),
        LayerKind::MbConv => Op::MbConv { kernel: k, expand: layer.expand }.to_string(),
        LayerKind::Logits => "GAP_FC".into(),
    }
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use crate::table::TableWriter;
    use crate::table::tests::row;

    /// A table for every layer of `tiny` where the overhead row is `overhead`
    /// and a layer's row `base` + its output channels / 128 ms (exact in binary).
    pub(crate) fn tiny_table(dir: &std::path::Path, overhead: f64, base: f64) -> (Space, LatencyTable) {
        let space = Space::load("tiny", 1.0).unwrap();
        let path = dir.join("t.csv");
        let mut writer = TableWriter::open(&path, false).unwrap();
        writer.append(row(Target::Overhead(Shape::input(&space.spec.input)), overhead)).unwrap();
        for layer in space.all_layers() {
            writer.append(row(Target::Layer(layer), base + layer.out_channels as f64 / 128.0)).unwrap();
        }
        (space, LatencyTable::load(&path).unwrap())
    }

    #[test]
    fn sums_rows_net_of_the_overhead_plus_one_overhead() {
        let dir = tempfile::tempdir().unwrap();
        let (space, table) = tiny_table(dir.path(), 0.5, 0.5);
        let mut arch = Arch::random(&space, 0);
        arch.ops = vec![Op::MbConv { kernel: 3, expand: 3 }, Op::Zero, Op::MbConv { kernel: 7, expand: 6 }, Op::Zero];
        let p = Predictor::new(&table).predict(&space, &arch).unwrap();
        // stem 8, first block 8, stage1.block1 16, stage2.block1 24, head 64, logits 10 channels.
        let expected = [8.0, 8.0, 16.0, 24.0, 64.0, 10.0].map(|c| c / 128.0);
        assert_eq!(p.per_layer.iter().map(|l| l.ms).collect::<Vec<_>>(), expected);
        assert_eq!(p.overhead_ms, 0.5);
        assert_eq!(p.total_ms, 0.5 + 130.0 / 128.0);
        let labels: Vec<(&str, &str)> = p.per_layer.iter().map(|l| (l.block.as_str(), l.op.as_str())).collect();
        assert_eq!(
            labels,
            [
                ("stem", "3x3_Conv"),
                ("first_block", "3x3_MBConv1"),
                ("stage1.block1", "3x3_MBConv3"),
                ("stage2.block1", "7x7_MBConv6"),
                ("head", "1x1_Conv"),
                ("classifier", "GAP_FC"),
            ]
        );
        assert_eq!(p.per_layer[2].key, "expanded_conv-input:16x16x8-output:8x8x16-expand:3-kernel:3-stride:2-idskip:0");
    }

    #[test]
    fn layers_cheaper_than_the_overhead_cost_nothing() {
        let dir = tempfile::tempdir().unwrap();
        let (space, table) = tiny_table(dir.path(), 10.0, 0.0);
        let p = Predictor::new(&table).predict(&space, &Arch::random(&space, 1)).unwrap();
        assert_eq!((p.total_ms, p.overhead_ms), (10.0, 10.0));
        assert!(p.per_layer.iter().all(|l| l.ms == 0.0));
    }

    #[test]
    fn missing_rows_and_foreign_archs_are_errors() {
        let dir = tempfile::tempdir().unwrap();
        let (_, table) = tiny_table(dir.path(), 0.5, 0.5);
        let cifar = Space::load("proxyless-cifar", 1.0).unwrap();
        // Same input as tiny, so the overhead row is there; the stem differs.
        let error = Predictor::new(&table).predict(&cifar, &Arch::random(&cifar, 0)).unwrap_err();
        let PredictError::MissingKey { key, table: path } = &error else { panic!("{error:?}") };
        assert_eq!(key, "Conv-input:32x32x3-output:32x32x32");
        assert_eq!(path, table.path());
        assert!(error.to_string().contains(&table.path().display().to_string()));

        let tiny = Space::load("tiny", 1.0).unwrap();
        let error = Predictor::new(&table).predict(&tiny, &Arch::random(&cifar, 0)).unwrap_err();
        assert!(matches!(error, PredictError::Arch(ArchError::WrongSpace { .. })), "{error:?}");
    }
}
