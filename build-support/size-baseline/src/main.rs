//! `size-baseline MODEL.onnx`: loads the model with tract-onnx, optimises it
//! and runs it once on zeros (symbolic dimensions taken as 1), printing the
//! output shapes. Only here to measure what tract alone weighs in a static
//! binary; see scripts/size-agent.sh.

use tract_onnx::prelude::*;

fn main() -> TractResult<()> {
    let path = std::env::args().nth(1).ok_or_else(|| TractError::msg("usage: size-baseline MODEL.onnx"))?;
    let model = tract_onnx::onnx().model_for_path(&path)?.into_optimized()?;
    #[allow(unused_mut)]
    let mut options = RunOptions::default();
    #[cfg(feature = "multithread")]
    {
        let threads = std::thread::available_parallelism().map(|n| n.get()).unwrap_or(1);
        options.executor = Some(tract_linalg::multithread::Executor::multithread(threads));
    }
    let plan = model.into_runnable_with_options(&options)?;
    let inputs = (0..plan.model().inputs.len())
        .map(|ix| {
            let fact = plan.model().input_fact(ix)?;
            let shape: Vec<usize> = fact.shape.iter().map(|d| d.to_i64().unwrap_or(1) as usize).collect();
            Ok(Tensor::zero_dt(fact.datum_type, &shape)?.into_tvalue())
        })
        .collect::<TractResult<TVec<_>>>()?;
    for output in plan.run(inputs)? {
        println!("{:?} {:?}", output.datum_type(), output.shape());
    }
    Ok(())
}
