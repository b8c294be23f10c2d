//! Quantized export (DESIGN §4, §9): the integer (QLinear) model of an arch
//! is valid ONNX, runs in tract and in ONNX Runtime, computes what its
//! fake-quant (QDQ) form computes, stays close to the fp32 model at int8,
//! and tract runs its convs with integer kernels. Needs the project's .venv.

use std::collections::BTreeMap;
use std::process::Command;
use std::sync::Arc;

use edgeloop_e2e::repo_root;
use edgeloop_export::export::{RandomWeights, arch_model};
use edgeloop_export::quant::{
    ActivationRanges, Precision, QuantForm, QuantPolicy, Quantization, calibrate, quantized_arch_model, random_input,
};
use edgeloop_onnx::encode;
use edgeloop_space::{Arch, Shape, Space};
use tract_onnx::prelude::*;

const ARCHS: u64 = 4;
const CALIBRATION_INPUTS: u64 = 8;
const TEST_INPUTS: u64 = 16;

/// onnx.checker (full check) on every NAME.onnx of a folder, then ONNX
/// Runtime (1 thread; no graph rewrites, so the QDQ form runs as the float
/// ops it is written as) on each input of inputs.bin; writes NAME.ort.bin.
const ORT_RUNNER: &str = r#"
import pathlib, sys
import numpy as np, onnx, onnxruntime as ort
folder = pathlib.Path(sys.argv[1])
inputs = np.fromfile(folder / "inputs.bin", dtype="<f4")
for path in sorted(folder.glob("*.onnx")):
    model = onnx.load(str(path))
    onnx.checker.check_model(model, full_check=True)
    options = ort.SessionOptions()
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_DISABLE_ALL
    options.intra_op_num_threads = 1
    session = ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
    shape = [d.dim_value for d in model.graph.input[0].type.tensor_type.shape.dim]
    batch = inputs.reshape([-1] + shape[1:])
    out = [session.run(None, {"input": x[None]})[0].reshape(-1) for x in batch]
    np.concatenate(out).astype("<f4").tofile(folder / f"{path.stem}.ort.bin")
"#;

/// Logits per input.
type Outputs = Vec<Vec<f32>>;

/// Writes `models` and `inputs` to a temp folder; every model's ONNX Runtime outputs.
fn run_onnx_runtime(models: &BTreeMap<String, Vec<u8>>, inputs: &[Vec<f32>]) -> BTreeMap<String, Outputs> {
    let dir = tempfile::tempdir().unwrap();
    for (name, bytes) in models {
        std::fs::write(dir.path().join(format!("{name}.onnx")), bytes).unwrap();
    }
    let raw: Vec<u8> = inputs.iter().flatten().flat_map(|v| v.to_le_bytes()).collect();
    std::fs::write(dir.path().join("inputs.bin"), raw).unwrap();
    let python = repo_root().join(".venv/bin/python");
    assert!(python.exists(), "{} is missing: run scripts/setup.sh first", python.display());
    let out = Command::new(python).arg("-c").arg(ORT_RUNNER).arg(dir.path()).output().unwrap();
    assert!(out.status.success(), "ONNX checker / Runtime failed:\n{}", String::from_utf8_lossy(&out.stderr));
    models
        .keys()
        .map(|name| {
            let bytes = std::fs::read(dir.path().join(format!("{name}.ort.bin"))).unwrap();
            let values: Vec<f32> = bytes.chunks(4).map(|b| f32::from_le_bytes(b.try_into().unwrap())).collect();
            (name.clone(), values.chunks(values.len() / inputs.len()).map(<[f32]>::to_vec).collect())
        })
        .collect()
}

/// tract's optimised plan, as the agent runs it.
fn tract_plan(model: &[u8]) -> Arc<TypedRunnableModel> {
    tract_onnx::onnx()
        .model_for_read(&mut &*model)
        .and_then(|m| m.into_optimized())
        .and_then(|m| m.into_runnable())
        .expect("tract loads the model")
}

fn run_tract(model: &[u8], shape: Shape, inputs: &[Vec<f32>]) -> Outputs {
    let plan = tract_plan(model);
    let dims = [1, shape.channels, shape.height, shape.width];
    inputs
        .iter()
        .map(|x| {
            let y = plan.run(tvec![Tensor::from_shape(&dims, x).unwrap().into()]).expect("tract runs");
            y[0].to_plain_array_view::<f32>().unwrap().iter().copied().collect()
        })
        .collect()
}

fn max_abs_diff(a: &[f32], b: &[f32]) -> f32 {
    a.iter().zip(b).map(|(x, y)| (x - y).abs()).fold(0.0, f32::max)
}

fn argmax(v: &[f32]) -> usize {
    (0..v.len()).max_by(|&i, &j| v[i].total_cmp(&v[j])).unwrap()
}

/// All int8; 4/6/8 bits mixed; int8 with an fp32 run in the middle (a
/// boundary of each kind inside the network).
fn policies(layers: usize) -> Vec<(&'static str, QuantPolicy)> {
    let int = |weight_bits, activation_bits| Precision::Int { weight_bits, activation_bits };
    let fp32_middle = |i| (layers / 3..2 * layers / 3).contains(&i);
    vec![
        ("int8", QuantPolicy::uniform(layers, Precision::INT8)),
        ("mixed", QuantPolicy { layers: (0..layers).map(|i| int([4, 6, 8][i % 3], [8, 4, 6][i % 3])).collect() }),
        (
            "int8-fp32-int8",
            QuantPolicy {
                layers: (0..layers).map(|i| if fp32_middle(i) { Precision::Fp32 } else { Precision::INT8 }).collect(),
            },
        ),
    ]
}

/// A random `tiny` arch with random weights, calibrated; its fp32 model
/// and its quantized models of every policy, in both forms, run in ONNX
/// Runtime on seeded inputs.
struct ArchCase {
    shape: Shape,
    ranges: ActivationRanges,
    inputs: Vec<Vec<f32>>,
    /// `fp32`, `POLICY.qlinear`, `POLICY.qdq`.
    models: BTreeMap<String, Vec<u8>>,
    ort: BTreeMap<String, Outputs>,
    /// The smallest activation bits of each policy.
    coarsest_bits: BTreeMap<String, u8>,
}

impl ArchCase {
    fn new(seed: u64) -> Self {
        let space = Space::load("tiny", 1.0).unwrap();
        let arch = Arch::random(&space, seed);
        let shape = space.prefix_layers()[0].input;
        let calibration: Vec<_> = (0..CALIBRATION_INPUTS).map(|i| random_input(shape, i)).collect();
        let ranges = calibrate(&space, &arch, &mut RandomWeights::new(seed), &calibration).unwrap();
        let mut models = BTreeMap::from([(
            "fp32".to_string(),
            encode(&arch_model(&space, &arch, &mut RandomWeights::new(seed)).unwrap()),
        )]);
        let mut coarsest_bits = BTreeMap::new();
        for (name, policy) in policies(arch.layers(&space).unwrap().len()) {
            let quant = Quantization::new(&policy, &ranges);
            for (form, suffix) in [(QuantForm::QLinear, "qlinear"), (QuantForm::Qdq, "qdq")] {
                let model = quantized_arch_model(&space, &arch, &mut RandomWeights::new(seed), &quant, form).unwrap();
                models.insert(format!("{name}.{suffix}"), encode(&model));
            }
            coarsest_bits
                .insert(name.to_string(), policy.layers.iter().filter_map(|p| p.activation_bits()).min().unwrap());
        }
        let inputs: Vec<_> = (0..TEST_INPUTS).map(|i| random_input(shape, 1000 + i)).collect();
        let ort = run_onnx_runtime(&models, &inputs);
        ArchCase { shape, ranges, inputs, models, ort, coarsest_bits }
    }

    /// One quantisation step of the logits' calibrated range at `bits`.
    fn logit_step(&self, bits: u8) -> f32 {
        let (lo, hi) = self.ranges["classifier"];
        (hi - lo) / ((1u32 << bits) - 1) as f32
    }
}

/// The integer model against its QDQ form (ONNX Runtime, float ops). They
/// differ only where a value lies within float rounding of a rounding
/// boundary: the integer form rounds the exact int32 accumulator, the QDQ
/// form a float sum, so such a tie moves one code by one step, and the
/// pooling and classifier after it shrink that to well under a step of the
/// logits. Hence: every input within 2 logit steps at the policy's coarsest
/// activation bits, and most inputs (ties are rare) equal up to float
/// rounding (1e-5). Observed: at most 1 input of 16 differs, by ≤ 0.8 step.
#[test]
fn qlinear_models_match_their_qdq_form_in_tract_and_onnx_runtime() {
    let _device = edgeloop_e2e::shared_blocking();
    for seed in 0..ARCHS {
        let case = ArchCase::new(seed);
        for (policy, &bits) in &case.coarsest_bits {
            let reference = &case.ort[&format!("{policy}.qdq")];
            let qlinear = &case.models[&format!("{policy}.qlinear")];
            let tract = run_tract(qlinear, case.shape, &case.inputs);
            let ort = ort_int8_exact().then(|| ("ONNX Runtime", &case.ort[&format!("{policy}.qlinear")]));
            for (runtime, outputs) in ort.into_iter().chain([("tract", &tract)]) {
                let diffs: Vec<f32> = outputs.iter().zip(reference).map(|(a, b)| max_abs_diff(a, b)).collect();
                let worst = diffs.iter().copied().fold(0.0, f32::max) / case.logit_step(bits);
                let ties = diffs.iter().filter(|&&d| d > 1e-5).count();
                eprintln!("arch {seed} {policy} in {runtime}: {ties} inputs off, by ≤ {worst:.3} step");
                assert!(worst <= 2.0, "arch {seed} {policy} in {runtime}: {worst} logit steps from QDQ");
                assert!(ties <= diffs.len() / 4, "arch {seed} {policy} in {runtime}: {ties} inputs differ");
            }
        }
    }
}

/// Whether ONNX Runtime's integer kernels compute exactly on this CPU. On
/// x86 without VNNI its u8×s8 convolutions multiply-add pairs into int16
/// with saturation (vpmaddubsw), so results drift by many logit steps (seen
/// on an AVX2-only EPYC: 25 steps); those comparisons are then made in
/// tract only, and the test says so.
fn ort_int8_exact() -> bool {
    #[cfg(target_arch = "x86_64")]
    {
        let vnni = std::arch::is_x86_feature_detected!("avx512vnni");
        if !vnni {
            eprintln!(
                "this CPU has no VNNI: ONNX Runtime's int8 kernels saturate here, integer models are compared in tract"
            );
        }
        vnni
    }
    #[cfg(not(target_arch = "x86_64"))]
    true
}

/// All-int8 logits against fp32: the arg max agrees on most inputs and the
/// logits stay within a few percent of their range.
#[test]
fn int8_models_stay_close_to_fp32() {
    let _device = edgeloop_e2e::shared_blocking();
    let (mut agree, mut total) = (0, 0);
    for seed in 0..ARCHS {
        let case = ArchCase::new(seed);
        let tract_int8;
        let int8 = if ort_int8_exact() {
            &case.ort["int8.qlinear"]
        } else {
            tract_int8 = run_tract(&case.models["int8.qlinear"], case.shape, &case.inputs);
            &tract_int8
        };
        let fp32 = &case.ort["fp32"];
        let (lo, hi) = case.ranges["classifier"];
        let worst = fp32.iter().zip(int8).map(|(a, b)| max_abs_diff(a, b)).fold(0.0, f32::max) / (hi - lo);
        eprintln!("arch {seed}: int8 logits within {:.1} % of the logit range of fp32", 100.0 * worst);
        assert!(worst < 0.05, "arch {seed}: int8 logits off by {worst} of their range");
        agree += fp32.iter().zip(int8).filter(|(a, b)| argmax(a) == argmax(b)).count();
        total += fp32.len();
    }
    eprintln!("top-1 agreement int8 vs fp32: {agree}/{total}");
    assert!(agree * 10 >= total * 9, "top-1 agreement {agree}/{total}");
}

/// A node of tract's optimised plan: op name and datum types.
#[derive(Debug)]
struct PlanOp {
    op: String,
    inputs: Vec<DatumType>,
    output: DatumType,
}

fn plan_ops(model: &[u8]) -> Vec<PlanOp> {
    let plan = tract_plan(model);
    let model = plan.model();
    let fact = |outlet: &OutletId| model.outlet_fact(*outlet).unwrap().datum_type;
    model
        .nodes()
        .iter()
        .map(|n| PlanOp {
            op: n.op().name().to_string(),
            inputs: n.inputs.iter().map(fact).collect(),
            output: n.outputs[0].fact.datum_type,
        })
        .collect()
}

fn ops_named<'a>(ops: &'a [PlanOp], name: &str) -> Vec<&'a PlanOp> {
    ops.iter().filter(|o| o.op == name).collect()
}

/// In tract's optimised plan of the all-int8 model every matrix product
/// (convs as im2col + matmul, depthwise included, and the classifier's
/// MatMulInteger) multiplies int8 (uint8 activations offset to int8) and
/// accumulates in int32; the fp32 model's are f32.
#[test]
fn tract_runs_qlinear_convs_with_integer_kernels() {
    let _device = edgeloop_e2e::shared_blocking();
    let case = ArchCase::new(0);
    let int8 = plan_ops(&case.models["int8.qlinear"]);
    let mut histogram = BTreeMap::<&str, usize>::new();
    for o in &int8 {
        *histogram.entry(&o.op).or_default() += 1;
    }
    eprintln!("tract plan of the int8 model: {histogram:?}");
    let matmuls = ops_named(&int8, "OptMatMul");
    eprintln!("its matmuls: {matmuls:?}");
    assert!(!matmuls.is_empty());
    for m in matmuls {
        assert_eq!(m.output, DatumType::I32);
        assert!(m.inputs.iter().all(|t| matches!(t, DatumType::I8 | DatumType::I32)), "{m:?}");
    }
    // tract's depthwise kernel is f32-only: int8 depthwise convs become im2col + int8 matmul.
    assert!(ops_named(&int8, "DepthWiseConv").is_empty());
    let fp32 = plan_ops(&case.models["fp32"]);
    assert!(!ops_named(&fp32, "DepthWiseConv").is_empty());
    assert!(ops_named(&fp32, "OptMatMul").iter().all(|m| m.output == DatumType::F32));
}

/// A briefly trained `tiny` network under each policy: its tch fake-quant
/// forward (the one fine-tuning trains) against its exported QDQ and
/// QLinear models in tract and ONNX Runtime, on real (synthetic) images
/// with activation ranges calibrated on them. tch computes its convs with
/// other kernels than the runtimes, so a value within float rounding of a
/// rounding boundary can land one code apart, as between the two ONNX forms
/// above: same bound, 2 logit steps at the policy's coarsest activation
/// bits, most inputs equal. Observed: 1 input of 8 off (int8 QLinear, by
/// 0.69 step), all others within 1e-4.
#[test]
fn exports_compute_what_the_tch_fake_quant_forward_computes() {
    let _device = edgeloop_e2e::shared_blocking();
    use edgeloop_train::Supernet;
    use edgeloop_train::export::TrainedWeights;
    use edgeloop_train::quant::FakeQuant;
    use tch::nn::VarStore;

    tch::manual_seed(0);
    let space = Space::load("tiny", 1.0).unwrap();
    let arch = Arch::random(&space, 11);
    let vs = VarStore::new(tch::Device::Cpu);
    let net = Supernet::for_arch(&vs.root(), &space, &arch).unwrap();
    let selection = vec![0; space.blocks.len()];
    let images = edgeloop_e2e::train_briefly(&net, || selection.clone());
    let (calibration, inputs) = images.split_at(8);
    let ranges = calibrate(&space, &arch, &mut TrainedWeights::new(&vs), calibration).unwrap();
    let shape = space.prefix_layers()[0].input;
    let x = tch::Tensor::from_slice(&inputs.concat()).reshape([inputs.len() as i64, 3, 32, 32]);
    let mut models = BTreeMap::new();
    let mut expected = BTreeMap::new();
    for (name, policy) in policies(arch.layers(&space).unwrap().len()) {
        let bits = policy.layers.iter().filter_map(|p| p.activation_bits()).min().unwrap();
        let fq = FakeQuant::new(&net, &selection, policy, ranges.clone()).unwrap();
        let logits = tch::no_grad(|| fq.forward(&net, &x));
        let logits: Vec<f32> = Vec::try_from(&logits.flatten(0, -1)).unwrap();
        expected.insert(name, (bits, logits.chunks(logits.len() / inputs.len()).map(<[f32]>::to_vec).collect()));
        for (form, suffix) in [(QuantForm::QLinear, "qlinear"), (QuantForm::Qdq, "qdq")] {
            models.insert(format!("{name}.{suffix}"), fq.export(&vs, &space, form).unwrap());
        }
    }
    let ort = run_onnx_runtime(&models, inputs);
    let (lo, hi) = ranges["classifier"];
    for (model, bytes) in &models {
        let (bits, reference): &(u8, Outputs) = &expected[model.split('.').next().unwrap()];
        let step = (hi - lo) / ((1u32 << bits) - 1) as f32;
        let ort = ort_int8_exact().then(|| ("ONNX Runtime", ort[model].clone()));
        for (runtime, outputs) in ort.into_iter().chain([("tract", run_tract(bytes, shape, inputs))]) {
            let diffs: Vec<f32> = outputs.iter().zip(reference).map(|(a, b)| max_abs_diff(a, b)).collect();
            let worst = diffs.iter().copied().fold(0.0, f32::max) / step;
            let off = diffs.iter().filter(|&&d| d > 1e-4).count();
            eprintln!("{model} in {runtime} vs tch: {off}/{} inputs off by > 1e-4, worst {worst:.3} step", diffs.len());
            assert!(worst <= 2.0, "{model} in {runtime}: {worst} logit steps from tch's fake-quant forward");
            assert!(off <= diffs.len() / 4, "{model} in {runtime}: {off} inputs differ from tch");
        }
    }
}
