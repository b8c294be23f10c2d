//! What the long jobs (search, train, baseline, quantize, table building)
//! report while they run. The library emits [`Event`]s into an
//! [`EventSink`]; the `edgeloop` binary renders them (progress bars on
//! stderr, one line per milestone), tests record them and assert on them.

use std::fmt;
use std::path::PathBuf;
use std::sync::{Arc, Mutex};

use crate::predict::Stat;
use crate::search::EpochRow;

/// Receives a job's events, in order, on the job's thread.
pub trait EventSink: Send + Sync {
    fn emit(&self, event: Event);
}

/// A sink that is shared by the parts of a job (`Arc` so envs stay `Clone`).
pub type Events = Arc<dyn EventSink>;

/// Keeps every event, for tests and for callers that render afterwards.
#[derive(Debug, Default)]
pub struct Recorder(Mutex<Vec<Event>>);

impl Recorder {
    pub fn events(&self) -> Vec<Event> {
        self.0.lock().expect("recorder lock").clone()
    }
}

impl EventSink for Recorder {
    fn emit(&self, event: Event) {
        self.0.lock().expect("recorder lock").push(event);
    }
}

/// Drops every event.
#[derive(Debug, Default)]
pub struct Discard;

impl EventSink for Discard {
    fn emit(&self, _: Event) {}
}

#[derive(Debug, Clone, PartialEq)]
pub enum Event {
    /// Counted work starts: `total` units called `unit` ("steps", "rows"),
    /// `done` of them already (a resumed job). One at a time.
    WorkStarted {
        unit: &'static str,
        total: u64,
        done: u64,
    },
    /// One more unit of the current work is done; `status` sums up the latest.
    WorkAdvanced {
        status: Option<String>,
    },
    WorkFinished,

    /// The device training runs on.
    TrainingOn {
        device: String,
    },
    /// The dataset and its splits.
    Dataset {
        spec: String,
        train: usize,
        holdout: usize,
        test: usize,
    },
    /// Rows a table lacked were measured.
    TableCompleted {
        path: PathBuf,
        precision: Option<String>,
        measured: usize,
    },
    /// A table's calibration no longer describes the device: whole networks
    /// ran (in the median) `ratio` times its prediction of their fastest runs.
    CalibrationStale {
        table: PathBuf,
        ratio: f64,
        networks: usize,
    },
    /// A table's calibration for the budget's statistic is fitted (none, or a stale one).
    Calibrating {
        table: PathBuf,
        stat: Stat,
        networks: usize,
    },
    /// The space's fastest architecture meets the budget (measured, budget described).
    Feasible {
        measured: String,
        budget: String,
    },
    /// The fastest architecture's reading missed the budget and was taken again, bypassing the cache.
    FastestRemeasured {
        first: String,
        budget: String,
        again: String,
    },
    SearchResumed {
        after_epoch: usize,
        of: usize,
    },
    /// A search epoch ended (the row `search.csv` got).
    SearchEpoch {
        row: EpochRow,
        of: usize,
        energy: bool,
    },
    /// Why the architecture to retrain was chosen.
    Decided {
        reason: String,
    },
    /// No derived candidate met the budget on the device: derived again with a larger margin.
    Rederiving {
        candidates: usize,
        budget: String,
        margin: f64,
        next_margin: f64,
    },
    /// A final model missed the budget: the next round derives with a larger margin.
    RoundMissed {
        round: usize,
        measured: String,
        predicted: String,
        budget: String,
    },
    /// `edgeloop train`: what is trained.
    TrainingArch {
        hash: String,
        ops: Vec<String>,
        space: String,
        width: f64,
        epochs: usize,
        device: String,
    },
    FinalEpoch {
        epoch: usize,
        of: usize,
        loss: f64,
    },
    MeasuringModel {
        model: PathBuf,
        /// The device's id.
        device: String,
    },

    /// `baseline --fit-ms`: a width measured untrained.
    BaselineMeasured {
        width: f64,
        ms: f64,
        stat: Stat,
        fits: bool,
    },
    /// A width whose channels round to an earlier width's: trained once.
    BaselineSameChannels {
        width: f64,
        channels: String,
        as_width: f64,
    },
    BaselineAlreadyTrained {
        width: f64,
        dir: PathBuf,
    },

    CalibratingRanges {
        images: usize,
    },
    Fp32Accuracy {
        images: usize,
        accuracy: f64,
    },
    QuantizeResumed {
        after_episode: usize,
        of: usize,
    },
    /// A policy measured to check the tables' sums.
    TableCheck {
        policy: String,
        tables: f64,
        measured: f64,
        unit: &'static str,
    },
    TableScale {
        factor: f64,
    },
    Episode {
        episode: usize,
        fits: bool,
        policy: String,
        accuracy: f64,
        reward: f64,
    },
    QuantizedFinalModel {
        name: String,
        policy: String,
    },
}

impl Event {
    /// Whether the event is a line to show (not the progress of counted work).
    pub fn is_line(&self) -> bool {
        !matches!(self, Event::WorkStarted { .. } | Event::WorkAdvanced { .. } | Event::WorkFinished)
    }
}

/// The line a terminal shows for an event (empty for progress events).
impl fmt::Display for Event {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Event::WorkStarted { .. } | Event::WorkAdvanced { .. } | Event::WorkFinished => Ok(()),
            Event::TrainingOn { device } => write!(f, "training on {device}"),
            Event::Dataset { spec, train, holdout, test } => {
                write!(f, "dataset {spec}: {train} train, {holdout} held out for the architecture, {test} test")
            }
            Event::TableCompleted { path, precision, measured } => {
                let what = precision.as_ref().map_or("latency".to_string(), Clone::clone);
                write!(f, "{what} table {}: measured {measured} missing rows", path.display())
            }
            Event::CalibrationStale { table, ratio, networks } => write!(
                f,
                "the calibration of latency table {} is stale: {networks} whole networks ran {ratio:.2}× its \
                 prediction of their fastest runs (the median); fitting it again",
                table.display()
            ),
            Event::Calibrating { table, stat, networks } => write!(
                f,
                "fitting the calibration of latency table {} for {stat} on {networks} whole networks",
                table.display()
            ),
            Event::Feasible { measured, budget } => {
                write!(f, "the space's fastest architecture by the table measured {measured}: the {budget} is feasible")
            }
            Event::FastestRemeasured { first, budget, again } => write!(
                f,
                "the space's fastest architecture measured {first} over the {budget}; measured again: {again}"
            ),
            Event::SearchResumed { after_epoch, of } => {
                write!(f, "resuming the search after epoch {after_epoch} of {of}")
            }
            Event::SearchEpoch { row, of, energy } => {
                write!(f, "epoch {}/{of} ({}): loss {:.3}", row.epoch, row.phase, row.train_loss)?;
                if !row.argmax_arch.is_empty() {
                    write!(
                        f,
                        ", leader {} valid acc {:.3}, measured {:.3} ms",
                        &row.argmax_arch[..12.min(row.argmax_arch.len())],
                        row.valid_acc,
                        row.argmax_measured_ms
                    )?;
                    if *energy {
                        write!(f, " {:.3} mJ", row.argmax_measured_mj)?;
                    }
                }
                // The strategy's figures, by their column names.
                for (name, value) in row.strategy.iter().filter(|(_, v)| v.is_finite()) {
                    write!(f, ", {name} {value:.3}")?;
                }
                Ok(())
            }
            Event::Decided { reason } => f.write_str(reason),
            Event::Rederiving { candidates, budget, margin, next_margin } => write!(
                f,
                "none of {candidates} derived candidates measured within the {budget} (margin {:.1}%); deriving again with {:.1}%",
                margin * 100.0,
                next_margin * 100.0
            ),
            Event::RoundMissed { round, measured, predicted, budget } => write!(
                f,
                "round {round}: the final model measured {measured} against a predicted {predicted}, over the {budget}; deriving again with a larger margin"
            ),
            Event::TrainingArch { hash, ops, space, width, epochs, device } => write!(
                f,
                "training {} [{}] of {space} at width {width} for {epochs} epochs on {device}",
                &hash[..12.min(hash.len())],
                ops.join(", ")
            ),
            Event::FinalEpoch { epoch, of, loss } => write!(f, "final epoch {epoch}/{of}: loss {loss:.3}"),
            Event::MeasuringModel { model, device } => write!(f, "measuring {} on {device}", model.display()),
            Event::BaselineMeasured { width, ms, stat, fits } => {
                write!(f, "baseline width {width}: {ms:.3} ms {stat} ({})", if *fits { "fits" } else { "over" })
            }
            Event::BaselineSameChannels { width, channels, as_width } => {
                write!(f, "width {width}: the same channels ({channels}) as width {as_width}, trained once")
            }
            Event::BaselineAlreadyTrained { width, dir } => {
                write!(f, "width {width}: already trained in {}", dir.display())
            }
            Event::CalibratingRanges { images } => {
                write!(f, "calibrating activation ranges on {images} training images")
            }
            Event::Fp32Accuracy { images, accuracy } => {
                write!(f, "fp32 accuracy on {images} held-out images: {:.2}%", 100.0 * accuracy)
            }
            Event::QuantizeResumed { after_episode, of } => write!(f, "resuming after episode {after_episode} of {of}"),
            Event::TableCheck { policy, tables, measured, unit } => {
                write!(f, "table check [{policy}]: tables {tables:.4} {unit}, measured {measured:.4} {unit}")
            }
            Event::TableScale { factor } => {
                write!(f, "the tables' layer sums are corrected by a factor {factor:.3} fitted on those")
            }
            Event::Episode { episode, fits, policy, accuracy, reward } => write!(
                f,
                "episode {episode}: {} {policy}, accuracy {:.2}%, reward {reward:+.4}",
                if *fits { "fits" } else { "OVER budget" },
                100.0 * accuracy
            ),
            Event::QuantizedFinalModel { name, policy } => {
                write!(f, "final model `{name}` [{policy}]: fine-tuning, testing, measuring")
            }
        }
    }
}

/// Counted work reported as it goes: started on creation, finished on drop
/// (also when the job fails half-way, so a renderer never keeps a dead bar).
pub struct Work<'a> {
    events: &'a dyn EventSink,
}

impl<'a> Work<'a> {
    pub fn start(events: &'a dyn EventSink, unit: &'static str, total: u64, done: u64) -> Work<'a> {
        events.emit(Event::WorkStarted { unit, total, done });
        Work { events }
    }

    pub fn advance(&self, status: Option<String>) {
        self.events.emit(Event::WorkAdvanced { status });
    }
}

impl Drop for Work<'_> {
    fn drop(&mut self) {
        self.events.emit(Event::WorkFinished);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn work_is_finished_when_dropped_even_on_an_early_return() {
        let recorder = Recorder::default();
        let failing = || -> Result<(), ()> {
            let work = Work::start(&recorder, "steps", 3, 1);
            work.advance(Some("loss 1.0".into()));
            Err(())
        };
        assert!(failing().is_err());
        assert_eq!(
            recorder.events(),
            [
                Event::WorkStarted { unit: "steps", total: 3, done: 1 },
                Event::WorkAdvanced { status: Some("loss 1.0".into()) },
                Event::WorkFinished
            ]
        );
        assert!(recorder.events().iter().all(|e| !e.is_line() && e.to_string().is_empty()));
    }

    #[test]
    fn lines_read_as_before() {
        let line = Event::SearchResumed { after_epoch: 2, of: 4 }.to_string();
        assert_eq!(line, "resuming the search after epoch 2 of 4");
        let line = Event::TableCompleted { path: "t.csv".into(), precision: Some("int8".into()), measured: 3 };
        assert_eq!(line.to_string(), "int8 table t.csv: measured 3 missing rows");
        let line = Event::TableCompleted { path: "t.csv".into(), precision: None, measured: 3 };
        assert_eq!(line.to_string(), "latency table t.csv: measured 3 missing rows");
    }
}
