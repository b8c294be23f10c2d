//! Cross-checking runtimes (`edgeloop-agent compare`): a model run once in
//! each runtime on the same seeded inputs, every output compared with the
//! first runtime's.

use crate::inputs::{InputError, random_inputs, resolve_shapes};
use crate::runtime::{LoadOptions, OutputTensor, Runtime, RuntimeError};

/// How far one runtime's output is from the reference runtime's.
#[derive(Debug, Clone, PartialEq)]
pub struct OutputDiff {
    pub output: String,
    pub shape: Vec<usize>,
    pub runtime: String,
    /// Largest absolute difference of any element; infinite where only one
    /// side is NaN.
    pub max_abs_diff: f64,
}

#[derive(Debug, thiserror::Error)]
pub enum CompareError {
    #[error("comparing needs at least two runtimes")]
    TooFewRuntimes,
    #[error("malformed model: {0}")]
    Malformed(#[from] edgeloop_onnx::OnnxError),
    #[error(transparent)]
    Input(#[from] InputError),
    #[error("{runtime}: {source}")]
    Runtime { runtime: String, source: RuntimeError },
    #[error("{runtime} gives outputs {got:?} where {reference} gives {expected:?}")]
    OutputNames { runtime: String, got: Vec<String>, reference: String, expected: Vec<String> },
    #[error("output `{output}`: {runtime} gives shape {got:?} where {reference} gives {expected:?}")]
    Shape { output: String, runtime: String, got: Vec<usize>, reference: String, expected: Vec<usize> },
}

/// Runs `model` once in each of `runtimes` (with `threads` threads) on
/// inputs seeded by `seed`, and returns how far each output of every other
/// runtime is from the first runtime's, output by output.
pub fn compare(
    model: &[u8],
    runtimes: &[&dyn Runtime],
    seed: u64,
    threads: usize,
) -> Result<Vec<OutputDiff>, CompareError> {
    let (reference, others) = match runtimes {
        [reference, others @ ..] if !others.is_empty() => (*reference, others),
        _ => return Err(CompareError::TooFewRuntimes),
    };
    let proto = edgeloop_onnx::decode(model)?;
    let resolved = resolve_shapes(&edgeloop_onnx::declared_inputs(&proto)?, &Default::default())?;
    let inputs = random_inputs(&resolved, seed);
    let outputs_of = |runtime: &dyn Runtime| {
        runtime
            .load(model, &inputs, LoadOptions { threads })
            .and_then(|mut loaded| loaded.outputs())
            .map_err(|source| CompareError::Runtime { runtime: runtime.name().into(), source })
    };
    let expected = outputs_of(reference)?;
    let mut diffs = Vec::new();
    for runtime in others {
        let got = outputs_of(*runtime)?;
        let names = |outputs: &[OutputTensor]| outputs.iter().map(|o| o.name.clone()).collect::<Vec<_>>();
        if names(&got) != names(&expected) {
            return Err(CompareError::OutputNames {
                runtime: runtime.name().into(),
                got: names(&got),
                reference: reference.name().into(),
                expected: names(&expected),
            });
        }
        for (got, expected) in got.into_iter().zip(&expected) {
            if got.shape != expected.shape {
                return Err(CompareError::Shape {
                    output: got.name,
                    runtime: runtime.name().into(),
                    got: got.shape,
                    reference: reference.name().into(),
                    expected: expected.shape.clone(),
                });
            }
            diffs.push(OutputDiff {
                max_abs_diff: max_abs_diff(&got.values, &expected.values),
                output: got.name,
                shape: got.shape,
                runtime: runtime.name().into(),
            });
        }
    }
    Ok(diffs)
}

fn max_abs_diff(a: &[f64], b: &[f64]) -> f64 {
    a.iter()
        .zip(b)
        .map(|(x, y)| match (x.is_nan(), y.is_nan()) {
            (true, true) => 0.0,
            (false, false) if x == y => 0.0,
            // `f64::max` would skip a NaN difference.
            (false, false) => (x - y).abs(),
            _ => f64::INFINITY,
        })
        .fold(0.0, f64::max)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::runtime::TractRuntime;

    #[test]
    fn differences_count_nan_and_infinities() {
        assert_eq!(max_abs_diff(&[1.0, 2.0, -3.0], &[1.0, 2.5, -3.25]), 0.5);
        assert_eq!(max_abs_diff(&[f64::NAN, f64::INFINITY], &[f64::NAN, f64::INFINITY]), 0.0);
        assert_eq!(max_abs_diff(&[1.0, f64::NAN], &[1.0, 0.0]), f64::INFINITY);
        assert_eq!(max_abs_diff(&[f64::NEG_INFINITY], &[f64::INFINITY]), f64::INFINITY);
    }

    #[test]
    fn a_runtime_matches_itself() {
        let model = edgeloop_onnx::encode(&edgeloop_onnx::samples::MbconvNet::small().to_model());
        let diffs = compare(&model, &[&TractRuntime, &TractRuntime], 7, 1).unwrap();
        assert!(!diffs.is_empty());
        assert!(diffs.iter().all(|d| d.runtime == "tract" && d.max_abs_diff == 0.0), "{diffs:?}");
        assert!(matches!(compare(&model, &[&TractRuntime], 7, 1), Err(CompareError::TooFewRuntimes)));
    }
}
