//! Architecture → ONNX (DESIGN §4): BatchNorm folded into the preceding conv,
//! ReLU6 as Clip(0, 6), depthwise as grouped Conv, shortcut as Add, head as
//! 1×1 Conv, GlobalAveragePool, Flatten, Gemm. Same arch and weights, same
//! bytes. The emitter here also writes the integer layers of
//! [`crate::quant`]'s mixed-precision exports.

use edgeloop_onnx::{Dim, ElemType, GraphBuilder, pb};
use edgeloop_space::{Arch, ArchError, Layer, LayerKind, Shape, Space};

// Where weights come from: in `edgeloop-onnx`, whose sample networks draw
// the same seeded weights without a search space.
pub use edgeloop_onnx::weights::{BatchNorm, ConvBn, Linear, RandomWeights, Weights};

use crate::quant::{ActivationQuant, ActivationRanges, Precision, QuantError, QuantForm, QuantPolicy, Quantization};

/// The graph input's name, and its key among the activation ranges.
pub const INPUT: &str = "input";

fn nchw(shape: Shape) -> [Dim; 4] {
    [1.into(), shape.channels.into(), shape.height.into(), shape.width.into()]
}

/// An activation flowing between ops: f32, or uint8 with its quantization.
#[derive(Debug, Clone)]
pub(crate) struct Activation {
    /// The graph value.
    pub(crate) value: String,
    /// What the tensor is, as [`ActivationRanges`](crate::quant::ActivationRanges) names it.
    pub(crate) key: String,
    pub(crate) quant: Option<ActivationQuant>,
}

/// A conv (+ folded BN) of a layer, ReLU6 after it when `relu6`.
pub(crate) struct ConvSpec {
    /// The weight tensor's name, and the key of the conv's output activation.
    pub(crate) name: String,
    /// [out, in / group, k, k].
    pub(crate) shape: [usize; 4],
    pub(crate) stride: usize,
    pub(crate) group: usize,
    pub(crate) relu6: bool,
}

/// Appends layers to a graph, drawing their weights from `weights`; each
/// layer in the precision the caller gives it.
pub(crate) struct Emitter<'a> {
    pub(crate) g: &'a mut GraphBuilder,
    pub(crate) weights: &'a mut dyn Weights,
    pub(crate) quant: &'a Quantization<'a>,
    pub(crate) form: QuantForm,
    /// Every f32 activation emitted, as (key, value): what calibration
    /// observes in the fp32 model.
    pub(crate) float_activations: Vec<(String, String)>,
}

impl Emitter<'_> {
    pub(crate) fn float_activation(&mut self, value: String, key: String) -> Activation {
        self.float_activations.push((key.clone(), value.clone()));
        Activation { value, key, quant: None }
    }

    /// `x` as an f32 value, dequantized when it is not.
    pub(crate) fn float(&mut self, x: Activation) -> String {
        match x.quant {
            None => x.value,
            Some(q) => self.dequantize(&x.value, q),
        }
    }

    fn conv_bn(
        &mut self,
        x: Activation,
        conv: ConvSpec,
        at: Precision,
        out_bits: u8,
    ) -> Result<Activation, QuantError> {
        let folded = self.weights.conv_bn(&conv.name, conv.shape).folded();
        match at {
            Precision::Fp32 => {
                let x = self.float(x);
                let (weight, bias) = folded;
                let y = self.g.conv(&x, (&conv.shape, weight), bias, conv.stride, conv.group);
                let y = if conv.relu6 { self.g.relu6(&y) } else { y };
                Ok(self.float_activation(y, conv.name))
            }
            Precision::Int { weight_bits, activation_bits } => {
                self.int_conv(x, &conv, folded, weight_bits, activation_bits, out_bits)
            }
        }
    }

    /// Appends `layer` reading `x`; returns its output. `name` prefixes the
    /// layer's weight names; `out_bits` is what the next op reads when it is
    /// an integer one (8 otherwise: the most a uint8 activation holds).
    pub(crate) fn layer(
        &mut self,
        x: Activation,
        layer: &Layer,
        name: &str,
        at: Precision,
        out_bits: u8,
    ) -> Result<Activation, QuantError> {
        let c_in = layer.input.channels;
        let (k, out) = (layer.kernel, layer.out_channels);
        let conv = |suffix: &str, shape, stride, group, relu6| ConvSpec {
            name: format!("{name}{suffix}"),
            shape,
            stride,
            group,
            relu6,
        };
        // Convs inside a layer feed the layer's own integer convs.
        let inner_bits = at.activation_bits().unwrap_or(8);
        match layer.kind {
            LayerKind::Stem => self.conv_bn(x, conv("", [out, c_in, k, k], layer.stride, 1, true), at, out_bits),
            LayerKind::HeadConv => self.conv_bn(x, conv("", [out, c_in, 1, 1], 1, 1, true), at, out_bits),
            LayerKind::MbConv => {
                let mid = c_in * layer.expand;
                let expanded = if layer.expand == 1 {
                    x.clone()
                } else {
                    self.conv_bn(x.clone(), conv(".expand", [mid, c_in, 1, 1], 1, 1, true), at, inner_bits)?
                };
                let depthwise = conv(".depthwise", [mid, 1, k, k], layer.stride, mid, true);
                let dw = self.conv_bn(expanded, depthwise, at, inner_bits)?;
                // With a shortcut the projection feeds the (f32) Add, not the next layer.
                let project_bits = if layer.idskip { 8 } else { out_bits };
                let projected = self.conv_bn(dw, conv(".project", [out, mid, 1, 1], 1, 1, false), at, project_bits)?;
                if !layer.idskip {
                    return Ok(projected);
                }
                let (projected, x) = (self.float(projected), self.float(x));
                let sum = self.g.add(&projected, &x);
                Ok(self.float_activation(sum, format!("{name}.add")))
            }
            LayerKind::Logits => {
                let x = self.float(x);
                let pooled = self.g.global_average_pool(&x);
                let flat = self.g.flatten(&pooled);
                let features = self.float_activation(flat, format!("{name}.features"));
                let fc = self.weights.linear(name, out, c_in);
                match at {
                    Precision::Fp32 => {
                        let logits = self.g.gemm(&features.value, (&[out, c_in], fc.weight), fc.bias);
                        Ok(self.float_activation(logits, name.to_string()))
                    }
                    Precision::Int { weight_bits, activation_bits } => {
                        self.int_linear(features, name, fc, weight_bits, activation_bits)
                    }
                }
            }
        }
    }
}

/// The bits `layer` at precision `at` reads its input with, when its first
/// op is an integer one; 8 otherwise. Logits start with a float pool.
pub fn input_bits(layer: &Layer, at: Precision) -> u8 {
    match layer.kind {
        LayerKind::Logits => 8,
        _ => at.activation_bits().unwrap_or(8),
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

/// A model of `layers` (named `names`) under `quant`, with the f32
/// activations it computes as (key, value).
pub(crate) fn emit(
    graph_name: String,
    layers: &[Layer],
    names: &[String],
    weights: &mut dyn Weights,
    quant: &Quantization,
    form: QuantForm,
) -> Result<(pb::ModelProto, Vec<(String, String)>), QuantError> {
    quant.policy.check(names)?;
    let mut g = GraphBuilder::new(graph_name);
    let input = g.input(INPUT, ElemType::F32, &nchw(layers[0].input));
    let mut emitter = Emitter { g: &mut g, weights, quant, form, float_activations: Vec::new() };
    let mut x = emitter.float_activation(input, INPUT.into());
    let precisions = &quant.policy.layers;
    for (i, (layer, name)) in layers.iter().zip(names).enumerate() {
        let out_bits = layers.get(i + 1).map_or(8, |next| input_bits(next, precisions[i + 1]));
        emitter.g.set_scope(name);
        x = emitter.layer(x, layer, name, precisions[i], out_bits)?;
    }
    let y = emitter.float(x);
    let float_activations = emitter.float_activations;
    declare_output(&mut g, &y, layers.last().expect("an arch has layers"));
    Ok((g.finish(), float_activations))
}

/// `layers` all in fp32, with its activations as [`emit`] gives them. An
/// fp32 export reads no activation ranges, so it cannot fail (and the form
/// only matters to integer layers).
pub(crate) fn fp32_model(
    graph_name: String,
    layers: &[Layer],
    names: &[String],
    weights: &mut dyn Weights,
) -> (pb::ModelProto, Vec<(String, String)>) {
    let policy = QuantPolicy::uniform(layers.len(), Precision::Fp32);
    let no_ranges = ActivationRanges::new();
    let quant = Quantization::new(&policy, &no_ranges);
    emit(graph_name, layers, names, weights, &quant, QuantForm::Qdq).expect("an fp32 export reads no ranges")
}

pub(crate) fn graph_name(space: &Space, arch: &Arch) -> String {
    format!("{}-{}", space.name(), &arch.hash()[..12])
}

/// The whole network of `arch`: batch 1, NCHW float32 input `input`, logits out.
pub fn arch_model(space: &Space, arch: &Arch, weights: &mut dyn Weights) -> Result<pb::ModelProto, ArchError> {
    let layers = arch.layers(space)?;
    Ok(fp32_model(graph_name(space, arch), &layers, &layer_names(space, arch), weights).0)
}

/// A model of `layer` alone, for its latency-table row.
pub fn layer_model(layer: &Layer, weights: &mut dyn Weights) -> pb::ModelProto {
    fp32_model(layer.key(), &[*layer], &["layer".into()], weights).0
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
    use edgeloop_onnx::{declared_inputs, encode};

    #[test]
    fn export_is_deterministic_and_shaped() {
        let space = Space::load("tiny", 1.0).unwrap();
        let arch = Arch::random(&space, 7);
        let a = encode(&arch_model(&space, &arch, &mut RandomWeights::new(1)).unwrap());
        let b = encode(&arch_model(&space, &arch, &mut RandomWeights::new(1)).unwrap());
        assert_eq!(a, b);
        let model = edgeloop_onnx::decode(&a).unwrap();
        let inputs = declared_inputs(&model).unwrap();
        assert_eq!(inputs[0].dims, vec![Dim::Fixed(1), Dim::Fixed(3), Dim::Fixed(32), Dim::Fixed(32)]);
        for layer in space.all_layers() {
            let m = layer_model(&layer, &mut RandomWeights::new(0));
            assert!(m.graph.unwrap().node.len() >= 2, "{}", layer.key());
        }
    }
}
