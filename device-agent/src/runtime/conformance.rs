//! What every [`Runtime`] must do, as one suite instantiated per runtime
//! (`conformance!` below, as tract's `test-rt` does for its runtimes): load
//! and run the sample network at one and two threads, compute what tract
//! computes, profile with shares that add up, run fp32 and int8 natively,
//! and answer a broken model or the wrong inputs with an error, not a panic.

use std::num::NonZeroUsize;

use super::{LoadOptions, OutputTensor, Precision, Probe, Runtime, TractRuntime};
use crate::inputs::{InputTensor, random_inputs, resolve_shapes};

/// The small sample network's bytes and seeded inputs for it.
pub(crate) fn sample() -> (Vec<u8>, Vec<InputTensor>) {
    let proto = edgeloop_onnx::samples::MbconvNet::small().to_model();
    let declared = edgeloop_onnx::declared_inputs(&proto).unwrap();
    let inputs = random_inputs(&resolve_shapes(&declared, &Default::default()).unwrap(), 3);
    (edgeloop_onnx::encode(&proto), inputs)
}

/// The largest difference between two runtimes' outputs, after checking
/// that they name and shape them alike.
fn max_difference(got: &[OutputTensor], want: &[OutputTensor]) -> f64 {
    assert_eq!(got.len(), want.len());
    got.iter()
        .zip(want)
        .flat_map(|(g, w)| {
            assert_eq!((&g.name, &g.shape), (&w.name, &w.shape));
            g.values.iter().zip(&w.values).map(|(a, b)| (a - b).abs())
        })
        .fold(0.0, f64::max)
}

pub(crate) fn loads_and_runs_at_one_and_two_threads(runtime: &dyn Runtime) {
    let (bytes, inputs) = sample();
    for threads in [1, 2] {
        let mut model = runtime.load(&bytes, &inputs, LoadOptions { threads }).unwrap();
        for _ in 0..3 {
            model.run().unwrap();
        }
        let outputs = model.outputs().unwrap();
        assert_eq!(outputs.len(), 1, "{}: one output", runtime.name());
        assert_eq!(outputs[0].shape, [1, 10], "{}", runtime.name());
        assert!(outputs[0].values.iter().all(|v| v.is_finite()), "{}", runtime.name());
    }
}

pub(crate) fn computes_what_tract_computes(runtime: &dyn Runtime) {
    let (bytes, inputs) = sample();
    let reference = TractRuntime.load(&bytes, &inputs, LoadOptions { threads: 1 }).unwrap().outputs().unwrap();
    let outputs = runtime.load(&bytes, &inputs, LoadOptions { threads: 1 }).unwrap().outputs().unwrap();
    let diff = max_difference(&outputs, &reference);
    assert!(diff <= 1e-4, "{} differs from tract by {diff}", runtime.name());
}

pub(crate) fn profiles_every_run_slowest_first_with_shares_adding_up(runtime: &dyn Runtime) {
    let (bytes, inputs) = sample();
    let mut model = runtime.load(&bytes, &inputs, LoadOptions { threads: 1 }).unwrap();
    let ops = model.profile(NonZeroUsize::new(3).unwrap()).unwrap();
    assert!(!ops.is_empty(), "{}", runtime.name());
    assert!(ops.iter().all(|op| !op.node.is_empty() && !op.op_type.is_empty() && op.ms >= 0.0), "{ops:#?}");
    assert!(ops.windows(2).all(|w| w[0].ms >= w[1].ms), "slowest first: {ops:#?}");
    let shares: f64 = ops.iter().map(|op| op.share).sum();
    assert!((shares - 1.0).abs() < 1e-9, "{}: shares sum to {shares}", runtime.name());
    // Profiling leaves the model as it was: it still runs.
    model.run().unwrap();
}

pub(crate) fn runs_fp32_and_int8_natively(runtime: &dyn Runtime) {
    let native = runtime.precisions();
    assert!(
        native.starts_with(&["fp32".into(), "int8".into()]),
        "{}: {native:?} ({:#?})",
        runtime.name(),
        runtime.precisions_unavailable()
    );
    for precision in [Precision::Fp32, Precision::Int8] {
        let probe = Probe::new(precision);
        let mut model = runtime.load(&probe.model, &probe.inputs, LoadOptions { threads: 1 }).unwrap();
        model.run().unwrap();
    }
    // Every precision is either native or has a reason.
    for precision in Precision::ALL {
        let name = precision.name();
        let unavailable = runtime.precisions_unavailable();
        assert!(native.iter().any(|p| p == name) != unavailable.contains_key(name), "{}: {name}", runtime.name());
    }
}

pub(crate) fn refuses_broken_models_and_wrong_inputs_with_errors(runtime: &dyn Runtime) {
    let (bytes, inputs) = sample();
    let one_thread = LoadOptions { threads: 1 };
    for broken in [&b"not an onnx model"[..], &bytes[..bytes.len() / 2], &[][..]] {
        assert!(runtime.load(broken, &inputs, one_thread).is_err(), "{} loaded {} bytes", runtime.name(), broken.len());
    }
    // The inputs of another model: the sample takes 1×3×32×32.
    let probe = Probe::new(Precision::Fp32);
    let error = match runtime.load(&bytes, &probe.inputs, one_thread) {
        Ok(mut model) => model.run().err(),
        Err(e) => Some(e),
    };
    assert!(error.is_some_and(|e| !e.0.is_empty()), "{} ran the sample on another model's inputs", runtime.name());
}

/// The suite as `#[test]`s for the runtime `make()` returns.
macro_rules! conformance {
    ($module:ident, $make:expr) => {
        mod $module {
            use crate::runtime::conformance::*;

            #[test]
            fn loads_and_runs() {
                loads_and_runs_at_one_and_two_threads(&$make);
            }

            #[test]
            fn matches_tract() {
                computes_what_tract_computes(&$make);
            }

            #[test]
            fn profiles() {
                profiles_every_run_slowest_first_with_shares_adding_up(&$make);
            }

            #[test]
            fn precisions() {
                runs_fp32_and_int8_natively(&$make);
            }

            #[test]
            fn refuses_bad_input() {
                refuses_broken_models_and_wrong_inputs_with_errors(&$make);
            }
        }
    };
}

conformance!(tract, crate::runtime::TractRuntime);

#[cfg(feature = "ort")]
conformance!(ort, crate::runtime::ort::tests::venv_ort(crate::runtime::OrtOptimization::All));

#[cfg(feature = "ort")]
conformance!(ort_unoptimized, crate::runtime::ort::tests::venv_ort(crate::runtime::OrtOptimization::Disable));
