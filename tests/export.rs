//! Exported models are valid ONNX (onnx.checker, full check) and compute the
//! same function in tract and in ONNX Runtime, an independent implementation
//! (DESIGN §4). Needs the project's .venv (scripts/setup.sh makes it).

use std::path::{Path, PathBuf};
use std::process::Command;

use edgeloop_onnx::export::{RandomWeights, arch_model, identity_model, layer_model};
use edgeloop_onnx::{encode, pb};
use edgeloop_space::{Arch, Space};
use tract_onnx::prelude::*;

fn repo_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).parent().unwrap().to_path_buf()
}

/// Runs `model` in tract on a seeded input; writes model, input and output
/// where check_onnx.py expects them.
fn write_case(dir: &Path, name: &str, model: &pb::ModelProto) {
    let bytes = encode(model);
    let typed = tract_onnx::onnx().model_for_read(&mut &*bytes).unwrap().into_optimized().unwrap();
    let plan = typed.into_runnable().unwrap();
    let shape: Vec<usize> = plan.model().input_fact(0).unwrap().shape.as_concrete().unwrap().to_vec();
    let len: usize = shape.iter().product();
    let input: Vec<f32> = (0..len).map(|i| ((i * 7919 + 13) % 2001) as f32 / 1000.0 - 1.0).collect();
    let output = plan.run(tvec![Tensor::from_shape(&shape, &input).unwrap().into()]).unwrap();
    let output: Vec<f32> = output[0].to_plain_array_view::<f32>().unwrap().iter().copied().collect();
    assert!(output.iter().all(|v| v.is_finite()), "{name}: non-finite output");
    let raw = |v: &[f32]| v.iter().flat_map(|x| x.to_le_bytes()).collect::<Vec<u8>>();
    std::fs::write(dir.join(format!("{name}.onnx")), bytes).unwrap();
    std::fs::write(dir.join(format!("{name}.input.bin")), raw(&input)).unwrap();
    std::fs::write(dir.join(format!("{name}.expected.bin")), raw(&output)).unwrap();
}

fn check_with_onnx_runtime(dir: &Path) {
    let python = repo_root().join(".venv/bin/python");
    assert!(python.exists(), "{} is missing: run scripts/setup.sh first", python.display());
    let out = Command::new(python).arg(repo_root().join("scripts/check_onnx.py")).arg(dir).output().unwrap();
    assert!(
        out.status.success(),
        "check_onnx.py failed:\n{}\n{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
}

#[test]
fn random_archs_match_onnx_runtime() {
    let dir = tempfile::tempdir().unwrap();
    for (space, samples) in [("tiny", 4), ("proxyless-cifar", 3), ("proxyless-mobile", 1)] {
        let space = Space::load(space, 1.0).unwrap();
        for seed in 0..samples {
            let arch = Arch::random(&space, seed);
            let model = arch_model(&space, &arch, &mut RandomWeights::new(seed)).unwrap();
            write_case(dir.path(), &format!("{}-{seed}", space.name()), &model);
        }
    }
    let narrow = Space::load("proxyless-cifar", 0.5).unwrap();
    let model = arch_model(&narrow, &Arch::random(&narrow, 9), &mut RandomWeights::new(9)).unwrap();
    write_case(dir.path(), "proxyless-cifar-w0.5", &model);
    check_with_onnx_runtime(dir.path());
}

#[test]
fn single_layer_and_identity_models_match_onnx_runtime() {
    let dir = tempfile::tempdir().unwrap();
    let space = Space::load("tiny", 1.0).unwrap();
    for (i, layer) in space.all_layers().iter().enumerate() {
        write_case(dir.path(), &format!("layer-{i:02}"), &layer_model(layer, &mut RandomWeights::new(i as u64)));
    }
    write_case(dir.path(), "identity", &identity_model(space.prefix_layers()[0].input));
    check_with_onnx_runtime(dir.path());
}
