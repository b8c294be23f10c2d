//! What this device is: the descriptor of `/v1/info` and a stable `device_id`.

use std::fs;
use std::path::{Path, PathBuf};

use edgeloop_api::{DeviceInfo, ThermalZone};
use sha2::{Digest, Sha256};

use crate::energy::{SensorChoice, discover};
use crate::runtime::Runtimes;

/// Where the agent reads machine facts; tests point it at fixture trees.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SystemRoots {
    pub proc: PathBuf,
    pub sys: PathBuf,
    pub etc: PathBuf,
}

impl Default for SystemRoots {
    fn default() -> Self {
        SystemRoots { proc: "/proc".into(), sys: "/sys".into(), etc: "/etc".into() }
    }
}

/// A small text file's content, trimmed; `None` when missing, unreadable or empty.
pub(crate) fn read_trimmed(path: &Path) -> Option<String> {
    fs::read_to_string(path).ok().map(|s| s.trim().to_string()).filter(|s| !s.is_empty())
}

/// A sysfs file holding one number.
pub(crate) fn read_number(path: &Path) -> Option<f64> {
    read_trimmed(path)?.parse().ok()
}

/// Static facts, read once at start-up.
#[derive(Debug, Clone, PartialEq)]
pub struct MachineFacts {
    pub hostname: String,
    pub os: String,
    pub arch: String,
    pub cpu_model: String,
    pub logical_cores: usize,
    pub memory_mb: u64,
    machine_id: Option<String>,
}

impl MachineFacts {
    pub fn read(roots: &SystemRoots) -> Self {
        let cpuinfo = fs::read_to_string(roots.proc.join("cpuinfo")).unwrap_or_default();
        // x86 says "model name"; ARM kernels say "Hardware" or only "CPU part".
        let cpu_model = ["model name", "Hardware", "Processor", "cpu model"]
            .iter()
            .find_map(|key| {
                cpuinfo.lines().find_map(|l| {
                    let (k, v) = l.split_once(':')?;
                    (k.trim() == *key && !v.trim().is_empty()).then(|| v.trim().to_string())
                })
            })
            .unwrap_or_else(|| format!("unknown {}", std::env::consts::ARCH));
        let memory_mb = fs::read_to_string(roots.proc.join("meminfo"))
            .ok()
            .and_then(|m| {
                let line = m.lines().find(|l| l.starts_with("MemTotal:"))?;
                line.split_whitespace().nth(1)?.parse::<u64>().ok()
            })
            .map_or(0, |kb| kb / 1024);
        let os = fs::read_to_string(roots.etc.join("os-release"))
            .ok()
            .and_then(|s| {
                s.lines().find_map(|l| l.strip_prefix("PRETTY_NAME=").map(|v| v.trim_matches('"').to_string()))
            })
            .unwrap_or_else(|| std::env::consts::OS.to_string());
        MachineFacts {
            hostname: read_trimmed(&roots.proc.join("sys/kernel/hostname")).unwrap_or_else(|| "unknown".into()),
            os,
            arch: std::env::consts::ARCH.into(),
            cpu_model,
            logical_cores: std::thread::available_parallelism().map_or(1, |n| n.get()),
            memory_mb,
            machine_id: read_trimmed(&roots.etc.join("machine-id")),
        }
    }

    /// A readable id derived from the machine: arch, CPU, and a short hash of
    /// the machine id (or hostname) so two boxes with the same CPU differ.
    pub fn derived_device_id(&self) -> String {
        let cpu: String = self
            .cpu_model
            .to_lowercase()
            .chars()
            .map(|c| if c.is_ascii_alphanumeric() { c } else { '-' })
            .collect::<String>()
            .split('-')
            .filter(|p| !p.is_empty() && !matches!(*p, "r" | "tm" | "cpu" | "processor" | "with"))
            .take(4)
            .collect::<Vec<_>>()
            .join("-");
        let identity = self.machine_id.as_deref().unwrap_or(&self.hostname);
        let digest = hex::encode(Sha256::digest(format!("{identity}|{}", self.cpu_model)));
        format!("{}-{}-{}", self.arch, cpu, &digest[..8])
    }
}

/// The device id: an explicit override, else the one persisted in the cache
/// dir, else derived from the machine and persisted there, so that it is
/// stable across restarts even where machine facts are not.
pub fn device_id(cache_dir: &Path, facts: &MachineFacts, explicit: Option<&str>) -> std::io::Result<String> {
    if let Some(id) = explicit {
        return Ok(id.to_string());
    }
    let path = cache_dir.join("device_id");
    if let Some(id) = read_trimmed(&path) {
        return Ok(id);
    }
    let id = facts.derived_device_id();
    fs::create_dir_all(cache_dir)?;
    edgeloop_durable::write_atomic(&path, format!("{id}\n").as_bytes())?;
    Ok(id)
}

/// Thermal zones with their current temperature.
pub fn thermal_zones(sys: &Path) -> Vec<ThermalZone> {
    let Ok(dir) = fs::read_dir(sys.join("class/thermal")) else { return vec![] };
    let mut zones: Vec<ThermalZone> = dir
        .filter_map(|e| e.ok())
        .filter(|e| e.file_name().to_string_lossy().starts_with("thermal_zone"))
        .map(|e| {
            let p = e.path();
            ThermalZone {
                name: e.file_name().to_string_lossy().into_owned(),
                kind: read_trimmed(&p.join("type")).unwrap_or_default(),
                temp_c: read_number(&p.join("temp")).map(|m| m / 1000.0),
            }
        })
        .collect();
    zones.sort_by(|a, b| a.name.cmp(&b.name));
    zones
}

/// The whole descriptor; thermal and sensor readings are taken now.
pub fn device_info(
    device_id: &str,
    facts: &MachineFacts,
    roots: &SystemRoots,
    runtimes: &Runtimes,
    energy_sensor: &SensorChoice,
) -> DeviceInfo {
    let energy = discover(&roots.sys, energy_sensor);
    DeviceInfo {
        device_id: device_id.to_string(),
        agent_version: env!("CARGO_PKG_VERSION").into(),
        hostname: facts.hostname.clone(),
        os: facts.os.clone(),
        arch: facts.arch.clone(),
        cpu_model: facts.cpu_model.clone(),
        logical_cores: facts.logical_cores,
        memory_mb: facts.memory_mb,
        runtimes: runtimes.infos(),
        runtimes_unavailable: runtimes.unavailable().clone(),
        energy_sensors: energy.sensors,
        energy_unavailable_reason: energy.unavailable_reason,
        thermal_zones: thermal_zones(&roots.sys),
        agent: None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn fixture() -> (tempfile::TempDir, SystemRoots) {
        let root = tempfile::tempdir().unwrap();
        let w = |rel: &str, body: &str| {
            let p = root.path().join(rel);
            fs::create_dir_all(p.parent().unwrap()).unwrap();
            fs::write(p, body).unwrap();
        };
        w("proc/cpuinfo", "processor\t: 0\nmodel name\t: Intel(R) Xeon(R) CPU @ 2.20GHz\n");
        w("proc/meminfo", "MemTotal:       24576000 kB\n");
        w("proc/sys/kernel/hostname", "box\n");
        w("etc/os-release", "PRETTY_NAME=\"Debian GNU/Linux 12 (bookworm)\"\n");
        w("etc/machine-id", "0123456789abcdef\n");
        w("sys/class/thermal/thermal_zone0/type", "x86_pkg_temp\n");
        w("sys/class/thermal/thermal_zone0/temp", "45500\n");
        let roots =
            SystemRoots { proc: root.path().join("proc"), sys: root.path().join("sys"), etc: root.path().join("etc") };
        (root, roots)
    }

    #[test]
    fn facts_from_a_fixture_tree() {
        let (_root, roots) = fixture();
        let facts = MachineFacts::read(&roots);
        assert_eq!(facts.cpu_model, "Intel(R) Xeon(R) CPU @ 2.20GHz");
        assert_eq!(facts.memory_mb, 24000);
        assert_eq!(facts.hostname, "box");
        assert_eq!(facts.os, "Debian GNU/Linux 12 (bookworm)");
        let id = facts.derived_device_id();
        assert!(id.starts_with(&format!("{}-intel-xeon-2-20ghz-", std::env::consts::ARCH)), "{id}");
        let zones = thermal_zones(&roots.sys);
        assert_eq!(zones.len(), 1);
        assert_eq!(zones[0].temp_c, Some(45.5));
    }

    #[test]
    fn device_id_is_persisted() {
        let (root, roots) = fixture();
        let cache = root.path().join("cache");
        let facts = MachineFacts::read(&roots);
        let first = device_id(&cache, &facts, None).unwrap();
        let other_machine = MachineFacts { cpu_model: "different".into(), ..facts.clone() };
        assert_eq!(device_id(&cache, &other_machine, None).unwrap(), first);
        assert_eq!(device_id(&cache, &facts, Some("pixel7")).unwrap(), "pixel7");
    }
}
