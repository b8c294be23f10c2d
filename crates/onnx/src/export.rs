//! Architecture → ONNX (DESIGN §4): BatchNorm folded into the preceding conv,
//! ReLU6 as Clip(0, 6), depthwise as grouped Conv, shortcut as Add, head as
//! 1×1 Conv, GlobalAveragePool, Flatten, Gemm. Same arch and weights, same
//! bytes.

use edgeloop_space::{Arch, ArchError, Layer, LayerKind, Shape, Space};
use rand::rngs::SmallRng;
use rand::{Rng, SeedableRng};

use crate::{Dim, ElemType, GraphBuilder, pb};

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

/// A fully connected layer: weight [out, in], bias [out].
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

const INPUT: &str = "input";

fn nchw(shape: Shape) -> [Dim; 4] {
    [1.into(), shape.channels.into(), shape.height.into(), shape.width.into()]
}

/// Appends layers to a graph, drawing their weights from `weights`.
struct Emitter<'a> {
    g: &'a mut GraphBuilder,
    weights: &'a mut dyn Weights,
}

impl Emitter<'_> {
    /// Conv (+ folded BN), then ReLU6 when `relu6`.
    fn conv_bn(&mut self, x: &str, name: &str, shape: [usize; 4], stride: usize, group: usize, relu6: bool) -> String {
        let (weight, bias) = self.weights.conv_bn(name, shape).folded();
        let y = self.g.conv(x, (&shape, weight), bias, stride, group);
        if relu6 { self.g.relu6(&y) } else { y }
    }

    /// Appends `layer` reading `x`; returns its output value. `name`
    /// prefixes the layer's weight names.
    fn layer(&mut self, x: &str, layer: &Layer, name: &str) -> String {
        let c_in = layer.input.channels;
        let (k, out) = (layer.kernel, layer.out_channels);
        match layer.kind {
            LayerKind::Stem => self.conv_bn(x, name, [out, c_in, k, k], layer.stride, 1, true),
            LayerKind::HeadConv => self.conv_bn(x, name, [out, c_in, 1, 1], 1, 1, true),
            LayerKind::MbConv => {
                let mid = c_in * layer.expand;
                let expanded = if layer.expand == 1 {
                    x.to_string()
                } else {
                    self.conv_bn(x, &format!("{name}.expand"), [mid, c_in, 1, 1], 1, 1, true)
                };
                let dw = self.conv_bn(&expanded, &format!("{name}.depthwise"), [mid, 1, k, k], layer.stride, mid, true);
                let projected = self.conv_bn(&dw, &format!("{name}.project"), [out, mid, 1, 1], 1, 1, false);
                if layer.idskip { self.g.add(&projected, x) } else { projected }
            }
            LayerKind::Logits => {
                let pooled = self.g.global_average_pool(x);
                let flat = self.g.flatten(&pooled);
                let fc = self.weights.linear(name, out, c_in);
                self.g.gemm(&flat, (&[out, c_in], fc.weight), fc.bias)
            }
        }
    }
}

fn declare_output(g: &mut GraphBuilder, y: &str, layer: &Layer) {
    let out = layer.output();
    match layer.kind {
        LayerKind::Logits => g.output(y, ElemType::F32, &[1.into(), out.channels.into()]),
        _ => g.output(y, ElemType::F32, &nchw(out)),
    }
}

/// Names of the layers of `arch`, in order, matching [`Arch::layers`]. The
/// supernet uses the same names for its tensors.
pub fn layer_names(space: &Space, arch: &Arch) -> Vec<String> {
    let chosen = arch
        .ops
        .iter()
        .zip(&space.blocks)
        .filter(|(op, _)| **op != edgeloop_space::Op::Zero)
        .map(|(op, b)| format!("{}.{op}", b.name));
    ["stem".to_string(), "first_block".to_string()]
        .into_iter()
        .chain(chosen)
        .chain(["head".to_string(), "classifier".to_string()])
        .collect()
}

/// The whole network of `arch`: batch 1, NCHW float32 input `input`, logits out.
pub fn arch_model(space: &Space, arch: &Arch, weights: &mut dyn Weights) -> Result<pb::ModelProto, ArchError> {
    let layers = arch.layers(space)?;
    let names = layer_names(space, arch);
    let mut g = GraphBuilder::new(format!("{}-{}", space.name(), &arch.hash()[..12]));
    let mut x = g.input(INPUT, ElemType::F32, &nchw(layers[0].input));
    let mut emitter = Emitter { g: &mut g, weights };
    for (layer, name) in layers.iter().zip(&names) {
        x = emitter.layer(&x, layer, name);
    }
    declare_output(&mut g, &x, layers.last().expect("an arch has layers"));
    Ok(g.finish())
}

/// A model of `layer` alone, for its latency-table row.
pub fn layer_model(layer: &Layer, weights: &mut dyn Weights) -> pb::ModelProto {
    let mut g = GraphBuilder::new(layer.key());
    let x = g.input(INPUT, ElemType::F32, &nchw(layer.input));
    let y = Emitter { g: &mut g, weights }.layer(&x, layer, "layer");
    declare_output(&mut g, &y, layer);
    g.finish()
}

/// `y = x`: what one call of the runtime costs with (almost) no work, the
/// predictor's per-call overhead term.
pub fn identity_model(input: Shape) -> pb::ModelProto {
    let mut g = GraphBuilder::new("identity");
    let x = g.input(INPUT, ElemType::F32, &nchw(input));
    let y = g.node("Identity", &[&x], vec![]);
    g.output(&y, ElemType::F32, &nchw(input));
    g.finish()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{declared_inputs, encode};

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

    #[test]
    fn export_is_deterministic_and_shaped() {
        let space = Space::load("tiny", 1.0).unwrap();
        let arch = Arch::random(&space, 7);
        let a = encode(&arch_model(&space, &arch, &mut RandomWeights::new(1)).unwrap());
        let b = encode(&arch_model(&space, &arch, &mut RandomWeights::new(1)).unwrap());
        assert_eq!(a, b);
        let model = crate::decode(&a).unwrap();
        let inputs = declared_inputs(&model).unwrap();
        assert_eq!(inputs[0].dims, vec![Dim::Fixed(1), Dim::Fixed(3), Dim::Fixed(32), Dim::Fixed(32)]);
        for layer in space.all_layers() {
            let m = layer_model(&layer, &mut RandomWeights::new(0));
            assert!(m.graph.unwrap().node.len() >= 2, "{}", layer.key());
        }
    }
}
