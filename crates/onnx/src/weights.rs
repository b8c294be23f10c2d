//! Conv and linear weights as plain data, BatchNorm folding, and seeded
//! random weights: what the architecture exporter (`edgeloop-export`) and
//! the [sample networks](crate::samples) draw their tensors from.

use rand::rngs::SmallRng;
use rand::{Rng, SeedableRng};

/// Inference-time BatchNorm: running statistics and affine parameters.
#[derive(Debug, Clone, PartialEq)]
pub struct BatchNorm {
    pub gamma: Vec<f32>,
    pub beta: Vec<f32>,
    pub mean: Vec<f32>,
    pub var: Vec<f32>,
    pub eps: f32,
}

/// A bias-free conv followed by BatchNorm, as trained.
#[derive(Debug, Clone, PartialEq)]
pub struct ConvBn {
    /// [out, in / group, k, k], row-major.
    pub weight: Vec<f32>,
    pub shape: [usize; 4],
    pub bn: BatchNorm,
}

impl ConvBn {
    /// Folds BN into the conv: w' = w·γ/√(σ²+ε), b' = β − μ·γ/√(σ²+ε).
    pub fn folded(&self) -> (Vec<f32>, Vec<f32>) {
        let per_out = self.weight.len() / self.shape[0];
        let bn = &self.bn;
        let scale: Vec<f32> = (0..self.shape[0]).map(|o| bn.gamma[o] / (bn.var[o] + bn.eps).sqrt()).collect();
        let weight = self.weight.iter().enumerate().map(|(i, w)| w * scale[i / per_out]).collect();
        let bias = (0..self.shape[0]).map(|o| bn.beta[o] - bn.mean[o] * scale[o]).collect();
        (weight, bias)
    }
}

/// A fully connected layer: weight `[out, in]`, bias `[out]`.
#[derive(Debug, Clone, PartialEq)]
pub struct Linear {
    pub weight: Vec<f32>,
    pub bias: Vec<f32>,
}

/// Where weights come from: seeded random here, a trained supernet later.
/// `name` identifies the tensor (`stage2.block1.5x5_MBConv6.depthwise`).
pub trait Weights {
    fn conv_bn(&mut self, name: &str, shape: [usize; 4]) -> ConvBn;
    fn linear(&mut self, name: &str, out: usize, inp: usize) -> Linear;
}

/// Seeded He-uniform weights with BatchNorm statistics that normalise each
/// conv's output, so folding is exercised and activations keep the scale of
/// a trained network through deep stacks.
pub struct RandomWeights {
    rng: SmallRng,
}

impl RandomWeights {
    pub fn new(seed: u64) -> Self {
        RandomWeights { rng: SmallRng::seed_from_u64(seed) }
    }

    fn uniform(&mut self, n: usize, lo: f32, hi: f32) -> Vec<f32> {
        (0..n).map(|_| self.rng.random_range(lo..hi)).collect()
    }
}

impl Weights for RandomWeights {
    fn conv_bn(&mut self, _name: &str, shape: [usize; 4]) -> ConvBn {
        let fan_in = shape[1] * shape[2] * shape[3];
        let bound = (6.0 / fan_in as f32).sqrt();
        let weight = self.uniform(shape.iter().product(), -bound, bound);
        let c = shape[0];
        // Running variance = the variance this conv's output has for
        // unit-variance inputs (sum of w^2), as BN on real data would settle
        // to: normalised activations, like a trained network's.
        let var = weight.chunks(fan_in).map(|w| w.iter().map(|v| v * v).sum::<f32>()).collect();
        let bn = BatchNorm {
            gamma: self.uniform(c, 0.5, 1.5),
            beta: self.uniform(c, -0.1, 0.1),
            mean: self.uniform(c, -0.1, 0.1),
            var,
            eps: 1e-5,
        };
        ConvBn { weight, shape, bn }
    }

    fn linear(&mut self, _name: &str, out: usize, inp: usize) -> Linear {
        let bound = (6.0 / inp as f32).sqrt();
        Linear { weight: self.uniform(out * inp, -bound, bound), bias: self.uniform(out, -0.1, 0.1) }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn folding_matches_conv_then_bn() {
        let mut w = RandomWeights::new(5);
        let cb = w.conv_bn("x", [2, 1, 1, 1]);
        let (fw, fb) = cb.folded();
        for o in 0..2 {
            let x = 0.7f32;
            let conv = cb.weight[o] * x;
            let bn = &cb.bn;
            let expected = (conv - bn.mean[o]) / (bn.var[o] + bn.eps).sqrt() * bn.gamma[o] + bn.beta[o];
            assert!((fw[o] * x + fb[o] - expected).abs() < 1e-6);
        }
    }
}
