//! Quantization arithmetic: uint8 asymmetric activations, int8 symmetric
//! per-output-channel weights, int32 biases. Rounding is half to even, as
//! ONNX QuantizeLinear (and torch.round) rounds, so every form agrees.

/// Narrowest activation range quantized: a tensor that was all zeros in
/// calibration keeps a finite scale, and a ReLU6 output still saturates
/// inside [0, 6].
const MIN_RANGE: f32 = 1e-3;

/// Clip fractions of max |w| that [`mse_optimal_clip`] tries: 1 %, 2 %, … 100 %.
const CLIP_STEPS: u16 = 100;

/// A uint8 activation: real = scale · (code − zero_point), code ∈ 0 ..= 2^bits − 1.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct ActivationQuant {
    pub scale: f32,
    pub zero_point: u8,
    pub bits: u8,
}

impl ActivationQuant {
    /// Spans [min, max] with 2^bits − 1 steps. The range is widened to hold
    /// 0 so that zero (ReLU's floor, padding) is exactly a code.
    pub fn from_range(min: f32, max: f32, bits: u8) -> Self {
        let (lo, hi) = (min.min(0.0), max.max(0.0));
        let top = f32::from(max_activation_code(bits));
        let scale = (hi - lo).max(MIN_RANGE) / top;
        let zero_point = (-lo / scale).round_ties_even().clamp(0.0, top) as u8;
        ActivationQuant { scale, zero_point, bits }
    }

    /// The largest code, 2^bits − 1.
    pub fn max_code(self) -> u8 {
        max_activation_code(self.bits)
    }
}

fn max_activation_code(bits: u8) -> u8 {
    ((1u16 << bits) - 1) as u8
}

/// The largest weight code, 2^(bits − 1) − 1: symmetric, so an int8 weight
/// never uses −128 and a b-bit weight has 2^b − 1 codes.
fn max_weight_code(bits: u8) -> f32 {
    f32::from((1u8 << (bits - 1)) - 1)
}

/// The scale that maps `clip` to the largest code; 1 for an all-zero
/// channel (any scale codes it as zeros).
fn weight_scale(clip: f32, bits: u8) -> f32 {
    if clip > 0.0 && clip.is_finite() { clip / max_weight_code(bits) } else { 1.0 }
}

fn weight_code(w: f32, scale: f32, bits: u8) -> f32 {
    let top = max_weight_code(bits);
    (w / scale).round_ties_even().clamp(-top, top)
}

/// One layer's weights quantized per output channel: `w ≈ scales[o] · codes`.
#[derive(Debug, Clone, PartialEq)]
pub struct QuantizedWeights {
    /// Same layout as the float weights (output channel major).
    pub codes: Vec<i8>,
    pub scales: Vec<f32>,
}

/// Quantizes `weight` (`channels` output channels, each a contiguous row)
/// symmetrically, channel `o` clipped at `clip(o, row o)`:
/// scale = clip / (2^(b−1) − 1), code = clamp(round(w / scale), ±(2^(b−1) − 1)).
pub fn quantize_weights(
    weight: &[f32],
    channels: usize,
    bits: u8,
    clip: impl Fn(usize, &[f32]) -> f32,
) -> QuantizedWeights {
    let rows = weight.chunks(weight.len() / channels);
    let scales: Vec<f32> = rows.clone().enumerate().map(|(o, row)| weight_scale(clip(o, row), bits)).collect();
    let codes =
        rows.zip(&scales).flat_map(|(row, &s)| row.iter().map(move |&w| weight_code(w, s, bits) as i8)).collect();
    QuantizedWeights { codes, scales }
}

/// A bias as int32 in the accumulator's units `acc_scales` (x_scale ·
/// `w_scale[o]`), as QLinearConv and MatMulInteger + Add take it.
pub fn quantize_bias(bias: &[f32], acc_scales: &[f32]) -> Vec<i32> {
    bias.iter().zip(acc_scales).map(|(b, s)| (b / s).round_ties_even() as i32).collect()
}

pub fn max_abs(weights: &[f32]) -> f32 {
    weights.iter().fold(0.0, |m, w| m.max(w.abs()))
}

/// Σ (w − dequantize(quantize(w)))² with the clip at `clip`.
fn quantization_error(weights: &[f32], clip: f32, bits: u8) -> f32 {
    let scale = weight_scale(clip, bits);
    weights.iter().map(|&w| (w - scale * weight_code(w, scale, bits)).powi(2)).sum()
}

/// The clip, among 1 % … 100 % of max |w|, with the least squared
/// quantization error: at low bits, clipping a few outliers buys a finer
/// step for all the other weights (HAQ, DESIGN §9).
pub fn mse_optimal_clip(weights: &[f32], bits: u8) -> f32 {
    let max = max_abs(weights);
    (1..=CLIP_STEPS)
        .map(|i| max * f32::from(i) / f32::from(CLIP_STEPS))
        .map(|clip| (quantization_error(weights, clip, bits), clip))
        .min_by(|a, b| a.0.total_cmp(&b.0))
        .map_or(max, |(_, clip)| clip)
}

/// The exporter's default weight clip: [`mse_optimal_clip`] below 8 bits,
/// max |w| at 8, where the step is already fine and clipping only loses the
/// outliers. Arguments as [`Quantization::weight_clip`](super::Quantization) takes them.
pub fn default_weight_clip(_tensor: &str, _channel: usize, row: &[f32], bits: u8) -> f32 {
    if bits < 8 { mse_optimal_clip(row, bits) } else { max_abs(row) }
}

#[cfg(test)]
mod tests {
    use super::*;
    use rand::rngs::SmallRng;
    use rand::{Rng, SeedableRng};

    #[test]
    fn activation_ranges_by_hand() {
        // [−1, 3] at 8 bits: scale 4/255, zero at 1 / (4/255) = 63.75 → 64.
        let q = ActivationQuant::from_range(-1.0, 3.0, 8);
        assert_eq!((q.scale, q.zero_point, q.max_code()), (4.0 / 255.0, 64, 255));
        // ReLU6 at 4 bits: 15 steps of 0.4, zero at code 0.
        let q = ActivationQuant::from_range(0.0, 6.0, 4);
        assert_eq!((q.scale, q.zero_point, q.max_code()), (0.4, 0, 15));
        // An all-negative range is widened to hold 0: zero is the top code.
        let q = ActivationQuant::from_range(-2.0, -1.0, 8);
        assert_eq!((q.scale, q.zero_point), (2.0 / 255.0, 255));
        // A dead tensor keeps a finite scale.
        let q = ActivationQuant::from_range(0.0, 0.0, 8);
        assert_eq!((q.scale, q.zero_point), (MIN_RANGE / 255.0, 0));
    }

    #[test]
    fn weights_are_symmetric_per_channel_by_hand() {
        // Channel 0 at 4 bits: max 1.4, scale 0.2, codes ±7. Channel 1 is all zeros.
        let w = [0.25, -1.4, 0.52, 0.0, 0.0, 0.0];
        let q = quantize_weights(&w, 2, 4, |_, row| max_abs(row));
        assert_eq!(q.scales, vec![1.4 / 7.0, 1.0]);
        assert_eq!(q.codes, vec![1, -7, 3, 0, 0, 0]);
        // A clip below max |w| saturates at ±(2^(b−1) − 1); 2 bits are ternary.
        let q = quantize_weights(&[0.9, -0.2, -3.0], 1, 2, |_, _| 1.0);
        assert_eq!(q.codes, vec![1, 0, -1]);
        let q = quantize_weights(&[1.0, -1.0], 1, 8, |_, row| max_abs(row));
        assert_eq!(q.codes, vec![127, -127]);
    }

    #[test]
    fn bias_is_in_accumulator_units_by_hand() {
        // x_scale 0.02, w_scales 0.01 and 0.05: 0.1 / 0.0002 = 500, −0.2 / 0.001 = −200.
        assert_eq!(quantize_bias(&[0.1, -0.2], &[0.02 * 0.01, 0.02 * 0.05]), vec![500, -200]);
    }

    #[test]
    fn mse_optimal_clip_beats_max_at_low_bits() {
        // Bell-shaped weights, like a trained layer's: a sum of uniforms.
        let mut rng = SmallRng::seed_from_u64(3);
        let w: Vec<f32> = (0..576).map(|_| (0..4).map(|_| rng.random_range(-1.0f32..1.0)).sum()).collect();
        for bits in 2..=4 {
            let clip = mse_optimal_clip(&w, bits);
            let (best, at_max) = (quantization_error(&w, clip, bits), quantization_error(&w, max_abs(&w), bits));
            assert!(clip < max_abs(&w) && best < 0.9 * at_max, "{bits} bits: {best} vs {at_max} at max");
        }
        assert_eq!(default_weight_clip("w", 0, &w, 8), max_abs(&w));
    }
}
