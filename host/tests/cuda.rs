//! The CUDA path, where there is a GPU: libtorch must see it from this
//! binary (libtorch_cuda stays linked, see build-support/link_libtorch.rs),
//! a training step must run on it, and `edgeloop search --device-kind cuda`
//! must train there. Skipped, saying so, on machines without one (CI).

use std::process::Command;

use edgeloop_agent::runtime::Runtimes;
use edgeloop_agent::{AgentConfig, LocalAgent};
use edgeloop_space::Space;
use edgeloop_train::optim::Sgd;
use edgeloop_train::trainer::weight_step;
use edgeloop_train::{DeviceKind, Supernet};
use tch::nn::VarStore;
use tch::{Device, Kind, Tensor};

fn gpu() -> bool {
    let available = tch::Cuda::is_available();
    if !available {
        eprintln!("skipped: libtorch sees no CUDA device here");
    }
    available
}

#[test]
fn cuda_kind_is_refused_clearly_without_a_gpu() {
    if tch::Cuda::is_available() {
        assert_eq!(DeviceKind::Cuda.resolve().unwrap(), Device::Cuda(0));
    } else {
        assert!(DeviceKind::Cuda.resolve().unwrap_err().to_string().contains("no CUDA device"));
    }
}

#[test]
fn a_supernet_step_runs_on_cuda() {
    if !gpu() {
        return;
    }
    let device = Device::Cuda(0);
    let space = Space::load("tiny", 1.0).unwrap();
    let vs = VarStore::new(device);
    let net = Supernet::new(&vs.root(), &space);
    let x = Tensor::randn([8, 3, 32, 32], (Kind::Float, device));
    let y = Tensor::randint(10, [8], (Kind::Int64, device));
    let before = net.params(&[0; 4])[0].tensor.copy();
    let loss = weight_step(&net, &mut Sgd::nesterov(0.9, 0.0), &x, &y, &[0; 4], 0.1);
    assert!(loss.is_finite());
    let after = &net.params(&[0; 4])[0].tensor;
    assert_eq!(after.device(), device);
    assert!(!after.equal(&before), "the step did not change the weights");
}

#[test]
fn search_trains_on_cuda() {
    if !gpu() {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let agent =
        LocalAgent::start(AgentConfig::new(dir.path().join("cache")), Runtimes::detect(&Default::default())).unwrap();
    let out = Command::new(env!("CARGO_BIN_EXE_edgeloop"))
        .current_dir(dir.path())
        .args(["search", "--space", "tiny", "--dataset", "synthetic:640,128", "--device", &agent.url()])
        .args(["--budget-ms", "5", "--warmup-epochs", "1", "--epochs", "1", "--final-epochs", "1"])
        .args(["--device-kind", "cuda", "--probe-runs", "5", "--out", "run"])
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{stderr}");
    assert!(stderr.contains("training on cuda:0"), "{stderr}");
    let result: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(dir.path().join("run/result.json")).unwrap()).unwrap();
    assert!(result["train_device"].as_str().unwrap().starts_with("cuda"), "{result}");
}
