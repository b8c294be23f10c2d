//! Building a device's latency table through its agent (DESIGN §7): one
//! model per layer key of a space, measured and appended row by row.

use std::path::{Path, PathBuf};
use std::time::SystemTime;

use edgeloop_api::MeasureRequest;
use edgeloop_export::export::{RandomWeights, identity_model, layer_model};
use edgeloop_export::quant::{Precision, quantized_layer_model};
use edgeloop_onnx::encode;
use edgeloop_space::{Layer, Shape, Space};

use crate::events::{EventSink, Work};
use crate::measure::{MeasureError, MeasureJob, Measurements};
use crate::table::{Provenance, Row, TableError, TableWriter, Target};

/// Folder of the default table paths, relative to the current directory,
/// unless [`TABLES_ENV`] names another.
pub const TABLES_DIR: &str = "latency-tables";

/// The environment variable naming the folder of the default table paths
/// (several checkouts, or a test, sharing one folder of tables).
pub const TABLES_ENV: &str = "EDGELOOP_TABLES";

/// Measurement settings of a table row unless overridden: shorter than a
/// whole-model measurement (there are many rows), long enough for a stable median.
pub fn default_request() -> MeasureRequest {
    MeasureRequest { warmup_runs: 10, min_runs: 30, min_duration_ms: 300, ..MeasureRequest::default() }
}

#[derive(Debug, thiserror::Error)]
pub enum BuildError {
    #[error("device {device} has no runtime `{runtime}` (it has: {available})")]
    NoRuntime { device: String, runtime: String, available: String },

    #[error(
        "runtime `{runtime}` of device {device} does not run {precision} natively (it runs: {native}); \
         its {precision} layers would cost what it falls back to"
    )]
    NotNative { device: String, runtime: String, precision: TablePrecision, native: String },

    #[error(transparent)]
    Measure(#[from] MeasureError),

    #[error(transparent)]
    Table(#[from] TableError),
}

/// What [`build`] did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BuildReport {
    pub path: PathBuf,
    /// Rows the space needs: every distinct layer plus the overhead row.
    pub total: usize,
    /// Rows that were in the file already.
    pub skipped: usize,
    /// Rows measured and appended now.
    pub measured: usize,
}

/// The arithmetic of a table's layer rows: the precisions a runtime
/// executes natively (sub-8-bit integer layers run on the int8 kernels).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, serde::Serialize, serde::Deserialize, clap::ValueEnum)]
#[serde(rename_all = "lowercase")]
pub enum TablePrecision {
    /// Float layers, as exported by `edgeloop export`.
    Fp32,
    /// Integer layers (QLinearConv / MatMulInteger, uint8 activations, int8 weights).
    Int8,
}

impl TablePrecision {
    /// The table a layer at `precision` is priced from.
    pub fn of(precision: Precision) -> TablePrecision {
        match precision {
            Precision::Fp32 => TablePrecision::Fp32,
            Precision::Int { .. } => TablePrecision::Int8,
        }
    }

    /// As `/v1/info` lists it.
    pub fn name(self) -> &'static str {
        match self {
            TablePrecision::Fp32 => "fp32",
            TablePrecision::Int8 => "int8",
        }
    }
}

impl std::fmt::Display for TablePrecision {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.name())
    }
}

/// `latency-tables/<device_id>--<runtime>--<space>.csv` (`…--int8.csv` for
/// integer layers, `…--energy.csv` for a table with energy columns), with
/// characters that do not belong in a file name replaced by `_`.
pub fn default_path(device_id: &str, runtime: &str, space: &str, energy: bool, precision: TablePrecision) -> PathBuf {
    let part = |s: &str| s.replace(|c: char| !(c.is_ascii_alphanumeric() || "._-".contains(c)), "_");
    let int8 = if precision == TablePrecision::Int8 { "--int8" } else { "" };
    let energy = if energy { "--energy" } else { "" };
    let name = format!("{}--{}--{}{int8}{energy}.csv", part(device_id), part(runtime), part(space));
    std::env::var_os(TABLES_ENV).map_or_else(|| PathBuf::from(TABLES_DIR), PathBuf::from).join(name)
}

/// Every row `space` needs: the overhead row first, then each distinct layer.
pub fn targets(space: &Space) -> Vec<Target> {
    with_overhead(Shape::input(&space.spec.input), space.all_layers())
}

/// The overhead row of `input`, then a row per layer.
fn with_overhead(input: Shape, layers: impl IntoIterator<Item = Layer>) -> Vec<Target> {
    std::iter::once(Target::Overhead(input)).chain(layers.into_iter().map(Target::Layer)).collect()
}

/// The single-model ONNX of a row. Weights are seeded per model, so a row
/// does not depend on which rows were built before it. The overhead row is
/// the same in every precision: an int8 layer's row includes the
/// quantization of its input and the dequantization of its output.
fn target_model(target: &Target, precision: TablePrecision) -> Vec<u8> {
    match (target, precision) {
        (Target::Layer(layer), TablePrecision::Fp32) => encode(&layer_model(layer, &mut RandomWeights::new(0))),
        (Target::Layer(layer), TablePrecision::Int8) => encode(
            &quantized_layer_model(layer, Precision::INT8, 0).expect("a layer model reads only its own calibration"),
        ),
        (Target::Overhead(input), _) => encode(&identity_model(*input)),
    }
}

/// The rows of a network of `layers`: the overhead row of its input first.
pub fn layer_targets(layers: &[Layer]) -> Vec<Target> {
    with_overhead(layers[0].input, layers.iter().copied())
}

/// Measures every row of `space` missing from the table at `out` (default:
/// [`default_path`] for the device) on the devices of `devices`,
/// appending each row as soon as it is measured (one unit of work per row
/// on `events`). `template` gives the runtime, threads and run counts, and with
/// `energy` set builds a table with energy columns; `precision` the
/// arithmetic of the layer models.
pub async fn build(
    devices: &mut dyn Measurements,
    space: &Space,
    template: &MeasureRequest,
    precision: TablePrecision,
    out: Option<&Path>,
    events: &dyn EventSink,
) -> Result<BuildReport, BuildError> {
    build_targets(devices, space.name(), targets(space), template, precision, out, events).await
}

/// [`build`] for the rows `targets` only (of a space named `space`).
pub async fn build_targets(
    devices: &mut dyn Measurements,
    space: &str,
    targets: Vec<Target>,
    template: &MeasureRequest,
    precision: TablePrecision,
    out: Option<&Path>,
    events: &dyn EventSink,
) -> Result<BuildReport, BuildError> {
    let info = devices.device();
    let device = info.device_id.clone();
    let Some(runtime) = info.runtimes.iter().find(|r| r.name == template.runtime) else {
        let available = info.runtimes.iter().map(|r| r.name.as_str()).collect::<Vec<_>>().join(", ");
        return Err(BuildError::NoRuntime { device, runtime: template.runtime.clone(), available });
    };
    if !runtime.precisions.iter().any(|p| p == precision.name()) {
        let (runtime, native) = (runtime.name.clone(), runtime.precisions.join(", "));
        return Err(BuildError::NotNative { device, runtime, precision, native });
    }
    let provenance = Provenance {
        device_id: info.device_id.clone(),
        runtime: runtime.name.clone(),
        runtime_version: runtime.version.clone(),
        threads: template.threads,
    };
    let path = out.map_or_else(
        || default_path(&info.device_id, &runtime.name, space, template.energy, precision),
        Path::to_path_buf,
    );
    let mut writer = TableWriter::open(&path, template.energy)?;
    writer.check_provenance(&provenance)?;

    let todo: Vec<Target> = targets.iter().filter(|t| !writer.table().contains(&t.key())).copied().collect();
    let work = Work::start(events, "rows", todo.len() as u64, 0);
    for target in &todo {
        let key = target.key();
        let job = MeasureJob::model(key.clone(), target_model(target, precision));
        let measurement = devices.measure_once(job, template).await?;
        writer.append(Row::from_measurement(*target, &measurement, SystemTime::now()))?;
        work.advance(Some(key));
    }
    drop(work);
    Ok(BuildReport { path, total: targets.len(), skipped: targets.len() - todo.len(), measured: todo.len() })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn default_paths_are_safe_file_names() {
        assert_eq!(
            default_path("x86_64-intel-core-i7-1a2b3c4d", "tract", "tiny", false, TablePrecision::Fp32),
            Path::new("latency-tables/x86_64-intel-core-i7-1a2b3c4d--tract--tiny.csv")
        );
        assert_eq!(
            default_path("my phone/1", "tract", "../x", false, TablePrecision::Fp32),
            Path::new("latency-tables/my_phone_1--tract--.._x.csv")
        );
        assert_eq!(
            default_path("pi4", "tract", "tiny", true, TablePrecision::Fp32),
            Path::new("latency-tables/pi4--tract--tiny--energy.csv")
        );
        assert_eq!(
            default_path("pi4", "ort", "tiny", true, TablePrecision::Int8),
            Path::new("latency-tables/pi4--ort--tiny--int8--energy.csv")
        );
    }

    #[test]
    fn targets_are_the_overhead_then_every_layer() {
        let space = Space::load("tiny", 1.0).unwrap();
        let targets = targets(&space);
        assert_eq!(targets[0].key(), "Overhead-input:32x32x3");
        assert_eq!(targets.len(), space.all_layers().len() + 1);
        // Each row's model takes that row's input.
        for (t, precision) in [targets[0], targets[1]]
            .into_iter()
            .flat_map(|t| [TablePrecision::Fp32, TablePrecision::Int8].map(|p| (t, p)))
        {
            let input = match t {
                Target::Layer(layer) => layer.input,
                Target::Overhead(input) => input,
            };
            let model = edgeloop_onnx::decode(&target_model(&t, precision)).unwrap();
            let dims = &edgeloop_onnx::declared_inputs(&model).unwrap()[0].dims;
            let expected: Vec<edgeloop_onnx::Dim> =
                [1, input.channels, input.height, input.width].into_iter().map(Into::into).collect();
            assert_eq!(dims, &expected, "{} {precision}", t.key());
        }
    }
}
