//! Fake quantization in tch (DESIGN §9): a trained path of a supernet run
//! with per-layer precisions, computing exactly what
//! [`edgeloop_export::quant`]'s QDQ export computes (same quantization points,
//! same weight clips, same activation ranges), with straight-through
//! gradients so the path can be fine-tuned under its policy.
//!
//! BatchNorm is folded with its running statistics, as the export folds it:
//! fine-tuning trains the conv weights and BN's affine parameters through
//! the folding while the statistics stay as calibrated.

use std::collections::BTreeMap;

use edgeloop_export::export::{INPUT, RandomWeights, input_bits, layer_names};
use edgeloop_export::quant::{
    ActivationQuant, ActivationRanges, Precision, QuantError, QuantForm, QuantPolicy, Quantization,
    default_weight_clip, max_abs, quantized_arch_model,
};
use edgeloop_space::{Arch, Layer, LayerKind, Space};
use tch::nn::VarStore;
use tch::{Device, Kind, Tensor};

use crate::export::TrainedWeights;
use crate::layers::{ConvBn, pool};
use crate::supernet::{PathLayer, Supernet};

/// The largest weight code at `bits`, 2^(bits−1) − 1 (symmetric, as the export).
fn weight_top(bits: u8) -> f64 {
    f64::from((1u16 << (bits - 1)) - 1)
}

/// Straight-through rounding: the forward value of `rounded`, the gradient of `x`.
fn straight_through(x: &Tensor, rounded: &Tensor) -> Tensor {
    x + (rounded - x).detach()
}

/// `x` quantized to `q`'s codes and back: (clamp(round(x/s) + z, 0, 2^b−1) − z)·s.
/// The gradient is 1 inside the representable range and 0 outside (where
/// the codes saturate, e.g. a ReLU6's top).
pub fn fake_quant_activation(x: &Tensor, q: ActivationQuant) -> Tensor {
    let (s, z) = (f64::from(q.scale), f64::from(q.zero_point));
    let (lo, hi) = (-z * f64::from(q.scale), (f64::from(q.max_code()) - z) * f64::from(q.scale));
    let clamped = x.clamp(lo, hi);
    let codes = (x / s).round().clamp(-z, f64::from(q.max_code()) - z);
    straight_through(&clamped, &(codes * s))
}

/// Per-output-channel symmetric weights at `bits`, channel o clipped at
/// `clip_ratios[o]` · max |w_o|: the fake-quant weights and each channel's scale.
pub fn fake_quant_weight(weight: &Tensor, clip_ratios: &Tensor, bits: u8) -> (Tensor, Tensor) {
    let top = weight_top(bits);
    let channels = weight.size()[0];
    let rows = weight.reshape([channels, -1]);
    let clip = (rows.abs().amax([1i64].as_slice(), false) * clip_ratios).detach();
    let scale = (&clip / top).where_self(&clip.gt(0.0), &clip.ones_like());
    let per_row = |t: &Tensor| t.view([channels, 1]);
    let clamped = rows.maximum(&-per_row(&clip)).minimum(&per_row(&clip));
    let codes = (&rows / per_row(&scale)).round().clamp(-top, top);
    let quantized = straight_through(&clamped, &(codes * per_row(&scale)));
    (quantized.view_as(weight), scale)
}

/// A bias rounded to the accumulator's units `acc_scale` (int32 in the export).
fn fake_quant_bias(bias: &Tensor, acc_scale: &Tensor) -> Tensor {
    straight_through(bias, &((bias / acc_scale).round() * acc_scale))
}

/// An activation between layers: a float tensor, on the grid of `quant`
/// when its producer quantized it.
struct Activation {
    value: Tensor,
    /// Its name among the activation ranges.
    key: String,
    quant: Option<ActivationQuant>,
}

impl Activation {
    fn float(value: Tensor, key: String) -> Activation {
        Activation { value, key, quant: None }
    }
}

/// One path of a supernet under a [`QuantPolicy`].
pub struct FakeQuant {
    selection: Vec<usize>,
    arch: Arch,
    layers: Vec<Layer>,
    names: Vec<String>,
    policy: QuantPolicy,
    ranges: ActivationRanges,
    /// Per integer weight tensor, each output channel's clip as a fraction
    /// of its max |w|: chosen once on the weights as given (MSE-optimal
    /// below 8 bits), then kept while fine-tuning moves the weights.
    clip_ratios: BTreeMap<String, Tensor>,
}

impl FakeQuant {
    /// The path `selection` of `net` under `policy`, activations quantized
    /// from `ranges` (see [`edgeloop_export::quant::calibrate`]).
    pub fn new(
        net: &Supernet,
        selection: &[usize],
        policy: QuantPolicy,
        ranges: ActivationRanges,
    ) -> Result<FakeQuant, QuantError> {
        let arch = net.arch(selection);
        let layers = arch.layers(net.space())?;
        let names = layer_names(net.space(), &arch);
        policy.check(&names)?;
        let mut fq = FakeQuant {
            selection: selection.to_vec(),
            arch,
            layers,
            names,
            policy,
            ranges,
            clip_ratios: BTreeMap::new(),
        };
        fq.clip_ratios = fq.choose_clips(net);
        fq.check_ranges(net.space())?;
        Ok(fq)
    }

    pub fn policy(&self) -> &QuantPolicy {
        &self.policy
    }

    pub fn arch(&self) -> &Arch {
        &self.arch
    }

    pub fn selection(&self) -> &[usize] {
        &self.selection
    }

    /// The integer weight tensors of the path: (name, tensor to quantize, bits).
    fn int_weights(&self, net: &Supernet) -> Vec<(String, Tensor, u8)> {
        let mut out = Vec::new();
        for (layer, &precision) in net.path_layers(&self.selection).into_iter().zip(&self.policy.layers) {
            let Precision::Int { weight_bits, .. } = precision else { continue };
            let mut conv = |c: &ConvBn| out.push((c.name().to_string(), c.folded().0, weight_bits));
            match layer {
                PathLayer::Conv(c) => conv(c),
                PathLayer::MbConv(m) => {
                    m.expand.iter().for_each(&mut conv);
                    conv(&m.depthwise);
                    conv(&m.project);
                }
                PathLayer::Classifier(c) => out.push((c.name().to_string(), c.weight().shallow_clone(), weight_bits)),
            }
        }
        out
    }

    fn choose_clips(&self, net: &Supernet) -> BTreeMap<String, Tensor> {
        tch::no_grad(|| {
            self.int_weights(net)
                .into_iter()
                .map(|(name, weight, bits)| {
                    let device = weight.device();
                    let channels = weight.size()[0];
                    let flat = weight.detach().to_device(Device::Cpu).to_kind(Kind::Float).reshape([channels, -1]);
                    let values = Vec::<f32>::try_from(&flat.flatten(0, -1)).expect("f32 weights");
                    let ratios: Vec<f32> = values
                        .chunks(values.len() / channels as usize)
                        .enumerate()
                        .map(|(o, row)| {
                            let max = max_abs(row);
                            if max > 0.0 { default_weight_clip(&name, o, row, bits) / max } else { 1.0 }
                        })
                        .collect();
                    (name, Tensor::from_slice(&ratios).to_device(device))
                })
                .collect()
        })
    }

    /// Every range the forward reads is there (a missing one is an error
    /// now, not a panic inside a training step): an export of the policy
    /// reads the same ones.
    fn check_ranges(&self, space: &Space) -> Result<(), QuantError> {
        // Any clip will do here (the weights are throwaway): skip the MSE search.
        let max_clip = |_: &str, _: usize, row: &[f32], _: u8| max_abs(row);
        let quant = Quantization { policy: &self.policy, ranges: &self.ranges, weight_clip: &max_clip };
        quantized_arch_model(space, &self.arch, &mut RandomWeights::new(0), &quant, QuantForm::Qdq).map(drop)
    }

    /// ONNX bytes of the path with the weights of `vs`, quantized as this
    /// forward quantizes it, in `form`.
    pub fn export(&self, vs: &VarStore, space: &Space, form: QuantForm) -> Result<Vec<u8>, QuantError> {
        // Ratios read once on the CPU: the exporter asks per channel.
        let ratios: BTreeMap<&str, Vec<f32>> = self
            .clip_ratios
            .iter()
            .map(|(k, r)| (k.as_str(), Vec::<f32>::try_from(&r.to_device(Device::Cpu)).expect("f32 ratios")))
            .collect();
        let clip = |tensor: &str, channel: usize, row: &[f32], _bits: u8| {
            ratios.get(tensor).map_or(1.0, |r| r[channel]) * max_abs(row)
        };
        let quant = Quantization { policy: &self.policy, ranges: &self.ranges, weight_clip: &clip };
        let model = quantized_arch_model(space, &self.arch, &mut TrainedWeights::new(vs), &quant, form)?;
        Ok(edgeloop_onnx::encode(&model))
    }

    fn activation_quant(&self, key: &str, bits: u8, relu6: bool) -> ActivationQuant {
        let (min, max) = self.ranges[key];
        let (min, max) = if relu6 { (min.max(0.0), max.min(6.0)) } else { (min, max) };
        ActivationQuant::from_range(min, max, bits)
    }

    /// `x` on the grid of a `bits`-bit activation: as it is when its
    /// producer quantized it so, else quantized from its range.
    fn quantized(&self, x: &Activation, bits: u8) -> (Tensor, ActivationQuant) {
        match x.quant {
            Some(q) if q.bits == bits => (x.value.shallow_clone(), q),
            _ => {
                let q = self.activation_quant(&x.key, bits, false);
                (fake_quant_activation(&x.value, q), q)
            }
        }
    }

    fn conv(&self, x: &Activation, conv: &ConvBn, relu6: bool, at: Precision, out_bits: u8) -> Activation {
        let (weight, bias) = conv.folded();
        let key = conv.name().to_string();
        match at {
            Precision::Fp32 => {
                let y = conv.conv_with(&x.value, &weight, &bias);
                Activation::float(if relu6 { y.relu6() } else { y }, key)
            }
            Precision::Int { weight_bits, activation_bits } => {
                let (x, xq) = self.quantized(x, activation_bits);
                let (weight, scales) = fake_quant_weight(&weight, &self.clip_ratios[&key], weight_bits);
                let bias = fake_quant_bias(&bias, &(scales * f64::from(xq.scale)));
                let yq = self.activation_quant(&key, out_bits, relu6);
                let y = fake_quant_activation(&conv.conv_with(&x, &weight, &bias), yq);
                Activation { value: y, key, quant: Some(yq) }
            }
        }
    }

    /// Logits of the path on `x` (NCHW), every layer in its precision.
    pub fn forward(&self, net: &Supernet, x: &Tensor) -> Tensor {
        let path = net.path_layers(&self.selection);
        let precisions = &self.policy.layers;
        let mut x = Activation::float(x.shallow_clone(), INPUT.into());
        for (i, (layer, net_layer)) in self.layers.iter().zip(path).enumerate() {
            let at = precisions[i];
            let out_bits = self.layers.get(i + 1).map_or(8, |next| input_bits(next, precisions[i + 1]));
            let name = &self.names[i];
            x = match net_layer {
                PathLayer::Conv(c) => self.conv(&x, c, true, at, out_bits),
                PathLayer::MbConv(m) => {
                    let inner = at.activation_bits().unwrap_or(8);
                    let expanded = match &m.expand {
                        Some(e) => self.conv(&x, e, true, at, inner),
                        None => Activation { value: x.value.shallow_clone(), key: x.key.clone(), quant: x.quant },
                    };
                    let dw = self.conv(&expanded, &m.depthwise, true, at, inner);
                    let project_bits = if layer.idskip { 8 } else { out_bits };
                    let projected = self.conv(&dw, &m.project, false, at, project_bits);
                    if layer.idskip {
                        Activation::float(projected.value + &x.value, format!("{name}.add"))
                    } else {
                        projected
                    }
                }
                PathLayer::Classifier(c) => {
                    debug_assert_eq!(layer.kind, LayerKind::Logits);
                    let features = Activation::float(pool(&x.value), format!("{name}.features"));
                    let logits = match at {
                        Precision::Fp32 => features.value.linear(c.weight(), Some(c.bias())),
                        Precision::Int { weight_bits, activation_bits } => {
                            let (f, fq) = self.quantized(&features, activation_bits);
                            let (w, scales) = fake_quant_weight(c.weight(), &self.clip_ratios[name], weight_bits);
                            let b = fake_quant_bias(c.bias(), &(scales * f64::from(fq.scale)));
                            f.linear(&w, Some(&b))
                        }
                    };
                    Activation::float(logits, name.clone())
                }
            };
        }
        x.value
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::layers::BnMode;
    use edgeloop_export::quant::{calibrate, random_input};

    fn values(t: &Tensor) -> Vec<f32> {
        Vec::<f32>::try_from(&t.flatten(0, -1)).unwrap()
    }

    #[test]
    fn activations_by_hand() {
        // ReLU6 at 4 bits: 15 steps of 0.4, zero point 0.
        let q = ActivationQuant::from_range(0.0, 6.0, 4);
        let x = Tensor::from_slice(&[-1.0f32, 0.19, 0.21, 5.9, 7.0]).set_requires_grad(true);
        let y = fake_quant_activation(&x, q);
        let expected = [0.0, 0.0, 0.4, 6.0, 6.0];
        values(&y).iter().zip(expected).for_each(|(a, b)| assert!((a - b).abs() < 1e-6, "{a} vs {b}"));
        y.sum(Kind::Float).backward();
        // Straight through inside the range, nothing where the codes saturate.
        assert_eq!(values(&x.grad()), vec![0.0, 1.0, 1.0, 1.0, 0.0]);
    }

    #[test]
    fn weights_by_hand() {
        // As the exporter's test: channel 0 at 4 bits has scale 1.4 / 7 = 0.2; channel 1 is all zeros.
        let w = Tensor::from_slice(&[0.25f32, -1.4, 0.52, 0.0, 0.0, 0.0]).reshape([2, 3, 1, 1]);
        let (q, scales) = fake_quant_weight(&w, &Tensor::from_slice(&[1.0f32, 1.0]), 4);
        let expected = [0.2, -1.4, 0.6, 0.0, 0.0, 0.0];
        values(&q).iter().zip(expected).for_each(|(a, b)| assert!((a - b).abs() < 1e-6, "{a} vs {b}"));
        assert_eq!(values(&scales), vec![1.4 / 7.0, 1.0]);
        // A clip at half of max |w| saturates the outlier at ±7 codes of 0.1.
        let (q, _) = fake_quant_weight(&w, &Tensor::from_slice(&[0.5f32, 1.0]), 4);
        assert!((values(&q)[1] + 0.7).abs() < 1e-6);
    }

    /// A tiny path with random weights and its calibrated ranges.
    fn tiny() -> (VarStore, Supernet, Vec<usize>, ActivationRanges, Tensor) {
        tch::manual_seed(0);
        let space = Space::load("tiny", 1.0).unwrap();
        let arch = Arch::random(&space, 5);
        let vs = VarStore::new(Device::Cpu);
        let net = Supernet::for_arch(&vs.root(), &space, &arch).unwrap();
        let shape = space.prefix_layers()[0].input;
        let inputs: Vec<_> = (0..8).map(|s| random_input(shape, s)).collect();
        let ranges = calibrate(&space, &arch, &mut TrainedWeights::new(&vs), &inputs).unwrap();
        let x = Tensor::from_slice(&inputs.concat()).reshape([8, 3, 32, 32]);
        (vs, net, vec![0; space.blocks.len()], ranges, x)
    }

    #[test]
    fn error_grows_as_bits_fall() {
        let (_vs, net, selection, ranges, x) = tiny();
        let layers = net.path_layers(&selection).len();
        let fp32 = tch::no_grad(|| net.forward(&x, &selection, BnMode::Eval));
        let range = (fp32.max() - fp32.min()).double_value(&[]);
        let error = |bits: u8| {
            let policy = QuantPolicy::uniform(layers, Precision::Int { weight_bits: bits, activation_bits: bits });
            let fq = FakeQuant::new(&net, &selection, policy, ranges.clone()).unwrap();
            let y = tch::no_grad(|| fq.forward(&net, &x));
            (y - &fp32).abs().max().double_value(&[]) / range
        };
        let errors: Vec<f64> = [8, 6, 4, 2].into_iter().map(error).collect();
        assert!(errors[0] < 0.03, "int8 is {:.4} of the logit range off fp32", errors[0]);
        assert!(errors.windows(2).all(|w| w[0] < w[1]), "{errors:?}");
        // An all-fp32 policy is the float network.
        let fq = FakeQuant::new(&net, &selection, QuantPolicy::uniform(layers, Precision::Fp32), ranges).unwrap();
        let y = tch::no_grad(|| fq.forward(&net, &x));
        assert!((y - fp32).abs().max().double_value(&[]) < 1e-4);
    }

    #[test]
    fn gradients_reach_every_weight_through_the_quantizers() {
        let (_vs, net, selection, ranges, x) = tiny();
        let layers = net.path_layers(&selection).len();
        let policy = QuantPolicy::uniform(layers, Precision::Int { weight_bits: 4, activation_bits: 4 });
        let fq = FakeQuant::new(&net, &selection, policy, ranges).unwrap();
        let labels = Tensor::from_slice(&[0i64, 1, 2, 3, 4, 5, 6, 7]);
        fq.forward(&net, &x).cross_entropy_for_logits(&labels).backward();
        for p in net.params(&selection) {
            let grad = p.tensor.grad();
            assert!(
                grad.defined() && grad.abs().sum(Kind::Float).double_value(&[]) > 0.0,
                "{} has no gradient",
                p.name
            );
        }
    }

    #[test]
    fn missing_ranges_are_an_error_up_front() {
        let (_vs, net, selection, mut ranges, _) = tiny();
        ranges.remove("head");
        let layers = net.path_layers(&selection).len();
        let err = FakeQuant::new(&net, &selection, QuantPolicy::uniform(layers, Precision::INT8), ranges);
        assert!(matches!(err, Err(QuantError::MissingRange(key)) if key == "head"));
    }
}
