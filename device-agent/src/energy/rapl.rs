//! x86 RAPL through powercap: `class/powercap/intel-rapl:N` zones (one per
//! package) and their `intel-rapl:N:M` sub-zones, each with an `energy_uj`
//! counter (µJ) that wraps to 0 past `max_energy_range_uj`. The sensor sums
//! the package zones and the dram zones, the energy the CPU and its memory use.

use std::path::{Path, PathBuf};

use super::{EnergyError, PowerSensor, ReadingKind, read_number, read_text};

pub(super) struct Rapl {
    name: String,
    /// For the permission fix, which names every counter.
    powercap: PathBuf,
    domains: Vec<Domain>,
    /// µJ since `open`, wraps corrected.
    total_uj: u128,
}

struct Domain {
    energy_uj: PathBuf,
    max_uj: u64,
    last_uj: u64,
}

struct Zone {
    /// `N` or `N:M` of `intel-rapl:N[:M]`, for a stable order.
    index: Vec<u32>,
    dir: PathBuf,
    name: String,
}

pub(super) fn open(sys: &Path) -> Result<Rapl, EnergyError> {
    let powercap = sys.join("class/powercap");
    let absent = || EnergyError::Absent(format!("no RAPL package zones (intel-rapl:N) under {}", powercap.display()));
    let entries = std::fs::read_dir(&powercap).map_err(|_| absent())?;
    let mut zones = Vec::new();
    for entry in entries.filter_map(Result::ok) {
        let file_name = entry.file_name().to_string_lossy().into_owned();
        // `intel-rapl-mmio:N` duplicates the package zone through another
        // interface; the prefix test leaves it out.
        let Some(index) = file_name.strip_prefix("intel-rapl:") else { continue };
        let Ok(index) = index.split(':').map(str::parse).collect::<Result<Vec<u32>, _>>() else { continue };
        let dir = entry.path();
        zones.push(Zone { index, name: read_text(&dir.join("name"))?, dir });
    }
    zones.sort_by(|a, b| a.index.cmp(&b.index));
    // core/uncore lie inside their package and psys covers the whole
    // platform: adding them would count the same energy twice.
    let packages: Vec<&Zone> = zones.iter().filter(|z| z.index.len() == 1 && z.name.starts_with("package")).collect();
    if packages.is_empty() {
        return Err(absent());
    }
    let drams: Vec<&Zone> = zones.iter().filter(|z| z.name == "dram").collect();
    let mut name = format!("rapl:{}", packages.iter().map(|z| z.name.as_str()).collect::<Vec<_>>().join("+"));
    if !drams.is_empty() {
        name.push_str("+dram");
    }
    let mut domains = Vec::new();
    for zone in packages.into_iter().chain(drams) {
        let energy_uj = zone.dir.join("energy_uj");
        let last_uj = read_counter(&energy_uj, &powercap)?;
        domains.push(Domain { max_uj: read_number(&zone.dir.join("max_energy_range_uj"))?, last_uj, energy_uj });
    }
    Ok(Rapl { name, powercap, domains, total_uj: 0 })
}

/// Reads a counter; a permission error gets the RAPL-specific fix.
fn read_counter(path: &Path, powercap: &Path) -> Result<u64, EnergyError> {
    read_number(path).map_err(|e| match e {
        EnergyError::PermissionDenied { path, .. } => EnergyError::PermissionDenied {
            path,
            fix: format!(
                "kernels since the PLATYPUS fix (CVE-2020-8694) let only root read RAPL counters: run the agent \
                 as root, or make them readable with `sudo chmod a+r {}/intel-rapl:*/energy_uj` (until reboot; \
                 a udev rule on SUBSYSTEM==\"powercap\" doing the same makes it permanent)",
                powercap.display()
            ),
        },
        e => e,
    })
}

/// µJ between two readings of a counter that wraps to 0 past `max_uj`.
/// Correct as long as readings are less than one range apart (minutes at
/// full power, against the sampler's milliseconds).
fn wrapped_delta(last_uj: u64, now_uj: u64, max_uj: u64) -> u64 {
    if now_uj >= last_uj { now_uj - last_uj } else { max_uj.saturating_sub(last_uj) + now_uj }
}

impl PowerSensor for Rapl {
    fn name(&self) -> &str {
        &self.name
    }

    fn kind(&self) -> ReadingKind {
        ReadingKind::Energy
    }

    fn read(&mut self) -> Result<f64, EnergyError> {
        // All domains first, so a failed read leaves every `last_uj` as it was.
        let now =
            self.domains.iter().map(|d| read_counter(&d.energy_uj, &self.powercap)).collect::<Result<Vec<_>, _>>()?;
        for (domain, now_uj) in self.domains.iter_mut().zip(now) {
            self.total_uj += u128::from(wrapped_delta(domain.last_uj, now_uj, domain.max_uj));
            domain.last_uj = now_uj;
        }
        Ok(self.total_uj as f64 / 1e6)
    }
}

#[cfg(test)]
mod tests {
    use super::super::fixture::write;
    use super::*;

    fn zone(sys: &Path, zone: &str, name: &str, energy_uj: u64, max_uj: u64) {
        write(sys, &format!("class/powercap/{zone}/name"), &format!("{name}\n"));
        write(sys, &format!("class/powercap/{zone}/energy_uj"), &format!("{energy_uj}\n"));
        write(sys, &format!("class/powercap/{zone}/max_energy_range_uj"), &format!("{max_uj}\n"));
    }

    #[test]
    fn sums_packages_and_dram_only() {
        let root = tempfile::tempdir().unwrap();
        let sys = root.path();
        let max = 262_143_328_850;
        zone(sys, "intel-rapl:0", "package-0", 1_000_000, max);
        zone(sys, "intel-rapl:0:0", "core", 0, max);
        zone(sys, "intel-rapl:0:1", "dram", 0, max);
        zone(sys, "intel-rapl:1", "package-1", 5_000_000, max);
        zone(sys, "intel-rapl:1:0", "dram", 0, max);
        zone(sys, "intel-rapl:2", "psys", 0, max);
        zone(sys, "intel-rapl-mmio:0", "package-0", 0, max);
        let mut rapl = open(sys).unwrap();
        assert_eq!(rapl.name(), "rapl:package-0+package-1+dram");
        assert_eq!(rapl.read().unwrap(), 0.0);
        // +1 J, +2 J, +0.25 J, +0.5 J on the summed domains; core and psys move but do not count.
        zone(sys, "intel-rapl:0", "package-0", 2_000_000, max);
        zone(sys, "intel-rapl:1", "package-1", 7_000_000, max);
        zone(sys, "intel-rapl:0:1", "dram", 250_000, max);
        zone(sys, "intel-rapl:1:0", "dram", 500_000, max);
        zone(sys, "intel-rapl:0:0", "core", 900_000, max);
        zone(sys, "intel-rapl:2", "psys", 9_000_000, max);
        assert!((rapl.read().unwrap() - 3.75).abs() < 1e-9);
    }

    #[test]
    fn corrects_a_counter_wrap() {
        let root = tempfile::tempdir().unwrap();
        let sys = root.path();
        let max = 10_000_000;
        zone(sys, "intel-rapl:0", "package-0", 9_000_000, max);
        let mut rapl = open(sys).unwrap();
        assert_eq!(rapl.name(), "rapl:package-0");
        write(sys, "class/powercap/intel-rapl:0/energy_uj", "9600000\n");
        assert!((rapl.read().unwrap() - 0.6).abs() < 1e-9);
        // 0.4 J to the top, wrap, 0.3 J past 0.
        write(sys, "class/powercap/intel-rapl:0/energy_uj", "300000\n");
        assert!((rapl.read().unwrap() - 1.3).abs() < 1e-9);
        write(sys, "class/powercap/intel-rapl:0/energy_uj", "800000\n");
        assert!((rapl.read().unwrap() - 1.8).abs() < 1e-9);
    }

    #[test]
    fn a_torn_read_is_transient_and_changes_nothing() {
        let root = tempfile::tempdir().unwrap();
        let sys = root.path();
        zone(sys, "intel-rapl:0", "package-0", 1_000_000, 10_000_000);
        let mut rapl = open(sys).unwrap();
        write(sys, "class/powercap/intel-rapl:0/energy_uj", "15\n0");
        let err = rapl.read().unwrap_err();
        assert!(err.is_transient(), "{err}");
        write(sys, "class/powercap/intel-rapl:0/energy_uj", "1500000\n");
        assert!((rapl.read().unwrap() - 0.5).abs() < 1e-9);
    }

    #[test]
    fn no_package_zone_is_absent() {
        let root = tempfile::tempdir().unwrap();
        assert!(matches!(open(root.path()), Err(EnergyError::Absent(_))));
        zone(root.path(), "intel-rapl:0", "psys", 0, 1);
        assert!(matches!(open(root.path()), Err(EnergyError::Absent(_))));
    }

    #[cfg(unix)]
    #[test]
    fn unreadable_counter_names_the_file_and_the_fix() {
        let root = tempfile::tempdir().unwrap();
        let sys = root.path();
        zone(sys, "intel-rapl:0", "package-0", 1, 10);
        let counter = sys.join("class/powercap/intel-rapl:0/energy_uj");
        if !super::super::fixture::make_unreadable(&counter) {
            eprintln!("running as root: mode 000 is still readable, nothing to check");
            return;
        }
        let err = open(sys).err().unwrap();
        assert!(matches!(err, EnergyError::PermissionDenied { .. }));
        let message = err.to_string();
        assert!(message.contains(&counter.display().to_string()), "{message}");
        assert!(message.contains("run the agent as root"), "{message}");
        assert!(message.contains("chmod a+r"), "{message}");
        let reason = super::super::discover(sys, &super::super::SensorChoice::Auto).unavailable_reason.unwrap();
        assert!(reason.contains("permission denied"), "{reason}");
    }
}
