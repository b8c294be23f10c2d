//! `edgeloop report`: runs (searches, trainings, quantizations) and a
//! baseline sweep in one place — `report.md`, `pareto.png` (measured
//! latency against test accuracy: final models, the baseline curve, the
//! budgets; and the architectures each search measured, with their supernet
//! accuracy) and `latency.png` (per block of each final model: the table's
//! prediction against the device's per-op profile).

use std::fmt::Write as _;
use std::path::{Path, PathBuf};

use anyhow::{Context as _, bail};
use edgeloop_durable::write_atomic;
use plotters::prelude::*;

use crate::baseline::{self, BaselineRow};
use crate::predict::Stat;
use crate::quantize::QuantizeResult;
use crate::search::{RunDir, SearchResult};

/// What a run directory's `result.json` is.
pub enum RunResult {
    /// `edgeloop search` or `edgeloop train`.
    Model(Box<SearchResult>),
    /// `edgeloop quantize`.
    Quantize(Box<QuantizeResult>),
}

/// One run of the report.
pub struct Run {
    /// How the report names it: the folder's name.
    pub name: String,
    pub dir: PathBuf,
    pub result: RunResult,
    /// A search's `archs.csv` rows: (measured p50 ms, supernet accuracy, role).
    pub archs: Vec<(f64, f64, String)>,
}

impl Run {
    /// Reads `<dir>/result.json` (and a search's `archs.csv`).
    pub fn load(dir: &Path) -> anyhow::Result<Run> {
        let dir_files = RunDir::new(dir);
        let path = dir_files.result();
        let text = std::fs::read_to_string(&path)
            .with_context(|| format!("{} has no result.json: is it a finished run?", dir.display()))?;
        let value: serde_json::Value =
            serde_json::from_str(&text).with_context(|| format!("reading {}", path.display()))?;
        let result = if value.get("constraint").is_some() {
            RunResult::Quantize(Box::new(
                serde_json::from_value(value).with_context(|| format!("reading {} (quantize)", path.display()))?,
            ))
        } else if value.get("kind").is_some() {
            RunResult::Model(Box::new(
                serde_json::from_value(value).with_context(|| format!("reading {}", path.display()))?,
            ))
        } else {
            bail!("{} is not a result of this edgeloop version (search, train or quantize)", path.display());
        };
        let archs = read_archs(&dir_files.archs_csv())?;
        let name = dir.file_name().map_or_else(|| dir.display().to_string(), |n| n.to_string_lossy().into_owned());
        Ok(Run { name, dir: dir.to_path_buf(), result, archs })
    }
}

/// (measured p50, supernet accuracy, role) of each row of `archs.csv`; none when absent.
fn read_archs(path: &Path) -> anyhow::Result<Vec<(f64, f64, String)>> {
    if !path.exists() {
        return Ok(Vec::new());
    }
    let mut reader = csv::Reader::from_path(path).with_context(|| format!("reading {}", path.display()))?;
    let headers = reader.headers()?.clone();
    let column = |name: &str| {
        headers.iter().position(|h| h == name).with_context(|| format!("{} has no column {name}", path.display()))
    };
    let (ms, acc, role) = (column("measured_p50_ms")?, column("supernet_accuracy")?, column("role")?);
    reader
        .records()
        .map(|r| {
            let r = r.with_context(|| format!("reading {}", path.display()))?;
            let num = |i: usize| {
                r[i].parse::<f64>().with_context(|| format!("{}: `{}` is not a number", path.display(), &r[i]))
            };
            Ok((num(ms)?, num(acc)?, r[role].to_string()))
        })
        .collect()
}

/// A found model next to the best baseline within its budget.
#[derive(Debug, Clone, PartialEq)]
pub struct Comparison {
    pub run: String,
    pub budget_ms: f64,
    pub stat: Stat,
    pub found_accuracy: f64,
    pub found_ms: f64,
    pub found_kb: f64,
    pub budget_met: bool,
    /// The most accurate baseline within the budget, if any is.
    pub baseline: Option<BaselineRow>,
}

impl Comparison {
    /// Accuracy points gained over the baseline.
    pub fn gain_points(&self) -> Option<f64> {
        self.baseline.as_ref().map(|b| 100.0 * (self.found_accuracy - b.test_accuracy))
    }

    /// The share of the baseline's errors the found model avoids.
    pub fn fewer_errors(&self) -> Option<f64> {
        self.baseline.as_ref().map(|b| 1.0 - (1.0 - self.found_accuracy) / (1.0 - b.test_accuracy).max(1e-9))
    }
}

/// Every latency-budget search (or train run with a budget) against the baselines.
pub fn comparisons(runs: &[Run], baselines: &[BaselineRow]) -> Vec<Comparison> {
    runs.iter()
        .filter_map(|run| {
            let RunResult::Model(r) = &run.result else { return None };
            let budget_ms = r.budget_ms?;
            let found_ms = if r.budget_stat == Stat::P90 { r.measured_p90_ms } else { r.measured_latency_ms };
            Some(Comparison {
                run: run.name.clone(),
                budget_ms,
                stat: r.budget_stat,
                found_accuracy: r.test_accuracy,
                found_ms,
                found_kb: r.model_bytes as f64 / 1000.0,
                budget_met: r.budget_met == Some(true),
                baseline: baseline::best_within(baselines, budget_ms, r.budget_stat).cloned(),
            })
        })
        .collect()
}

/// The side-by-side table of found models and baselines (markdown; also
/// what the quickstart prints).
pub fn comparison_table(comparisons: &[Comparison]) -> String {
    let mut out = String::from(
        "| run | budget | found: accuracy | found: measured | found: size | baseline (width) | baseline: accuracy | baseline: measured | baseline: size | Δ accuracy | fewer errors |\n\
         |---|---|---|---|---|---|---|---|---|---|---|\n",
    );
    for c in comparisons {
        let met = if c.budget_met { "" } else { " (NOT met)" };
        let found = format!(
            "| {} | {} ms {} | {:.2}% | {:.3} ms{met} | {:.1} kB |",
            c.run,
            c.budget_ms,
            c.stat,
            100.0 * c.found_accuracy,
            c.found_ms,
            c.found_kb
        );
        let baseline = match &c.baseline {
            Some(b) => {
                let ms = if c.stat == Stat::P90 { b.measured_p90_ms } else { b.measured_p50_ms };
                format!(
                    " {} | {:.2}% | {ms:.3} ms | {:.1} kB | {:+.2} points | {:.0}% |",
                    b.width,
                    100.0 * b.test_accuracy,
                    b.model_kb,
                    c.gain_points().unwrap_or(f64::NAN),
                    100.0 * c.fewer_errors().unwrap_or(f64::NAN)
                )
            }
            None => " none within the budget | | | | | |".into(),
        };
        writeln!(out, "{found}{baseline}").expect("writing to a String");
    }
    out
}

/// The report's markdown.
pub fn markdown(runs: &[Run], baselines: &[BaselineRow], baselines_dir: Option<&Path>) -> String {
    let mut md = String::from("# edgeloop report\n\n");
    let devices: std::collections::BTreeSet<String> = runs
        .iter()
        .map(|r| match &r.result {
            RunResult::Model(m) => format!("{} ({})", m.device_id, m.runtime),
            RunResult::Quantize(q) => format!("{} ({})", q.device_id, q.runtime),
        })
        .collect();
    writeln!(md, "Device: {}\n", devices.into_iter().collect::<Vec<_>>().join(", ")).expect("string");
    md.push_str("## Runs\n\n| run | kind | budget | met | test accuracy | measured p50 | p90 | predicted | size | architecture | folder |\n|---|---|---|---|---|---|---|---|---|---|---|\n");
    for run in runs {
        match &run.result {
            RunResult::Model(r) => {
                let kind = match r.strategy {
                    Some(s) => format!("search ({})", format!("{s:?}").to_lowercase()),
                    None => "train".into(),
                };
                let budget = match (r.budget_ms, r.energy_budget_mj) {
                    (_, Some(mj)) => format!("{mj} mJ"),
                    (Some(ms), None) => format!("{ms} ms {}", r.budget_stat),
                    (None, None) => "none".into(),
                };
                let met = match r.budget_met {
                    Some(true) => "yes",
                    Some(false) => "**NO**",
                    None => "–",
                };
                let ops: Vec<String> = r.arch.ops.iter().map(ToString::to_string).collect();
                writeln!(
                    md,
                    "| {} | {kind} | {budget} | {met} | {:.2}% | {:.3} ms | {:.3} ms | {:.3} ms {} | {:.1} kB | `{}` {} | {} |",
                    run.name,
                    100.0 * r.test_accuracy,
                    r.measured_latency_ms,
                    r.measured_p90_ms,
                    r.predicted_latency_ms,
                    r.budget_stat,
                    r.model_bytes as f64 / 1000.0,
                    &r.arch_hash[..12],
                    ops.join(" "),
                    run.dir.display()
                )
                .expect("string");
            }
            RunResult::Quantize(q) => {
                writeln!(
                    md,
                    "| {} | quantize | {} {} | {} | {:.2}% | {:.3} ms | – | – | {:.1} kB | `{}` {} | {} |",
                    run.name,
                    q.constraint.limit(),
                    q.constraint.unit(),
                    if q.budget_met { "yes" } else { "**NO**" },
                    100.0 * q.test_accuracy,
                    q.measured_latency_ms,
                    q.size_kb,
                    &q.arch_hash[..12],
                    q.policy_summary,
                    run.dir.display()
                )
                .expect("string");
            }
        }
    }
    for run in runs {
        if let RunResult::Model(r) = &run.result
            && !r.decision.is_empty()
        {
            writeln!(md, "\n**{}**: {}", run.name, r.decision).expect("string");
        }
        if let RunResult::Quantize(q) = &run.result {
            writeln!(md, "\n**{}** (fp32 / uniform int8 / searched on the same device):\n\n| model | policy | accuracy | p50 | size |\n|---|---|---|---|---|", run.name).expect("string");
            for c in &q.comparison {
                writeln!(
                    md,
                    "| {} | {} | {:.2}% | {:.3} ms | {:.1} kB |",
                    c.model,
                    c.policy,
                    100.0 * c.test_accuracy,
                    c.latency_ms,
                    c.size_kb
                )
                .expect("string");
            }
        }
    }
    if !baselines.is_empty() {
        let from = baselines_dir.map_or(String::new(), |d| format!(" ({})", d.display()));
        writeln!(md, "\n## Baseline: MobileNetV2's block at a width sweep{from}\n\n| width | channels | test accuracy | measured p50 | p90 | size |\n|---|---|---|---|---|---|").expect("string");
        for b in baselines {
            writeln!(
                md,
                "| {} | {} | {:.2}% | {:.3} ms | {:.3} ms | {:.1} kB |",
                b.width,
                b.channels,
                100.0 * b.test_accuracy,
                b.measured_p50_ms,
                b.measured_p90_ms,
                b.model_kb
            )
            .expect("string");
        }
        let comparisons = comparisons(runs, baselines);
        if !comparisons.is_empty() {
            md.push_str("\n## Found vs the best baseline within the same budget\n\n");
            md.push_str(&comparison_table(&comparisons));
        }
    }
    md.push_str("\n## Plots\n\n![accuracy against measured latency](pareto.png)\n\n![per-block latency: table vs device profile](latency.png)\n");
    md
}

const COLORS: [RGBColor; 6] = [
    RGBColor(31, 119, 180),
    RGBColor(214, 39, 40),
    RGBColor(44, 160, 44),
    RGBColor(148, 103, 189),
    RGBColor(255, 127, 14),
    RGBColor(23, 190, 207),
];

fn plot_error(path: &Path) -> impl Fn(&dyn std::fmt::Display) -> anyhow::Error + '_ {
    move |e| anyhow::anyhow!("plotting {}: {e}", path.display())
}

/// A range around `values` with a little room, never empty.
fn span(values: impl Iterator<Item = f64>, floor_zero: bool) -> std::ops::Range<f64> {
    let (lo, hi) =
        values.filter(|v| v.is_finite()).fold((f64::INFINITY, f64::NEG_INFINITY), |(l, h), v| (l.min(v), h.max(v)));
    if !lo.is_finite() {
        return 0.0..1.0;
    }
    let pad = ((hi - lo) * 0.1).max(hi.abs() * 0.02).max(1e-3);
    let lo = if floor_zero { (lo - pad).max(0.0) } else { lo - pad };
    lo..hi + pad
}

/// `pareto.png`: final models, baselines and budgets (left); the archs each
/// search measured, by supernet accuracy (right).
pub fn write_pareto(path: &Path, runs: &[Run], baselines: &[BaselineRow]) -> anyhow::Result<()> {
    let err = plot_error(path);
    crate::plot::register_font().map_err(|e| err(&e))?;
    let root = BitMapBackend::new(path, (1500, 650)).into_drawing_area();
    root.fill(&WHITE).map_err(|e| err(&e))?;
    let (left, right) = root.split_horizontally(800);

    // Left: what was trained and measured.
    let mut points: Vec<(f64, f64)> = baselines.iter().map(|b| (b.measured_p50_ms, 100.0 * b.test_accuracy)).collect();
    let mut budgets = Vec::new();
    for run in runs {
        match &run.result {
            RunResult::Model(r) => {
                points.push((r.measured_latency_ms, 100.0 * r.test_accuracy));
                budgets.extend(r.budget_ms);
            }
            RunResult::Quantize(q) => {
                points.extend(q.comparison.iter().map(|c| (c.latency_ms, 100.0 * c.test_accuracy)));
                if q.constraint.unit() == "ms" {
                    budgets.push(q.constraint.limit());
                }
            }
        }
    }
    let x = span(points.iter().map(|p| p.0).chain(budgets.iter().copied()), true);
    let y = span(points.iter().map(|p| p.1), false);
    let mut chart = latency_panel(
        &left,
        "test accuracy against latency measured on the device",
        "test accuracy (%)",
        x,
        y.clone(),
        &budgets,
    )
    .map_err(|e| err(&e))?;
    for &b in &budgets {
        chart
            .draw_series([Text::new(format!("budget {b} ms"), (b, y.end), ("sans-serif", 12))])
            .map_err(|e| err(&e))?;
    }
    if !baselines.is_empty() {
        let mut curve: Vec<(f64, f64)> =
            baselines.iter().map(|b| (b.measured_p50_ms, 100.0 * b.test_accuracy)).collect();
        curve.sort_by(|a, b| a.0.total_cmp(&b.0));
        let gray = RGBColor(110, 110, 110);
        chart
            .draw_series(LineSeries::new(curve.clone(), gray.stroke_width(2)))
            .map_err(|e| err(&e))?
            .label("MobileNetV2 block, width sweep")
            .legend(move |(x, y)| PathElement::new([(x, y), (x + 16, y)], gray.stroke_width(2)));
        chart.draw_series(curve.iter().map(|&p| Circle::new(p, 4, gray.filled()))).map_err(|e| err(&e))?;
        chart
            .draw_series(baselines.iter().map(|b| {
                Text::new(format!("×{}", b.width), (b.measured_p50_ms, 100.0 * b.test_accuracy), ("sans-serif", 12))
            }))
            .map_err(|e| err(&e))?;
    }
    for (i, run) in runs.iter().enumerate() {
        let color = COLORS[i % COLORS.len()];
        let marks: Vec<(f64, f64, String)> = match &run.result {
            RunResult::Model(r) => vec![(r.measured_latency_ms, 100.0 * r.test_accuracy, run.name.clone())],
            RunResult::Quantize(q) => q
                .comparison
                .iter()
                .map(|c| (c.latency_ms, 100.0 * c.test_accuracy, format!("{} {}", run.name, c.model)))
                .collect(),
        };
        chart
            .draw_series(marks.iter().map(|(x, y, _)| TriangleMarker::new((*x, *y), 8, color.filled())))
            .map_err(|e| err(&e))?
            .label(run.name.clone())
            .legend(move |(x, y)| TriangleMarker::new((x + 8, y), 6, color.filled()));
        chart
            .draw_series(marks.iter().map(|(x, y, l)| Text::new(l.clone(), (*x, *y), ("sans-serif", 12))))
            .map_err(|e| err(&e))?;
    }
    draw_legend(&mut chart).map_err(|e| err(&e))?;

    // Right: the archs each search measured.
    let archs: Vec<(usize, &(f64, f64, String))> =
        runs.iter().enumerate().flat_map(|(i, r)| r.archs.iter().map(move |a| (i, a))).collect();
    let x = span(archs.iter().map(|(_, a)| a.0).chain(budgets.iter().copied()), true);
    let y = span(archs.iter().map(|(_, a)| 100.0 * a.1), false);
    let mut chart = latency_panel(
        &right,
        "archs measured during the searches",
        "held-out accuracy, supernet weights (%)",
        x,
        y,
        &budgets,
    )
    .map_err(|e| err(&e))?;
    for (i, run) in runs.iter().enumerate().filter(|(_, r)| !r.archs.is_empty()) {
        let color = COLORS[i % COLORS.len()];
        let point = |a: &(f64, f64, String)| (a.0, 100.0 * a.1);
        chart
            .draw_series(
                run.archs.iter().filter(|a| a.2 != "chosen").map(|a| Circle::new(point(a), 3, color.mix(0.6).filled())),
            )
            .map_err(|e| err(&e))?
            .label(format!("{} (chosen: ×)", run.name))
            .legend(move |(x, y)| Circle::new((x + 8, y), 4, color.filled()));
        chart
            .draw_series(
                run.archs.iter().filter(|a| a.2 == "chosen").map(|a| Cross::new(point(a), 7, BLACK.stroke_width(2))),
            )
            .map_err(|e| err(&e))?;
    }
    draw_legend(&mut chart).map_err(|e| err(&e))?;
    root.present().map_err(|e| err(&e))
}

type Panel<'a, 'b> = ChartContext<
    'a,
    BitMapBackend<'b>,
    Cartesian2d<plotters::coord::types::RangedCoordf64, plotters::coord::types::RangedCoordf64>,
>;
type PlotResult<T> = Result<T, DrawingAreaErrorKind<<BitMapBackend<'static> as DrawingBackend>::ErrorType>>;

/// A panel of `pareto.png`: measured latency (ms) across, `y_desc` up, a
/// vertical line at each budget.
fn latency_panel<'a, 'b>(
    area: &'a DrawingArea<BitMapBackend<'b>, plotters::coord::Shift>,
    caption: &str,
    y_desc: &str,
    x: std::ops::Range<f64>,
    y: std::ops::Range<f64>,
    budgets: &[f64],
) -> PlotResult<Panel<'a, 'b>> {
    let mut chart = ChartBuilder::on(area)
        .caption(caption, ("sans-serif", 20))
        .margin(16)
        .x_label_area_size(48)
        .y_label_area_size(64)
        .build_cartesian_2d(x, y.clone())?;
    chart
        .configure_mesh()
        .x_desc("measured latency, p50 (ms)")
        .y_desc(y_desc)
        .label_style(("sans-serif", 14))
        .draw()?;
    for &b in budgets {
        chart.draw_series(LineSeries::new([(b, y.start), (b, y.end)], BLACK.mix(0.4).stroke_width(1)))?;
    }
    Ok(chart)
}

fn draw_legend<'a, 'b: 'a>(chart: &mut Panel<'a, 'b>) -> PlotResult<()> {
    chart
        .configure_series_labels()
        .position(SeriesLabelPosition::LowerRight)
        .label_font(("sans-serif", 13))
        .background_style(WHITE.mix(0.85))
        .border_style(BLACK)
        .draw()
}

/// One series of `latency.png`: where its bar starts in a block's slot, its
/// height, colour and legend.
type Bar = (f64, fn(&crate::search::BlockTime) -> f64, RGBColor, &'static str);

/// `latency.png`: per block of each final model, the table's prediction
/// next to the time the device's per-op profile spent in the block's nodes.
pub fn write_latency(path: &Path, runs: &[Run]) -> anyhow::Result<()> {
    let err = plot_error(path);
    crate::plot::register_font().map_err(|e| err(&e))?;
    let profiled: Vec<(&str, &SearchResult)> = runs
        .iter()
        .filter_map(|r| match &r.result {
            RunResult::Model(m) if !m.profile.is_empty() => Some((r.name.as_str(), m.as_ref())),
            _ => None,
        })
        .collect();
    let panels = profiled.len().max(1);
    let root = BitMapBackend::new(path, (1100, 380 * panels as u32)).into_drawing_area();
    root.fill(&WHITE).map_err(|e| err(&e))?;
    if profiled.is_empty() {
        root.draw(&Text::new("no per-op profile in these runs", (40, 40), ("sans-serif", 20))).map_err(|e| err(&e))?;
        return root.present().map_err(|e| err(&e));
    }
    let (predicted_color, profiled_color) = (COLORS[0], COLORS[4]);
    for (area, (name, r)) in root.split_evenly((panels, 1)).iter().zip(&profiled) {
        let blocks = &r.profile;
        let top = blocks.iter().flat_map(|b| [b.predicted_ms, b.profiled_ms]).fold(0.0, f64::max) * 1.15;
        let labels: Vec<String> = blocks.iter().map(|b| format!("{} {}", b.block, b.op)).collect();
        let mut chart = ChartBuilder::on(area)
            .caption(
                format!(
                    "{name}: per block, table (calibrated, {}) vs device profile — whole model {:.3} ms p50",
                    r.budget_stat, r.measured_latency_ms
                ),
                ("sans-serif", 16),
            )
            .margin(12)
            .x_label_area_size(70)
            .y_label_area_size(64)
            .build_cartesian_2d(0.0..blocks.len() as f64, 0.0..top.max(1e-3))
            .map_err(|e| err(&e))?;
        chart
            .configure_mesh()
            .disable_x_mesh()
            .x_labels(blocks.len() * 2 + 1)
            .x_label_formatter(&|x| {
                let i = x.floor() as usize;
                if (x - x.floor() - 0.5).abs() < 0.01 && i < labels.len() { labels[i].clone() } else { String::new() }
            })
            .x_label_style(("sans-serif", 11))
            .y_desc("ms per inference")
            .label_style(("sans-serif", 12))
            .draw()
            .map_err(|e| err(&e))?;
        let bars: [Bar; 2] = [
            (0.1, |b| b.predicted_ms, predicted_color, "table (calibrated)"),
            (0.52, |b| b.profiled_ms, profiled_color, "device profile (sum of the block's nodes)"),
        ];
        for (left, ms, color, label) in bars {
            chart
                .draw_series(blocks.iter().enumerate().map(|(i, b)| {
                    Rectangle::new([(i as f64 + left, 0.0), (i as f64 + left + 0.38, ms(b))], color.filled())
                }))
                .map_err(|e| err(&e))?
                .label(label)
                .legend(move |(x, y)| Rectangle::new([(x, y - 5), (x + 12, y + 5)], color.filled()));
        }
        chart
            .configure_series_labels()
            .position(SeriesLabelPosition::UpperRight)
            .label_font(("sans-serif", 12))
            .background_style(WHITE.mix(0.85))
            .border_style(BLACK)
            .draw()
            .map_err(|e| err(&e))?;
    }
    root.present().map_err(|e| err(&e))
}

/// What `edgeloop report` wrote.
pub struct Written {
    pub markdown: PathBuf,
    pub comparisons: Vec<Comparison>,
}

/// Loads `runs` and the sweep in `baselines` and writes the report into `out`.
pub fn run(runs: &[PathBuf], baselines: Option<&Path>, out: &Path) -> anyhow::Result<Written> {
    anyhow::ensure!(!runs.is_empty(), "name at least one run directory");
    let runs: Vec<Run> = runs.iter().map(|d| Run::load(d)).collect::<anyhow::Result<_>>()?;
    let sweep = baselines.map(baseline::read).transpose()?.unwrap_or_default();
    std::fs::create_dir_all(out).with_context(|| format!("creating {}", out.display()))?;
    write_pareto(&out.join("pareto.png"), &runs, &sweep)?;
    write_latency(&out.join("latency.png"), &runs)?;
    let path = out.join("report.md");
    write_atomic(&path, markdown(&runs, &sweep, baselines).as_bytes())
        .with_context(|| format!("writing {}", path.display()))?;
    Ok(Written { markdown: path, comparisons: comparisons(&runs, &sweep) })
}
