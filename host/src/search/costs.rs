//! The device's table as the search's cost model: what each candidate op
//! of each choice block adds to a network's latency or energy (DESIGN §8's
//! F, per the predictor's metric), and what every network pays anyway
//! (per-call overhead, stem, first block, head, classifier). Same
//! arithmetic as `table predict`.

use edgeloop_space::Space;
use edgeloop_train::CostModel;

use crate::predict::{PredictError, Predictor};

pub fn cost_model(predictor: &Predictor<'_>, space: &Space) -> Result<CostModel, PredictError> {
    let overhead = predictor.overhead_ms(space)?;
    let fixed_layers = space.prefix_layers().into_iter().chain(space.suffix_layers());
    let fixed = fixed_layers.map(|l| predictor.layer_ms(&l, overhead)).sum::<Result<f64, _>>()? + overhead;
    let per_block = space
        .blocks
        .iter()
        .map(|block| {
            block
                .candidates
                .iter()
                .map(|op| op.layer(block).map_or(Ok(0.0), |l| predictor.layer_ms(&l, overhead)))
                .collect::<Result<Vec<f64>, _>>()
        })
        .collect::<Result<_, _>>()?;
    Ok(CostModel { fixed, per_block })
}
