//! Quantized export (DESIGN §4, §9): an architecture with a precision per
//! layer, fp32 or integer with 2–8-bit weights and activations.
//!
//! Two forms of the same arithmetic:
//! - [`QuantForm::QLinear`]: integer ops (QLinearConv; MatMulInteger + int32
//!   bias for the classifier), which tract and ONNX Runtime run in integer
//!   arithmetic;
//! - [`QuantForm::Qdq`]: float ops between QuantizeLinear → DequantizeLinear
//!   pairs, the fake-quant forward the integer model is checked against.
//!
//! Quantization points, the same in both forms: the input of every integer
//! conv / linear (uint8 at the layer's activation bits, asymmetric, from a
//! calibrated range), its weights (int8 symmetric per output channel) and
//! bias (int32 in units of x_scale · w_scale), and the output of every
//! integer conv (uint8 at the bits of the integer op that reads it, 8 when a
//! float op reads it). A ReLU6 conv's output range is cut to [0, 6] with
//! zero point 0, so the output saturation is the ReLU6. Residual adds run in
//! f32 (QLinearAdd is a com.microsoft op, not standard ONNX): a quantized
//! operand is dequantized, and the sum is quantized again by the integer op
//! that reads it. Pooling runs in f32 too (GlobalAveragePool is float-only).
//! The network input and logits stay f32, so callers see the fp32 model's
//! interface.
//!
//! Sub-8-bit tensors are stored in int8 / uint8 holding only the b-bit
//! codes: weights ±(2^(b−1) − 1), activations clamped by an integer Clip to
//! 0 ..= 2^b − 1, so that the model computes exactly what b-bit hardware
//! would. The model's `edgeloop.quant` metadata says so, with the policy.

mod calibrate;
mod math;

use std::collections::BTreeMap;

use edgeloop_onnx::{Attr, ElemType, conv_attrs, pb};
use edgeloop_space::{Arch, ArchError, Layer, Space};
use serde::{Deserialize, Serialize};

pub use calibrate::{calibrate, random_input};
pub use math::{
    ActivationQuant, QuantizedWeights, default_weight_clip, max_abs, mse_optimal_clip, quantize_bias, quantize_weights,
};

use crate::export::{Activation, ConvSpec, Emitter, Linear, RandomWeights, emit, graph_name, layer_names};

/// The metadata_props key of the quantization description.
pub const METADATA_KEY: &str = "edgeloop.quant";

/// A layer's arithmetic. JSON: `{"precision": "fp32"}` or
/// `{"precision": "int", "weight_bits": 4, "activation_bits": 8}`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(tag = "precision", rename_all = "snake_case")]
pub enum Precision {
    Fp32,
    /// Weights and input activations of `*_bits` (2 ..= 8) each.
    Int {
        weight_bits: u8,
        activation_bits: u8,
    },
}

impl Precision {
    pub const INT8: Precision = Precision::Int { weight_bits: 8, activation_bits: 8 };

    pub fn activation_bits(self) -> Option<u8> {
        match self {
            Precision::Fp32 => None,
            Precision::Int { activation_bits, .. } => Some(activation_bits),
        }
    }
}

/// One precision per layer of `arch.layers(space)`, in order.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct QuantPolicy {
    pub layers: Vec<Precision>,
}

impl QuantPolicy {
    pub fn uniform(layers: usize, precision: Precision) -> Self {
        QuantPolicy { layers: vec![precision; layers] }
    }

    /// Checks the policy against the layers it is for (`names`).
    pub fn check(&self, names: &[String]) -> Result<(), QuantError> {
        if self.layers.len() != names.len() {
            return Err(QuantError::PolicyLength { policy: self.layers.len(), layers: names.len() });
        }
        for (name, precision) in names.iter().zip(&self.layers) {
            if let Precision::Int { weight_bits, activation_bits } = *precision {
                for (what, bits) in [("weight", weight_bits), ("activation", activation_bits)] {
                    if !(2..=8).contains(&bits) {
                        return Err(QuantError::Bits { layer: name.clone(), what, bits });
                    }
                }
            }
        }
        Ok(())
    }
}

/// Which graph a quantized export writes.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub enum QuantForm {
    /// Integer ops: what runtimes execute in integer arithmetic.
    #[serde(rename = "qlinear")]
    QLinear,
    /// Float ops with QuantizeLinear → DequantizeLinear: the fake-quant reference.
    #[serde(rename = "qdq")]
    Qdq,
}

/// Observed [min, max] of activations, by key: `input`; a conv's weight
/// name for its output after ReLU6 (`stem`, `stage1.block0.3x3_MBConv6.expand`,
/// `….depthwise`, `….project`, `head`); `<layer>.add` for a residual sum;
/// `classifier.features` for the pooled features; `classifier` for the logits.
pub type ActivationRanges = BTreeMap<String, (f32, f32)>;

/// Chooses the clip of one output channel: (weight tensor name, output
/// channel, the channel's BN-folded weights, bits) → clip.
pub type WeightClip<'a> = &'a dyn Fn(&str, usize, &[f32], u8) -> f32;

/// How to quantize an architecture.
#[derive(Clone, Copy)]
pub struct Quantization<'a> {
    pub policy: &'a QuantPolicy,
    /// From [`calibrate`] on the fp32 model (or any superset of the keys the
    /// policy quantizes).
    pub ranges: &'a ActivationRanges,
    pub weight_clip: WeightClip<'a>,
}

impl<'a> Quantization<'a> {
    /// With [`default_weight_clip`].
    pub fn new(policy: &'a QuantPolicy, ranges: &'a ActivationRanges) -> Self {
        Quantization { policy, ranges, weight_clip: &default_weight_clip }
    }

    /// The `edgeloop.quant` metadata: form, per-layer policy, storage.
    fn describe(&self, names: &[String], form: QuantForm) -> String {
        #[derive(Serialize)]
        struct LayerPrecision<'n> {
            layer: &'n str,
            #[serde(flatten)]
            precision: Precision,
        }
        let layers: Vec<_> = names
            .iter()
            .zip(&self.policy.layers)
            .map(|(layer, &precision)| LayerPrecision { layer, precision })
            .collect();
        serde_json::json!({
            "form": form,
            "layers": layers,
            "weights": "int8, symmetric per output channel (zero point 0); b-bit weights use only the 2^b-1 codes -(2^(b-1)-1)..=2^(b-1)-1",
            "activations": "uint8, asymmetric per tensor from calibrated ranges; b-bit activations are clamped to the codes 0..=2^b-1",
        })
        .to_string()
    }
}

#[derive(Debug, thiserror::Error)]
pub enum QuantError {
    #[error(transparent)]
    Arch(#[from] ArchError),
    #[error("the policy has {policy} entries but the arch has {layers} layers")]
    PolicyLength { policy: usize, layers: usize },
    #[error("layer `{layer}`: {bits}-bit {what}s; bits must be in 2..=8")]
    Bits { layer: String, what: &'static str, bits: u8 },
    #[error("no calibrated range for activation `{0}`")]
    MissingRange(String),
    #[error("calibration in tract: {0}")]
    Tract(String),
}

/// The network of `arch` quantized by `quant`, in `form`: batch 1, NCHW
/// float32 input `input`, float32 logits out, as [`crate::export::arch_model`]
/// with the same weights (drawn in the same order).
pub fn quantized_arch_model(
    space: &Space,
    arch: &Arch,
    weights: &mut dyn crate::export::Weights,
    quant: &Quantization,
    form: QuantForm,
) -> Result<pb::ModelProto, QuantError> {
    let layers = arch.layers(space)?;
    let names = layer_names(space, arch);
    let (mut model, _) = emit(graph_name(space, arch), &layers, &names, weights, quant, form)?;
    model
        .metadata_props
        .push(pb::StringStringEntryProto { key: METADATA_KEY.into(), value: quant.describe(&names, form) });
    Ok(model)
}

/// Calibration inputs of [`quantized_layer_model`].
const LAYER_CALIBRATION_INPUTS: u64 = 4;

/// A model of `layer` alone at `precision` (QLinear form), for its row of a
/// per-precision cost table: seeded random weights, activation ranges
/// calibrated on seeded random inputs. What a layer costs does not depend
/// on its weights' values, as with the fp32 [`crate::export::layer_model`].
pub fn quantized_layer_model(layer: &Layer, precision: Precision, seed: u64) -> Result<pb::ModelProto, QuantError> {
    let names = ["layer".to_string()];
    let inputs: Vec<_> = (0..LAYER_CALIBRATION_INPUTS).map(|s| random_input(layer.input, seed ^ s)).collect();
    let ranges = calibrate::calibrate_layers(layer.key(), &[*layer], &names, &mut RandomWeights::new(seed), &inputs)?;
    let policy = QuantPolicy { layers: vec![precision] };
    let quant = Quantization::new(&policy, &ranges);
    let (model, _) = emit(layer.key(), &[*layer], &names, &mut RandomWeights::new(seed), &quant, QuantForm::QLinear)?;
    Ok(model)
}

/// The integer half of the [`Emitter`]: quantized values and ops.
impl Emitter<'_> {
    fn activation_quant(&self, key: &str, bits: u8, relu6: bool) -> Result<ActivationQuant, QuantError> {
        let &(min, max) = self.quant.ranges.get(key).ok_or_else(|| QuantError::MissingRange(key.into()))?;
        // Within [0, 6] with zero point 0, saturating to the codes is the ReLU6.
        let (min, max) = if relu6 { (min.max(0.0), max.min(6.0)) } else { (min, max) };
        Ok(ActivationQuant::from_range(min, max, bits))
    }

    /// Scalar scale and zero point initializers of `q`.
    fn scale_and_zero_point(&mut self, q: ActivationQuant) -> (String, String) {
        (self.g.constant("scale", &[], &[q.scale]), self.g.constant("zero_point", &[], &[q.zero_point]))
    }

    pub(crate) fn dequantize(&mut self, codes: &str, q: ActivationQuant) -> String {
        let (scale, zero_point) = self.scale_and_zero_point(q);
        self.g.node("DequantizeLinear", &[codes, &scale, &zero_point], vec![])
    }

    /// Clamps uint8 codes to the 2^bits codes of a sub-8-bit activation
    /// (at 8 bits the uint8 saturation already does).
    fn clamp_codes(&mut self, codes: String, q: ActivationQuant) -> String {
        if q.bits == 8 {
            return codes;
        }
        let lo = self.g.constant("code_min", &[], &[0u8]);
        let hi = self.g.constant("code_max", &[], &[q.max_code()]);
        self.g.node("Clip", &[&codes, &lo, &hi], vec![])
    }

    /// QuantizeLinear of the f32 value `x`, clamped to `q`'s codes.
    fn quantize(&mut self, x: &str, q: ActivationQuant) -> String {
        let (scale, zero_point) = self.scale_and_zero_point(q);
        let codes = self.g.node("QuantizeLinear", &[x, &scale, &zero_point], vec![]);
        self.clamp_codes(codes, q)
    }

    /// `x` as `bits`-bit codes: as produced when its producer already
    /// quantized it for this reader, else quantized here from its range.
    fn quantized(&mut self, x: Activation, bits: u8) -> Result<(String, ActivationQuant), QuantError> {
        if let Some(q) = x.quant
            && q.bits == bits
        {
            return Ok((x.value, q));
        }
        let q = self.activation_quant(&x.key, bits, false)?;
        let x = self.float(x);
        Ok((self.quantize(&x, q), q))
    }

    /// A conv's or linear's weights quantized at `bits`, with its bias in
    /// the units of the accumulator over `xq` inputs.
    fn int_params(&self, tensor: &str, (weight, bias): (&[f32], &[f32]), bits: u8, xq: ActivationQuant) -> IntParams {
        let weights =
            quantize_weights(weight, bias.len(), bits, |o, row| (self.quant.weight_clip)(tensor, o, row, bits));
        let acc_scales: Vec<f32> = weights.scales.iter().map(|s| xq.scale * s).collect();
        IntParams { bias: quantize_bias(bias, &acc_scales), weights, acc_scales }
    }

    /// Weight codes (`dims`), per-channel scales and (all-zero) zero points as initializers.
    fn weight_constants(&mut self, w: &QuantizedWeights, dims: &[usize]) -> [String; 3] {
        let zeros = vec![0i8; w.scales.len()];
        [
            self.g.constant("W", dims, &w.codes),
            self.g.constant("W_scale", &[w.scales.len()], &w.scales),
            self.g.constant("W_zero_point", &[zeros.len()], &zeros),
        ]
    }

    /// The QDQ form's float weight and bias: DequantizeLinear along the
    /// output channels of the codes.
    fn dequantized_params(&mut self, p: &IntParams, dims: &[usize]) -> (String, String) {
        let axis0 = || vec![Attr::Int("axis", 0)];
        let [w, w_scale, w_zero_point] = self.weight_constants(&p.weights, dims);
        let w = self.g.node("DequantizeLinear", &[&w, &w_scale, &w_zero_point], axis0());
        let b = self.g.constant("B", &[p.bias.len()], &p.bias);
        let b_scale = self.g.constant("B_scale", &[p.acc_scales.len()], &p.acc_scales);
        (w, self.g.node("DequantizeLinear", &[&b, &b_scale], axis0()))
    }

    /// Conv (+ folded BN; ReLU6 by saturation) on `activation_bits` inputs
    /// and `weight_bits` weights, with output codes of `out_bits`.
    pub(crate) fn int_conv(
        &mut self,
        x: Activation,
        conv: &ConvSpec,
        (weight, bias): (Vec<f32>, Vec<f32>),
        weight_bits: u8,
        activation_bits: u8,
        out_bits: u8,
    ) -> Result<Activation, QuantError> {
        let (x, xq) = self.quantized(x, activation_bits)?;
        let yq = self.activation_quant(&conv.name, out_bits, conv.relu6)?;
        let p = self.int_params(&conv.name, (&weight, &bias), weight_bits, xq);
        let attrs = conv_attrs(conv.shape[2], conv.stride, conv.group);
        let y = match self.form {
            QuantForm::QLinear => {
                let [w, w_scale, w_zero_point] = self.weight_constants(&p.weights, &conv.shape);
                let b = self.g.constant("B", &[p.bias.len()], &p.bias);
                let (x_scale, x_zero_point) = self.scale_and_zero_point(xq);
                let (y_scale, y_zero_point) = self.scale_and_zero_point(yq);
                let inputs = [&x, &x_scale, &x_zero_point, &w, &w_scale, &w_zero_point, &y_scale, &y_zero_point, &b];
                let y = self.g.node("QLinearConv", &inputs.map(String::as_str), attrs);
                self.clamp_codes(y, yq)
            }
            QuantForm::Qdq => {
                let x = self.dequantize(&x, xq);
                let (w, b) = self.dequantized_params(&p, &conv.shape);
                let y = self.g.node("Conv", &[&x, &w, &b], attrs);
                self.quantize(&y, yq)
            }
        };
        Ok(Activation { value: y, key: conv.name.clone(), quant: Some(yq) })
    }

    /// The classifier on `activation_bits` features and `weight_bits`
    /// weights; f32 logits. The integer form is MatMulInteger + int32 bias,
    /// scaled to f32: QLinearMatMul would requantize the logits to uint8
    /// before the bias could be added.
    pub(crate) fn int_linear(
        &mut self,
        features: Activation,
        name: &str,
        fc: Linear,
        weight_bits: u8,
        activation_bits: u8,
    ) -> Result<Activation, QuantError> {
        let (out, inputs) = (fc.bias.len(), fc.weight.len() / fc.bias.len());
        let (x, xq) = self.quantized(features, activation_bits)?;
        let p = self.int_params(name, (&fc.weight, &fc.bias), weight_bits, xq);
        let logits = match self.form {
            QuantForm::QLinear => {
                // MatMulInteger has no transB: the codes are stored [in, out].
                let codes = &p.weights.codes;
                let transposed: Vec<i8> = (0..inputs * out).map(|i| codes[(i % out) * inputs + i / out]).collect();
                let w = self.g.constant("W", &[inputs, out], &transposed);
                let x_zero_point = self.g.constant("x_zero_point", &[], &[xq.zero_point]);
                let acc = self.g.node("MatMulInteger", &[&x, &w, &x_zero_point], vec![]);
                let b = self.g.constant("B", &[out], &p.bias);
                let acc = self.g.add(&acc, &b);
                let acc = self.g.node("Cast", &[&acc], vec![Attr::Int("to", ElemType::F32.onnx_code().into())]);
                let acc_scales = self.g.constant("acc_scale", &[out], &p.acc_scales);
                self.g.node("Mul", &[&acc, &acc_scales], vec![])
            }
            QuantForm::Qdq => {
                let x = self.dequantize(&x, xq);
                let (w, b) = self.dequantized_params(&p, &[out, inputs]);
                self.g.node("Gemm", &[&x, &w, &b], vec![Attr::Int("transB", 1)])
            }
        };
        Ok(self.float_activation(logits, name.into()))
    }
}

/// A conv's or linear's integer parameters.
struct IntParams {
    weights: QuantizedWeights,
    /// int32, in units of `acc_scales`.
    bias: Vec<i32>,
    /// x_scale · w_scale per output channel: the accumulator's scale.
    acc_scales: Vec<f32>,
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::export::{RandomWeights, arch_model};
    use edgeloop_onnx::{decode, encode};
    use tract_onnx::prelude::*;

    struct Case {
        space: Space,
        arch: Arch,
        ranges: ActivationRanges,
    }

    impl Case {
        fn tiny(seed: u64) -> Self {
            let space = Space::load("tiny", 1.0).unwrap();
            let arch = Arch::random(&space, seed);
            let inputs: Vec<_> = (0..4).map(|s| random_input(space.prefix_layers()[0].input, s)).collect();
            let ranges = calibrate(&space, &arch, &mut RandomWeights::new(seed), &inputs).unwrap();
            Case { space, arch, ranges }
        }

        fn layers(&self) -> usize {
            self.arch.layers(&self.space).unwrap().len()
        }

        fn export(&self, policy: &QuantPolicy, form: QuantForm) -> Result<pb::ModelProto, QuantError> {
            let quant = Quantization::new(policy, &self.ranges);
            quantized_arch_model(&self.space, &self.arch, &mut RandomWeights::new(7), &quant, form)
        }
    }

    fn op_types(model: &pb::ModelProto) -> Vec<&str> {
        model.graph.as_ref().unwrap().node.iter().map(|n| n.op_type.as_str()).collect()
    }

    fn run_tract(model: &pb::ModelProto, input: &[f32]) -> Vec<f32> {
        let plan = tract_onnx::onnx().model_for_proto_model(model).and_then(|m| m.into_runnable()).unwrap();
        let y = plan.run(tvec![Tensor::from_shape(&[1, 3, 32, 32], input).unwrap().into()]).unwrap();
        y[0].to_plain_array_view::<f32>().unwrap().iter().copied().collect()
    }

    #[test]
    fn policy_json() {
        let policy =
            QuantPolicy { layers: vec![Precision::Fp32, Precision::Int { weight_bits: 4, activation_bits: 8 }] };
        let json = serde_json::to_string(&policy).unwrap();
        assert_eq!(
            json,
            r#"{"layers":[{"precision":"fp32"},{"precision":"int","weight_bits":4,"activation_bits":8}]}"#
        );
        assert_eq!(serde_json::from_str::<QuantPolicy>(&json).unwrap(), policy);
    }

    #[test]
    fn bad_policies_and_missing_ranges_are_errors() {
        let case = Case::tiny(1);
        let n = case.layers();
        let short = QuantPolicy::uniform(n - 1, Precision::INT8);
        assert!(matches!(case.export(&short, QuantForm::QLinear), Err(QuantError::PolicyLength { .. })));
        let mut nine = QuantPolicy::uniform(n, Precision::INT8);
        nine.layers[2] = Precision::Int { weight_bits: 9, activation_bits: 8 };
        assert!(matches!(case.export(&nine, QuantForm::QLinear), Err(QuantError::Bits { bits: 9, .. })));
        let int8 = QuantPolicy::uniform(n, Precision::INT8);
        let no_ranges = ActivationRanges::new();
        let quant = Quantization::new(&int8, &no_ranges);
        let err = quantized_arch_model(&case.space, &case.arch, &mut RandomWeights::new(7), &quant, QuantForm::Qdq);
        assert!(matches!(err, Err(QuantError::MissingRange(key)) if key == "input"));
    }

    #[test]
    fn an_fp32_policy_is_the_fp32_model_plus_metadata() {
        let case = Case::tiny(2);
        let mut model = case.export(&QuantPolicy::uniform(case.layers(), Precision::Fp32), QuantForm::QLinear).unwrap();
        let meta = model.metadata_props.pop().unwrap();
        assert_eq!(meta.key, METADATA_KEY);
        assert_eq!(encode(&model), encode(&arch_model(&case.space, &case.arch, &mut RandomWeights::new(7)).unwrap()));
    }

    #[test]
    fn metadata_names_each_layers_precision() {
        let case = Case::tiny(3);
        let policy = QuantPolicy::uniform(case.layers(), Precision::Int { weight_bits: 4, activation_bits: 6 });
        let model = decode(&encode(&case.export(&policy, QuantForm::Qdq).unwrap())).unwrap();
        let meta: serde_json::Value = serde_json::from_str(&model.metadata_props[0].value).unwrap();
        assert_eq!(meta["form"], "qdq");
        let names = layer_names(&case.space, &case.arch);
        assert_eq!(meta["layers"].as_array().unwrap().len(), names.len());
        assert_eq!(
            meta["layers"][0],
            serde_json::json!({"layer": "stem", "precision": "int", "weight_bits": 4, "activation_bits": 6})
        );
    }

    #[test]
    fn every_layer_of_a_space_exports_alone_in_integers_and_runs() {
        let space = Space::load("tiny", 1.0).unwrap();
        for layer in space.all_layers() {
            for precision in [Precision::INT8, Precision::Int { weight_bits: 4, activation_bits: 4 }] {
                let model = quantized_layer_model(&layer, precision, 3).unwrap();
                assert!(op_types(&model).iter().any(|op| op.ends_with("Integer") || op.starts_with("QLinear")));
                let plan = tract_onnx::onnx().model_for_proto_model(&model).and_then(|m| m.into_runnable()).unwrap();
                let s = layer.input;
                let x = Tensor::from_shape(&[1, s.channels, s.height, s.width], &random_input(s, 1)).unwrap();
                assert!(plan.run(tvec![x.into()]).is_ok(), "{}", layer.key());
            }
        }
    }

    /// Both forms compute the same function (tract; ONNX Runtime in the e2e
    /// tests), the integer one with integer ops only between the input
    /// QuantizeLinear and the logits.
    #[test]
    fn qlinear_and_qdq_forms_agree_in_tract() {
        let case = Case::tiny(3);
        let n = case.layers();
        for precision in [Precision::INT8, Precision::Int { weight_bits: 3, activation_bits: 4 }] {
            let policy = QuantPolicy::uniform(n, precision);
            let (qlinear, qdq) =
                (case.export(&policy, QuantForm::QLinear).unwrap(), case.export(&policy, QuantForm::Qdq).unwrap());
            let ops = op_types(&qlinear);
            assert!(ops.contains(&"QLinearConv") && ops.contains(&"MatMulInteger"), "{ops:?}");
            assert!(!ops.contains(&"Conv") && !ops.contains(&"Gemm"), "{ops:?}");
            assert!(!op_types(&qdq).contains(&"QLinearConv"));
            // Sub-8-bit activations are clamped to their codes.
            assert_eq!(ops.contains(&"Clip"), precision != Precision::INT8);
            let x = random_input(case.space.prefix_layers()[0].input, 42);
            let (a, b) = (run_tract(&qlinear, &x), run_tract(&qdq, &x));
            let diff = a.iter().zip(&b).map(|(a, b)| (a - b).abs()).fold(0.0, f32::max);
            // Up to a rounding tie (one code, one step) shrunk by pooling and
            // the classifier: within 2 steps of the logit range at these bits.
            let bits = precision.activation_bits().unwrap();
            let (lo, hi) = case.ranges["classifier"];
            let step = (hi - lo) / ((1u32 << bits) - 1) as f32;
            assert!(diff <= 2.0 * step, "{precision:?}: {a:?} vs {b:?}");
        }
    }
}
