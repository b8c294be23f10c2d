//! Android battery gauge: `class/power_supply/battery/current_now` (µA) ×
//! `voltage_now` (µV). It measures the phone's draw only while the phone
//! runs on its battery, so the sensor refuses to open on external power.

use std::fs;
use std::path::{Path, PathBuf};

use super::{EnergyError, PowerSensor, ReadingKind, check_readable, read_number, read_text};

pub(super) struct AndroidBattery {
    current: PathBuf,
    voltage: PathBuf,
    /// +1 or −1: the sign `current_now` has while discharging.
    discharge_sign: f64,
    /// Amperes per unit of `current_now`.
    amps_per_unit: f64,
}

pub(super) fn open(sys: &Path) -> Result<AndroidBattery, EnergyError> {
    let supplies = sys.join("class/power_supply");
    let battery = supplies.join("battery");
    let current = battery.join("current_now");
    let voltage = battery.join("voltage_now");
    if !current.exists() || !voltage.exists() {
        return Err(EnergyError::Absent(format!("no Android battery gauge under {}", battery.display())));
    }
    if let Some(supply) = external_supply_online(&supplies) {
        return Err(EnergyError::NotOnBattery(format!(
            "the phone is on external power ({supply} online): the battery current does not measure its draw \
             then; unplug it to measure energy"
        )));
    }
    let status = read_text(&battery.join("status"))?;
    match status.as_str() {
        "Discharging" => {}
        "Charging" | "Full" | "Not charging" => {
            return Err(EnergyError::NotOnBattery(format!(
                "battery status is `{status}`: the phone is on external power and the battery current does not \
                 measure its draw; unplug it to measure energy"
            )));
        }
        _ => {
            return Err(EnergyError::NotOnBattery(format!(
                "battery status is `{status}`, not `Discharging`: the battery current cannot be told to measure \
                 the phone's draw"
            )));
        }
    }
    // Vendors disagree on the sign of a discharge current; the battery is
    // discharging now, so the sign seen now is this phone's.
    let raw: f64 = read_number(&current)?;
    let discharge_sign = if raw < 0.0 { -1.0 } else { 1.0 };
    // Some vendors (Samsung among them) report mA, not µA. A phone running
    // the agent draws well over 10 mA and under 10 A, which tells them apart.
    let amps_per_unit = if raw.abs() < 10_000.0 { 1e-3 } else { 1e-6 };
    let mut gauge = AndroidBattery { current, voltage, discharge_sign, amps_per_unit };
    check_readable(&mut gauge)?;
    Ok(gauge)
}

/// The name of a USB, mains or wireless supply that reports itself online.
fn external_supply_online(supplies: &Path) -> Option<String> {
    let mut entries: Vec<_> = fs::read_dir(supplies).ok()?.filter_map(Result::ok).collect();
    entries.sort_by_key(|e| e.file_name());
    entries.into_iter().find_map(|entry| {
        let name = entry.file_name().to_string_lossy().into_owned();
        let dir = entry.path();
        let external = match read_text(&dir.join("type")) {
            Ok(kind) => kind == "Mains" || kind == "Wireless" || kind.starts_with("USB"),
            Err(_) => matches!(name.as_str(), "usb" | "ac" | "wireless"),
        };
        let online = read_text(&dir.join("online")).is_ok_and(|v| v == "1");
        (external && online).then_some(name)
    })
}

impl PowerSensor for AndroidBattery {
    fn name(&self) -> &str {
        "android:battery"
    }

    fn kind(&self) -> ReadingKind {
        ReadingKind::Power
    }

    fn read(&mut self) -> Result<f64, EnergyError> {
        let raw: f64 = read_number(&self.current)?;
        let discharge = raw * self.discharge_sign;
        if discharge < 0.0 {
            return Err(EnergyError::NotOnBattery(format!(
                "the battery started charging ({} = {raw}): external power was connected during the measurement",
                self.current.display()
            )));
        }
        let volts = read_number::<f64>(&self.voltage)? * 1e-6;
        Ok(discharge * self.amps_per_unit * volts)
    }
}

#[cfg(test)]
mod tests {
    use super::super::fixture::write;
    use super::*;

    fn battery(sys: &Path, status: &str, current_now: i64, voltage_now: i64) {
        write(sys, "class/power_supply/battery/type", "Battery\n");
        write(sys, "class/power_supply/battery/status", &format!("{status}\n"));
        write(sys, "class/power_supply/battery/current_now", &format!("{current_now}\n"));
        write(sys, "class/power_supply/battery/voltage_now", &format!("{voltage_now}\n"));
        write(sys, "class/power_supply/usb/type", "USB\n");
        write(sys, "class/power_supply/usb/online", "0\n");
    }

    #[test]
    fn negative_discharge_convention() {
        let root = tempfile::tempdir().unwrap();
        let sys = root.path();
        battery(sys, "Discharging", -500_000, 4_000_000);
        let mut gauge = open(sys).unwrap();
        assert_eq!(gauge.name(), "android:battery");
        assert!((gauge.read().unwrap() - 2.0).abs() < 1e-9);
        write(sys, "class/power_supply/battery/current_now", "-750000\n");
        assert!((gauge.read().unwrap() - 3.0).abs() < 1e-9);
        // The sign flipped: charging, so the readings mean nothing any more.
        write(sys, "class/power_supply/battery/current_now", "300000\n");
        let err = gauge.read().unwrap_err();
        assert!(matches!(err, EnergyError::NotOnBattery(_)) && !err.is_transient(), "{err}");
    }

    #[test]
    fn positive_discharge_convention() {
        let root = tempfile::tempdir().unwrap();
        let sys = root.path();
        battery(sys, "Discharging", 500_000, 4_000_000);
        let mut gauge = open(sys).unwrap();
        assert!((gauge.read().unwrap() - 2.0).abs() < 1e-9);
        write(sys, "class/power_supply/battery/current_now", "-300000\n");
        assert!(matches!(gauge.read(), Err(EnergyError::NotOnBattery(_))));
    }

    #[test]
    fn milliamp_gauges_are_recognised() {
        let root = tempfile::tempdir().unwrap();
        let sys = root.path();
        battery(sys, "Discharging", 500, 4_000_000);
        assert!((open(sys).unwrap().read().unwrap() - 2.0).abs() < 1e-9);
    }

    #[test]
    fn refuses_external_power() {
        let root = tempfile::tempdir().unwrap();
        let sys = root.path();
        // Status still says Discharging (some gauges lag), but USB is online.
        battery(sys, "Discharging", -500_000, 4_000_000);
        write(sys, "class/power_supply/usb/online", "1\n");
        let err = open(sys).err().unwrap().to_string();
        assert!(err.contains("external power (usb online)"), "{err}");

        write(sys, "class/power_supply/usb/online", "0\n");
        write(sys, "class/power_supply/wireless/type", "Wireless\n");
        write(sys, "class/power_supply/wireless/online", "1\n");
        let err = open(sys).err().unwrap().to_string();
        assert!(err.contains("wireless online"), "{err}");

        write(sys, "class/power_supply/wireless/online", "0\n");
        for status in ["Charging", "Full", "Not charging"] {
            write(sys, "class/power_supply/battery/status", &format!("{status}\n"));
            let err = open(sys).err().unwrap().to_string();
            assert!(err.contains(status) && err.contains("external power"), "{err}");
        }
        write(sys, "class/power_supply/battery/status", "Discharging\n");
        assert!(open(sys).is_ok());
    }

    #[test]
    fn absent_without_a_gauge() {
        let root = tempfile::tempdir().unwrap();
        assert!(matches!(open(root.path()), Err(EnergyError::Absent(_))));
    }
}
