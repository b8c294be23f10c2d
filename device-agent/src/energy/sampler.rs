//! Samples a sensor while work runs and integrates the readings (DESIGN §6):
//! an idle baseline just before, then readings at a fixed rate on a thread of
//! their own, from one just before the work starts to one just after it ends.

use std::num::NonZeroU32;
use std::path::Path;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::mpsc;
use std::thread::{self, Thread};
use std::time::{Duration, Instant};

use edgeloop_api::EnergyStats;

use super::{EnergyError, PowerSensor, ReadingKind, SensorChoice};

/// Tries for the readings that bound a window, which cannot be skipped.
const BOUND_READ_TRIES: u32 = 5;
const BOUND_READ_PAUSE: Duration = Duration::from_millis(1);

#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct MeterConfig {
    /// How long to sample the idle device before the work; zero skips the
    /// baseline and reports an idle power of 0.
    pub idle_baseline: Duration,
    pub sample_rate_hz: NonZeroU32,
}

impl Default for MeterConfig {
    fn default() -> Self {
        MeterConfig { idle_baseline: Duration::from_millis(500), sample_rate_hz: NonZeroU32::new(200).unwrap() }
    }
}

/// What one [`EnergyMeter::measure`] saw.
#[derive(Debug, Clone, PartialEq)]
pub struct EnergyReading {
    pub sensor: String,
    /// From the reading just before the work to the one just after.
    pub window: Duration,
    /// Energy used over the window, idle draw included, J.
    pub energy_j: f64,
    pub avg_power_w: f64,
    /// Power of the idle device just before the work, W.
    pub idle_power_w: f64,
    /// Readings over the window, the bounding two included.
    pub readings: usize,
    /// Reads that failed transiently and were retried or skipped.
    pub skipped_reads: usize,
}

impl EnergyReading {
    /// Energy above the idle baseline, J. Within the sensor's noise of 0
    /// (either side) when the work draws no more than idle.
    pub fn net_energy_j(&self) -> f64 {
        self.energy_j - self.idle_power_w * self.window.as_secs_f64()
    }

    /// The API's figures for `inferences` runs over the window; `None` for none.
    pub fn stats(&self, inferences: usize) -> Option<EnergyStats> {
        (inferences > 0).then(|| EnergyStats {
            mj_per_inference: self.net_energy_j() / inferences as f64 * 1e3,
            avg_power_w: self.avg_power_w,
            idle_power_w: self.idle_power_w,
            sensor: self.sensor.clone(),
            window_ms: self.window.as_secs_f64() * 1e3,
            inferences,
            readings: self.readings,
        })
    }
}

/// A sensor and how to sample it.
pub struct EnergyMeter {
    sensor: Box<dyn PowerSensor>,
    config: MeterConfig,
}

impl EnergyMeter {
    pub fn open(choice: &SensorChoice, sys: &Path, config: MeterConfig) -> Result<Self, EnergyError> {
        Ok(EnergyMeter { sensor: choice.open(sys)?, config })
    }

    pub fn sensor_name(&self) -> &str {
        self.sensor.name()
    }

    /// Measures the idle baseline, then runs `work` on this thread while a
    /// sampling thread reads the sensor. The work always runs and its output
    /// is always returned; a sensor failure only fails the reading.
    pub fn measure<T>(&mut self, work: impl FnOnce() -> T) -> (T, Result<EnergyReading, EnergyError>) {
        let period = Duration::from_secs_f64(1.0 / f64::from(self.config.sample_rate_hz.get()));
        let (idle_power_w, idle_skipped) = match self.idle_power(period) {
            Ok(idle) => idle,
            Err(e) => return (work(), Err(e)),
        };
        let (out, window) = self.record_during(period, work);
        let reading = window.map(|trace| {
            let energy_j = trace.energy_j(self.sensor.kind());
            let secs = trace.span().as_secs_f64();
            EnergyReading {
                sensor: self.sensor.name().to_string(),
                window: trace.span(),
                energy_j,
                // Two reads are never at the same instant; the guard keeps a NaN out of JSON regardless.
                avg_power_w: if secs > 0.0 { energy_j / secs } else { 0.0 },
                idle_power_w,
                readings: trace.points.len(),
                skipped_reads: idle_skipped + trace.skipped,
            }
        });
        (out, reading)
    }

    /// Mean power while nothing runs, W, and the reads skipped meanwhile.
    fn idle_power(&mut self, period: Duration) -> Result<(f64, usize), EnergyError> {
        if self.config.idle_baseline.is_zero() {
            return Ok((0.0, 0));
        }
        let until = Until::Deadline(Instant::now() + self.config.idle_baseline);
        let trace = record(&mut *self.sensor, period, until, || {})?;
        Ok((trace.energy_j(self.sensor.kind()) / trace.span().as_secs_f64(), trace.skipped))
    }

    fn record_during<T>(&mut self, period: Duration, work: impl FnOnce() -> T) -> (T, Result<Trace, EnergyError>) {
        let stop = AtomicBool::new(false);
        let sensor = &mut *self.sensor;
        thread::scope(|scope| {
            let stop = &stop;
            let (started_tx, started) = mpsc::sync_channel(1);
            let sampler = scope.spawn(move || {
                record(sensor, period, Until::Flag(stop), move || {
                    let _ = started_tx.send(());
                })
            });
            // Back at the first reading, or when the sampler gave up before it.
            let _ = started.recv();
            let out = {
                // Stops the sampler even when `work` panics, or the scope would wait for it forever.
                let _stop = StopOnDrop { stop, sampler: sampler.thread().clone() };
                work()
            };
            let trace = sampler.join().unwrap_or_else(|panic| std::panic::resume_unwind(panic));
            (out, trace)
        })
    }
}

struct StopOnDrop<'a> {
    stop: &'a AtomicBool,
    sampler: Thread,
}

impl Drop for StopOnDrop<'_> {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Release);
        // Wakes it now, so the last reading is taken right at the end of the work.
        self.sampler.unpark();
    }
}

/// Timestamped readings, the bounding two included.
struct Trace {
    points: Vec<(Instant, f64)>,
    skipped: usize,
}

impl Trace {
    fn span(&self) -> Duration {
        self.points[self.points.len() - 1].0 - self.points[0].0
    }

    fn energy_j(&self, kind: ReadingKind) -> f64 {
        match kind {
            ReadingKind::Energy => self.points[self.points.len() - 1].1 - self.points[0].1,
            // Trapezoidal rule over (t, W).
            ReadingKind::Power => {
                self.points.windows(2).map(|w| (w[1].0 - w[0].0).as_secs_f64() * (w[0].1 + w[1].1) / 2.0).sum()
            }
        }
    }
}

enum Until<'a> {
    Deadline(Instant),
    Flag(&'a AtomicBool),
}

impl Until<'_> {
    /// Waits for the tick at `next`; true when sampling should end instead.
    fn wait_for(&self, next: Instant) -> bool {
        match self {
            Until::Deadline(deadline) => {
                let wake = next.min(*deadline);
                let now = Instant::now();
                if wake > now {
                    thread::sleep(wake - now);
                }
                Instant::now() >= *deadline
            }
            Until::Flag(stop) => loop {
                if stop.load(Ordering::Acquire) {
                    return true;
                }
                let now = Instant::now();
                if now >= next {
                    return false;
                }
                // Woken early by `StopOnDrop` (or spuriously): look again.
                thread::park_timeout(next - now);
            },
        }
    }
}

/// Reads at every tick of `period` from now until `until`, with one reading
/// at once (then calls `started`) and one at the end. Ticks are deadlines
/// on a fixed grid, so the rate does not drift by the time reads take.
fn record(
    sensor: &mut dyn PowerSensor,
    period: Duration,
    until: Until<'_>,
    started: impl FnOnce(),
) -> Result<Trace, EnergyError> {
    let mut trace = Trace { points: Vec::new(), skipped: 0 };
    trace.points.push(read_bound(sensor, &mut trace.skipped)?);
    started();
    let mut next = trace.points[0].0 + period;
    while !until.wait_for(next) {
        match timed_read(sensor) {
            Ok(point) => trace.points.push(point),
            Err(e) if e.is_transient() => trace.skipped += 1,
            Err(e) => return Err(e),
        }
        // Behind schedule (a slow read, a busy CPU): skip the missed ticks
        // rather than read in a burst.
        let now = Instant::now();
        next += period;
        while next <= now {
            next += period;
        }
    }
    trace.points.push(read_bound(sensor, &mut trace.skipped)?);
    Ok(trace)
}

/// A reading that bounds a window: transient failures are retried.
fn read_bound(sensor: &mut dyn PowerSensor, skipped: &mut usize) -> Result<(Instant, f64), EnergyError> {
    let mut tries = 1;
    loop {
        match timed_read(sensor) {
            Err(e) if e.is_transient() && tries < BOUND_READ_TRIES => {
                *skipped += 1;
                tries += 1;
                thread::sleep(BOUND_READ_PAUSE);
            }
            result => return result,
        }
    }
}

/// A reading stamped at the middle of the read, which on an I2C sensor can
/// take a good part of a millisecond.
fn timed_read(sensor: &mut dyn PowerSensor) -> Result<(Instant, f64), EnergyError> {
    let before = Instant::now();
    let value = sensor.read()?;
    let after = Instant::now();
    Ok((before + (after - before) / 2, value))
}

#[cfg(test)]
mod tests {
    use std::panic::{AssertUnwindSafe, catch_unwind};
    use std::path::PathBuf;
    use std::sync::Arc;
    use std::thread::JoinHandle;

    use super::super::fixture::write;
    use super::*;

    fn within(actual: f64, expected: f64, tolerance: f64) -> bool {
        (actual - expected).abs() <= tolerance * expected.abs()
    }

    /// A device drawing `idle_w`, plus `work_w` while `busy` is set. Every
    /// millisecond it integrates its power over the elapsed time and hands
    /// the energy so far (J) and the power now (W) to `publish`, which writes
    /// them into a fixture tree.
    struct FakeDevice {
        busy: Arc<AtomicBool>,
        stop: Arc<AtomicBool>,
        writer: Option<JoinHandle<()>>,
    }

    impl FakeDevice {
        fn start(idle_w: f64, work_w: f64, mut publish: impl FnMut(f64, f64) + Send + 'static) -> Self {
            let busy = Arc::new(AtomicBool::new(false));
            let stop = Arc::new(AtomicBool::new(false));
            let (b, s) = (busy.clone(), stop.clone());
            let power = move || if b.load(Ordering::SeqCst) { idle_w + work_w } else { idle_w };
            publish(0.0, power());
            let writer = thread::spawn(move || {
                let (mut energy_j, mut last) = (0.0, Instant::now());
                while !s.load(Ordering::SeqCst) {
                    thread::sleep(Duration::from_millis(1));
                    let (now, watts) = (Instant::now(), power());
                    energy_j += watts * (now - last).as_secs_f64();
                    last = now;
                    publish(energy_j, watts);
                }
            });
            FakeDevice { busy, stop, writer: Some(writer) }
        }

        /// The workload: busy for 1.2 s. Returns how long it was busy.
        fn work(&self) -> Duration {
            self.busy.store(true, Ordering::SeqCst);
            let start = Instant::now();
            thread::sleep(Duration::from_millis(1200));
            let busy_for = start.elapsed();
            self.busy.store(false, Ordering::SeqCst);
            busy_for
        }
    }

    impl Drop for FakeDevice {
        fn drop(&mut self) {
            self.stop.store(true, Ordering::SeqCst);
            self.writer.take().unwrap().join().unwrap();
        }
    }

    fn check_accuracy(meter: &mut EnergyMeter, device: &FakeDevice, idle_w: f64, work_w: f64) -> EnergyReading {
        let (busy_for, reading) = meter.measure(|| device.work());
        let reading = reading.unwrap();
        let (busy_s, window_s) = (busy_for.as_secs_f64(), reading.window.as_secs_f64());
        assert!(within(reading.idle_power_w, idle_w, 0.02), "{reading:?}");
        assert!(within(reading.net_energy_j(), work_w * busy_s, 0.02), "{reading:?}, busy {busy_s} s");
        let avg_w = (idle_w * window_s + work_w * busy_s) / window_s;
        assert!(within(reading.avg_power_w, avg_w, 0.02), "{reading:?}, expected {avg_w} W");
        assert!(busy_for <= reading.window && reading.window < busy_for + Duration::from_millis(100), "{reading:?}");
        // 200 Hz over 1.2 s is 240; half of that leaves room for a busy machine.
        assert!(reading.readings > 120, "{reading:?}");
        reading
    }

    #[test]
    fn rapl_counter_accuracy_across_wraps() {
        let root = tempfile::tempdir().unwrap();
        let sys = root.path().to_path_buf();
        let (idle_w, work_w) = (4.0, 11.0);
        // A 5 J range wraps three or four times over the window.
        let max_uj = 5_000_000u64;
        write(&sys, "class/powercap/intel-rapl:0/name", "package-0\n");
        write(&sys, "class/powercap/intel-rapl:0/max_energy_range_uj", &format!("{max_uj}\n"));
        let device = FakeDevice::start(idle_w, work_w, {
            let sys = sys.clone();
            move |energy_j, _| {
                let counter = (energy_j * 1e6) as u64 % max_uj;
                write(&sys, "class/powercap/intel-rapl:0/energy_uj", &format!("{counter}\n"));
            }
        });
        let mut meter = EnergyMeter::open(&SensorChoice::Rapl, &sys, MeterConfig::default()).unwrap();
        assert_eq!(meter.sensor_name(), "rapl:package-0");
        let reading = check_accuracy(&mut meter, &device, idle_w, work_w);
        assert!(reading.energy_j > 2.0 * max_uj as f64 / 1e6, "no wrap in the window: {reading:?}");
        assert_eq!(reading.sensor, "rapl:package-0");
    }

    #[test]
    fn jetson_power_accuracy() {
        let root = tempfile::tempdir().unwrap();
        let sys = root.path().to_path_buf();
        let (idle_w, work_w) = (4.0, 11.0);
        let hw = "bus/i2c/drivers/ina3221/1-0040/hwmon/hwmon1";
        write(&sys, &format!("{hw}/in1_label"), "VDD_IN\n");
        write(&sys, &format!("{hw}/in1_input"), "5000\n");
        let device = FakeDevice::start(idle_w, work_w, {
            let (sys, curr) = (sys.clone(), format!("{hw}/curr1_input"));
            move |_, watts| write(&sys, &curr, &format!("{}\n", (watts / 5.0 * 1e3).round() as i64))
        });
        let mut meter = EnergyMeter::open(&SensorChoice::Jetson(None), &sys, MeterConfig::default()).unwrap();
        let reading = check_accuracy(&mut meter, &device, idle_w, work_w);
        assert_eq!(reading.sensor, "jetson:VDD_IN");
    }

    /// Serves readings from a function of the read count.
    struct Scripted {
        kind: ReadingKind,
        reads: usize,
        script: fn(usize) -> Result<f64, EnergyError>,
    }

    impl PowerSensor for Scripted {
        fn name(&self) -> &str {
            "scripted"
        }
        fn kind(&self) -> ReadingKind {
            self.kind
        }
        fn read(&mut self) -> Result<f64, EnergyError> {
            self.reads += 1;
            (self.script)(self.reads)
        }
    }

    fn meter(kind: ReadingKind, idle_ms: u64, hz: u32, script: fn(usize) -> Result<f64, EnergyError>) -> EnergyMeter {
        EnergyMeter {
            sensor: Box::new(Scripted { kind, reads: 0, script }),
            config: MeterConfig {
                idle_baseline: Duration::from_millis(idle_ms),
                sample_rate_hz: NonZeroU32::new(hz).unwrap(),
            },
        }
    }

    fn torn() -> EnergyError {
        EnergyError::NotANumber { path: PathBuf::from("curr1_input"), content: "12\n3".into() }
    }

    #[test]
    fn transient_failures_are_skipped() {
        // 2 W throughout, every third read torn, the first two included.
        let mut meter =
            meter(ReadingKind::Power, 50, 200, |n| if n % 3 == 0 || n <= 2 { Err(torn()) } else { Ok(2.0) });
        let ((), reading) = meter.measure(|| thread::sleep(Duration::from_millis(200)));
        let reading = reading.unwrap();
        assert!(reading.skipped_reads > 10, "{reading:?}");
        assert!(within(reading.avg_power_w, 2.0, 1e-9) && within(reading.idle_power_w, 2.0, 1e-9), "{reading:?}");
        assert!(reading.net_energy_j().abs() < 1e-9, "{reading:?}");
    }

    #[test]
    fn a_bound_read_that_keeps_failing_fails_the_reading_not_the_work() {
        let mut meter = meter(ReadingKind::Power, 0, 200, |_| Err(torn()));
        let (out, reading) = meter.measure(|| 42);
        assert_eq!(out, 42);
        assert!(matches!(reading, Err(EnergyError::NotANumber { .. })));
    }

    #[test]
    fn a_fatal_failure_mid_window_fails_the_reading_not_the_work() {
        let mut meter = meter(ReadingKind::Power, 20, 200, |n| {
            if n < 10 { Ok(1.0) } else { Err(EnergyError::NotOnBattery("charging".into())) }
        });
        let (out, reading) = meter.measure(|| {
            thread::sleep(Duration::from_millis(100));
            "done"
        });
        assert_eq!(out, "done");
        assert!(matches!(reading, Err(EnergyError::NotOnBattery(_))));
    }

    #[test]
    fn a_panicking_workload_stops_the_sampler() {
        let mut meter = meter(ReadingKind::Energy, 0, 200, |n| Ok(n as f64));
        let result = catch_unwind(AssertUnwindSafe(|| meter.measure(|| panic!("runtime crashed"))));
        assert!(result.is_err());
        // The meter is still usable afterwards.
        let ((), reading) = meter.measure(|| thread::sleep(Duration::from_millis(20)));
        assert!(reading.unwrap().readings >= 2);
    }

    #[test]
    fn samples_at_the_configured_rate() {
        // A counter gaining 1 J a read: the energy counts the reads.
        let mut meter = meter(ReadingKind::Energy, 100, 500, |n| Ok(n as f64));
        let ((), reading) = meter.measure(|| thread::sleep(Duration::from_millis(300)));
        let reading = reading.unwrap();
        let expected = 0.3 * 500.0;
        assert!(reading.readings as f64 > 0.8 * expected && reading.readings as f64 <= expected + 3.0, "{reading:?}");
        assert_eq!(reading.energy_j, (reading.readings - 1) as f64);
        // The first window reading comes at once, the last at the end of the work.
        assert!(reading.window >= Duration::from_millis(300) && reading.window < Duration::from_millis(330));
    }

    #[test]
    fn stats_per_inference() {
        let reading = EnergyReading {
            sensor: "rapl:package-0+dram".into(),
            window: Duration::from_millis(1500),
            energy_j: 12.0,
            avg_power_w: 8.0,
            idle_power_w: 2.0,
            readings: 301,
            skipped_reads: 0,
        };
        assert_eq!(reading.net_energy_j(), 9.0);
        let stats = reading.stats(300).unwrap();
        assert!(within(stats.mj_per_inference, 30.0, 1e-12));
        assert_eq!((stats.avg_power_w, stats.idle_power_w, stats.window_ms), (8.0, 2.0, 1500.0));
        assert_eq!((stats.inferences, stats.readings, stats.sensor.as_str()), (300, 301, "rapl:package-0+dram"));
        assert_eq!(reading.stats(0), None);
    }
}
