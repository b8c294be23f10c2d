//! tract (pure Rust) runtime.

use std::collections::BTreeMap;
use std::num::NonZeroUsize;
use std::sync::{Arc, OnceLock};
use std::time::{Duration, Instant};

use edgeloop_api::OpTime;
use tract_onnx::prelude::*;
use tract_onnx::tract_core::ops::konst::Const;
use tract_onnx::tract_core::ops::matmul::optimized::OptMatMul;
use tract_onnx::tract_core::ops::source::TypedSource;
use tract_onnx::tract_core::plan;
use tract_onnx::tract_core::runtime::RunOptions;
use tract_onnx::tract_core::tract_linalg::mmm::MatMatMul;
use tract_onnx::tract_core::tract_linalg::multithread::Executor;

use super::{
    LoadOptions, LoadedModel, NodeTotal, OutputTensor, Precision, PrecisionSupport, Probe, Runtime, RuntimeError,
    op_times,
};
use crate::inputs::{InputData, InputTensor};

pub struct TractRuntime;

/// tract's version, read from Cargo.lock by build.rs.
const TRACT_VERSION: &str = env!("EDGELOOP_TRACT_VERSION");

fn runtime_error(e: impl std::fmt::Display) -> RuntimeError {
    RuntimeError(format!("{e:#}"))
}

impl Runtime for TractRuntime {
    fn name(&self) -> &'static str {
        "tract"
    }

    fn version(&self) -> String {
        TRACT_VERSION.into()
    }

    fn precisions(&self) -> Vec<String> {
        precision_support().native.clone()
    }

    fn precisions_unavailable(&self) -> BTreeMap<String, String> {
        precision_support().unavailable.clone()
    }

    fn load(
        &self,
        model: &[u8],
        inputs: &[InputTensor],
        options: LoadOptions,
    ) -> Result<Box<dyn LoadedModel>, RuntimeError> {
        let executor =
            if options.threads > 1 { Executor::multithread(options.threads) } else { Executor::SingleThread };
        let run_options = RunOptions { executor: Some(executor), ..Default::default() };
        let plan = optimized(model, inputs)?.into_runnable_with_options(&run_options).map_err(runtime_error)?;
        let state = plan.spawn().map_err(runtime_error)?;
        let inputs = inputs.iter().map(to_tvalue).collect::<Result<_, _>>()?;
        Ok(Box::new(TractModel { state, inputs }))
    }
}

/// `model` parsed and optimised for exactly these inputs.
fn optimized(model: &[u8], inputs: &[InputTensor]) -> Result<TypedModel, RuntimeError> {
    let mut model = tract_onnx::onnx().model_for_read(&mut &*model).map_err(runtime_error)?;
    for (ix, input) in inputs.iter().enumerate() {
        let fact = InferenceFact::dt_shape(datum_type(&input.data), input.shape.clone());
        model.set_input_fact(ix, fact).map_err(runtime_error)?;
    }
    model.into_optimized().map_err(runtime_error)
}

/// Probed once per process: the answer depends on the CPU and this build only.
fn precision_support() -> &'static PrecisionSupport {
    static SUPPORT: OnceLock<PrecisionSupport> = OnceLock::new();
    SUPPORT.get_or_init(|| PrecisionSupport::probe(runs_natively))
}

/// Whether tract runs `probe`'s conv in its precision: the optimised conv
/// is a matrix product whose kernel (tract-linalg's, picked for this CPU)
/// accumulates in the precision's type, in hardware. tract would as well
/// run a conv converted (f16 operands packed for an f32 kernel), or on its
/// generic f16 kernel, which emulates f16 arithmetic op by op where the CPU
/// has none: neither is native.
fn runs_natively(probe: &Probe) -> Result<(), RuntimeError> {
    let plan = optimized(&probe.model, &probe.inputs).and_then(|m| m.into_runnable().map_err(runtime_error))?;
    let inputs = probe.inputs.iter().map(to_tvalue).collect::<Result<_, _>>()?;
    plan.run(inputs).map_err(runtime_error)?;
    let kernels: Vec<&dyn MatMatMul> = plan
        .model()
        .nodes
        .iter()
        .filter_map(|node| node.op_as::<OptMatMul>())
        .flat_map(|op| op.mmm.iter().map(|k| &**k))
        .collect();
    if kernels.is_empty() {
        return Err(RuntimeError(format!(
            "tract runs the {} conv without a matrix product kernel",
            probe.precision.name()
        )));
    }
    let accumulator = match probe.precision {
        Precision::Fp32 => f32::datum_type(),
        Precision::Int8 => i32::datum_type(),
        Precision::Fp16 => f16::datum_type(),
    };
    match kernels.iter().find(|k| k.internal_type() != accumulator || k.emulated()) {
        None => Ok(()),
        Some(k) if k.emulated() => Err(RuntimeError(format!(
            "tract runs the {} conv on its kernel {}, which emulates {:?} arithmetic on this CPU",
            probe.precision.name(),
            k.name(),
            k.internal_type()
        ))),
        Some(k) => Err(RuntimeError(format!(
            "tract runs the {} conv on its kernel {}, in {:?} arithmetic",
            probe.precision.name(),
            k.name(),
            k.internal_type()
        ))),
    }
}

struct TractModel {
    state: TypedSimpleState,
    inputs: TVec<TValue>,
}

impl LoadedModel for TractModel {
    fn run(&mut self) -> Result<(), RuntimeError> {
        // Cloning TValues clones Arcs, not tensors.
        self.state.run(self.inputs.clone()).map(drop).map_err(runtime_error)
    }

    fn profile(&mut self, runs: NonZeroUsize) -> Result<Vec<OpTime>, RuntimeError> {
        let mut node_times = vec![Duration::ZERO; self.state.model().nodes.len()];
        for _ in 0..runs.get() {
            // tract's own evaluation of each node, with a clock around it.
            self.state
                .run_plan_with_eval(self.inputs.clone(), |ctx, op_state, node, inputs| {
                    let start = Instant::now();
                    let outputs = plan::eval(ctx, op_state, node, inputs);
                    node_times[node.id] += start.elapsed();
                    outputs
                })
                .map_err(runtime_error)?;
        }
        let totals = self
            .state
            .model()
            .nodes
            .iter()
            // Inputs and weights are handed over, not computed.
            .filter(|node| !node.op_is::<TypedSource>() && !node.op_is::<Const>())
            .map(|node| NodeTotal {
                node: node.name.clone(),
                op_type: node.op().name().into_owned(),
                total: node_times[node.id],
            })
            .collect();
        Ok(op_times(totals, runs))
    }

    fn outputs(&mut self) -> Result<Vec<OutputTensor>, RuntimeError> {
        let values = self.state.run(self.inputs.clone()).map_err(runtime_error)?;
        let model = self.state.model();
        let outlets = model.output_outlets().map_err(runtime_error)?;
        outlets
            .iter()
            .zip(values)
            .map(|(&outlet, value)| {
                // The ONNX loader labels each output outlet with its ONNX name.
                let name = model.outlet_label(outlet).unwrap_or(&model.node(outlet.node).name).to_string();
                let widened = value.cast_to::<f64>().map_err(runtime_error)?;
                let values = widened.to_plain_array_view::<f64>().map_err(runtime_error)?.iter().copied().collect();
                Ok(OutputTensor { name, shape: value.shape().to_vec(), values })
            })
            .collect()
    }
}

fn datum_type(data: &InputData) -> DatumType {
    match data {
        InputData::F32(_) => f32::datum_type(),
        InputData::U8(_) => u8::datum_type(),
        InputData::I8(_) => i8::datum_type(),
        InputData::I32(_) => i32::datum_type(),
        InputData::I64(_) => i64::datum_type(),
    }
}

fn to_tvalue(input: &InputTensor) -> Result<TValue, RuntimeError> {
    let shape = &input.shape;
    let tensor = match &input.data {
        InputData::F32(v) => Tensor::from_shape(shape, v),
        InputData::U8(v) => Tensor::from_shape(shape, v),
        InputData::I8(v) => Tensor::from_shape(shape, v),
        InputData::I32(v) => Tensor::from_shape(shape, v),
        InputData::I64(v) => Tensor::from_shape(shape, v),
    };
    tensor.map(|t| TValue::from_const(Arc::new(t))).map_err(runtime_error)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::inputs::{random_inputs, resolve_shapes};

    /// The small sample network's bytes, its ONNX nodes as (name, op type),
    /// and seeded inputs.
    fn sample() -> (Vec<u8>, Vec<(String, String)>, Vec<InputTensor>) {
        let proto = edgeloop_onnx::samples::MbconvNet::small().to_model();
        let declared = edgeloop_onnx::declared_inputs(&proto).unwrap();
        let inputs = random_inputs(&resolve_shapes(&declared, &Default::default()).unwrap(), 1);
        let nodes = proto.graph.as_ref().unwrap().node.iter().map(|n| (n.name.clone(), n.op_type.clone())).collect();
        (edgeloop_onnx::encode(&proto), nodes, inputs)
    }

    fn runs(n: usize) -> NonZeroUsize {
        NonZeroUsize::new(n).unwrap()
    }

    #[test]
    fn profile_accounts_for_every_onnx_node() {
        let (bytes, onnx_nodes, inputs) = sample();
        for threads in [1, 2] {
            let mut model = TractRuntime.load(&bytes, &inputs, LoadOptions { threads }).unwrap();
            let ops = model.profile(runs(3)).unwrap();
            // tract names the nodes it derives `<onnx name>.<step>` (`Conv_3.pad`,
            // `Conv_3.matmatmul`), and a fused node after the last op fused into
            // it: a 1×1 conv with its Clip or residual Add is one OptMatMul named
            // `Clip_22.max.prefused` or `Add_47.prefused`, while the conv keeps its
            // weight-packing node (`Conv_19.einsum.pack_a`). Only Flatten, a
            // no-op reshape of the pooled [n, c, 1, 1] tensor, leaves no node.
            let in_profile =
                |onnx: &str| ops.iter().any(|op| op.node == onnx || op.node.starts_with(&format!("{onnx}.")));
            let missing: Vec<&str> =
                onnx_nodes.iter().filter(|(name, _)| !in_profile(name)).map(|(_, op_type)| op_type.as_str()).collect();
            assert_eq!(missing, ["Flatten"], "threads {threads}: {ops:#?}");
            assert!(ops.iter().all(|op| op.op_type != "Source" && op.op_type != "Const"), "{ops:#?}");
        }
    }

    #[test]
    fn fp16_is_native_only_with_f16_arithmetic() {
        // fp32 and int8 are in the conformance suite (`runtime::conformance`).
        let support = precision_support();
        // tract's only f16 kernels on x86_64 are its generic ones, which
        // emulate f16 where the CPU has no f16 arithmetic (all but aarch64
        // with FEAT_FP16, which has kernels of its own).
        let fp16 = support.native.iter().any(|p| p == "fp16");
        assert_eq!(fp16, tract_onnx::tract_core::tract_linalg::has_fp16(), "{support:#?}");
        if !fp16 {
            let reason = &support.unavailable["fp16"];
            assert!(reason.contains("generic_f16") && reason.contains("emulates F16 arithmetic"), "{reason}");
        }
    }

    #[test]
    fn a_conv_in_another_arithmetic_is_not_native() {
        // The fp32 conv, judged as int8: its kernel accumulates in f32.
        let fp32_as_int8 = Probe { precision: Precision::Int8, ..Probe::new(Precision::Fp32) };
        let reason = runs_natively(&fp32_as_int8).unwrap_err().0;
        assert!(
            reason.starts_with("tract runs the int8 conv on its kernel ") && reason.ends_with("in F32 arithmetic"),
            "{reason}"
        );
    }

    #[test]
    fn profiled_node_times_add_up_to_a_plain_run() {
        let (bytes, _, inputs) = sample();
        let mut model = TractRuntime.load(&bytes, &inputs, LoadOptions { threads: 1 }).unwrap();
        for _ in 0..20 {
            model.run().unwrap();
        }
        // Alternate plain and profiled rounds so that load from other
        // processes falls on both alike.
        let (rounds, per_round) = (10, 20);
        let (mut plain_ms, mut profiled_ms) = (0.0, 0.0);
        for _ in 0..rounds {
            let start = Instant::now();
            for _ in 0..per_round {
                model.run().unwrap();
            }
            plain_ms += start.elapsed().as_secs_f64() * 1e3 / per_round as f64;
            profiled_ms += model.profile(runs(per_round)).unwrap().iter().map(|op| op.ms).sum::<f64>();
        }
        let (plain_ms, profiled_ms) = (plain_ms / rounds as f64, profiled_ms / rounds as f64);
        assert!(
            (profiled_ms - plain_ms).abs() <= 0.3 * plain_ms + 0.2,
            "summed node times {profiled_ms:.4} ms vs plain run {plain_ms:.4} ms"
        );
    }
}
