//! NVIDIA Jetson INA3221 power monitors, in the two sysfs layouts of L4T:
//! - JetPack < 5, NVIDIA's iio driver: `bus/i2c/drivers/ina3221x/<dev>/iio:device<K>/`
//!   with `rail_name_<N>` and `in_power<N>_input` (mW), channels 0–2;
//! - JetPack ≥ 5, the mainline hwmon driver: `bus/i2c/drivers/ina3221/<dev>/hwmon/hwmon<K>/`
//!   with `in<N>_label`, `in<N>_input` (mV) and `curr<N>_input` (mA), channels 1–3.
//!
//! Unconnected channels have no `rail_name_<N>` (iio) or the label `NC` (hwmon).

use std::fs;
use std::path::{Path, PathBuf};

use super::{EnergyError, PowerSensor, ReadingKind, check_readable, read_number, read_text};

/// Whole-board input rails: `VDD_IN` on most boards, `POM_5V_IN` on the
/// Nano and TX2 NX kernels.
const BOARD_RAILS: [&str; 2] = ["VDD_IN", "POM_5V_IN"];

pub(super) struct JetsonRail {
    name: String,
    source: Source,
}

enum Source {
    Milliwatts(PathBuf),
    MillivoltsMilliamps { volts: PathBuf, amps: PathBuf },
}

struct Rail {
    label: String,
    source: Source,
}

pub(super) fn open(sys: &Path, rail: Option<&str>) -> Result<JetsonRail, EnergyError> {
    let mut rails = rails(sys)?;
    if rails.is_empty() {
        return Err(EnergyError::Absent(format!(
            "no Jetson INA3221 rails under {}/bus/i2c/drivers/ina3221{{,x}}",
            sys.display()
        )));
    }
    let found = || rails.iter().map(|r| r.label.as_str()).collect::<Vec<_>>().join(", ");
    let chosen = match rail {
        Some(wanted) => rails
            .iter()
            .position(|r| r.label.eq_ignore_ascii_case(wanted))
            .ok_or_else(|| EnergyError::UnknownRail { rail: wanted.to_string(), found: found() })?,
        None => BOARD_RAILS
            .iter()
            .find_map(|board| rails.iter().position(|r| r.label == *board))
            .ok_or_else(|| EnergyError::NoBoardRail { found: found() })?,
    };
    let rail = rails.swap_remove(chosen);
    let mut sensor = JetsonRail { name: format!("jetson:{}", rail.label), source: rail.source };
    check_readable(&mut sensor)?;
    Ok(sensor)
}

/// Subdirectories of `dir` whose name starts with `prefix`, sorted.
fn subdirs(dir: &Path, prefix: &str) -> Vec<PathBuf> {
    let Ok(entries) = fs::read_dir(dir) else { return vec![] };
    let mut dirs: Vec<PathBuf> = entries
        .filter_map(Result::ok)
        .filter(|e| e.file_name().to_string_lossy().starts_with(prefix))
        .map(|e| e.path())
        .filter(|p| p.is_dir())
        .collect();
    dirs.sort();
    dirs
}

/// Channel numbers `N` of the files `<prefix>N<suffix>` in `dir`, sorted.
fn channels(dir: &Path, prefix: &str, suffix: &str) -> Vec<u32> {
    let Ok(entries) = fs::read_dir(dir) else { return vec![] };
    let mut found: Vec<u32> = entries
        .filter_map(Result::ok)
        .filter_map(|e| e.file_name().to_str()?.strip_prefix(prefix)?.strip_suffix(suffix)?.parse().ok())
        .collect();
    found.sort_unstable();
    found
}

/// Connected rails of both layouts, in device and channel order.
fn rails(sys: &Path) -> Result<Vec<Rail>, EnergyError> {
    let drivers = sys.join("bus/i2c/drivers");
    let mut rails = Vec::new();
    // `<dev>` entries sit beside `bind`, `uevent` and `module`, which hold no
    // iio or hwmon directory and so drop out below.
    for dev in subdirs(&drivers.join("ina3221x"), "") {
        for iio in subdirs(&dev, "iio:device") {
            for n in channels(&iio, "rail_name_", "") {
                let power = iio.join(format!("in_power{n}_input"));
                let label = read_text(&iio.join(format!("rail_name_{n}")))?;
                if connected(&label) && power.exists() {
                    rails.push(Rail { label, source: Source::Milliwatts(power) });
                }
            }
        }
    }
    for dev in subdirs(&drivers.join("ina3221"), "") {
        for hwmon in subdirs(&dev.join("hwmon"), "hwmon") {
            // Channel 7, "sum of shunt voltages", has a label but no current.
            for n in channels(&hwmon, "in", "_label") {
                let amps = hwmon.join(format!("curr{n}_input"));
                let label = read_text(&hwmon.join(format!("in{n}_label")))?;
                if connected(&label) && amps.exists() {
                    let volts = hwmon.join(format!("in{n}_input"));
                    rails.push(Rail { label, source: Source::MillivoltsMilliamps { volts, amps } });
                }
            }
        }
    }
    Ok(rails)
}

fn connected(label: &str) -> bool {
    !label.is_empty() && !label.eq_ignore_ascii_case("NC")
}

impl PowerSensor for JetsonRail {
    fn name(&self) -> &str {
        &self.name
    }

    fn kind(&self) -> ReadingKind {
        ReadingKind::Power
    }

    fn read(&mut self) -> Result<f64, EnergyError> {
        match &self.source {
            Source::Milliwatts(power) => Ok(read_number::<f64>(power)? / 1e3),
            Source::MillivoltsMilliamps { volts, amps } => {
                Ok(read_number::<f64>(volts)? * read_number::<f64>(amps)? / 1e6)
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::super::fixture::write;
    use super::*;

    /// JetPack ≥ 5 layout of a Xavier NX / Orin: VDD_IN, an NC channel, VDD_SOC,
    /// and the shunt-sum channel 7.
    fn hwmon_board(sys: &Path) {
        let hw = "bus/i2c/drivers/ina3221/7-0040/hwmon/hwmon6";
        write(sys, "bus/i2c/drivers/ina3221/bind", "");
        write(sys, &format!("{hw}/in1_label"), "VDD_IN\n");
        write(sys, &format!("{hw}/in1_input"), "5000\n");
        write(sys, &format!("{hw}/curr1_input"), "1000\n");
        write(sys, &format!("{hw}/in2_label"), "NC\n");
        write(sys, &format!("{hw}/in2_input"), "0\n");
        write(sys, &format!("{hw}/curr2_input"), "0\n");
        write(sys, &format!("{hw}/in3_label"), "VDD_SOC\n");
        write(sys, &format!("{hw}/in3_input"), "5000\n");
        write(sys, &format!("{hw}/curr3_input"), "300\n");
        write(sys, &format!("{hw}/in7_label"), "sum of shunt voltages\n");
        write(sys, &format!("{hw}/in7_input"), "120\n");
    }

    #[test]
    fn hwmon_layout_multiplies_volts_and_amps() {
        let root = tempfile::tempdir().unwrap();
        let sys = root.path();
        hwmon_board(sys);
        let mut board = open(sys, None).unwrap();
        assert_eq!(board.name(), "jetson:VDD_IN");
        assert_eq!(board.kind(), ReadingKind::Power);
        assert!((board.read().unwrap() - 5.0).abs() < 1e-9);
        let mut soc = open(sys, Some("vdd_soc")).unwrap();
        assert_eq!(soc.name(), "jetson:VDD_SOC");
        assert!((soc.read().unwrap() - 1.5).abs() < 1e-9);
    }

    #[test]
    fn iio_layout_reads_milliwatts_and_falls_back_to_pom_5v_in() {
        let root = tempfile::tempdir().unwrap();
        let sys = root.path();
        // Nano: rail names POM_*; channel 2 unconnected (no rail_name_2).
        let iio = "bus/i2c/drivers/ina3221x/6-0040/iio:device0";
        write(sys, &format!("{iio}/rail_name_0"), "POM_5V_IN\n");
        write(sys, &format!("{iio}/in_power0_input"), "2345\n");
        write(sys, &format!("{iio}/rail_name_1"), "POM_5V_GPU\n");
        write(sys, &format!("{iio}/in_power1_input"), "120\n");
        write(sys, &format!("{iio}/in_power2_input"), "0\n");
        let mut board = open(sys, None).unwrap();
        assert_eq!(board.name(), "jetson:POM_5V_IN");
        assert!((board.read().unwrap() - 2.345).abs() < 1e-9);
        let mut gpu = open(sys, Some("POM_5V_GPU")).unwrap();
        assert!((gpu.read().unwrap() - 0.12).abs() < 1e-9);
    }

    #[test]
    fn unknown_rail_lists_the_connected_rails() {
        let root = tempfile::tempdir().unwrap();
        let sys = root.path();
        hwmon_board(sys);
        let err = open(sys, Some("VDD_GPU")).err().unwrap();
        assert_eq!(err.to_string(), "no Jetson rail `VDD_GPU`; rails found: VDD_IN, VDD_SOC");
        let err = open(sys, Some("NC")).err().unwrap();
        assert!(matches!(err, EnergyError::UnknownRail { .. }));
    }

    #[test]
    fn no_board_rail_asks_for_one() {
        let root = tempfile::tempdir().unwrap();
        let sys = root.path();
        // AGX Orin: no whole-board rail on its monitors.
        let hw = "bus/i2c/drivers/ina3221/1-0040/hwmon/hwmon3";
        write(sys, &format!("{hw}/in1_label"), "VDD_GPU_SOC\n");
        write(sys, &format!("{hw}/in1_input"), "5000\n");
        write(sys, &format!("{hw}/curr1_input"), "900\n");
        let err = open(sys, None).err().unwrap();
        let message = err.to_string();
        assert!(message.contains("VDD_GPU_SOC") && message.contains("jetson:RAIL"), "{message}");
        assert!(matches!(open(root.path().join("nothing").as_path(), None), Err(EnergyError::Absent(_))));
    }
}
