//! Finding out which precisions a runtime executes natively here: each
//! candidate is a small conv in that arithmetic with an f32 interface, and
//! each runtime judges from its own load of it whether it ran in that
//! arithmetic or was quietly converted to another.

use std::collections::BTreeMap;

use edgeloop_onnx::pb::tensor_proto::DataType;
use edgeloop_onnx::{Attr, DeclaredInput, Dim, ElemType, GraphBuilder, encode};

use super::RuntimeError;
use crate::inputs::{InputTensor, random_inputs};

/// A precision the agent probes for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Precision {
    Fp32,
    Int8,
    Fp16,
}

impl Precision {
    pub const ALL: [Precision; 3] = [Precision::Fp32, Precision::Int8, Precision::Fp16];

    /// The name `/v1/info` lists.
    pub fn name(self) -> &'static str {
        match self {
            Precision::Fp32 => "fp32",
            Precision::Int8 => "int8",
            Precision::Fp16 => "fp16",
        }
    }
}

/// A conv in one precision, ready to load.
pub struct Probe {
    pub precision: Precision,
    pub model: Vec<u8>,
    pub inputs: Vec<InputTensor>,
}

const CHANNELS: usize = 16;
const SIDE: usize = 8;
const KERNEL: usize = 3;

impl Probe {
    /// A 3×3 conv, 16 → 16 channels on an 8×8 map: fp32 as Conv; int8 as
    /// QLinearConv (uint8 activations, int8 per-channel weights, int32
    /// bias) between QuantizeLinear and DequantizeLinear; fp16 as Conv on
    /// float16 input, weights and bias, cast from and back to f32. Every
    /// probe takes and gives f32, as the input generator feeds f32.
    pub fn new(precision: Precision) -> Self {
        let mut g = GraphBuilder::new(format!("precision_probe_{}", precision.name()));
        let dims = [1, CHANNELS, SIDE, SIDE].map(Dim::Fixed);
        let x = g.input("x", ElemType::F32, &dims);
        let w_dims = [CHANNELS, CHANNELS, KERNEL, KERNEL];
        // Small weights of both signs, exact in int8 at one scale; the
        // values matter to no one.
        let w_codes: Vec<i8> = (0..w_dims.iter().product::<usize>()).map(|i| (i % 13) as i8 - 6).collect();
        let w_scale = 1.0 / 48.0;
        let bias: Vec<f32> = (0..CHANNELS).map(|i| i as f32 / 64.0).collect();
        let float_params = |g: &mut GraphBuilder| {
            let weight: Vec<f32> = w_codes.iter().map(|&c| f32::from(c) * w_scale).collect();
            (g.constant("W", &w_dims, &weight), g.constant("B", &[CHANNELS], &bias))
        };
        let pad = (KERNEL / 2) as i64;
        let attrs = || vec![Attr::Ints("kernel_shape", vec![KERNEL as i64; 2]), Attr::Ints("pads", vec![pad; 4])];
        let y = match precision {
            Precision::Fp32 => {
                let (w, b) = float_params(&mut g);
                g.node("Conv", &[&x, &w, &b], attrs())
            }
            Precision::Fp16 => {
                let cast = |g: &mut GraphBuilder, value: &str, to: DataType| {
                    g.node("Cast", &[value], vec![Attr::Int("to", to as i64)])
                };
                let (w, b) = float_params(&mut g);
                let [x, w, b] = [&x, &w, &b].map(|v| cast(&mut g, v, DataType::Float16));
                let y = g.node("Conv", &[&x, &w, &b], attrs());
                cast(&mut g, &y, DataType::Float)
            }
            Precision::Int8 => {
                // Inputs span [-1, 1) and outputs about ±4: uint8 codes
                // with zero point 128 for both.
                let x_scale = 2.0 / 255.0;
                let acc_scale = x_scale * w_scale;
                let b_codes: Vec<i32> = bias.iter().map(|b| (b / acc_scale).round() as i32).collect();
                let x_scale = g.constant("x_scale", &[], &[x_scale]);
                let zero_point = g.constant("zero_point", &[], &[128u8]);
                let y_scale = g.constant("y_scale", &[], &[8.0f32 / 255.0]);
                let w = g.constant("W", &w_dims, &w_codes);
                let w_scale = g.constant("W_scale", &[CHANNELS], &[w_scale; CHANNELS]);
                let w_zero_point = g.constant("W_zero_point", &[CHANNELS], &[0i8; CHANNELS]);
                let b = g.constant("B", &[CHANNELS], &b_codes);
                let x = g.node("QuantizeLinear", &[&x, &x_scale, &zero_point], vec![]);
                let inputs = [&x, &x_scale, &zero_point, &w, &w_scale, &w_zero_point, &y_scale, &zero_point, &b];
                let y = g.node("QLinearConv", &inputs.map(String::as_str), attrs());
                g.node("DequantizeLinear", &[&y, &y_scale, &zero_point], vec![])
            }
        };
        g.output(&y, ElemType::F32, &dims);
        let declared = DeclaredInput { name: x, elem_type: ElemType::F32, dims: dims.to_vec() };
        let inputs = random_inputs(&[(declared, vec![1, CHANNELS, SIDE, SIDE])], 1);
        Probe { precision, model: encode(&g.finish()), inputs }
    }
}

/// What probing found on this machine.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct PrecisionSupport {
    /// The precisions the runtime executes natively, in [`Precision::ALL`]'s order.
    pub native: Vec<String>,
    /// Why each other precision is not native here.
    pub unavailable: BTreeMap<String, String>,
}

impl PrecisionSupport {
    /// Loads and runs the probe of every precision with `check`, which
    /// answers why the runtime did not execute it natively, if it did not.
    pub fn probe(check: impl Fn(&Probe) -> Result<(), RuntimeError>) -> Self {
        let mut support = PrecisionSupport::default();
        for precision in Precision::ALL {
            match check(&Probe::new(precision)) {
                Ok(()) => support.native.push(precision.name().into()),
                Err(RuntimeError(reason)) => {
                    support.unavailable.insert(precision.name().into(), reason);
                }
            }
        }
        support
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn probes_are_the_conv_in_each_arithmetic_with_an_f32_interface() {
        for precision in Precision::ALL {
            let probe = Probe::new(precision);
            let proto = edgeloop_onnx::decode(&probe.model).unwrap();
            let graph = proto.graph.as_ref().unwrap();
            let ops: Vec<&str> = graph.node.iter().map(|n| n.op_type.as_str()).collect();
            let expected: &[&str] = match precision {
                Precision::Fp32 => &["Conv"],
                Precision::Int8 => &["QuantizeLinear", "QLinearConv", "DequantizeLinear"],
                Precision::Fp16 => &["Cast", "Cast", "Cast", "Conv", "Cast"],
            };
            assert_eq!(ops, expected, "{precision:?}");
            let declared = edgeloop_onnx::declared_inputs(&proto).unwrap();
            assert_eq!(declared.len(), 1);
            assert_eq!(declared[0].elem_type, ElemType::F32);
            assert_eq!(probe.inputs.len(), 1);
            assert_eq!(probe.inputs[0].shape, [1, CHANNELS, SIDE, SIDE]);
        }
    }

    #[test]
    fn probing_sorts_precisions_into_native_and_why_not() {
        let support = PrecisionSupport::probe(|probe| match probe.precision {
            Precision::Int8 => Err(RuntimeError("no integer kernel".into())),
            _ => Ok(()),
        });
        assert_eq!(support.native, ["fp32", "fp16"]);
        assert_eq!(support.unavailable, BTreeMap::from([("int8".into(), "no integer kernel".into())]));
    }
}
