//! The agent binary's logger: `log` records (the agent's and tract's) as
//! plain lines on stderr, filtered by level per target. A handful of lines
//! an hour do not need tracing's subscriber stack, which weighed ~0.2 MB of
//! the static agent.

use std::fmt;
use std::io::Write;
use std::str::FromStr;
use std::time::{SystemTime, UNIX_EPOCH};

use log::{LevelFilter, Log, Metadata, Record};

/// Which records are logged: a level for every target and/or levels for
/// target prefixes (`warn,edgeloop_agent=debug`); the longest matching
/// prefix decides.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LogFilter {
    default: LevelFilter,
    /// (module path prefix, level), longest prefix first.
    targets: Vec<(String, LevelFilter)>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ParseLogFilterError(String);

impl fmt::Display for ParseLogFilterError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "{}: expected a level (off, error, warn, info, debug or trace) and/or TARGET=LEVEL pairs \
             separated by commas",
            self.0
        )
    }
}

impl FromStr for LogFilter {
    type Err = ParseLogFilterError;

    fn from_str(text: &str) -> Result<Self, Self::Err> {
        let level = |s: &str| {
            LevelFilter::from_str(s.trim()).map_err(|_| ParseLogFilterError(format!("unknown level `{}`", s.trim())))
        };
        let mut filter = LogFilter { default: LevelFilter::Off, targets: Vec::new() };
        for directive in text.split(',').map(str::trim).filter(|d| !d.is_empty()) {
            match directive.split_once('=') {
                Some((target, lvl)) if !target.trim().is_empty() => {
                    filter.targets.push((target.trim().to_string(), level(lvl)?));
                }
                Some(_) => return Err(ParseLogFilterError(format!("`{directive}` names no target"))),
                None => match level(directive) {
                    Ok(lvl) => filter.default = lvl,
                    // A bare target logs everything from it, as tracing's filters do.
                    Err(_) if is_target(directive) => filter.targets.push((directive.into(), LevelFilter::Trace)),
                    Err(e) => return Err(e),
                },
            }
        }
        filter.targets.sort_by_key(|(target, _)| std::cmp::Reverse(target.len()));
        Ok(filter)
    }
}

/// A module path such as `edgeloop_agent::store`.
fn is_target(text: &str) -> bool {
    text.split("::").all(|part| !part.is_empty() && part.chars().all(|c| c.is_ascii_alphanumeric() || c == '_'))
}

impl LogFilter {
    /// The most verbose level any record may pass at.
    fn max_level(&self) -> LevelFilter {
        self.targets.iter().map(|(_, level)| *level).fold(self.default, Ord::max)
    }

    fn level_for(&self, target: &str) -> LevelFilter {
        self.targets
            .iter()
            .find(|(prefix, _)| {
                target.strip_prefix(prefix.as_str()).is_some_and(|rest| rest.is_empty() || rest.starts_with("::"))
            })
            .map_or(self.default, |(_, level)| *level)
    }
}

/// Writes each record as one line: UTC time, level, target, message.
struct StderrLogger(LogFilter);

impl Log for StderrLogger {
    fn enabled(&self, metadata: &Metadata<'_>) -> bool {
        metadata.level() <= self.0.level_for(metadata.target())
    }

    fn log(&self, record: &Record<'_>) {
        if self.enabled(record.metadata()) {
            let line = format!(
                "{} {:>5} {}: {}\n",
                utc_timestamp(SystemTime::now()),
                record.level(),
                record.target(),
                record.args()
            );
            // One write per line, so lines from several threads never interleave.
            let _ = std::io::stderr().lock().write_all(line.as_bytes());
        }
    }

    fn flush(&self) {}
}

/// Installs the logger for the whole process.
pub fn init(filter: LogFilter) {
    log::set_max_level(filter.max_level());
    // Fails only when a logger is already installed, which main never does.
    let _ = log::set_boxed_logger(Box::new(StderrLogger(filter)));
}

/// `2026-11-28T12:00:00.123456Z`.
fn utc_timestamp(time: SystemTime) -> String {
    let since_epoch = time.duration_since(UNIX_EPOCH).unwrap_or_default();
    let secs = since_epoch.as_secs();
    let (days, secs_of_day) = (secs / 86_400, secs % 86_400);
    let (year, month, day) = civil_from_days(days as i64);
    format!(
        "{year:04}-{month:02}-{day:02}T{:02}:{:02}:{:02}.{:06}Z",
        secs_of_day / 3600,
        secs_of_day / 60 % 60,
        secs_of_day % 60,
        since_epoch.subsec_micros()
    )
}

/// The proleptic Gregorian date `days` after 1970-01-01 (H. Hinnant's
/// `civil_from_days`).
fn civil_from_days(days: i64) -> (i64, u32, u32) {
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let day_of_era = z.rem_euclid(146_097);
    let year_of_era = (day_of_era - day_of_era / 1460 + day_of_era / 36_524 - day_of_era / 146_096) / 365;
    let day_of_year = day_of_era - (365 * year_of_era + year_of_era / 4 - year_of_era / 100);
    let mp = (5 * day_of_year + 2) / 153;
    let day = (day_of_year - (153 * mp + 2) / 5 + 1) as u32;
    let month = if mp < 10 { mp + 3 } else { mp - 9 } as u32;
    let year = year_of_era + era * 400 + i64::from(month <= 2);
    (year, month, day)
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;

    #[test]
    fn longest_target_prefix_decides() {
        let filter: LogFilter = "warn, edgeloop_agent=debug,edgeloop_agent::store=off".parse().unwrap();
        assert_eq!(filter.level_for("tract_core::model"), LevelFilter::Warn);
        assert_eq!(filter.level_for("edgeloop_agent::worker"), LevelFilter::Debug);
        assert_eq!(filter.level_for("edgeloop_agent"), LevelFilter::Debug);
        assert_eq!(filter.level_for("edgeloop_agent::store"), LevelFilter::Off);
        // A prefix matches whole path segments only.
        assert_eq!(filter.level_for("edgeloop_agentx"), LevelFilter::Warn);
        assert_eq!(filter.max_level(), LevelFilter::Debug);
    }

    #[test]
    fn bare_targets_and_mistakes() {
        let filter: LogFilter = "tract_core".parse().unwrap();
        assert_eq!(
            (filter.level_for("tract_core::ops"), filter.level_for("hyper")),
            (LevelFilter::Trace, LevelFilter::Off)
        );
        assert_eq!("INFO".parse::<LogFilter>().unwrap().level_for("x"), LevelFilter::Info);
        let e = "edgeloop_agent=loud".parse::<LogFilter>().unwrap_err().to_string();
        assert!(e.contains("unknown level `loud`") && e.contains("TARGET=LEVEL"), "{e}");
        assert!("=info".parse::<LogFilter>().is_err());
        assert!("not a target!".parse::<LogFilter>().is_err());
    }

    #[test]
    fn timestamps_are_utc_rfc3339() {
        let at = |secs: u64, micros: u64| {
            utc_timestamp(UNIX_EPOCH + Duration::from_secs(secs) + Duration::from_micros(micros))
        };
        assert_eq!(at(0, 0), "1970-01-01T00:00:00.000000Z");
        assert_eq!(at(951_782_400, 5), "2000-02-29T00:00:00.000005Z");
        assert_eq!(at(1_795_869_296, 123_456), "2026-11-28T12:34:56.123456Z");
        assert_eq!(at(4_107_542_399, 0), "2100-02-28T23:59:59.000000Z");
    }
}
