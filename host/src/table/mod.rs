//! Latency tables (DESIGN §7): one CSV row per layer key of a search space,
//! measured on one device with one runtime and thread count, plus a row for
//! the runtime's per-call overhead (an identity model on the space's input).
//!
//! A table built with `--energy` has two more columns, `energy_mj` (energy
//! of one inference above the idle baseline) and `energy_sensor`; every row
//! of such a table has them.
//!
//! The file is only ever appended to, one fsynced row at a time, so a build
//! killed at any point leaves every complete row intact; at worst the last
//! line is cut short, and that fragment is ignored on load and cut away by
//! the next [`TableWriter`] before it appends.

use std::collections::HashMap;
use std::fmt;
use std::fs;
use std::io;
use std::path::{Path, PathBuf};
use std::time::SystemTime;

use edgeloop_api::Measurement;
use edgeloop_durable::{LineLog, LogError, complete_lines};
use edgeloop_space::{Layer, LayerKind, Shape};
use serde::{Deserialize, Serialize};

pub mod build;

/// The CSV header, in order.
pub const COLUMNS: [&str; 20] = [
    "key",
    "kind",
    "input_h",
    "input_w",
    "input_c",
    "output_c",
    "expand",
    "kernel",
    "stride",
    "idskip",
    "mean_ms",
    "std_ms",
    "p50_ms",
    "min_ms",
    "n",
    "device_id",
    "runtime",
    "runtime_version",
    "threads",
    "measured_at",
];

/// The columns an energy table adds after [`COLUMNS`].
pub const ENERGY_COLUMNS: [&str; 2] = ["energy_mj", "energy_sensor"];

/// `kind` of the per-call overhead row.
pub const OVERHEAD_KIND: &str = "Overhead";

/// What a row measures.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Target {
    /// One layer in its context, as a single-layer model.
    Layer(Layer),
    /// The cost of one runtime call doing (almost) nothing: an identity model
    /// on this input shape. Every single-layer measurement includes it once.
    Overhead(Shape),
}

impl Target {
    /// The row's key: the layer's ProxylessNAS key, or `Overhead-input:HxWxC`.
    pub fn key(&self) -> String {
        match self {
            Target::Layer(layer) => layer.key(),
            Target::Overhead(input) => {
                format!("{OVERHEAD_KIND}-input:{}x{}x{}", input.height, input.width, input.channels)
            }
        }
    }
}

/// Where and how a row was measured. All rows of a table share one.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Provenance {
    pub device_id: String,
    pub runtime: String,
    pub runtime_version: String,
    pub threads: usize,
}

impl fmt::Display for Provenance {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "device {}, runtime {} {}, {} thread(s)",
            self.device_id, self.runtime, self.runtime_version, self.threads
        )
    }
}

/// One measured row.
#[derive(Debug, Clone, PartialEq)]
pub struct Row {
    pub target: Target,
    pub mean_ms: f64,
    pub std_ms: f64,
    pub p50_ms: f64,
    pub min_ms: f64,
    /// Timed runs behind the statistics.
    pub n: usize,
    pub provenance: Provenance,
    /// When the row was recorded (written with one-second precision).
    pub measured_at: SystemTime,
    /// Present in (and only in) the rows of an energy table.
    pub energy: Option<RowEnergy>,
}

/// A row's energy: one inference above the idle baseline, and the sensor read.
#[derive(Debug, Clone, PartialEq)]
pub struct RowEnergy {
    pub mj: f64,
    pub sensor: String,
}

impl Row {
    pub fn from_measurement(target: Target, m: &Measurement, measured_at: SystemTime) -> Row {
        let energy = m.energy.as_ref().map(|e| RowEnergy { mj: e.mj_per_inference, sensor: e.sensor.clone() });
        Row {
            target,
            mean_ms: m.latency_ms.mean,
            std_ms: m.latency_ms.std,
            p50_ms: m.latency_ms.p50,
            min_ms: m.latency_ms.min,
            n: m.latency_ms.n,
            provenance: Provenance {
                device_id: m.device_id.clone(),
                runtime: m.runtime.clone(),
                runtime_version: m.runtime_version.clone(),
                threads: m.threads,
            },
            measured_at,
            energy,
        }
    }

    pub fn key(&self) -> String {
        self.target.key()
    }

    /// The latency the predictor uses: the fastest run. On a shared or
    /// noisy machine whole stretches of runs can be slowed (CPU steal, a
    /// neighbour's burst), moving even the median; the minimum is what the
    /// hardware needs and repeats best.
    pub fn latency_ms(&self) -> f64 {
        self.min_ms
    }
}

/// Errors of reading and writing latency tables. Positions are 1-based lines.
#[derive(Debug, thiserror::Error)]
pub enum TableError {
    #[error("cannot {action} latency table {}", path.display())]
    Io {
        action: &'static str,
        path: PathBuf,
        #[source]
        source: io::Error,
    },

    #[error("{}:{line}: {message}", path.display())]
    Malformed { path: PathBuf, line: u64, message: String },

    #[error("{}:{line}: duplicate key {key} (first on line {first_line})", path.display())]
    DuplicateKey { path: PathBuf, line: u64, first_line: u64, key: String },

    #[error("{}:{line}: row measured with {found}, but the rows above were measured with {expected}", path.display())]
    MixedProvenance { path: PathBuf, line: u64, expected: Box<Provenance>, found: Box<Provenance> },

    #[error(
        "latency table {} holds rows measured with {table}, not with {requested}; write to another file",
        path.display()
    )]
    WrongProvenance { path: PathBuf, table: Box<Provenance>, requested: Box<Provenance> },

    #[error("latency table {} is open for writing by another process", path.display())]
    Locked { path: PathBuf },

    #[error(
        "latency table {} {}; write to another file",
        path.display(),
        if *has_energy { "has energy columns, so rows without energy cannot join it" }
        else { "has no energy columns, so rows with energy cannot join it" }
    )]
    EnergyLayout { path: PathBuf, has_energy: bool },

    #[error("latency table {} has no energy columns: build one with `edgeloop table build --energy`", path.display())]
    NoEnergy { path: PathBuf },
}

/// A latency table read from its CSV file.
#[derive(Debug, Clone)]
pub struct LatencyTable {
    path: PathBuf,
    rows: Vec<Row>,
    /// File line of each row.
    lines: Vec<u64>,
    index: HashMap<String, usize>,
    /// The header has [`ENERGY_COLUMNS`].
    has_energy: bool,
}

impl LatencyTable {
    /// Reads the table at `path`. A last line without its newline (a build
    /// killed mid-write) is ignored; the file itself is not changed.
    pub fn load(path: &Path) -> Result<LatencyTable, TableError> {
        let bytes = fs::read(path).map_err(io_error("read", path))?;
        LatencyTable::parse(path, complete_lines(&bytes))
    }

    /// Parses the complete lines `text` of the file at `path`.
    fn parse(path: &Path, text: &[u8]) -> Result<LatencyTable, TableError> {
        let malformed = |line: u64, message: String| TableError::Malformed { path: path.into(), line, message };
        if text.is_empty() {
            return Err(malformed(1, "no header line: not a latency table".into()));
        }
        let mut reader = csv::ReaderBuilder::new().has_headers(true).from_reader(text);
        let header = reader.headers().map_err(|e| malformed(1, e.to_string()))?.clone();
        let has_energy = if header.iter().eq(COLUMNS) {
            false
        } else if header.iter().eq(COLUMNS.iter().chain(&ENERGY_COLUMNS).copied()) {
            true
        } else {
            let header = header.iter().collect::<Vec<_>>().join(",");
            return Err(malformed(
                1,
                format!(
                    "header is `{header}`, expected `{}`, optionally followed by `,{}`",
                    COLUMNS.join(","),
                    ENERGY_COLUMNS.join(",")
                ),
            ));
        };
        let mut table =
            LatencyTable { path: path.into(), rows: vec![], lines: vec![], index: HashMap::new(), has_energy };
        for record in reader.records() {
            let record = record.map_err(|e| {
                let line = e.position().map_or(0, |p| p.line());
                malformed(line, e.to_string())
            })?;
            let line = record.position().map_or(0, |p| p.line());
            let row = record
                .deserialize::<Record>(Some(&header))
                .map_err(|e| e.to_string())
                .and_then(Record::into_row)
                .map_err(|message| malformed(line, message))?;
            table.admit(&row, line)?;
            table.push(row, line);
        }
        Ok(table)
    }

    /// Checks that `row`, found on (or about to be written to) `line`, may join the table.
    fn admit(&self, row: &Row, line: u64) -> Result<(), TableError> {
        if row.energy.is_some() != self.has_energy {
            return Err(TableError::EnergyLayout { path: self.path.clone(), has_energy: self.has_energy });
        }
        let key = row.key();
        if let Some(&first) = self.index.get(&key) {
            return Err(TableError::DuplicateKey { path: self.path.clone(), line, first_line: self.lines[first], key });
        }
        match self.provenance() {
            Some(expected) if *expected != row.provenance => Err(TableError::MixedProvenance {
                path: self.path.clone(),
                line,
                expected: Box::new(expected.clone()),
                found: Box::new(row.provenance.clone()),
            }),
            _ => Ok(()),
        }
    }

    /// Adds an admitted row.
    fn push(&mut self, row: Row, line: u64) {
        self.index.insert(row.key(), self.rows.len());
        self.rows.push(row);
        self.lines.push(line);
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Rows in file order.
    pub fn rows(&self) -> &[Row] {
        &self.rows
    }

    pub fn len(&self) -> usize {
        self.rows.len()
    }

    pub fn is_empty(&self) -> bool {
        self.rows.is_empty()
    }

    pub fn get(&self, key: &str) -> Option<&Row> {
        self.index.get(key).map(|&i| &self.rows[i])
    }

    pub fn contains(&self, key: &str) -> bool {
        self.index.contains_key(key)
    }

    /// The row of `layer`.
    pub fn layer(&self, layer: &Layer) -> Option<&Row> {
        self.get(&layer.key())
    }

    /// The per-call overhead row for models with this input shape.
    pub fn overhead(&self, input: Shape) -> Option<&Row> {
        self.get(&Target::Overhead(input).key())
    }

    /// Whether the rows carry energy (the file has [`ENERGY_COLUMNS`]).
    pub fn has_energy(&self) -> bool {
        self.has_energy
    }

    /// Where the rows were measured; `None` while the table is empty.
    pub fn provenance(&self) -> Option<&Provenance> {
        self.rows.first().map(|r| &r.provenance)
    }
}

/// Appends rows to a table file, crash-safely: the header is created
/// atomically (temp file + rename), every row is written in one write and
/// fsynced before [`TableWriter::append`] returns, and the file is never
/// rewritten. Holds an exclusive lock on the file while open.
#[derive(Debug)]
pub struct TableWriter {
    table: LatencyTable,
    log: LineLog,
}

impl TableWriter {
    /// Opens the table at `path` for appending, creating it (and its folder)
    /// with just the header if missing — with energy columns when `energy`.
    /// An existing table must have the same layout. A partial last line left
    /// by a killed writer is cut off first.
    pub fn open(path: &Path, energy: bool) -> Result<TableWriter, TableError> {
        create_with_header(path, energy)?;
        let (log, bytes) = LineLog::open(path)?;
        if log.cut_on_open() > 0 {
            tracing::warn!(
                "{}: cut off an incomplete last line ({} bytes) left by an interrupted build",
                path.display(),
                log.cut_on_open()
            );
        }
        let table = LatencyTable::parse(path, &bytes)?;
        if table.has_energy != energy {
            return Err(TableError::EnergyLayout { path: path.into(), has_energy: table.has_energy });
        }
        Ok(TableWriter { table, log })
    }

    /// The rows so far, including those appended through this writer.
    pub fn table(&self) -> &LatencyTable {
        &self.table
    }

    /// Fails when the table already holds rows measured elsewhere or otherwise.
    pub fn check_provenance(&self, requested: &Provenance) -> Result<(), TableError> {
        match self.table.provenance() {
            Some(table) if table != requested => Err(TableError::WrongProvenance {
                path: self.table.path.clone(),
                table: Box::new(table.clone()),
                requested: Box::new(requested.clone()),
            }),
            _ => Ok(()),
        }
    }

    /// Writes `row` as one line and fsyncs it. Refuses duplicate keys and rows
    /// measured with another provenance than the table's.
    pub fn append(&mut self, row: Row) -> Result<(), TableError> {
        self.check_provenance(&row.provenance)?;
        let line = self.table.lines.last().map_or(2, |l| l + 1);
        self.table.admit(&row, line)?;
        self.log.append(&encode_row(&row))?;
        self.table.push(row, line);
        Ok(())
    }
}

/// The CSV form of a row: the columns of [`COLUMNS`], then, in an energy
/// table, [`EnergyRecord`]'s.
#[derive(Debug, Serialize, Deserialize)]
struct Record {
    key: String,
    kind: String,
    input_h: usize,
    input_w: usize,
    input_c: usize,
    output_c: usize,
    expand: usize,
    kernel: usize,
    stride: usize,
    idskip: u8,
    mean_ms: f64,
    std_ms: f64,
    p50_ms: f64,
    min_ms: f64,
    n: usize,
    device_id: String,
    runtime: String,
    runtime_version: String,
    threads: usize,
    measured_at: String,
    /// Absent from tables without energy columns.
    #[serde(skip_serializing)]
    energy_mj: Option<f64>,
    #[serde(skip_serializing)]
    energy_sensor: Option<String>,
}

/// The [`ENERGY_COLUMNS`] of a row.
#[derive(Debug, Serialize)]
struct EnergyRecord<'a> {
    energy_mj: f64,
    energy_sensor: &'a str,
}

impl Record {
    fn new(row: &Row) -> Record {
        // The overhead row fills the layer columns as an identity "layer" would.
        let (kind, input, output_c, expand, kernel, stride, idskip) = match row.target {
            Target::Layer(l) => (l.kind.key_name(), l.input, l.out_channels, l.expand, l.kernel, l.stride, l.idskip),
            Target::Overhead(input) => (OVERHEAD_KIND, input, input.channels, 1, 1, 1, false),
        };
        Record {
            key: row.key(),
            kind: kind.into(),
            input_h: input.height,
            input_w: input.width,
            input_c: input.channels,
            output_c,
            expand,
            kernel,
            stride,
            idskip: idskip.into(),
            mean_ms: row.mean_ms,
            std_ms: row.std_ms,
            p50_ms: row.p50_ms,
            min_ms: row.min_ms,
            n: row.n,
            device_id: row.provenance.device_id.clone(),
            runtime: row.provenance.runtime.clone(),
            runtime_version: row.provenance.runtime_version.clone(),
            threads: row.provenance.threads,
            measured_at: humantime::format_rfc3339_seconds(row.measured_at).to_string(),
            energy_mj: None,
            energy_sensor: None,
        }
    }

    /// Checks the fields and that the key is the one they describe.
    fn into_row(self) -> Result<Row, String> {
        let input = Shape { height: self.input_h, width: self.input_w, channels: self.input_c };
        let idskip = match self.idskip {
            0 => false,
            1 => true,
            other => return Err(format!("idskip is {other}, not 0 or 1")),
        };
        let target = if self.kind == OVERHEAD_KIND {
            Target::Overhead(input)
        } else {
            let kind = LayerKind::from_key_name(&self.kind).ok_or_else(|| format!("unknown kind `{}`", self.kind))?;
            let (out_channels, expand, kernel, stride) = (self.output_c, self.expand, self.kernel, self.stride);
            Target::Layer(Layer { kind, input, out_channels, expand, kernel, stride, idskip })
        };
        if target.key() != self.key {
            return Err(format!("key `{}` does not match the row's fields, which give `{}`", self.key, target.key()));
        }
        for (name, value) in
            [("mean_ms", self.mean_ms), ("std_ms", self.std_ms), ("p50_ms", self.p50_ms), ("min_ms", self.min_ms)]
        {
            if !(value.is_finite() && value >= 0.0) {
                return Err(format!("{name} is {value}, not a finite time ≥ 0"));
            }
        }
        let measured_at = humantime::parse_rfc3339(&self.measured_at)
            .map_err(|e| format!("measured_at `{}` is not an RFC 3339 UTC time: {e}", self.measured_at))?;
        let energy = match (self.energy_mj, self.energy_sensor) {
            (Some(mj), Some(sensor)) if mj.is_finite() => Some(RowEnergy { mj, sensor }),
            (Some(mj), _) if !mj.is_finite() => return Err(format!("energy_mj is {mj}, not a finite energy")),
            (None, None) => None,
            _ => return Err("energy_mj and energy_sensor must both be set in an energy table".into()),
        };
        Ok(Row {
            target,
            mean_ms: self.mean_ms,
            std_ms: self.std_ms,
            p50_ms: self.p50_ms,
            min_ms: self.min_ms,
            n: self.n,
            provenance: Provenance {
                device_id: self.device_id,
                runtime: self.runtime,
                runtime_version: self.runtime_version,
                threads: self.threads,
            },
            measured_at,
            energy,
        })
    }
}

/// One CSV line, newline included.
fn encode_row(row: &Row) -> Vec<u8> {
    let mut writer = csv::WriterBuilder::new().has_headers(false).from_writer(Vec::new());
    let record = Record::new(row);
    match &row.energy {
        Some(e) => writer.serialize((record, EnergyRecord { energy_mj: e.mj, energy_sensor: &e.sensor })),
        None => writer.serialize(record),
    }
    .expect("a record of strings and numbers serialises");
    writer.into_inner().expect("writing to memory cannot fail")
}

fn io_error(action: &'static str, path: &Path) -> impl FnOnce(io::Error) -> TableError {
    let path = path.to_path_buf();
    move |source| TableError::Io { action, path, source }
}

/// Creates `path` holding just the header unless it exists, complete when
/// it appears and never replacing a table another process created meanwhile.
fn create_with_header(path: &Path, energy: bool) -> Result<(), TableError> {
    if path.exists() {
        return Ok(());
    }
    if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
        fs::create_dir_all(dir).map_err(io_error("create the folder of", path))?;
    }
    let columns: Vec<&str> = COLUMNS.iter().chain(if energy { &ENERGY_COLUMNS[..] } else { &[] }).copied().collect();
    edgeloop_durable::create_new(path, format!("{}\n", columns.join(",")).as_bytes())
        .map(|_| ())
        .map_err(io_error("create", path))
}

impl From<LogError> for TableError {
    fn from(e: LogError) -> TableError {
        match e {
            LogError::Locked { path } => TableError::Locked { path },
            LogError::Io { action, path, source } => TableError::Io { action, path, source },
        }
    }
}

#[cfg(test)]
pub(crate) mod tests {
    use std::io::Write as _;
    use std::time::{Duration, UNIX_EPOCH};

    use super::*;

    pub(crate) fn provenance() -> Provenance {
        Provenance { device_id: "pi4".into(), runtime: "tract".into(), runtime_version: "0.23.9".into(), threads: 1 }
    }

    /// A row whose p50 and min (the predictor's statistic) are both `ms`.
    pub(crate) fn row(target: Target, ms: f64) -> Row {
        Row {
            target,
            mean_ms: ms * 1.01,
            std_ms: 0.125,
            p50_ms: ms,
            min_ms: ms,
            n: 30,
            provenance: provenance(),
            measured_at: UNIX_EPOCH + Duration::from_secs(1_760_000_000),
            energy: None,
        }
    }

    fn shape(height: usize, channels: usize) -> Shape {
        Shape { height, width: height, channels }
    }

    fn mbconv() -> Layer {
        Layer::mbconv(shape(56, 24), 24, 5, 6, 1)
    }

    fn rows() -> Vec<Row> {
        vec![
            row(Target::Overhead(shape(224, 3)), 0.0125),
            row(Target::Layer(mbconv()), 1.0 / 3.0),
            row(Target::Layer(Layer::logits(shape(7, 1280), 1000)), 0.5),
        ]
    }

    fn write_all(path: &Path, rows: &[Row]) {
        let mut writer = TableWriter::open(path, false).unwrap();
        for r in rows {
            writer.append(r.clone()).unwrap();
        }
    }

    #[test]
    fn rows_round_trip_through_the_file() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("latency-tables/pi4--tract--tiny.csv");
        write_all(&path, &rows());
        let text = fs::read_to_string(&path).unwrap();
        let lines: Vec<&str> = text.lines().collect();
        assert_eq!(lines[0], COLUMNS.join(","));
        assert_eq!(
            lines[1],
            "Overhead-input:224x224x3,Overhead,224,224,3,3,1,1,1,0,0.012625,0.125,0.0125,0.0125,30,pi4,tract,0.23.9,1,\
             2025-10-09T08:53:20Z"
        );
        assert!(lines[2].starts_with(&format!("{},expanded_conv,56,56,24,24,6,5,1,1,", mbconv().key())));
        let table = LatencyTable::load(&path).unwrap();
        assert_eq!(table.rows(), rows());
        assert_eq!(table.layer(&mbconv()).unwrap().latency_ms(), 1.0 / 3.0);
        assert_eq!(table.overhead(shape(224, 3)).unwrap().p50_ms, 0.0125);
        assert!(table.overhead(shape(32, 3)).is_none());
        assert_eq!(table.provenance(), Some(&provenance()));

        // Reopening appends after the existing rows.
        let mut writer = TableWriter::open(&path, false).unwrap();
        assert_eq!(writer.table().len(), 3);
        let head = Layer::head_conv(shape(7, 320), 1280);
        writer.append(row(Target::Layer(head), 0.25)).unwrap();
        drop(writer);
        assert_eq!(LatencyTable::load(&path).unwrap().rows()[3].target, Target::Layer(head));
    }

    #[test]
    fn a_partial_last_line_is_ignored_then_cut_off() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("t.csv");
        write_all(&path, &rows()[..2]);
        let complete = fs::read(&path).unwrap();
        let partial = &encode_row(&rows()[2])[..40];
        fs::OpenOptions::new().append(true).open(&path).unwrap().write_all(partial).unwrap();

        assert_eq!(LatencyTable::load(&path).unwrap().rows(), &rows()[..2]);
        assert_eq!(fs::read(&path).unwrap().len(), complete.len() + partial.len(), "load leaves the file alone");

        let mut writer = TableWriter::open(&path, false).unwrap();
        assert_eq!(fs::read(&path).unwrap(), complete, "the fragment is cut off");
        writer.append(rows()[2].clone()).unwrap();
        assert_eq!(LatencyTable::load(&path).unwrap().rows(), rows());
    }

    #[test]
    fn duplicate_keys_are_refused_on_load_and_on_append() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("t.csv");
        write_all(&path, &rows());
        let mut writer = TableWriter::open(&path, false).unwrap();
        let error = writer.append(rows()[1].clone()).unwrap_err();
        assert!(matches!(error, TableError::DuplicateKey { line: 5, first_line: 3, .. }), "{error:?}");
        drop(writer);

        fs::OpenOptions::new().append(true).open(&path).unwrap().write_all(&encode_row(&rows()[1])).unwrap();
        let error = LatencyTable::load(&path).unwrap_err().to_string();
        assert_eq!(error, format!("{}:5: duplicate key {} (first on line 3)", path.display(), mbconv().key()));
    }

    #[test]
    fn malformed_rows_are_reported_with_file_and_line() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("t.csv");
        write_all(&path, &rows()[..1]);
        let good = fs::read_to_string(&path).unwrap();
        let line = encode_row(&rows()[1]);
        let line = String::from_utf8(line).unwrap();
        let cases = [
            (line.replace(",24,24,6,5,", ",24,32,6,5,"), "does not match the row's fields"),
            (line.replace(",expanded_conv,", ",Pool,"), "unknown kind `Pool`"),
            (line.replace(",1,1,0.3", ",1,2,0.3"), "idskip is 2"),
            (line.replace(",pi4,", ",pi4,extra,"), "found record with 21 fields"),
            (line.replace("0.125", "NaN"), "std_ms is NaN"),
            (line.replace("Z\n", "+01:00\n"), "not an RFC 3339 UTC time"),
            (line.replace(",30,", ",-3,"), "invalid digit"),
            (line.replace("pi4", "pi5"), "row measured with device pi5"),
        ];
        for (bad, why) in cases {
            fs::write(&path, format!("{good}{bad}")).unwrap();
            let error = LatencyTable::load(&path).unwrap_err().to_string();
            assert!(error.starts_with(&format!("{}:3: ", path.display())), "{why}: {error}");
            assert!(error.contains(why), "{why}: {error}");
        }
        fs::write(&path, "key,kind\n").unwrap();
        let error = LatencyTable::load(&path).unwrap_err().to_string();
        assert!(error.starts_with(&format!("{}:1: header is `key,kind`", path.display())), "{error}");
        fs::write(&path, "").unwrap();
        assert!(LatencyTable::load(&path).unwrap_err().to_string().contains(":1: no header line"));
        let missing = dir.path().join("missing.csv");
        let error = LatencyTable::load(&missing).unwrap_err().to_string();
        assert_eq!(error, format!("cannot read latency table {}", missing.display()));
    }

    #[test]
    fn rows_from_elsewhere_are_refused() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("t.csv");
        write_all(&path, &rows()[..1]);
        let mut writer = TableWriter::open(&path, false).unwrap();
        let other = Provenance { threads: 2, ..provenance() };
        let error = writer.check_provenance(&other).unwrap_err().to_string();
        assert!(error.contains("measured with device pi4, runtime tract 0.23.9, 1 thread(s), not with"), "{error}");
        let mut moved = rows()[1].clone();
        moved.provenance = other;
        assert!(matches!(writer.append(moved), Err(TableError::WrongProvenance { .. })));
        assert!(writer.check_provenance(&provenance()).is_ok());
    }

    #[test]
    fn one_writer_at_a_time() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("t.csv");
        let writer = TableWriter::open(&path, false).unwrap();
        assert!(matches!(TableWriter::open(&path, false), Err(TableError::Locked { .. })));
        drop(writer);
        assert!(TableWriter::open(&path, false).unwrap().table().is_empty());
    }
}
