//! The ONNX Runtime backend (`runtime: "ort"`) end to end: a real agent on
//! 127.0.0.1 with the onnxruntime library of the project's .venv
//! (scripts/setup.sh installs it), every endpoint with `runtime: "ort"`,
//! outputs against tract's, and an agent whose library is missing or broken.

use std::path::Path;
use std::process::Command;

use edgeloop::client::{AgentClient, ClientError};
use edgeloop_agent::compare::compare;
use edgeloop_agent::runtime::{OrtOptimization, Runtime, RuntimeSettings, Runtimes};
use edgeloop_api::{ErrorCode, MeasureRequest, Measurement};
use edgeloop_e2e::{TestAgent, quick_request, repo_root, small_model};
use edgeloop_export::export::{RandomWeights, arch_model};
use edgeloop_onnx::samples::MbconvNet;
use edgeloop_space::{Arch, Space};

/// The version of the onnxruntime wheel in .venv, as Python reports it.
fn venv_ort_version() -> String {
    let python = repo_root().join(".venv/bin/python");
    let out = Command::new(&python)
        .args(["-c", "import onnxruntime; print(onnxruntime.__version__)"])
        .output()
        .unwrap_or_else(|e| panic!("{}: {e} (run scripts/setup.sh)", python.display()));
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    String::from_utf8(out.stdout).unwrap().trim().to_string()
}

pub(crate) fn ort_request(sha: &str) -> MeasureRequest {
    MeasureRequest { runtime: "ort".into(), ..quick_request(sha) }
}

pub(crate) fn assert_sane(m: &Measurement) {
    let l = &m.latency_ms;
    assert!(l.n >= 5, "{l:?}");
    assert!(l.min > 0.0 && l.min <= l.p50 && l.p50 <= l.p90 && l.p90 <= l.p99 && l.p99 <= l.max, "{l:?}");
    assert!(l.min <= l.mean && l.mean <= l.max, "{l:?}");
    assert!(m.load_ms > 0.0 && m.first_run_ms > 0.0, "{m:?}");
}

async fn upload_small(client: &AgentClient) -> String {
    client.upload(&small_model()).await.unwrap().sha256
}

#[tokio::test(flavor = "multi_thread")]
async fn info_lists_ort_and_measurements_carry_its_version() {
    let _device = edgeloop_e2e::shared().await;
    let agent = TestAgent::start();
    let client = agent.client();
    let info = client.info().await.unwrap();
    let ort = info.runtimes.iter().find(|r| r.name == "ort").unwrap_or_else(|| panic!("ort missing: {info:?}"));
    assert_eq!(ort.version, venv_ort_version());
    assert!(ort.precisions.starts_with(&["fp32".into(), "int8".into()]), "{ort:?}");
    // ORT's x86 CPU provider has no float16 conv: it casts to float and
    // runs that, which the probe sees and says.
    if cfg!(target_arch = "x86_64") {
        assert_eq!(ort.precisions, ["fp32", "int8"]);
        let fp16 = &ort.precisions_unavailable["fp16"];
        assert!(fp16.contains("float"), "{fp16}");
    }
    assert!(!info.runtimes_unavailable.contains_key("ort"), "{info:?}");

    let sha = upload_small(&client).await;
    let m = client.measure(&ort_request(&sha)).await.unwrap();
    assert_eq!((m.runtime.as_str(), m.runtime_version.as_str()), ("ort", ort.version.as_str()));
    assert_eq!(m.threads, 1);
    assert_sane(&m);
    assert!(m.ops.is_none() && m.cpus.is_none());
}

#[tokio::test(flavor = "multi_thread")]
async fn ort_profiles_ops() {
    let _device = edgeloop_e2e::shared().await;
    let agent = TestAgent::start();
    let client = agent.client();
    let sha = upload_small(&client).await;
    let m = client.measure(&MeasureRequest { profile_ops: true, ..ort_request(&sha) }).await.unwrap();
    assert_sane(&m);
    let ops = m.ops.as_ref().expect("per-op profile");
    assert!(ops.len() >= 5, "{ops:#?}");
    assert!(ops.iter().all(|op| !op.node.is_empty() && !op.op_type.is_empty() && op.ms >= 0.0), "{ops:#?}");
    assert!(ops.windows(2).all(|w| w[0].ms >= w[1].ms), "slowest first: {ops:#?}");
    assert!(ops.iter().any(|op| op.op_type.contains("Conv")), "{ops:#?}");
    let shares: f64 = ops.iter().map(|op| op.share).sum();
    assert!((shares - 1.0).abs() < 1e-9, "shares sum to {shares}");
    // Node times are means per run over the profile's runs (50 here).
    // ORT's profiler adds its own bookkeeping to every node (a microsecond
    // or two: a small network's nodes add up to two or three runs' time),
    // and the means take in whatever else the machine runs (up to ten runs'
    // time seen with other tests running); summed over all the runs they
    // would exceed a hundred runs' time.
    let summed: f64 = ops.iter().map(|op| op.ms).sum();
    let p50 = m.latency_ms.p50;
    assert!(summed > 0.2 * p50 && summed < 30.0 * p50, "node times sum to {summed} ms, p50 {p50} ms");
}

#[tokio::test(flavor = "multi_thread")]
async fn ort_with_two_threads_and_pinned() {
    let _device = edgeloop_e2e::shared().await;
    let agent = TestAgent::start();
    let client = agent.client();
    let sha = upload_small(&client).await;
    let two = client.measure(&MeasureRequest { threads: 2, ..ort_request(&sha) }).await.unwrap();
    assert_eq!(two.threads, 2);
    assert_sane(&two);

    // The last CPU this process may use: not what an unpinned thread reports.
    let cpu = *edgeloop_agent::affinity::current().unwrap().last().unwrap();
    let pinned = client.measure(&MeasureRequest { cpus: Some(vec![cpu]), ..ort_request(&sha) }).await.unwrap();
    assert_eq!(pinned.cpus, Some(vec![cpu]), "the measuring thread's sched_getaffinity");
    assert_sane(&pinned);
}

/// Sample networks and random `tiny` archs with random weights.
pub(crate) fn models() -> Vec<(String, Vec<u8>)> {
    let mut models = vec![
        ("small-mbconv".to_string(), small_model()),
        ("large-mbconv".to_string(), edgeloop_onnx::encode(&MbconvNet::large().to_model())),
    ];
    let space = Space::load("tiny", 1.0).unwrap();
    for seed in 0..4 {
        let arch = Arch::random(&space, seed);
        let model = arch_model(&space, &arch, &mut RandomWeights::new(seed)).unwrap();
        models.push((format!("tiny-{seed}"), edgeloop_onnx::encode(&model)));
    }
    models
}

/// How ONNX Runtime's outputs are checked against tract's: every model of
/// [`models`] at both ends of ORT's graph optimisations, with one and two
/// threads (and an input seed for each), each output within
/// [`OUTPUT_TOLERANCE`]. The aarch64 agent under qemu (tests/qemu_agent.rs)
/// runs the same cases, one per model.
pub(crate) const COMPARED_OPTIMIZATIONS: [OrtOptimization; 2] = [OrtOptimization::All, OrtOptimization::Disable];
pub(crate) const COMPARED_SEEDS_AND_THREADS: [(u64, usize); 2] = [(0, 1), (1, 2)];
pub(crate) const OUTPUT_TOLERANCE: f64 = 1e-4;

#[test]
fn ort_and_tract_outputs_match() {
    let _device = edgeloop_e2e::shared_blocking();
    for optimization in COMPARED_OPTIMIZATIONS {
        let runtimes = Runtimes::detect(&RuntimeSettings { ort_optimization: optimization, ..Default::default() });
        let tract = runtimes.get("tract").unwrap();
        let ort = runtimes.get("ort").unwrap_or_else(|| panic!("{:?}", runtimes.unavailable()));
        let chosen: [&dyn Runtime; 2] = [tract.as_ref(), ort.as_ref()];
        for (name, model) in models() {
            for (seed, threads) in COMPARED_SEEDS_AND_THREADS {
                let diffs = compare(&model, &chosen, seed, threads).unwrap();
                assert!(!diffs.is_empty(), "{name}");
                for d in diffs {
                    assert!(
                        d.max_abs_diff <= OUTPUT_TOLERANCE,
                        "{name} ({optimization}, seed {seed}, {threads} threads): {d:?}"
                    );
                }
            }
        }
    }
}

fn expect_runtime_unavailable(err: ClientError) -> String {
    match err {
        ClientError::Api { status: 422, code: ErrorCode::RuntimeUnavailable, message } => message,
        other => panic!("expected 422 runtime_unavailable, got {other:?}"),
    }
}

/// An agent told to load `library` still serves tract, says in /v1/info why
/// ort is unavailable, and answers `runtime: "ort"` with 422 and the reason;
/// returns the reason.
async fn without_ort(library: &Path) -> String {
    let agent = TestAgent::start_with(|config| config.runtimes.ort_lib = Some(library.to_path_buf()));
    let client = agent.client();
    let info = client.info().await.unwrap();
    assert!(info.runtimes.iter().all(|r| r.name != "ort"), "{info:?}");
    assert!(info.runtimes.iter().any(|r| r.name == "tract"), "{info:?}");
    let reason = info.runtimes_unavailable.get("ort").unwrap_or_else(|| panic!("no reason: {info:?}")).clone();
    assert!(reason.contains(&library.display().to_string()), "names the library: {reason}");

    let sha = upload_small(&client).await;
    assert_sane(&client.measure(&quick_request(&sha)).await.unwrap());
    let message = expect_runtime_unavailable(client.measure(&ort_request(&sha)).await.unwrap_err());
    assert!(message.contains(&reason), "{message}");
    assert!(message.contains("tract"), "names what is available: {message}");
    reason
}

#[tokio::test(flavor = "multi_thread")]
async fn missing_ort_library_leaves_tract_serving() {
    let _device = edgeloop_e2e::shared().await;
    let dir = tempfile::tempdir().unwrap();
    let reason = without_ort(&dir.path().join("libonnxruntime.so.1.32.0")).await;
    assert!(reason.contains("does not exist") && reason.contains("--ort-lib"), "{reason}");
}

#[tokio::test(flavor = "multi_thread")]
async fn broken_ort_library_leaves_tract_serving() {
    let _device = edgeloop_e2e::shared().await;
    let dir = tempfile::tempdir().unwrap();
    let garbage = dir.path().join("libonnxruntime.so");
    std::fs::write(&garbage, "this is not a shared library\n").unwrap();
    // The loader's error, or, where another test of this process loaded the
    // real library first, that it cannot be replaced; either way the agent
    // stays up (device-agent/tests/cli.rs checks the loader's error in a
    // fresh process).
    without_ort(&garbage).await;
}
