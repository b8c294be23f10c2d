//! `edgeloop baseline`: what a user gets by shrinking (or growing)
//! MobileNetV2 until it fits — the space's layout with MobileNetV2's block
//! in every choice block, at a sweep of width multipliers, each trained
//! with the search's final recipe and measured on the same device
//! (DESIGN §8.1). Widths whose channels round to the same network are
//! trained once. `baselines.csv` collects the sweep; each width's run
//! (`w<width>/`) is an ordinary `edgeloop train` directory.

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::path::{Path, PathBuf};

use anyhow::Context as _;
use edgeloop_durable::write_atomic;
use edgeloop_space::{Arch, Space};
use serde::{Deserialize, Serialize};

use crate::cache::MeasurementCache;
use crate::events::Event;
use crate::measure::{MeasureJob, Measurements};
use crate::predict::Stat;
use crate::search::{FinalSettings, SearchResult};
use crate::train::{self, TrainEnv};

/// A hand-designed architecture of a space's layout.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum Baseline {
    /// MobileNetV2's block (3x3 MBConv, expansion 6) in every choice block, none skipped.
    Mbv2,
}

impl Baseline {
    pub fn arch(self, space: &Space) -> Result<Arch, edgeloop_space::ArchError> {
        match self {
            Baseline::Mbv2 => Arch::mobilenet_v2(space),
        }
    }
}

/// The default sweep: MobileNetV2's published multipliers.
pub const DEFAULT_WIDTHS: [f64; 5] = [0.35, 0.5, 0.75, 1.0, 1.4];

/// One width of the sweep.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct BaselineRow {
    pub width: f64,
    /// The network's channels, stem to head (`8-8-16-24-64`): widths with
    /// the same channels are the same network.
    pub channels: String,
    pub arch_hash: String,
    pub test_accuracy: f64,
    pub measured_p50_ms: f64,
    pub measured_p90_ms: f64,
    pub model_kb: f64,
    /// The run directory holding its `result.json` (shared by equal widths).
    pub run: String,
}

/// The channels of `space`'s network, stem to head.
pub fn channels(space: &Space) -> String {
    let s = &space.spec;
    let all = [s.stem.channels, s.first_block.channels]
        .into_iter()
        .chain(s.stages.iter().map(|st| st.channels))
        .chain([s.head.channels]);
    all.map(|c| c.to_string()).collect::<Vec<_>>().join("-")
}

/// The run folder of `width` inside the sweep's folder.
fn run_dir(out: &Path, width: f64) -> PathBuf {
    out.join(format!("w{width}"))
}

/// The widest of `widths` whose network (random weights: latency does not
/// depend on them) measures within `limit_ms` (of `stat`) on the device,
/// or the narrowest when none does; with every width's measurement.
pub async fn widest_within(
    space_name: &str,
    widths: &[f64],
    limit_ms: f64,
    stat: Stat,
    env: &TrainEnv,
) -> anyhow::Result<(f64, Vec<(f64, f64)>)> {
    let mut devices = env.devices.connect(MeasurementCache::in_memory()).await?;
    let mut measured = Vec::new();
    for &width in widths {
        let space = Space::load(space_name, width)?;
        let arch = Arch::mobilenet_v2(&space)?;
        let model = edgeloop_onnx::encode(&edgeloop_export::export::arch_model(
            &space,
            &arch,
            &mut edgeloop_export::export::RandomWeights::new(0),
        )?);
        let job = MeasureJob::model(format!("the width-{width} baseline"), model);
        let checked = devices.measure_uncached(job, &env.final_request).await?;
        let ms = stat.of(&checked.measurement.latency_ms);
        env.events.emit(Event::BaselineMeasured { width, ms, stat, fits: ms <= limit_ms });
        measured.push((width, ms));
    }
    let widest = measured
        .iter()
        .filter(|(_, ms)| *ms <= limit_ms)
        .map(|(w, _)| *w)
        .fold(None, |a: Option<f64>, w| Some(a.map_or(w, |a| a.max(w))));
    let narrowest = widths.iter().copied().fold(f64::INFINITY, f64::min);
    Ok((widest.unwrap_or(narrowest), measured))
}

/// Trains and measures the sweep into `out` (resumable: a width whose run
/// finished is read back, one interrupted continues) and writes
/// `<out>/baselines.csv` after each width.
pub async fn run(
    settings: &FinalSettings,
    widths: &[f64],
    stat: Stat,
    out: &Path,
    env: &TrainEnv,
) -> anyhow::Result<Vec<BaselineRow>> {
    std::fs::create_dir_all(out).with_context(|| format!("creating {}", out.display()))?;
    let mut trained: BTreeMap<String, SearchResult> = BTreeMap::new();
    let mut rows = Vec::new();
    for &width in widths {
        let space = Space::load(&settings.space, width)?;
        let key = channels(&space);
        if let Some(done) = trained.get(&key) {
            env.events.emit(Event::BaselineSameChannels { width, channels: key.clone(), as_width: done.width });
            rows.push(row(width, &key, done));
        } else {
            let dir = run_dir(out, width);
            let result = match finished(&dir, settings, width)? {
                Some(result) => {
                    env.events.emit(Event::BaselineAlreadyTrained { width, dir: dir.clone() });
                    result
                }
                None => {
                    let arch = Arch::mobilenet_v2(&space)?;
                    let resume = crate::search::RunDir::new(&dir).final_checkpoint().exists();
                    let env = TrainEnv { out: dir.clone(), resume, ..env.clone() };
                    let settings = FinalSettings { width, ..settings.clone() };
                    train::run(&settings, &arch, None, stat, &env).await?
                }
            };
            rows.push(row(width, &key, &result));
            trained.insert(key, result);
        }
        write_csv(&out.join("baselines.csv"), &rows)?;
    }
    Ok(rows)
}

fn row(width: f64, channels: &str, r: &SearchResult) -> BaselineRow {
    BaselineRow {
        width,
        channels: channels.to_string(),
        arch_hash: r.arch_hash.clone(),
        test_accuracy: r.test_accuracy,
        measured_p50_ms: r.measured_latency_ms,
        measured_p90_ms: r.measured_p90_ms,
        model_kb: r.model_bytes as f64 / 1000.0,
        run: format!("w{}", r.width),
    }
}

/// The result of a finished run of this sweep's settings at `width`, if there is one.
fn finished(dir: &Path, settings: &FinalSettings, width: f64) -> anyhow::Result<Option<SearchResult>> {
    let path = crate::search::RunDir::new(dir).result();
    let Ok(text) = std::fs::read_to_string(&path) else { return Ok(None) };
    let result: SearchResult = serde_json::from_str(&text).with_context(|| format!("reading {}", path.display()))?;
    let same = result.space == settings.space && result.width == width && result.dataset == settings.recipe.dataset;
    Ok(same.then_some(result))
}

/// `baselines.csv`: width, channels, arch_hash, test_accuracy,
/// measured_p50_ms, measured_p90_ms, model_kb, run.
pub fn write_csv(path: &Path, rows: &[BaselineRow]) -> anyhow::Result<()> {
    let mut text =
        String::from("width,channels,arch_hash,test_accuracy,measured_p50_ms,measured_p90_ms,model_kb,run\n");
    for r in rows {
        writeln!(
            text,
            "{},{},{},{:.5},{:.6},{:.6},{:.1},{}",
            r.width, r.channels, r.arch_hash, r.test_accuracy, r.measured_p50_ms, r.measured_p90_ms, r.model_kb, r.run
        )
        .expect("writing to a String");
    }
    write_atomic(path, text.as_bytes()).with_context(|| format!("writing {}", path.display()))
}

/// Reads `baselines.csv` from a sweep's folder.
pub fn read(dir: &Path) -> anyhow::Result<Vec<BaselineRow>> {
    let path = dir.join("baselines.csv");
    let mut reader = csv::Reader::from_path(&path).with_context(|| format!("reading {}", path.display()))?;
    reader.deserialize().collect::<Result<Vec<BaselineRow>, _>>().with_context(|| format!("reading {}", path.display()))
}

/// The most accurate baseline whose measured `stat` is within `limit_ms`.
pub fn best_within(rows: &[BaselineRow], limit_ms: f64, stat: Stat) -> Option<&BaselineRow> {
    rows.iter()
        .filter(|r| match stat {
            Stat::P90 => r.measured_p90_ms <= limit_ms,
            _ => r.measured_p50_ms <= limit_ms,
        })
        .max_by(|a, b| a.test_accuracy.total_cmp(&b.test_accuracy))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn equal_channels_are_one_network() {
        let at = |w| channels(&Space::load("tiny", w).unwrap());
        assert_eq!(at(1.0), "8-8-16-24-64");
        // 0.75 rounds tiny's channels back to width 1.0's (MobileNetV2's rounding).
        assert_eq!(at(0.75), at(1.0));
        assert_ne!(at(0.5), at(1.0));
    }

    #[test]
    fn csv_round_trips_and_best_within_picks_the_most_accurate_that_fits() {
        let dir = tempfile::tempdir().unwrap();
        let row = |width: f64, acc: f64, ms: f64| BaselineRow {
            width,
            channels: String::new(),
            arch_hash: "ab".into(),
            test_accuracy: acc,
            measured_p50_ms: ms,
            measured_p90_ms: ms * 1.1,
            model_kb: 10.0,
            run: format!("w{width}"),
        };
        let rows = vec![row(0.5, 0.9, 0.1), row(1.0, 0.95, 0.2), row(1.4, 0.96, 0.3)];
        write_csv(&dir.path().join("baselines.csv"), &rows).unwrap();
        let back = read(dir.path()).unwrap();
        assert_eq!(back.len(), 3);
        assert_eq!(back[1].run, "w1");
        assert_eq!(best_within(&back, 0.25, Stat::P50).unwrap().width, 1.0);
        assert_eq!(best_within(&back, 0.21, Stat::P90).unwrap().width, 0.5);
        assert!(best_within(&back, 0.05, Stat::P50).is_none());
    }
}
