//! Exported models are valid ONNX (onnx.checker, full check) and compute the
//! same function in tract and in ONNX Runtime, an independent implementation
//! (DESIGN §4). Needs the project's .venv (scripts/setup.sh makes it).

use std::path::Path;

use edgeloop_e2e::{check_with_onnx_runtime, run_tract, tract_input_shape, write_onnx_case};
use edgeloop_export::export::{RandomWeights, arch_model, identity_model, layer_model};
use edgeloop_onnx::{encode, pb};
use edgeloop_space::{Arch, Space};

/// Runs `model` in tract on a seeded input; writes the case where
/// check_onnx.py expects it, tract's output as the expected one.
fn write_case(dir: &Path, name: &str, model: &pb::ModelProto) {
    let bytes = encode(model);
    let len: usize = tract_input_shape(&bytes).iter().product();
    let input: Vec<f32> = (0..len).map(|i| ((i * 7919 + 13) % 2001) as f32 / 1000.0 - 1.0).collect();
    let output = run_tract(&bytes, &input);
    assert!(output.iter().all(|v| v.is_finite()), "{name}: non-finite output");
    write_onnx_case(dir, name, &bytes, &input, &output);
}

#[test]
fn random_archs_match_onnx_runtime() {
    let _device = edgeloop_e2e::shared_blocking();
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
    let _device = edgeloop_e2e::shared_blocking();
    let dir = tempfile::tempdir().unwrap();
    let space = Space::load("tiny", 1.0).unwrap();
    for (i, layer) in space.all_layers().iter().enumerate() {
        write_case(dir.path(), &format!("layer-{i:02}"), &layer_model(layer, &mut RandomWeights::new(i as u64)));
    }
    write_case(dir.path(), "identity", &identity_model(space.prefix_layers()[0].input));
    check_with_onnx_runtime(dir.path());
}
