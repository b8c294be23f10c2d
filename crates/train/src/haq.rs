//! HAQ's environment (DESIGN §9), without the agent: the state of every
//! agent step, actions → bit widths → a [`QuantPolicy`], and the budget
//! constraint. Each layer of an arch takes two steps, its weights and then
//! its activations, so an episode over `n` layers is `2n` steps.

use edgeloop_export::quant::{Precision, QuantPolicy};
use edgeloop_space::{Layer, LayerKind};

/// Fewest bits of an integer layer's weights or activations.
pub const MIN_BITS: u8 = 2;
/// Most bits of an integer layer's weights or activations.
pub const MAX_INT_BITS: u8 = 8;
/// The weight level above [`MAX_INT_BITS`] that keeps the whole layer fp32.
pub const FP32_LEVEL: u8 = MAX_INT_BITS + 1;
/// Length of a state vector: eight layer features, the weight/activation
/// flag and the previous action.
pub const STATE_DIM: usize = 10;

/// Weights of `layer` (biases only where the layer has them: the classifier).
pub fn layer_params(layer: &Layer) -> usize {
    let (c_in, c_out, k) = (layer.input.channels, layer.out_channels, layer.kernel);
    match layer.kind {
        LayerKind::Stem => c_out * c_in * k * k,
        LayerKind::MbConv => {
            let mid = c_in * layer.expand;
            let expand = if layer.expand == 1 { 0 } else { mid * c_in };
            expand + mid * k * k + c_out * mid
        }
        LayerKind::HeadConv => c_out * c_in,
        LayerKind::Logits => c_out * c_in + c_out,
    }
}

/// What the agent sees of one layer, before normalisation.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct LayerFeatures {
    pub index: usize,
    pub c_in: usize,
    pub c_out: usize,
    pub kernel: usize,
    pub stride: usize,
    /// Input feature-map size, height × width.
    pub fmap: usize,
    pub params: usize,
    /// MBConv blocks, whose k×k conv is depthwise.
    pub depthwise: bool,
}

impl LayerFeatures {
    pub fn new(index: usize, layer: &Layer) -> LayerFeatures {
        LayerFeatures {
            index,
            c_in: layer.input.channels,
            c_out: layer.out_channels,
            kernel: layer.kernel,
            stride: layer.stride,
            fmap: layer.input.height * layer.input.width,
            params: layer_params(layer),
            depthwise: layer.kind == LayerKind::MbConv,
        }
    }
}

/// The normalised states of an episode's steps: step `2i` sets layer `i`'s
/// weight bits, step `2i + 1` its activation bits.
#[derive(Debug, Clone, PartialEq)]
pub struct StepStates {
    /// Per step, every feature but the previous action, each min–max
    /// normalised over the steps (a constant feature is 0).
    normalised: Vec<[f32; STATE_DIM - 1]>,
}

impl StepStates {
    pub fn new(layers: &[Layer]) -> StepStates {
        let raw: Vec<[f64; STATE_DIM - 1]> = layers
            .iter()
            .enumerate()
            .flat_map(|(i, layer)| {
                let f = LayerFeatures::new(i, layer);
                let row = |is_weight: bool| {
                    [
                        f.index,
                        f.c_in,
                        f.c_out,
                        f.kernel,
                        f.stride,
                        f.fmap,
                        f.params,
                        f.depthwise as usize,
                        is_weight as usize,
                    ]
                    .map(|v| v as f64)
                };
                [row(true), row(false)]
            })
            .collect();
        let column_range = |c: usize| {
            raw.iter().fold((f64::INFINITY, f64::NEG_INFINITY), |(lo, hi), row| (lo.min(row[c]), hi.max(row[c])))
        };
        let ranges: [(f64, f64); STATE_DIM - 1] = std::array::from_fn(column_range);
        let normalised = raw
            .iter()
            .map(|row| {
                std::array::from_fn(|c| {
                    let (lo, hi) = ranges[c];
                    if hi > lo { ((row[c] - lo) / (hi - lo)) as f32 } else { 0.0 }
                })
            })
            .collect();
        StepStates { normalised }
    }

    /// Steps of an episode: two per layer.
    pub fn steps(&self) -> usize {
        self.normalised.len()
    }

    /// The state of `step` after the previous step chose `prev_action`
    /// (0 for the first step). The action is in [0, 1] already, so it is
    /// not normalised.
    pub fn state(&self, step: usize, prev_action: f32) -> Vec<f32> {
        let mut state = self.normalised[step].to_vec();
        state.push(prev_action);
        state
    }
}

/// Action `a` ∈ [0, 1] → bits in `min_bits ..= max_bits`: equal-width
/// buckets, round(a·(max − min + 1) + min − 0.5) (DESIGN §9), ties rounded
/// away from zero as [`f64::round`] does, clamped so that a = 1 is `max_bits`.
pub fn action_to_bits(action: f32, min_bits: u8, max_bits: u8) -> u8 {
    let levels = f64::from(max_bits - min_bits + 1);
    let bits = (f64::from(action) * levels + f64::from(min_bits) - 0.5).round();
    bits.clamp(f64::from(min_bits), f64::from(max_bits)) as u8
}

/// The policy of an episode's actions (weight, activation, weight, … as
/// the steps of [`StepStates`]). Weight levels run 2 ..= 9 when
/// `allow_fp32`, 9 keeping the layer fp32 whatever its activation action;
/// otherwise 2 ..= 8. Activations run 2 ..= 8.
///
/// # Panics
/// If `actions` is not two per layer (odd length).
pub fn policy_from_actions(actions: &[f32], allow_fp32: bool) -> QuantPolicy {
    assert!(actions.len().is_multiple_of(2), "two actions per layer, got {}", actions.len());
    let max_weight_level = if allow_fp32 { FP32_LEVEL } else { MAX_INT_BITS };
    let layers = actions
        .chunks_exact(2)
        .map(|pair| match action_to_bits(pair[0], MIN_BITS, max_weight_level) {
            FP32_LEVEL => Precision::Fp32,
            weight_bits => {
                Precision::Int { weight_bits, activation_bits: action_to_bits(pair[1], MIN_BITS, MAX_INT_BITS) }
            }
        })
        .collect();
    QuantPolicy { layers }
}

/// A policy after [`enforce_budget`].
#[derive(Debug, Clone, PartialEq)]
pub struct Enforced {
    pub policy: QuantPolicy,
    pub cost: f64,
    /// Whether `cost` fits the budget; if not, `policy` is the cheapest reached.
    pub met: bool,
    /// Changes applied.
    pub steps: usize,
}

/// Makes `policy` fit `budget` under `cost` (DESIGN §9's "take one bit off
/// layers from last to first, activations before weights", generalised to
/// measured costs, where fewer bits are not always cheaper: an int8 layer
/// may run slower than fp32, and sub-8-bit ints no faster than int8).
///
/// While over budget, layers are walked from last to first; each layer takes
/// the first of these changes that strictly lowers the total cost, and the
/// budget is checked again after every change:
/// 1. one activation bit off (`Int{w, a}` → `Int{w, a − 1}`, a > 2);
/// 2. one weight bit off (`Int{w, a}` → `Int{w − 1, a}`, w > 2);
/// 3. `Fp32` → `Int{8, 8}`;
/// 4. `Int{..}` → `Fp32`.
///
/// With the model size Σ weight_bits·params as cost (fp32 = 32 bits),
/// activation bits cost nothing, so this is one weight bit off per step
/// from the last layer to the first, pass after pass. A pass that changes
/// nothing means no change lowers the cost: the result is then `met = false`.
/// Every change lowers the cost strictly, so the walk ends as long as `cost`
/// is a function of the policy (a table, not a fresh noisy measurement).
pub fn enforce_budget(mut policy: QuantPolicy, budget: f64, mut cost: impl FnMut(&QuantPolicy) -> f64) -> Enforced {
    let mut current = cost(&policy);
    let mut steps = 0;
    while current > budget {
        let mut changed = false;
        for layer in (0..policy.layers.len()).rev() {
            let cheaper = cheaper_precisions(policy.layers[layer]).into_iter().flatten().find_map(|precision| {
                let mut candidate = policy.clone();
                candidate.layers[layer] = precision;
                let candidate_cost = cost(&candidate);
                (candidate_cost < current).then_some((candidate, candidate_cost))
            });
            if let Some((candidate, candidate_cost)) = cheaper {
                policy = candidate;
                current = candidate_cost;
                steps += 1;
                changed = true;
                if current <= budget {
                    break;
                }
            }
        }
        if !changed {
            return Enforced { policy, cost: current, met: false, steps };
        }
    }
    Enforced { policy, cost: current, met: true, steps }
}

/// The changes [`enforce_budget`] tries on one layer, in order.
fn cheaper_precisions(precision: Precision) -> [Option<Precision>; 3] {
    match precision {
        Precision::Fp32 => [Some(Precision::INT8), None, None],
        Precision::Int { weight_bits: w, activation_bits: a } => [
            (a > MIN_BITS).then_some(Precision::Int { weight_bits: w, activation_bits: a - 1 }),
            (w > MIN_BITS).then_some(Precision::Int { weight_bits: w - 1, activation_bits: a }),
            Some(Precision::Fp32),
        ],
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use edgeloop_space::Shape;

    fn int(weight_bits: u8, activation_bits: u8) -> Precision {
        Precision::Int { weight_bits, activation_bits }
    }

    fn shape(height: usize, channels: usize) -> Shape {
        Shape { height, width: height, channels }
    }

    /// Stem 3→16 3×3/2 at 32×32, MBConv 16→24 k5 e6 /2, MBConv 24→24 k3 e1, head 24→64, logits 64→10.
    fn layers() -> Vec<Layer> {
        let stem = Layer {
            kind: LayerKind::Stem,
            input: shape(32, 3),
            out_channels: 16,
            expand: 1,
            kernel: 3,
            stride: 2,
            idskip: false,
        };
        vec![
            stem,
            Layer::mbconv(shape(16, 16), 24, 5, 6, 2),
            Layer::mbconv(shape(8, 24), 24, 3, 1, 1),
            Layer::head_conv(shape(8, 24), 64),
            Layer::logits(shape(8, 64), 10),
        ]
    }

    #[test]
    fn params_per_layer_kind() {
        let params: Vec<usize> = layers().iter().map(layer_params).collect();
        // Stem 16·3·9; MBConv e6: 96·16 + 96·25 + 24·96; e1: no expand, 24·9 + 24·24;
        // head 64·24; logits 10·64 + 10.
        assert_eq!(params, vec![432, 1536 + 2400 + 2304, 216 + 576, 1536, 650]);
    }

    #[test]
    fn states_are_min_max_normalised_per_feature() {
        let layers = layers();
        let states = StepStates::new(&layers);
        assert_eq!(states.steps(), 10);
        let features = LayerFeatures::new(1, &layers[1]);
        assert_eq!(
            features,
            LayerFeatures {
                index: 1,
                c_in: 16,
                c_out: 24,
                kernel: 5,
                stride: 2,
                fmap: 256,
                params: 6240,
                depthwise: true
            }
        );
        // Layer 1's weight step. index 1 of 0..4; c_in 16 of 3..64; c_out 24 of 10..64;
        // kernel 5 of 1..5; stride 2 of 1..2; fmap 256 of 64..1024; params 6240 of 432..6240.
        let expected = [0.25, 13.0 / 61.0, 14.0 / 54.0, 1.0, 1.0, 192.0 / 960.0, 1.0, 1.0, 1.0, 0.7];
        let state = states.state(2, 0.7);
        assert_eq!(state.len(), STATE_DIM);
        for (got, want) in state.iter().zip(expected) {
            assert!((got - want).abs() < 1e-6, "{state:?}");
        }
        // Its activation step differs only in the flag and the previous action.
        assert_eq!(states.state(3, 0.0)[..8], state[..8]);
        assert_eq!(states.state(3, 0.0)[8..], [0.0, 0.0]);
        // A single layer: every feature but the flag is constant, hence 0.
        let single = StepStates::new(&layers[..1]);
        assert_eq!(single.state(0, 0.0), vec![0.0, 0.0, 0.0, 0.0, 0.0, 0.0, 0.0, 0.0, 1.0, 0.0]);
    }

    #[test]
    fn actions_map_to_bits_by_the_formula() {
        // [2, 8]: 7 levels, bits = round(7a + 1.5).
        assert_eq!(action_to_bits(0.0, 2, 8), 2); // round(1.5) = 2
        assert_eq!(action_to_bits(0.25, 2, 8), 3); // round(3.25) = 3
        assert_eq!(action_to_bits(0.5, 2, 8), 5); // round(5.0) = 5
        assert_eq!(action_to_bits(1.0, 2, 8), 8); // round(8.5) = 9, clamped
        // [2, 9]: 8 levels, bits = round(8a + 1.5); a = 0.5 is the tie 5.5 → 6.
        assert_eq!(action_to_bits(0.0, 2, 9), 2);
        assert_eq!(action_to_bits(0.5, 2, 9), 6);
        assert_eq!(action_to_bits(0.875, 2, 9), 9); // round(8.5) = 9
        assert_eq!(action_to_bits(1.0, 2, 9), 9); // round(9.5) = 10, clamped
    }

    #[test]
    fn policy_takes_weight_then_activation_per_layer() {
        let actions = [0.5, 0.25, 1.0, 0.0, 0.0, 1.0];
        assert_eq!(policy_from_actions(&actions, true).layers, vec![int(6, 3), Precision::Fp32, int(2, 8)]);
        assert_eq!(policy_from_actions(&actions, false).layers, vec![int(5, 3), int(8, 2), int(2, 8)]);
    }

    const PARAMS: [f64; 3] = [10.0, 20.0, 30.0];

    /// Model size: Σ weight bits · params, fp32 = 32 bits.
    fn size(policy: &QuantPolicy) -> f64 {
        policy
            .layers
            .iter()
            .zip(PARAMS)
            .map(|(p, params)| match p {
                Precision::Fp32 => 32.0 * params,
                Precision::Int { weight_bits, .. } => f64::from(*weight_bits) * params,
            })
            .sum()
    }

    /// A CPU where int layers run 9× slower than fp32 whatever their bits.
    fn latency(policy: &QuantPolicy) -> f64 {
        policy.layers.iter().map(|p| if *p == Precision::Fp32 { 1.0 } else { 9.0 }).sum()
    }

    fn policy(layers: &[Precision]) -> QuantPolicy {
        QuantPolicy { layers: layers.to_vec() }
    }

    #[test]
    fn size_budget_takes_weight_bits_from_last_to_first() {
        use Precision::Fp32;
        let start = policy(&[Precision::Fp32, int(8, 8), int(8, 8)]);
        assert_eq!(size(&start), 720.0);
        let mut evaluated = Vec::new();
        let enforced = enforce_budget(start.clone(), 400.0, |p| {
            evaluated.push(p.layers.clone());
            size(p)
        });
        let expected = vec![
            start.layers,
            vec![Fp32, int(8, 8), int(8, 7)],      // 720: not cheaper
            vec![Fp32, int(8, 8), int(7, 8)],      // 690: taken
            vec![Fp32, int(8, 7), int(7, 8)],      // 690: not cheaper
            vec![Fp32, int(7, 8), int(7, 8)],      // 670: taken
            vec![int(8, 8), int(7, 8), int(7, 8)], // 430: taken; end of the first pass
            vec![int(8, 8), int(7, 8), int(7, 7)], // 430: not cheaper
            vec![int(8, 8), int(7, 8), int(6, 8)], // 400: taken, fits
        ];
        assert_eq!(evaluated, expected);
        let last = policy(&expected[7]);
        assert_eq!(enforced, Enforced { policy: last, cost: 400.0, met: true, steps: 4 });
    }

    #[test]
    fn latency_budget_switches_int_layers_to_fp32_from_last() {
        let enforced = enforce_budget(QuantPolicy::uniform(3, Precision::INT8), 12.0, latency);
        // Fewer bits do not lower this cost, so no layer loses bits.
        let expected = policy(&[Precision::INT8, Precision::Fp32, Precision::Fp32]);
        assert_eq!(enforced, Enforced { policy: expected, cost: 11.0, met: true, steps: 2 });
    }

    #[test]
    fn impossible_budget_returns_the_cheapest_policy_reached() {
        let enforced = enforce_budget(QuantPolicy::uniform(3, Precision::INT8), 2.0, latency);
        assert_eq!(
            enforced,
            Enforced { policy: QuantPolicy::uniform(3, Precision::Fp32), cost: 3.0, met: false, steps: 3 }
        );
        // Size: every weight down to 2 bits (120), activations untouched.
        let enforced = enforce_budget(QuantPolicy::uniform(3, Precision::Fp32), 100.0, size);
        assert_eq!((enforced.policy, enforced.cost, enforced.met), (QuantPolicy::uniform(3, int(2, 8)), 120.0, false));
    }

    #[test]
    fn policy_within_budget_is_unchanged() {
        let start = policy(&[int(4, 8), Precision::Fp32, int(8, 2)]);
        let mut calls = 0;
        let enforced = enforce_budget(start.clone(), 27.0, |p| {
            calls += 1;
            latency(p)
        });
        assert_eq!(enforced, Enforced { policy: start, cost: 19.0, met: true, steps: 0 });
        assert_eq!(calls, 1);
    }
}
