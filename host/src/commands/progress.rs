//! The one progress-bar look of the long `edgeloop` jobs (stderr, with ETA).

use indicatif::{ProgressBar, ProgressStyle};

/// A bar over `len` items called `unit` ("rows", "archs").
pub fn bar(len: usize, unit: &str) -> ProgressBar {
    let template = format!("{{elapsed_precise}} [{{wide_bar}}] {{pos}}/{{len}} {unit}, ETA {{eta}}  {{msg}}");
    ProgressBar::new(len as u64)
        .with_style(ProgressStyle::with_template(&template).expect("the template is valid").progress_chars("=> "))
}

/// Renders a job's events on stderr: counted work as a bar, every other
/// event as a line (printed above the bar while one is shown).
#[derive(Default)]
pub struct Terminal {
    bar: std::sync::Mutex<Option<ProgressBar>>,
}

impl crate::events::EventSink for Terminal {
    fn emit(&self, event: crate::events::Event) {
        use crate::events::Event;
        let mut bar = self.bar.lock().expect("bar lock");
        match event {
            Event::WorkStarted { unit, total, done } => {
                let new = self::bar(total as usize, unit);
                new.set_position(done);
                if let Some(old) = bar.replace(new) {
                    old.finish_and_clear();
                }
            }
            Event::WorkAdvanced { status } => {
                if let Some(bar) = bar.as_ref() {
                    if let Some(status) = status {
                        bar.set_message(status);
                    }
                    bar.inc(1);
                }
            }
            Event::WorkFinished => {
                if let Some(old) = bar.take() {
                    old.finish_and_clear();
                }
            }
            line => match bar.as_ref() {
                Some(bar) => bar.suspend(|| eprintln!("{line}")),
                None => eprintln!("{line}"),
            },
        }
    }
}
