//! Energy meters (DESIGN §6, §10): x86 RAPL counters, Jetson INA3221 rails
//! and the Android battery gauge behind one [`PowerSensor`] interface, and an
//! [`EnergyMeter`] that samples one of them while a closure runs.
//!
//! Every reader takes a sysfs root (`/sys` in production) so tests can point
//! it at fixture trees.

mod android;
mod clock;
mod jetson;
mod rapl;
mod sampler;

use std::fmt;
use std::fs;
use std::io;
use std::path::{Path, PathBuf};
use std::str::FromStr;

pub use sampler::{EnergyMeter, EnergyReading, MeterConfig};

/// What a sensor's readings are, which decides how they are integrated.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ReadingKind {
    /// Joules used since the sensor was opened; the sensor corrects wraps.
    Energy,
    /// Instantaneous power in watts.
    Power,
}

/// One source of energy or power readings.
pub trait PowerSensor: Send {
    /// What is read, e.g. `rapl:package-0+dram`, `jetson:VDD_IN`, `android:battery`.
    fn name(&self) -> &str;
    fn kind(&self) -> ReadingKind;
    /// One reading, in joules or watts per [`kind`](Self::kind).
    fn read(&mut self) -> Result<f64, EnergyError>;
}

#[derive(Debug, thiserror::Error)]
pub enum EnergyError {
    #[error("energy metering is off on this agent (energy sensor `none`)")]
    Off,
    /// The sysfs files of this kind of sensor are not there.
    #[error("{0}")]
    Absent(String),
    /// `auto` found nothing usable: why, for each kind.
    #[error("{0}")]
    NoneUsable(String),
    #[error("cannot read {}: permission denied; {fix}", path.display())]
    PermissionDenied { path: PathBuf, fix: String },
    #[error("reading {}: {source}", path.display())]
    Io { path: PathBuf, source: io::Error },
    #[error("{}: `{content}` is not a number", path.display())]
    NotANumber { path: PathBuf, content: String },
    #[error("no Jetson rail `{rail}`; rails found: {found}")]
    UnknownRail { rail: String, found: String },
    #[error("no whole-board Jetson rail (VDD_IN or POM_5V_IN) among {found}: choose one with `jetson:RAIL`")]
    NoBoardRail { found: String },
    /// The Android battery gauge does not measure the phone's draw now.
    #[error("{0}")]
    NotOnBattery(String),
}

impl EnergyError {
    /// A read worth retrying or skipping: I2C sensor reads fail now and
    /// then, and a reader can catch a value half-written.
    pub fn is_transient(&self) -> bool {
        matches!(self, EnergyError::Io { .. } | EnergyError::NotANumber { .. })
    }
}

/// A sysfs attribute, trimmed. Permission errors get their own error with
/// the fix, since that is the usual reason a present sensor is unusable.
fn read_text(path: &Path) -> Result<String, EnergyError> {
    match fs::read_to_string(path) {
        Ok(s) => Ok(s.trim().to_string()),
        Err(source) if source.kind() == io::ErrorKind::PermissionDenied => Err(EnergyError::PermissionDenied {
            path: path.into(),
            fix: format!(
                "run the agent as root, or make the file readable: `sudo chmod a+r {}` \
                 (until reboot; a udev rule makes it permanent)",
                path.display()
            ),
        }),
        Err(source) => Err(EnergyError::Io { path: path.into(), source }),
    }
}

fn read_number<T: FromStr>(path: &Path) -> Result<T, EnergyError> {
    let text = read_text(path)?;
    text.parse().map_err(|_| EnergyError::NotANumber { path: path.into(), content: text })
}

/// Fails on a first read that can never succeed (permission), not on a
/// transient one: the sampler skips those.
fn check_readable(sensor: &mut dyn PowerSensor) -> Result<(), EnergyError> {
    match sensor.read() {
        Err(e) if !e.is_transient() => Err(e),
        _ => Ok(()),
    }
}

/// Which sensor the agent meters with (`--energy-sensor`).
#[derive(Debug, Clone, PartialEq, Eq, Default, serde::Serialize, serde::Deserialize)]
pub enum SensorChoice {
    /// RAPL, then Jetson, then Android: the first usable.
    #[default]
    Auto,
    Off,
    Rapl,
    /// A Jetson INA3221 rail by name; the whole-board rail when `None`.
    Jetson(Option<String>),
    Android,
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("unknown energy sensor `{0}`: expected auto, none, rapl, jetson, jetson:RAIL or android")]
pub struct ParseSensorChoiceError(String);

impl FromStr for SensorChoice {
    type Err = ParseSensorChoiceError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let (kind, rail) = match s.trim().split_once(':') {
            Some((kind, rail)) => (kind, Some(rail.trim())),
            None => (s.trim(), None),
        };
        match (kind.to_ascii_lowercase().as_str(), rail) {
            ("auto", None) => Ok(SensorChoice::Auto),
            ("none", None) => Ok(SensorChoice::Off),
            ("rapl", None) => Ok(SensorChoice::Rapl),
            ("jetson", None) => Ok(SensorChoice::Jetson(None)),
            ("jetson", Some(rail)) if !rail.is_empty() => Ok(SensorChoice::Jetson(Some(rail.to_string()))),
            ("android", None) => Ok(SensorChoice::Android),
            _ => Err(ParseSensorChoiceError(s.to_string())),
        }
    }
}

impl fmt::Display for SensorChoice {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            SensorChoice::Auto => f.write_str("auto"),
            SensorChoice::Off => f.write_str("none"),
            SensorChoice::Rapl => f.write_str("rapl"),
            SensorChoice::Jetson(None) => f.write_str("jetson"),
            SensorChoice::Jetson(Some(rail)) => write!(f, "jetson:{rail}"),
            SensorChoice::Android => f.write_str("android"),
        }
    }
}

impl SensorChoice {
    /// Opens the chosen sensor under the sysfs root `sys`, after checking it
    /// can be read. Open one per measurement: whether an Android phone is on
    /// battery can change between measurements.
    pub fn open(&self, sys: &Path) -> Result<Box<dyn PowerSensor>, EnergyError> {
        match self {
            SensorChoice::Auto => {
                let mut errors = Vec::new();
                for probe in PROBES {
                    match probe(sys) {
                        Ok(sensor) => return Ok(sensor),
                        Err(e) => errors.push(e),
                    }
                }
                Err(EnergyError::NoneUsable(none_usable_reason(sys, &errors)))
            }
            SensorChoice::Off => Err(EnergyError::Off),
            SensorChoice::Rapl => Ok(Box::new(rapl::open(sys)?)),
            SensorChoice::Jetson(rail) => Ok(Box::new(jetson::open(sys, rail.as_deref())?)),
            SensorChoice::Android => Ok(Box::new(android::open(sys)?)),
        }
    }
}

type Probe = fn(&Path) -> Result<Box<dyn PowerSensor>, EnergyError>;

/// Every kind with its default settings, in `auto`'s order of preference.
const PROBES: [Probe; 3] = [
    |sys| Ok(Box::new(rapl::open(sys)?)),
    |sys| Ok(Box::new(jetson::open(sys, None)?)),
    |sys| Ok(Box::new(android::open(sys)?)),
];

/// One line for people: the specific failures of sensors that are there, or
/// a plain "nothing here" when none is.
fn none_usable_reason(sys: &Path, errors: &[EnergyError]) -> String {
    let present: Vec<String> =
        errors.iter().filter(|e| !matches!(e, EnergyError::Absent(_))).map(ToString::to_string).collect();
    if present.is_empty() {
        format!("no RAPL powercap, no Jetson INA3221 and no Android battery under {}", sys.display())
    } else {
        present.join("; ")
    }
}

/// The sensors found under a sysfs root, for `/v1/info`'s `energy_sensors`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Discovery {
    /// Names of the usable sensors, in `auto`'s order of preference.
    pub sensors: Vec<String>,
    /// Why none is usable; `None` when some is.
    pub unavailable_reason: Option<String>,
}

/// What `choice` finds under `sys`: every usable sensor for `auto`, else
/// the chosen one (or why it cannot be used).
pub fn discover(sys: &Path, choice: &SensorChoice) -> Discovery {
    if *choice != SensorChoice::Auto {
        return match choice.open(sys) {
            Ok(sensor) => Discovery { sensors: vec![sensor.name().to_string()], unavailable_reason: None },
            Err(e) => Discovery { sensors: vec![], unavailable_reason: Some(e.to_string()) },
        };
    }
    let mut sensors = Vec::new();
    let mut errors = Vec::new();
    for probe in PROBES {
        match probe(sys) {
            Ok(sensor) => sensors.push(sensor.name().to_string()),
            Err(e) => errors.push(e),
        }
    }
    let unavailable_reason = sensors.is_empty().then(|| none_usable_reason(sys, &errors));
    Discovery { sensors, unavailable_reason }
}

#[cfg(test)]
mod fixture {
    //! Fixture sysfs trees for the sensors' tests.

    use std::fs;
    use std::path::Path;

    /// Writes `body` at `root/rel` through a rename, so that a reader never
    /// sees a half-written number.
    pub fn write(root: &Path, rel: &str, body: &str) {
        let path = root.join(rel);
        fs::create_dir_all(path.parent().unwrap()).unwrap();
        let tmp = path.with_file_name(format!(".{}.tmp", path.file_name().unwrap().to_string_lossy()));
        fs::write(&tmp, body).unwrap();
        fs::rename(&tmp, &path).unwrap();
    }

    /// Makes `path` unreadable; false when it still is (running as root).
    #[cfg(unix)]
    pub fn make_unreadable(path: &Path) -> bool {
        use std::os::unix::fs::PermissionsExt;
        fs::set_permissions(path, fs::Permissions::from_mode(0o000)).unwrap();
        fs::read(path).is_err()
    }
}

#[cfg(test)]
mod tests {
    use super::fixture::write;
    use super::*;

    #[test]
    fn sensor_choice_parses_and_prints() {
        for (text, choice) in [
            ("auto", SensorChoice::Auto),
            ("none", SensorChoice::Off),
            ("RAPL", SensorChoice::Rapl),
            ("jetson", SensorChoice::Jetson(None)),
            ("jetson:VDD_CPU_GPU_CV", SensorChoice::Jetson(Some("VDD_CPU_GPU_CV".into()))),
            ("android", SensorChoice::Android),
        ] {
            assert_eq!(text.parse::<SensorChoice>().unwrap(), choice);
            assert_eq!(choice.to_string().parse::<SensorChoice>().unwrap(), choice);
        }
        for bad in ["nvml", "", "jetson:", "rapl:package-0"] {
            let err = bad.parse::<SensorChoice>().unwrap_err().to_string();
            assert!(err.contains("expected auto, none, rapl, jetson, jetson:RAIL or android"), "{err}");
        }
        assert_eq!(SensorChoice::default(), SensorChoice::Auto);
    }

    #[test]
    fn nothing_found_says_so() {
        let root = tempfile::tempdir().unwrap();
        let found = discover(root.path(), &SensorChoice::Auto);
        assert!(found.sensors.is_empty());
        let reason = found.unavailable_reason.unwrap();
        assert!(reason.starts_with("no RAPL powercap, no Jetson INA3221 and no Android battery under"), "{reason}");
        let err = SensorChoice::Auto.open(root.path()).err().unwrap();
        assert_eq!(err.to_string(), reason);
        assert!(matches!(SensorChoice::Off.open(root.path()), Err(EnergyError::Off)));
    }

    #[test]
    fn auto_prefers_rapl_and_discovery_lists_all_usable() {
        let root = tempfile::tempdir().unwrap();
        let sys = root.path();
        write(sys, "class/powercap/intel-rapl:0/name", "package-0\n");
        write(sys, "class/powercap/intel-rapl:0/energy_uj", "1000\n");
        write(sys, "class/powercap/intel-rapl:0/max_energy_range_uj", "262143328850\n");
        write(sys, "class/power_supply/battery/status", "Discharging\n");
        write(sys, "class/power_supply/battery/current_now", "-400000\n");
        write(sys, "class/power_supply/battery/voltage_now", "3900000\n");
        assert_eq!(SensorChoice::Auto.open(sys).unwrap().name(), "rapl:package-0");
        let found = discover(sys, &SensorChoice::Auto);
        assert_eq!(found.sensors, ["rapl:package-0", "android:battery"]);
        assert_eq!(found.unavailable_reason, None);
    }

    #[test]
    fn auto_reports_why_a_present_sensor_is_unusable() {
        let root = tempfile::tempdir().unwrap();
        let sys = root.path();
        write(sys, "class/power_supply/battery/status", "Charging\n");
        write(sys, "class/power_supply/battery/current_now", "900000\n");
        write(sys, "class/power_supply/battery/voltage_now", "4100000\n");
        let reason = discover(sys, &SensorChoice::Auto).unavailable_reason.unwrap();
        assert!(reason.contains("Charging"), "{reason}");
        assert!(!reason.contains("no RAPL powercap"), "{reason}");
    }
}
