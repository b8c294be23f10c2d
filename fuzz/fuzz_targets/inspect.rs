//! The model-inspection path an upload and a measurement go through before
//! any runtime sees the model: decode → graph checks → declared inputs →
//! shapes → input bytes. It must refuse, never panic or allocate beyond the
//! input's size.

#![no_main]

use std::collections::BTreeMap;

use edgeloop_agent::limits::{Limits, inspect};

libfuzzer_sys::fuzz_target!(|data: &[u8]| {
    let _ = inspect(data, &BTreeMap::new(), &Limits::default());
});
