//! How busy the rest of the machine was while a model was timed.
//!
//! A measurement shares the CPU with whatever else runs: on a machine that
//! also trains (a search timing the box it trains on), a trainer thread
//! still spinning on the core next to the measuring one can slow a small
//! network by half. The agent compares the machine's busy CPU time
//! (`/proc/stat`, steal included: a neighbour VM is load too) with its own
//! (`/proc/self/stat`) over the timed window; the difference, per second of
//! wall time, is how many cores something else kept busy. The host re-measures
//! when it is high. Linux clock ticks are 10 ms, so over a window of w ms the
//! figure is good to about ±20/w cores.

use std::path::Path;
use std::time::Instant;

use edgeloop_api::LoadStats;

/// CPU time counters at one instant, in clock ticks.
#[derive(Debug, Clone, Copy)]
pub struct CpuSnapshot {
    /// Every CPU's non-idle time (user, nice, system, irq, softirq, steal).
    machine_busy: u64,
    /// This process's user + system time.
    own: u64,
    at: Instant,
}

/// Non-idle ticks of all CPUs from `/proc/stat`'s first (`cpu `) line.
fn machine_busy_ticks(stat: &str) -> Option<u64> {
    let line = stat.lines().find(|l| l.starts_with("cpu "))?;
    let fields: Vec<u64> = line.split_whitespace().skip(1).map(str::parse).collect::<Result<_, _>>().ok()?;
    // user nice system idle iowait irq softirq steal [guest guest_nice]; guest
    // time is already counted in user.
    let field = |i: usize| fields.get(i).copied().unwrap_or(0);
    (fields.len() >= 4).then(|| field(0) + field(1) + field(2) + field(5) + field(6) + field(7))
}

/// utime + stime of `/proc/<pid>/stat` (fields 14 and 15; the command name
/// in parentheses may hold spaces, so count from its closing parenthesis).
fn process_ticks(stat: &str) -> Option<u64> {
    let after_name = &stat[stat.rfind(')')? + 1..];
    let fields: Vec<&str> = after_name.split_whitespace().collect();
    // After the name: state is field 3, so utime (14) is index 11 here.
    Some(fields.get(11)?.parse::<u64>().ok()? + fields.get(12)?.parse::<u64>().ok()?)
}

fn ticks_per_second() -> f64 {
    // SAFETY: sysconf only reads a system constant.
    let hz = unsafe { libc::sysconf(libc::_SC_CLK_TCK) };
    if hz > 0 { hz as f64 } else { 100.0 }
}

impl CpuSnapshot {
    /// The counters now, from `proc` (`/proc`); `None` where they cannot be read.
    pub fn take(proc: &Path) -> Option<CpuSnapshot> {
        let machine_busy = machine_busy_ticks(&std::fs::read_to_string(proc.join("stat")).ok()?)?;
        let own = process_ticks(&std::fs::read_to_string(proc.join("self/stat")).ok()?)?;
        Some(CpuSnapshot { machine_busy, own, at: Instant::now() })
    }

    /// What other work kept busy between `self` and `end`.
    pub fn load_until(&self, end: &CpuSnapshot) -> LoadStats {
        let window = end.at.duration_since(self.at).as_secs_f64();
        let machine = end.machine_busy.saturating_sub(self.machine_busy) as f64;
        let own = end.own.saturating_sub(self.own) as f64;
        let other = if window > 0.0 { ((machine - own) / ticks_per_second() / window).max(0.0) } else { 0.0 };
        LoadStats { other_busy_cores: other, window_ms: window * 1e3 }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_proc_stat_and_a_process_stat() {
        let stat = "cpu  151569 7 15300 378257 966 3 210 1837 0 0\ncpu0 72643 0 5961 193956 434 0 12 990 0 0\n";
        assert_eq!(machine_busy_ticks(stat), Some(151569 + 7 + 15300 + 3 + 210 + 1837));
        assert_eq!(machine_busy_ticks("cpu  1 2 3\n"), None, "too few fields");
        assert_eq!(machine_busy_ticks("intr 5\n"), None);
        // A command name with spaces and a parenthesis.
        let own = "4242 (edgeloop agent) (x)) S 1 4242 4242 0 -1 4194560 300 0 0 0 17 5 0 0 20 0 3 0";
        assert_eq!(process_ticks(own), Some(22));
        assert_eq!(process_ticks("4242 (short) S 1"), None);
    }

    #[test]
    fn other_work_is_the_machine_minus_this_process() {
        let start = CpuSnapshot { machine_busy: 1000, own: 100, at: Instant::now() };
        let hz = ticks_per_second();
        let end = CpuSnapshot {
            // One second: this process used one core, something else half of one.
            machine_busy: 1000 + (1.5 * hz) as u64,
            own: 100 + hz as u64,
            at: start.at + std::time::Duration::from_secs(1),
        };
        let load = start.load_until(&end);
        assert!((load.other_busy_cores - 0.5).abs() < 0.02, "{load:?}");
        assert!((load.window_ms - 1000.0).abs() < 1e-6);
        // Counters never make it negative.
        let quiet = CpuSnapshot { machine_busy: 1000, own: 100 + hz as u64, ..end };
        assert_eq!(start.load_until(&quiet).other_busy_cores, 0.0);
    }

    #[test]
    fn reads_this_machine() {
        let start = CpuSnapshot::take(Path::new("/proc")).expect("/proc is readable on Linux");
        let end = CpuSnapshot::take(Path::new("/proc")).unwrap();
        assert!(start.load_until(&end).other_busy_cores >= 0.0);
    }
}
