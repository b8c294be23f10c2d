//! The one progress-bar look of the long `edgeloop` jobs (stderr, with ETA).

use indicatif::{ProgressBar, ProgressStyle};

/// A bar over `len` items called `unit` ("rows", "archs").
pub fn bar(len: usize, unit: &str) -> ProgressBar {
    let template = format!("{{elapsed_precise}} [{{wide_bar}}] {{pos}}/{{len}} {unit}, ETA {{eta}}  {{msg}}");
    ProgressBar::new(len as u64)
        .with_style(ProgressStyle::with_template(&template).expect("the template is valid").progress_chars("=> "))
}
