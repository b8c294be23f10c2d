//! Trained networks export to ONNX that computes what tch computes: a
//! standalone subnet and a path of a trained supernet, each after real
//! training steps on the synthetic dataset (so BatchNorm's running
//! statistics are trained ones), in tract and in ONNX Runtime (max abs
//! diff ≤ 1e-4), with onnx.checker's full check.

use edgeloop_e2e::{check_with_onnx_runtime, run_tract, train_briefly, write_onnx_case};
use edgeloop_space::{Arch, Op, Space};
use edgeloop_train::export::export_arch;
use edgeloop_train::{ArchParams, BnMode, Supernet};
use rand::SeedableRng;
use rand::rngs::SmallRng;
use tch::nn::VarStore;
use tch::{Device, Tensor};

/// Writes one case per input: tch's eval-mode logits as the expected output,
/// after checking tract's against them.
fn write_cases(
    dir: &std::path::Path,
    name: &str,
    net: &Supernet,
    selection: &[usize],
    model: &[u8],
    inputs: &[Vec<f32>],
) {
    for (i, input) in inputs.iter().enumerate() {
        let x = Tensor::from_slice(input).reshape([1, 3, 32, 32]);
        let logits = tch::no_grad(|| net.forward(&x, selection, BnMode::Eval));
        let expected = Vec::<f32>::try_from(&logits.flatten(0, -1)).unwrap();
        let tract = run_tract(model, input);
        let diff = expected.iter().zip(&tract).map(|(a, b)| (a - b).abs()).fold(0.0f32, f32::max);
        assert!(diff <= 1e-4, "{name}: tract differs from tch by {diff}");
        write_onnx_case(dir, &format!("{name}-{i}"), model, input, &expected);
    }
}

#[test]
fn trained_subnets_export_to_what_tch_computes() {
    let _device = edgeloop_e2e::shared_blocking();
    tch::manual_seed(0);
    let space = Space::load("tiny", 1.0).unwrap();
    let dir = tempfile::tempdir().unwrap();

    let arch = Arch {
        space: "tiny".into(),
        width: 1.0,
        ops: vec![
            Op::MbConv { kernel: 5, expand: 6 },
            Op::Zero,
            Op::MbConv { kernel: 3, expand: 3 },
            Op::MbConv { kernel: 7, expand: 3 },
        ],
    };
    let vs = VarStore::new(Device::Cpu);
    let standalone = Supernet::for_arch(&vs.root(), &space, &arch).unwrap();
    let inputs = train_briefly(&standalone, || vec![0; 4]);
    let model = export_arch(&vs, &space, &arch).unwrap();
    write_cases(dir.path(), "standalone", &standalone, &[0; 4], &model, &inputs[..3]);

    let vs = VarStore::new(Device::Cpu);
    let supernet = Supernet::new(&vs.root(), &space);
    let alpha = ArchParams::new(&supernet.candidate_counts(), &mut SmallRng::seed_from_u64(0));
    let mut rng = SmallRng::seed_from_u64(1);
    let inputs = train_briefly(&supernet, || alpha.sample(&mut rng));
    let path = alpha.sample(&mut SmallRng::seed_from_u64(2));
    let model = export_arch(&vs, &space, &supernet.arch(&path)).unwrap();
    write_cases(dir.path(), "supernet-path", &supernet, &path, &model, &inputs[..3]);

    check_with_onnx_runtime(dir.path());
}
