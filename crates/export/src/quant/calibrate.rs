//! Activation ranges from the fp32 model, run in tract.

use edgeloop_space::{Arch, Layer, Shape, Space};
use rand::rngs::SmallRng;
use rand::{Rng, SeedableRng};
use tract_onnx::prelude::*;

use super::{ActivationRanges, QuantError};
use crate::export::{Weights, fp32_model, graph_name, layer_names};

/// A standard-normal NCHW input of `shape` (batch 1), seeded: how a
/// normalised image looks to the network.
pub fn random_input(shape: Shape, seed: u64) -> Vec<f32> {
    let mut rng = SmallRng::seed_from_u64(seed);
    (0..shape.channels * shape.height * shape.width)
        .map(|_| {
            // Box–Muller: rand has no normal distribution without rand_distr.
            let (u, v): (f32, f32) = (rng.random_range(f32::EPSILON..1.0), rng.random());
            (-2.0 * u.ln()).sqrt() * (std::f32::consts::TAU * v).cos()
        })
        .collect()
}

fn tract_error(e: TractError) -> QuantError {
    QuantError::Tract(format!("{e:#}"))
}

/// Runs the fp32 model of `arch` on `inputs` (each a batch-1 NCHW input) in
/// tract, with every activation the exporter may quantize as an output, and
/// returns each one's [min, max] over all inputs.
pub fn calibrate(
    space: &Space,
    arch: &Arch,
    weights: &mut dyn Weights,
    inputs: &[Vec<f32>],
) -> Result<ActivationRanges, QuantError> {
    calibrate_layers(graph_name(space, arch), &arch.layers(space)?, &layer_names(space, arch), weights, inputs)
}

/// [`calibrate`] for any chain of `layers` named `names`.
pub(crate) fn calibrate_layers(
    graph_name: String,
    layers: &[Layer],
    names: &[String],
    weights: &mut dyn Weights,
    inputs: &[Vec<f32>],
) -> Result<ActivationRanges, QuantError> {
    let (model, activations) = fp32_model(graph_name, layers, names, weights);
    let plan = tract_onnx::onnx()
        .model_for_proto_model(&model)
        .and_then(|mut m| {
            m.select_outputs_by_name(activations.iter().map(|(_, value)| value))?;
            m.into_optimized()?.into_runnable()
        })
        .map_err(tract_error)?;
    let input = layers[0].input;
    let shape = [1, input.channels, input.height, input.width];
    let mut ranges = ActivationRanges::new();
    for x in inputs {
        let x = Tensor::from_shape(&shape, x).map_err(tract_error)?;
        let outputs = plan.run(tvec![x.into()]).map_err(tract_error)?;
        for ((key, _), output) in activations.iter().zip(&outputs) {
            let values = output.to_plain_array_view::<f32>().map_err(tract_error)?;
            let (lo, hi) =
                values.iter().fold((f32::INFINITY, f32::NEG_INFINITY), |(lo, hi), &v| (lo.min(v), hi.max(v)));
            let range = ranges.entry(key.clone()).or_insert((lo, hi));
            *range = (range.0.min(lo), range.1.max(hi));
        }
    }
    Ok(ranges)
}
