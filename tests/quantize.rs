//! `edgeloop quantize` end to end through the library: a short search on
//! `tiny` trains a network; HAQ then quantizes it under a size budget and
//! under a latency budget measured by a real agent on loopback (tract, whose
//! int8 layers run slower than fp32 here) and under an energy budget read
//! from a simulated RAPL package, and a resumed search measures nothing again.

use std::path::{Path, PathBuf};

use edgeloop::events::Discard;
use edgeloop::quantize::{self, Constraint, QuantizeEnv, QuantizeResult, QuantizeSettings};
use edgeloop::search::{self, SearchEnv, Strategy, TrainRecipe};
use edgeloop::table::build::{self, TablePrecision};
use edgeloop_api::MeasureRequest;
use edgeloop_e2e::{SimulatedRapl, TestAgent, quick_request, run_tract, tiny_recipe, tiny_search, with_latency_loss};
use edgeloop_export::quant::Precision;
use edgeloop_space::Space;
use edgeloop_train::{CostLossKind, DeviceKind};

fn probe(runs: usize) -> MeasureRequest {
    MeasureRequest { min_runs: runs, ..quick_request("") }
}

fn final_request() -> MeasureRequest {
    MeasureRequest { min_duration_ms: 300, ..probe(50) }
}

/// A finished search run of `tiny` (one epoch of each phase).
async fn trained_run(agent: &TestAgent, dir: &Path) -> PathBuf {
    let table_path = dir.join("tiny.csv");
    let template = MeasureRequest { min_duration_ms: 30, ..quick_request("") };
    let space = Space::load("tiny", 1.0).unwrap();
    build::build(&mut agent.devices().await, &space, &template, TablePrecision::Fp32, Some(&table_path), &Discard)
        .await
        .unwrap();
    let mut settings = with_latency_loss(tiny_search(Strategy::Gradient, 100.0), CostLossKind::MulLog, 5.0);
    settings.schedule.epochs = 1;
    settings.recipe = TrainRecipe { final_epochs: 2, seed: 3, ..tiny_recipe() };
    let out = dir.join("run");
    let env = SearchEnv {
        out: out.clone(),
        resume: false,
        devices: edgeloop::measure::Devices::Agents(vec![agent.client()]),
        table: Some(table_path),
        device_kind: DeviceKind::Cpu,
        probe_request: probe(10),
        final_request: final_request(),
        events: std::sync::Arc::new(Discard),
    };
    search::run(settings, env).await.unwrap();
    out
}

fn settings(constraint: Constraint) -> QuantizeSettings {
    QuantizeSettings {
        constraint,
        episodes: 4,
        warmup_episodes: 2,
        finetune_steps: 3,
        final_steps: 6,
        lr: 0.005,
        eval_images: 64,
        calibration_images: 16,
        allow_fp32: true,
        seed: 1,
        runtime: "tract".into(),
        measure_threads: 1,
    }
}

/// `tables` names the fp32 and int8 tables in `dir` (latency and energy tables differ).
fn env(agent: &TestAgent, run: &Path, out: &Path, (dir, tables): (&Path, &str), resume: bool) -> QuantizeEnv {
    QuantizeEnv {
        run: run.to_path_buf(),
        out: out.to_path_buf(),
        resume,
        devices: edgeloop::measure::Devices::Agents(vec![agent.client()]),
        fp32_table: Some(dir.join(format!("{tables}.csv"))),
        int8_table: Some(dir.join(format!("{tables}-int8.csv"))),
        device_kind: DeviceKind::Cpu,
        probe_request: probe(10),
        final_request: final_request(),
        events: std::sync::Arc::new(Discard),
    }
}

/// The files of a finished quantization and what they must hold.
fn check_outputs(out: &Path, result: &QuantizeResult) {
    for file in ["result.json", "policy.json", "model-int.onnx", "comparison.csv", "episodes.csv", "checkpoint"] {
        assert!(out.join(file).exists(), "{file} is missing");
    }
    let model = std::fs::read(out.join("model-int.onnx")).unwrap();
    assert_eq!(edgeloop::client::sha256_hex(&model), result.model_sha256);
    let logits = run_tract(&model, &vec![0.1; 3 * 32 * 32]);
    assert_eq!(logits.len(), 10);
    let names: Vec<&str> = result.comparison.iter().map(|r| r.model.as_str()).collect();
    assert_eq!(names, ["fp32", "int8", "searched"]);
    assert!(result.comparison.iter().all(|r| r.latency_ms > 0.0 && r.test_accuracy >= 0.0));
    let episodes = std::fs::read_to_string(out.join("episodes.csv")).unwrap();
    assert_eq!(episodes.lines().count(), 1 + result.episodes);
}

#[tokio::test(flavor = "current_thread")]
async fn quantize_meets_size_and_latency_budgets_and_resumes_without_measuring_again() {
    let _device = edgeloop_e2e::exclusive().await;
    let rapl = SimulatedRapl::start(2.0, 10.0);
    let agent = TestAgent::start_on_rapl(&rapl);
    let dir = tempfile::tempdir().unwrap();
    let run = trained_run(&agent, dir.path()).await;
    let latency_tables = (dir.path(), "layers");

    // Size: below uniform int8 (a quarter of fp32), so some weights need fewer than 8 bits.
    let fp32_kb = {
        let space = Space::load("tiny", 1.0).unwrap();
        let arch: edgeloop_space::Arch =
            serde_json::from_str(&std::fs::read_to_string(run.join("arch.json")).unwrap()).unwrap();
        let layers = arch.layers(&space).unwrap();
        quantize::size_kb(&layers, &edgeloop_export::quant::QuantPolicy::uniform(layers.len(), Precision::Fp32))
    };
    let budget_kb = 0.2 * fp32_kb;
    let out = dir.path().join("size");
    let result = quantize::run(settings(Constraint::SizeKb(budget_kb)), env(&agent, &run, &out, latency_tables, false))
        .await
        .unwrap();
    check_outputs(&out, &result);
    assert!(result.budget_met && result.size_kb <= budget_kb, "{} kB over {budget_kb} kB", result.size_kb);
    assert!(result.policy.layers.iter().any(|p| matches!(p, Precision::Int { weight_bits, .. } if *weight_bits < 8)));
    assert_eq!(result.comparison[0].size_kb, fp32_kb);
    assert!(result.table_checks.is_empty(), "a size search needs no tables");

    // Latency: twice the fp32 network's measured p50. On tract an int8
    // layer is slower than fp32, so the policy must keep most layers fp32.
    let fp32_ms: f64 = {
        let searched: serde_json::Value =
            serde_json::from_str(&std::fs::read_to_string(run.join("result.json")).unwrap()).unwrap();
        searched["measured_latency_ms"].as_f64().unwrap()
    };
    let budget_ms = 2.0 * fp32_ms;
    let out = dir.path().join("latency");
    let latency = settings(Constraint::LatencyMs(budget_ms));
    let result = quantize::run(latency.clone(), env(&agent, &run, &out, latency_tables, false)).await.unwrap();
    check_outputs(&out, &result);
    eprintln!("{}", quantize::render_summary(&result, &out));
    assert!(result.budget_met, "measured {} ms over {budget_ms} ms", result.measured_latency_ms);
    assert!(result.measured_latency_ms <= budget_ms);
    assert_eq!(result.table_checks.len(), 4, "fp32, int8 and two mixed policies checked on the device");
    assert!(result.device_measurements >= 4);
    let (int8, fp32) = (&result.comparison[1], &result.comparison[0]);
    eprintln!("tract here: fp32 {:.4} ms, int8 {:.4} ms", fp32.latency_ms, int8.latency_ms);

    // Resumed when finished: no episode reruns, no policy is measured again.
    let again = quantize::run(latency, env(&agent, &run, &out, latency_tables, true)).await.unwrap();
    assert_eq!(again.device_measurements, 0);
    assert_eq!(again.policy, result.policy);
    // A fresh search into a folder that holds one is refused.
    let err = quantize::run(settings(Constraint::LatencyMs(budget_ms)), env(&agent, &run, &out, latency_tables, false))
        .await
        .unwrap_err();
    assert!(err.to_string().contains("--resume"), "{err}");

    // Energy: twice what the fp32 network measures per inference above idle.
    let model = std::fs::read(run.join("model.onnx")).unwrap();
    let request = MeasureRequest { energy: true, ..quick_request("") };
    let (_, m) = agent.client().upload_and_measure(&model, &request).await.unwrap();
    let budget_mj = 2.0 * m.energy.unwrap().mj_per_inference;
    let out = dir.path().join("energy");
    let energy = QuantizeSettings { episodes: 2, warmup_episodes: 1, ..settings(Constraint::EnergyMj(budget_mj)) };
    let result = quantize::run(energy, env(&agent, &run, &out, (dir.path(), "energy"), false)).await.unwrap();
    check_outputs(&out, &result);
    let measured = result.measured_energy_mj.expect("energy measured");
    assert!(result.budget_met && measured <= budget_mj, "{measured} mJ over {budget_mj} mJ");
    assert!(result.comparison.iter().all(|r| r.energy_mj.is_some()));
    let energy_table = edgeloop::table::LatencyTable::load(&dir.path().join("energy-int8.csv")).unwrap();
    assert!(energy_table.has_energy());
}
