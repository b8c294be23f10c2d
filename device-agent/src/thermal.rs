//! Thermal and frequency hygiene (DESIGN §6, §10): zone temperatures and
//! passive trip points from `class/thermal`, the measuring CPUs' frequency
//! from cpufreq, a monitor that watches both while the timed runs go on, and
//! a cool-down wait before measuring.
//!
//! Every reader takes the sysfs root (`/sys`) so tests use fixture trees. A
//! missing or unreadable file is an unknown value, never an error: VMs and
//! many boards have no thermal zones or no cpufreq at all.

use std::collections::BTreeMap;
use std::fs;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::mpsc::{self, RecvTimeoutError};
use std::thread::{self, JoinHandle};
use std::time::{Duration, Instant};

use edgeloop_api::ThermalStats;

use crate::device::{read_number, read_trimmed, thermal_zones};

/// A passive trip point that a zone is at or above: from there on the kernel
/// throttles the zone's cooling devices, usually the CPUs' frequency.
#[derive(Debug, Clone, PartialEq)]
pub struct ReachedTrip {
    /// The zone's directory name, e.g. `thermal_zone1`.
    pub zone: String,
    /// The zone's `type`, e.g. `x86_pkg_temp`.
    pub kind: String,
    /// N of `trip_point_N_*`.
    pub trip: usize,
    pub trip_c: f64,
    pub zone_c: f64,
}

/// Temperatures and frequency at one instant.
#[derive(Debug, Clone, PartialEq, Default)]
pub struct ThermalSnapshot {
    /// The hottest readable zone, °C.
    pub hottest_c: Option<f64>,
    pub passive_trips_reached: Vec<ReachedTrip>,
    /// Mean `scaling_cur_freq` of the measuring CPUs that have cpufreq, MHz.
    pub cpu_freq_mhz: Option<f64>,
}

impl ThermalSnapshot {
    /// Reads the zones and the frequency of `cpus` (every CPU present when
    /// `None`).
    pub fn read(sys: &Path, cpus: Option<&[usize]>) -> Self {
        Self::read_cpus(sys, &measuring_cpus(sys, cpus))
    }

    fn read_cpus(sys: &Path, cpus: &[usize]) -> Self {
        let zones = thermal_zones(sys);
        let hottest_c = zones.iter().filter_map(|z| z.temp_c).max_by(f64::total_cmp);
        let passive_trips_reached = zones
            .iter()
            .filter_map(|z| Some((z, z.temp_c?)))
            .flat_map(|(zone, zone_c)| {
                passive_trips(&sys.join("class/thermal").join(&zone.name))
                    .into_iter()
                    .filter(move |&(_, trip_c)| zone_c >= trip_c)
                    .map(move |(trip, trip_c)| ReachedTrip {
                        zone: zone.name.clone(),
                        kind: zone.kind.clone(),
                        trip,
                        trip_c,
                        zone_c,
                    })
            })
            .collect();
        ThermalSnapshot { hottest_c, passive_trips_reached, cpu_freq_mhz: mean_cpu_freq_mhz(sys, cpus) }
    }
}

/// `(N, °C)` of each `trip_point_N` of type "passive" in a zone directory.
fn passive_trips(zone_dir: &Path) -> Vec<(usize, f64)> {
    let Ok(entries) = fs::read_dir(zone_dir) else { return vec![] };
    entries
        .filter_map(|entry| {
            let entry = entry.ok()?;
            let name = entry.file_name().into_string().ok()?;
            let trip: usize = name.strip_prefix("trip_point_")?.strip_suffix("_type")?.parse().ok()?;
            if read_trimmed(&entry.path())? != "passive" {
                return None;
            }
            let millis = read_number(&zone_dir.join(format!("trip_point_{trip}_temp")))?;
            Some((trip, millis / 1000.0))
        })
        .collect()
}

/// The given CPUs, or every `cpuN` under `devices/system/cpu`.
fn measuring_cpus(sys: &Path, cpus: Option<&[usize]>) -> Vec<usize> {
    if let Some(cpus) = cpus {
        return cpus.to_vec();
    }
    let Ok(entries) = fs::read_dir(sys.join("devices/system/cpu")) else { return vec![] };
    let mut present: Vec<usize> =
        entries.filter_map(|e| e.ok()?.file_name().to_str()?.strip_prefix("cpu")?.parse().ok()).collect();
    present.sort_unstable();
    present
}

/// Mean over the CPUs whose `scaling_cur_freq` (kHz) is readable, MHz.
fn mean_cpu_freq_mhz(sys: &Path, cpus: &[usize]) -> Option<f64> {
    let khz: Vec<f64> = cpus
        .iter()
        .filter_map(|cpu| read_number(&sys.join(format!("devices/system/cpu/cpu{cpu}/cpufreq/scaling_cur_freq"))))
        .collect();
    (!khz.is_empty()).then(|| khz.iter().sum::<f64>() / khz.len() as f64 / 1000.0)
}

#[derive(Debug, Clone, Copy, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct MonitorConfig {
    /// How often the monitor reads sysfs while the runs go on.
    pub poll_interval: Duration,
    /// `throttled` is set when the lowest frequency seen falls more than
    /// this fraction below the start frequency.
    pub max_freq_drop: f64,
}

impl Default for MonitorConfig {
    fn default() -> Self {
        MonitorConfig { poll_interval: Duration::from_millis(50), max_freq_drop: 0.10 }
    }
}

/// The extremes of the readings during a window.
#[derive(Debug, Default)]
struct Extremes {
    min_freq_mhz: Option<f64>,
    /// Each passive trip reached at some reading, with its hottest reading.
    trips: BTreeMap<(String, usize), ReachedTrip>,
}

impl Extremes {
    fn observe(&mut self, snapshot: &ThermalSnapshot) {
        if let Some(f) = snapshot.cpu_freq_mhz {
            self.min_freq_mhz = Some(self.min_freq_mhz.map_or(f, |min| min.min(f)));
        }
        for reached in &snapshot.passive_trips_reached {
            let hottest = self.trips.entry((reached.zone.clone(), reached.trip)).or_insert_with(|| reached.clone());
            if reached.zone_c > hottest.zone_c {
                *hottest = reached.clone();
            }
        }
    }
}

/// Watches temperatures and the measuring CPUs' frequency from its own
/// thread while the timed runs go on, so that a throttling dip between the
/// start and end readings is caught. Dropping it without [`finish`] stops
/// the thread at its next poll.
///
/// [`finish`]: ThermalMonitor::finish
pub struct ThermalMonitor {
    sys: PathBuf,
    cpus: Vec<usize>,
    config: MonitorConfig,
    start: ThermalSnapshot,
    stop: mpsc::Sender<()>,
    poller: JoinHandle<Extremes>,
    /// Polls done so far (logged; tests wait on it instead of sleeping).
    polls: Arc<AtomicU64>,
}

impl ThermalMonitor {
    /// Takes the start reading and starts polling. `cpus` are the measuring
    /// CPUs (every CPU present when `None`). The polling thread inherits
    /// the caller's CPU mask; it wakes every `poll_interval` for a few file
    /// reads, too little to disturb the runs.
    pub fn start(sys: &Path, cpus: Option<&[usize]>, config: MonitorConfig) -> std::io::Result<Self> {
        let cpus = measuring_cpus(sys, cpus);
        let start = ThermalSnapshot::read_cpus(sys, &cpus);
        let (stop, stopped) = mpsc::channel::<()>();
        let polls = Arc::new(AtomicU64::new(0));
        let poller = {
            let (sys, cpus, polls) = (sys.to_path_buf(), cpus.clone(), polls.clone());
            thread::Builder::new().name("edgeloop-thermal".into()).spawn(move || {
                let mut seen = Extremes::default();
                // A message or a dropped sender both mean stop.
                while let Err(RecvTimeoutError::Timeout) = stopped.recv_timeout(config.poll_interval) {
                    seen.observe(&ThermalSnapshot::read_cpus(&sys, &cpus));
                    polls.fetch_add(1, Ordering::Release);
                }
                seen
            })?
        };
        Ok(ThermalMonitor { sys: sys.to_path_buf(), cpus, config, start, stop, poller, polls })
    }

    /// Stops polling, takes the end reading and judges the window.
    /// `cooldown_wait_ms` is left at 0: the caller that waited fills it in.
    pub fn finish(self) -> ThermalStats {
        let ThermalMonitor { sys, cpus, config, start, stop, poller, polls } = self;
        drop(stop);
        let mut seen = poller.join().unwrap_or_else(|panic| std::panic::resume_unwind(panic));
        log::debug!("thermal monitor: {} polls in the window", polls.load(Ordering::Acquire));
        let end = ThermalSnapshot::read_cpus(&sys, &cpus);
        seen.observe(&start);
        seen.observe(&end);

        let mut reasons = Vec::new();
        if let (Some(start_mhz), Some(min_mhz)) = (start.cpu_freq_mhz, seen.min_freq_mhz) {
            let drop = if start_mhz > 0.0 { (start_mhz - min_mhz) / start_mhz } else { 0.0 };
            if drop > config.max_freq_drop {
                reasons.push(format!(
                    "CPU frequency fell to {min_mhz:.0} MHz, {:.0}% below the {start_mhz:.0} MHz it started at \
                     (threshold {:.0}%)",
                    drop * 100.0,
                    config.max_freq_drop * 100.0
                ));
            }
        }
        let at_start: Vec<_> = start.passive_trips_reached.iter().map(|t| (&t.zone, t.trip)).collect();
        for crossed in seen.trips.values().filter(|t| !at_start.contains(&(&t.zone, t.trip))) {
            reasons.push(format!(
                "{} ({}) reached {:.1} °C, crossing its passive trip point {} at {:.1} °C",
                crossed.zone, crossed.kind, crossed.zone_c, crossed.trip, crossed.trip_c
            ));
        }

        ThermalStats {
            start_c: start.hottest_c,
            end_c: end.hottest_c,
            cpu_freq_start_mhz: start.cpu_freq_mhz,
            cpu_freq_end_mhz: end.cpu_freq_mhz,
            cpu_freq_min_mhz: seen.min_freq_mhz,
            throttled: !reasons.is_empty(),
            throttle_reason: (!reasons.is_empty()).then(|| reasons.join("; ")),
            cooldown_wait_ms: 0.0,
        }
    }
}

/// How often [`cool_down`] reads the zones.
pub const COOLDOWN_POLL: Duration = Duration::from_millis(100);

#[derive(Debug, Clone, PartialEq, thiserror::Error)]
#[error(
    "{zone} ({kind}) is still at {temp_c:.1} °C after waiting {} ms for every thermal zone to cool below {below_c:.1} °C",
    waited.as_millis()
)]
pub struct CooldownTimeout {
    pub zone: String,
    pub kind: String,
    pub temp_c: f64,
    pub below_c: f64,
    pub waited: Duration,
}

/// Waits until every readable thermal zone is below `below_c`, reading them
/// every [`COOLDOWN_POLL`], for at most `timeout`; returns the time waited.
///
/// With no readable zone there is nothing to wait for and it returns at
/// once: blocking on a temperature nobody can read would only turn every
/// such request into a timeout, and the measurement's `start_c: null`
/// already tells the client the temperature was not observed.
pub fn cool_down(sys: &Path, below_c: f64, timeout: Duration) -> Result<Duration, CooldownTimeout> {
    let started = Instant::now();
    loop {
        let hottest = thermal_zones(sys)
            .into_iter()
            .filter_map(|zone| Some((zone.temp_c?, zone)))
            .max_by(|(a, _), (b, _)| a.total_cmp(b));
        let waited = started.elapsed();
        match hottest {
            Some((temp_c, zone)) if temp_c >= below_c => {
                if waited >= timeout {
                    return Err(CooldownTimeout { zone: zone.name, kind: zone.kind, temp_c, below_c, waited });
                }
                thread::sleep(COOLDOWN_POLL.min(timeout - waited));
            }
            _ => return Ok(waited),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A sysfs fixture. Writes go through a rename so a concurrent reader
    /// never sees a half-written file.
    struct Sys(tempfile::TempDir);

    impl Sys {
        fn new() -> Self {
            Sys(tempfile::tempdir().unwrap())
        }

        fn path(&self) -> &Path {
            self.0.path()
        }

        fn write(&self, rel: &str, body: &str) {
            let path = self.path().join(rel);
            fs::create_dir_all(path.parent().unwrap()).unwrap();
            let tmp = path.with_extension("tmp");
            fs::write(&tmp, body).unwrap();
            fs::rename(tmp, path).unwrap();
        }

        fn set_khz(&self, cpu: usize, khz: u64) {
            self.write(&format!("devices/system/cpu/cpu{cpu}/cpufreq/scaling_cur_freq"), &format!("{khz}\n"));
        }

        fn set_millidegrees(&self, zone: usize, m: i64) {
            self.write(&format!("class/thermal/thermal_zone{zone}/temp"), &format!("{m}\n"));
        }

        fn zone(&self, zone: usize, kind: &str, m: i64, trips: &[(&str, i64)]) {
            self.write(&format!("class/thermal/thermal_zone{zone}/type"), &format!("{kind}\n"));
            self.set_millidegrees(zone, m);
            for (ix, (trip_type, temp)) in trips.iter().enumerate() {
                self.write(
                    &format!("class/thermal/thermal_zone{zone}/trip_point_{ix}_type"),
                    &format!("{trip_type}\n"),
                );
                self.write(&format!("class/thermal/thermal_zone{zone}/trip_point_{ix}_temp"), &format!("{temp}\n"));
            }
        }
    }

    fn fast() -> MonitorConfig {
        MonitorConfig { poll_interval: Duration::from_millis(5), ..MonitorConfig::default() }
    }

    /// Runs `during` on another thread while a monitor watches, then
    /// finishes it. `during` gets `settle`, which returns once the monitor
    /// has read the fixture twice more: a change made before it has been seen.
    fn watch(sys: &Sys, cpus: Option<&[usize]>, during: impl FnOnce(&(dyn Fn() + Sync)) + Send) -> ThermalStats {
        let monitor = ThermalMonitor::start(sys.path(), cpus, fast()).unwrap();
        let settle = || {
            let target = monitor.polls.load(Ordering::Acquire) + 2;
            while monitor.polls.load(Ordering::Acquire) < target {
                thread::yield_now();
            }
        };
        thread::scope(|s| s.spawn(|| during(&settle)).join().unwrap());
        monitor.finish()
    }

    #[test]
    fn missing_sysfs_reads_as_unknown() {
        let sys = Sys::new();
        assert_eq!(ThermalSnapshot::read(sys.path(), None), ThermalSnapshot::default());
        assert_eq!(ThermalSnapshot::read(sys.path(), Some(&[0, 3])), ThermalSnapshot::default());
        let stats = watch(&sys, None, |settle| settle());
        assert_eq!((stats.start_c, stats.cpu_freq_start_mhz, stats.cpu_freq_min_mhz), (None, None, None));
        assert!(!stats.throttled);
    }

    #[test]
    fn snapshot_reads_hottest_zone_passive_trips_and_mean_frequency() {
        let sys = Sys::new();
        sys.zone(0, "acpitz", 41_000, &[("critical", 40_000)]);
        sys.zone(1, "x86_pkg_temp", 72_500, &[("passive", 70_000), ("passive", 90_000), ("hot", 60_000)]);
        sys.set_khz(0, 2_000_000);
        sys.set_khz(1, 1_000_000);
        sys.set_khz(2, 600_000);
        let all = ThermalSnapshot::read(sys.path(), None);
        assert_eq!(all.hottest_c, Some(72.5));
        assert_eq!(all.cpu_freq_mhz, Some(1200.0));
        let trip = ReachedTrip {
            zone: "thermal_zone1".into(),
            kind: "x86_pkg_temp".into(),
            trip: 0,
            trip_c: 70.0,
            zone_c: 72.5,
        };
        assert_eq!(all.passive_trips_reached, vec![trip]);
        let measuring = ThermalSnapshot::read(sys.path(), Some(&[0, 1, 7]));
        assert_eq!(measuring.cpu_freq_mhz, Some(1500.0), "cpu 7 has no cpufreq and cpu 2 is not measuring");
    }

    #[test]
    fn a_frequency_dip_between_start_and_end_is_throttling() {
        let sys = Sys::new();
        for cpu in 0..3 {
            sys.set_khz(cpu, 2_000_000);
        }
        let stats = watch(&sys, Some(&[0, 1]), |settle| {
            settle();
            sys.set_khz(0, 1_000_000);
            sys.set_khz(2, 100_000);
            settle();
            sys.set_khz(0, 2_000_000);
        });
        assert_eq!((stats.cpu_freq_start_mhz, stats.cpu_freq_end_mhz), (Some(2000.0), Some(2000.0)));
        assert_eq!(stats.cpu_freq_min_mhz, Some(1500.0));
        assert!(stats.throttled);
        assert_eq!(
            stats.throttle_reason.as_deref(),
            Some("CPU frequency fell to 1500 MHz, 25% below the 2000 MHz it started at (threshold 10%)")
        );
    }

    #[test]
    fn a_steady_or_slightly_wobbling_frequency_is_not_throttling() {
        let sys = Sys::new();
        sys.set_khz(0, 2_000_000);
        sys.zone(0, "cpu-thermal", 50_000, &[("passive", 80_000)]);
        let stats = watch(&sys, None, |settle| {
            settle();
            sys.set_khz(0, 1_900_000);
            settle();
        });
        assert_eq!(stats.cpu_freq_min_mhz, Some(1900.0));
        assert_eq!((stats.start_c, stats.end_c), (Some(50.0), Some(50.0)));
        assert!(!stats.throttled, "{:?}", stats.throttle_reason);
        assert_eq!(stats.throttle_reason, None);
    }

    #[test]
    fn crossing_a_passive_trip_point_is_throttling() {
        let sys = Sys::new();
        // zone0 is above its passive trip before measuring: not a crossing.
        sys.zone(0, "gpu-thermal", 90_000, &[("passive", 80_000)]);
        sys.zone(1, "cpu-thermal", 70_000, &[("passive", 80_000), ("critical", 85_000)]);
        let stats = watch(&sys, None, |settle| {
            settle();
            sys.set_millidegrees(1, 84_000);
            settle();
            sys.set_millidegrees(1, 75_000);
        });
        assert_eq!((stats.start_c, stats.end_c), (Some(90.0), Some(90.0)));
        assert!(stats.throttled);
        assert_eq!(
            stats.throttle_reason.as_deref(),
            Some("thermal_zone1 (cpu-thermal) reached 84.0 °C, crossing its passive trip point 0 at 80.0 °C")
        );
    }

    #[test]
    fn cool_down_waits_until_every_zone_is_below_the_threshold() {
        let sys = Sys::new();
        sys.zone(0, "cpu-thermal", 40_000, &[]);
        sys.zone(1, "soc-thermal", 65_000, &[]);
        let delay = Duration::from_millis(300);
        let waited = thread::scope(|s| {
            s.spawn(|| {
                thread::sleep(delay);
                sys.set_millidegrees(1, 49_000);
            });
            cool_down(sys.path(), 50.0, Duration::from_secs(10)).unwrap()
        });
        assert!(waited >= delay, "returned after {waited:?}");
        assert!(waited < delay + Duration::from_secs(2), "returned after {waited:?}");
    }

    #[test]
    fn cool_down_times_out_naming_the_hot_zone() {
        let sys = Sys::new();
        sys.zone(0, "cpu-thermal", 40_000, &[]);
        sys.zone(1, "soc-thermal", 65_000, &[]);
        let err = cool_down(sys.path(), 50.0, Duration::from_millis(250)).unwrap_err();
        assert_eq!((err.zone.as_str(), err.temp_c, err.below_c), ("thermal_zone1", 65.0, 50.0));
        assert!(err.waited >= Duration::from_millis(250));
        let message = err.to_string();
        assert!(message.starts_with("thermal_zone1 (soc-thermal) is still at 65.0 °C after waiting 2"), "{message}");
        assert!(message.ends_with("ms for every thermal zone to cool below 50.0 °C"), "{message}");
    }

    #[test]
    fn cool_down_without_zones_returns_at_once() {
        let sys = Sys::new();
        assert!(cool_down(sys.path(), 30.0, Duration::from_secs(10)).unwrap() < COOLDOWN_POLL);
    }
}
