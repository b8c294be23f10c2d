//! Samples a sensor while work runs and integrates the readings (DESIGN §6):
//! an idle baseline just before, then readings at a fixed rate on a thread of
//! their own, from one just before the work starts to one just after it ends.

use std::num::NonZeroU32;
use std::path::Path;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, mpsc};
use std::thread::{self, Thread};
use std::time::{Duration, Instant};

use edgeloop_api::EnergyStats;

use super::clock::{Clock, SystemClock};
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
    /// The shortest window energy is integrated over (DESIGN §6: 1 s):
    /// sensors update at tens to hundreds of Hz, and a short window would
    /// be mostly edges. Tests on a simulated sensor that updates every
    /// millisecond shorten it.
    pub min_window: Duration,
}

impl Default for MeterConfig {
    fn default() -> Self {
        MeterConfig {
            idle_baseline: Duration::from_millis(500),
            sample_rate_hz: NonZeroU32::new(200).unwrap(),
            min_window: Duration::from_secs(1),
        }
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
    clock: Arc<dyn Clock>,
}

impl EnergyMeter {
    pub fn open(choice: &SensorChoice, sys: &Path, config: MeterConfig) -> Result<Self, EnergyError> {
        Ok(EnergyMeter { sensor: choice.open(sys)?, config, clock: Arc::new(SystemClock) })
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
        let until = Until::Deadline(self.clock.now() + self.config.idle_baseline);
        let trace = record(&mut *self.sensor, &*self.clock, period, until, || {})?;
        Ok((trace.energy_j(self.sensor.kind()) / trace.span().as_secs_f64(), trace.skipped))
    }

    fn record_during<T>(&mut self, period: Duration, work: impl FnOnce() -> T) -> (T, Result<Trace, EnergyError>) {
        let stop = AtomicBool::new(false);
        let (sensor, clock) = (&mut *self.sensor, &*self.clock);
        thread::scope(|scope| {
            let stop = &stop;
            let (started_tx, started) = mpsc::sync_channel(1);
            let sampler = scope.spawn(move || {
                record(sensor, clock, period, Until::Flag(stop), move || {
                    let _ = started_tx.send(());
                })
            });
            // Back at the first reading, or when the sampler gave up before it.
            let _ = started.recv();
            let out = {
                // Stops the sampler even when `work` panics, or the scope would wait for it forever.
                let _stop = StopOnDrop { stop, clock, sampler: sampler.thread().clone() };
                work()
            };
            let trace = sampler.join().unwrap_or_else(|panic| std::panic::resume_unwind(panic));
            (out, trace)
        })
    }
}

struct StopOnDrop<'a> {
    stop: &'a AtomicBool,
    clock: &'a dyn Clock,
    sampler: Thread,
}

impl Drop for StopOnDrop<'_> {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Release);
        // Wakes it now, so the last reading is taken right at the end of the work.
        self.clock.wake(&self.sampler);
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
    fn wait_for(&self, clock: &dyn Clock, next: Instant) -> bool {
        match self {
            Until::Deadline(deadline) => {
                clock.sleep_until(next.min(*deadline));
                clock.now() >= *deadline
            }
            Until::Flag(stop) => loop {
                if stop.load(Ordering::Acquire) {
                    return true;
                }
                if clock.now() >= next {
                    return false;
                }
                // Woken early by `StopOnDrop` (or spuriously): look again.
                clock.park_until(next);
            },
        }
    }
}

/// Reads at every tick of `period` from now until `until`, with one reading
/// at once (then calls `started`) and one at the end. Ticks are deadlines
/// on a fixed grid, so the rate does not drift by the time reads take.
fn record(
    sensor: &mut dyn PowerSensor,
    clock: &dyn Clock,
    period: Duration,
    until: Until<'_>,
    started: impl FnOnce(),
) -> Result<Trace, EnergyError> {
    let mut trace = Trace { points: Vec::new(), skipped: 0 };
    trace.points.push(read_bound(sensor, clock, &mut trace.skipped)?);
    started();
    let mut next = trace.points[0].0 + period;
    while !until.wait_for(clock, next) {
        match timed_read(sensor, clock) {
            Ok(point) => trace.points.push(point),
            Err(e) if e.is_transient() => trace.skipped += 1,
            Err(e) => return Err(e),
        }
        // Behind schedule (a slow read, a busy CPU): skip the missed ticks
        // rather than read in a burst.
        let now = clock.now();
        next += period;
        while next <= now {
            next += period;
        }
    }
    trace.points.push(read_bound(sensor, clock, &mut trace.skipped)?);
    Ok(trace)
}

/// A reading that bounds a window: transient failures are retried.
fn read_bound(
    sensor: &mut dyn PowerSensor,
    clock: &dyn Clock,
    skipped: &mut usize,
) -> Result<(Instant, f64), EnergyError> {
    let mut tries = 1;
    loop {
        match timed_read(sensor, clock) {
            Err(e) if e.is_transient() && tries < BOUND_READ_TRIES => {
                *skipped += 1;
                tries += 1;
                clock.sleep_until(clock.now() + BOUND_READ_PAUSE);
            }
            result => return result,
        }
    }
}

/// A reading stamped at the middle of the read, which on an I2C sensor can
/// take a good part of a millisecond.
fn timed_read(sensor: &mut dyn PowerSensor, clock: &dyn Clock) -> Result<(Instant, f64), EnergyError> {
    let before = clock.now();
    let value = sensor.read()?;
    let after = clock.now();
    Ok((before + (after - before) / 2, value))
}

#[cfg(test)]
mod tests {
    use std::panic::{AssertUnwindSafe, catch_unwind};
    use std::path::PathBuf;
    use std::sync::atomic::AtomicUsize;

    use super::super::clock::ManualClock;
    use super::super::fixture::write;
    use super::*;

    fn within(actual: f64, expected: f64, tolerance: f64) -> bool {
        (actual - expected).abs() <= tolerance * expected.abs()
    }

    const BUSY: Duration = Duration::from_millis(1200);

    /// A device drawing `idle_w`, plus `work_w` while busy, on a manual
    /// clock: each time the clock moves, it adds the energy used meanwhile
    /// and hands the energy so far (J) and the power now (W) to `publish`,
    /// which writes them into a fixture tree for the real sensor to read.
    struct FakeDevice {
        busy: Arc<AtomicBool>,
        clock: Arc<ManualClock>,
    }

    impl FakeDevice {
        fn start(idle_w: f64, work_w: f64, mut publish: impl FnMut(f64, f64) + Send + 'static) -> Self {
            let busy = Arc::new(AtomicBool::new(false));
            let power = {
                let busy = busy.clone();
                move || if busy.load(Ordering::SeqCst) { idle_w + work_w } else { idle_w }
            };
            publish(0.0, power());
            let mut energy_j = 0.0;
            let clock = ManualClock::new(move |from, to| {
                let watts = power();
                energy_j += watts * (to - from).as_secs_f64();
                publish(energy_j, watts);
            });
            FakeDevice { busy, clock: Arc::new(clock) }
        }

        /// The workload: busy for [`BUSY`].
        fn work(&self) {
            self.busy.store(true, Ordering::SeqCst);
            self.clock.run_for(BUSY);
            self.busy.store(false, Ordering::SeqCst);
        }

        fn meter(&self, choice: &SensorChoice, sys: &Path) -> EnergyMeter {
            let mut meter = EnergyMeter::open(choice, sys, MeterConfig::default()).unwrap();
            meter.clock = self.clock.clone();
            meter
        }
    }

    fn check_accuracy(meter: &mut EnergyMeter, device: &FakeDevice, idle_w: f64, work_w: f64) -> EnergyReading {
        let ((), reading) = meter.measure(|| device.work());
        let reading = reading.unwrap();
        // The first window reading comes at once, the last at the end of the work.
        assert_eq!(reading.window, BUSY, "{reading:?}");
        // 200 Hz over 1.2 s, the bounding two included.
        assert_eq!(reading.readings, 242, "{reading:?}");
        assert!(within(reading.idle_power_w, idle_w, 1e-3), "{reading:?}");
        // A power sensor's first interval straddles the start, so the
        // trapezoids miss half a period of the work's draw.
        assert!(within(reading.net_energy_j(), work_w * BUSY.as_secs_f64(), 5e-3), "{reading:?}");
        let avg_w = idle_w + work_w;
        assert!(within(reading.avg_power_w, avg_w, 5e-3), "{reading:?}, expected {avg_w} W");
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
        let mut meter = device.meter(&SensorChoice::Rapl, &sys);
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
        let mut meter = device.meter(&SensorChoice::Jetson(None), &sys);
        let reading = check_accuracy(&mut meter, &device, idle_w, work_w);
        assert_eq!(reading.sensor, "jetson:VDD_IN");
    }

    /// Serves readings from a function of the read count.
    struct Scripted {
        kind: ReadingKind,
        reads: Arc<AtomicUsize>,
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
            (self.script)(self.reads.fetch_add(1, Ordering::SeqCst) + 1)
        }
    }

    /// A meter of a scripted sensor on `clock`, and the sensor's read count.
    fn meter(
        kind: ReadingKind,
        idle_ms: u64,
        hz: u32,
        clock: Arc<ManualClock>,
        script: fn(usize) -> Result<f64, EnergyError>,
    ) -> (EnergyMeter, Arc<AtomicUsize>) {
        let reads = Arc::new(AtomicUsize::new(0));
        let meter = EnergyMeter {
            sensor: Box::new(Scripted { kind, reads: reads.clone(), script }),
            config: MeterConfig {
                idle_baseline: Duration::from_millis(idle_ms),
                sample_rate_hz: NonZeroU32::new(hz).unwrap(),
                ..MeterConfig::default()
            },
            clock,
        };
        (meter, reads)
    }

    fn still_clock() -> Arc<ManualClock> {
        Arc::new(ManualClock::new(|_, _| {}))
    }

    fn torn() -> EnergyError {
        EnergyError::NotANumber { path: PathBuf::from("curr1_input"), content: "12\n3".into() }
    }

    #[test]
    fn transient_failures_are_skipped() {
        // 2 W throughout, every third read torn, the first two included.
        let clock = still_clock();
        let (mut meter, _) =
            meter(
                ReadingKind::Power,
                50,
                200,
                clock.clone(),
                |n| {
                    if n % 3 == 0 || n <= 2 { Err(torn()) } else { Ok(2.0) }
                },
            );
        let ((), reading) = meter.measure(|| clock.run_for(Duration::from_millis(200)));
        let reading = reading.unwrap();
        assert!(reading.skipped_reads > 10, "{reading:?}");
        // The closing read, retried after its 1 ms pause when torn, may end the window late.
        assert!(reading.window >= Duration::from_millis(200) && reading.window <= Duration::from_millis(202));
        assert!(within(reading.avg_power_w, 2.0, 1e-9) && within(reading.idle_power_w, 2.0, 1e-9), "{reading:?}");
        assert!(reading.net_energy_j().abs() < 1e-9, "{reading:?}");
    }

    #[test]
    fn a_bound_read_that_keeps_failing_fails_the_reading_not_the_work() {
        let (mut meter, reads) = meter(ReadingKind::Power, 0, 200, still_clock(), |_| Err(torn()));
        let (out, reading) = meter.measure(|| 42);
        assert_eq!(out, 42);
        assert!(matches!(reading, Err(EnergyError::NotANumber { .. })));
        assert_eq!(reads.load(Ordering::SeqCst), BOUND_READ_TRIES as usize);
    }

    #[test]
    fn a_fatal_failure_mid_window_fails_the_reading_not_the_work() {
        let clock = Arc::new(ManualClock::free_running());
        let (mut meter, reads) = meter(ReadingKind::Power, 20, 200, clock, |n| {
            if n < 10 { Ok(1.0) } else { Err(EnergyError::NotOnBattery("charging".into())) }
        });
        let (out, reading) = meter.measure(|| {
            // The work outlasts the sampler, which stops at the failing read.
            while reads.load(Ordering::SeqCst) < 10 {
                thread::yield_now();
            }
            "done"
        });
        assert_eq!(out, "done");
        assert!(matches!(reading, Err(EnergyError::NotOnBattery(_))));
        assert_eq!(reads.load(Ordering::SeqCst), 10);
    }

    #[test]
    fn a_panicking_workload_stops_the_sampler() {
        let clock = still_clock();
        let (mut meter, _) = meter(ReadingKind::Energy, 0, 200, clock.clone(), |n| Ok(n as f64));
        let result = catch_unwind(AssertUnwindSafe(|| meter.measure(|| panic!("runtime crashed"))));
        assert!(result.is_err());
        // The meter is still usable afterwards.
        let ((), reading) = meter.measure(|| clock.run_for(Duration::from_millis(20)));
        let reading = reading.unwrap();
        assert_eq!((reading.window, reading.readings), (Duration::from_millis(20), 6), "{reading:?}");
    }

    #[test]
    fn samples_at_the_configured_rate() {
        // A counter gaining 1 J a read: the energy counts the reads.
        let clock = still_clock();
        let (mut meter, _) = meter(ReadingKind::Energy, 100, 500, clock.clone(), |n| Ok(n as f64));
        let ((), reading) = meter.measure(|| clock.run_for(Duration::from_millis(300)));
        let reading = reading.unwrap();
        // A reading at each 2 ms tick, one at the start and one at the end.
        assert_eq!(reading.readings, 152, "{reading:?}");
        assert_eq!(reading.energy_j, (reading.readings - 1) as f64);
        assert_eq!(reading.window, Duration::from_millis(300));
        // 51 idle reads gaining 1 J each over 100 ms.
        assert!(within(reading.idle_power_w, 500.0, 1e-9), "{reading:?}");
    }

    /// An I2C-like sensor whose reads take 7 ms of the clock.
    struct Slow(Arc<ManualClock>);

    impl PowerSensor for Slow {
        fn name(&self) -> &str {
            "slow"
        }
        fn kind(&self) -> ReadingKind {
            ReadingKind::Power
        }
        fn read(&mut self) -> Result<f64, EnergyError> {
            self.0.sleep_until(self.0.now() + Duration::from_millis(7));
            Ok(1.0)
        }
    }

    #[test]
    fn a_slow_read_skips_the_missed_ticks() {
        let clock = still_clock();
        let mut meter = EnergyMeter {
            sensor: Box::new(Slow(clock.clone())),
            config: MeterConfig { idle_baseline: Duration::ZERO, ..MeterConfig::default() },
            clock: clock.clone(),
        };
        let ((), reading) = meter.measure(|| clock.run_for(Duration::from_millis(150)));
        let reading = reading.unwrap();
        // At 200 Hz, a read every other tick (every 10 ms) rather than a
        // burst of back-to-back reads (every 7 ms) to catch up.
        assert_eq!(reading.readings, 17, "{reading:?}");
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
