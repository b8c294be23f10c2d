//! tract (pure Rust) runtime.

use std::sync::Arc;

use tract_onnx::prelude::*;
use tract_onnx::tract_core::runtime::RunOptions;
use tract_onnx::tract_core::tract_linalg::multithread::Executor;

use super::{LoadOptions, LoadedModel, Runtime, RuntimeError};
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
        // tract runs QLinearConv/QLinearMatMul in int8 everywhere; f16 kernels
        // exist only on aarch64 with the fp16 extension.
        let mut p = vec!["fp32".to_string(), "int8".to_string()];
        if cfg!(target_arch = "aarch64") {
            p.push("fp16".into());
        }
        p
    }

    fn load(
        &self,
        model: &[u8],
        inputs: &[InputTensor],
        options: LoadOptions,
    ) -> Result<Box<dyn LoadedModel>, RuntimeError> {
        let mut model = tract_onnx::onnx().model_for_read(&mut &*model).map_err(runtime_error)?;
        for (ix, input) in inputs.iter().enumerate() {
            let fact = InferenceFact::dt_shape(datum_type(&input.data), input.shape.clone());
            model.set_input_fact(ix, fact).map_err(runtime_error)?;
        }
        let executor =
            if options.threads > 1 { Executor::multithread(options.threads) } else { Executor::SingleThread };
        let run_options = RunOptions { executor: Some(executor), ..Default::default() };
        let plan =
            model.into_optimized().and_then(|m| m.into_runnable_with_options(&run_options)).map_err(runtime_error)?;
        let state = plan.spawn().map_err(runtime_error)?;
        let inputs = inputs.iter().map(to_tvalue).collect::<Result<_, _>>()?;
        Ok(Box::new(TractModel { state, inputs }))
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
