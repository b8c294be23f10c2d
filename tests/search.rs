//! `edgeloop search` end to end through the library: the `tiny` space, the
//! synthetic dataset, a real agent on loopback measuring real ONNX.

use std::path::Path;

use edgeloop::commands::table::{self, TablePrecision};
use edgeloop::predict::Predictor;
use edgeloop::search::{self, SearchEnv, SearchSettings, Strategy};
use edgeloop::table::LatencyTable;
use edgeloop_api::MeasureRequest;
use edgeloop_e2e::{SimulatedRapl, TestAgent, quick_request, tiny_search};
use edgeloop_space::{Arch, Space};
use edgeloop_train::DeviceKind;

/// One search at a time: a search trains on every core, and a measurement
/// taken beside another test's training would not be the device's latency.
static ONE_AT_A_TIME: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());

fn env(agent: &TestAgent, out: &Path, table: &Path) -> SearchEnv {
    let probe = |runs| MeasureRequest { min_runs: runs, ..quick_request("") };
    SearchEnv {
        out: out.to_path_buf(),
        resume: false,
        devices: vec![agent.client()],
        table: Some(table.to_path_buf()),
        device_kind: DeviceKind::Cpu,
        probe_request: probe(10),
        final_request: MeasureRequest { min_duration_ms: 200, ..probe(30) },
    }
}

/// A quickly measured table of tiny on `agent`.
async fn build_table(agent: &TestAgent, dir: &Path) -> std::path::PathBuf {
    let path = dir.join("tiny.csv");
    let template = MeasureRequest { min_duration_ms: 30, ..quick_request("") };
    table::build(&agent.client(), &Space::load("tiny", 1.0).unwrap(), &template, TablePrecision::Fp32, Some(&path))
        .await
        .unwrap();
    path
}

fn csv_column(path: &Path, column: &str) -> Vec<f64> {
    let mut reader = csv::Reader::from_path(path).unwrap();
    let index = reader.headers().unwrap().iter().position(|h| h == column).unwrap();
    reader.records().map(|r| r.unwrap()[index].parse().unwrap()).collect()
}

#[tokio::test(flavor = "current_thread")]
async fn heavy_latency_term_moves_alpha_to_cheap_ops_and_meets_the_budget() {
    let _one = ONE_AT_A_TIME.lock().await;
    let agent = TestAgent::start();
    let dir = tempfile::tempdir().unwrap();
    let table_path = build_table(&agent, dir.path()).await;
    let space = Space::load("tiny", 1.0).unwrap();
    let latency = LatencyTable::load(&table_path).unwrap();
    let predictor = Predictor::new(&latency);
    // The cheapest arch (`zero` or the smallest MBConv everywhere) and the mean over all ops.
    let cheapest = Arch {
        space: "tiny".into(),
        width: 1.0,
        ops: space
            .blocks
            .iter()
            .map(|b| {
                *b.candidates
                    .iter()
                    .min_by(|x, y| {
                        let cost =
                            |op: &edgeloop_space::Op| op.layer(b).map_or(0.0, |l| predictor.layer_ms(&l, 0.0).unwrap());
                        cost(x).total_cmp(&cost(y))
                    })
                    .unwrap()
            })
            .collect(),
    };
    let cheapest_ms = predictor.predict(&space, &cheapest).unwrap().total_ms;
    let out = dir.path().join("heavy");
    let s = tiny_search(Strategy::Gradient, 0.0);
    // Budget between the cheapest arch and a uniformly random one.
    let uniform_ms =
        (0..64).map(|seed| predictor.predict(&space, &Arch::random(&space, seed)).unwrap().total_ms).sum::<f64>()
            / 64.0;
    let budget = (cheapest_ms + uniform_ms) / 2.0;
    let result = search::run(SearchSettings { budget_ms: Some(budget), ..s.clone() }, env(&agent, &out, &table_path))
        .await
        .unwrap();

    let expected = csv_column(&out.join("search.csv"), "expected_latency_ms");
    assert_eq!(expected.len(), 4);
    assert!(expected[3] < expected[0] * 0.97, "E[latency] did not fall: {expected:?}");
    assert!(result.budget_met, "{result:?}");
    assert!(result.measured_latency_ms <= budget);
    for file in ["arch.json", "search.csv", "checkpoint", "model.onnx", "result.json", "measurements.jsonl"] {
        assert!(out.join(file).exists(), "{file} missing");
    }
    let arch: Arch = serde_json::from_str(&std::fs::read_to_string(out.join("arch.json")).unwrap()).unwrap();
    assert_eq!(arch, result.arch);
    assert_eq!(result.model_sha256, edgeloop::client::sha256_hex(&std::fs::read(out.join("model.onnx")).unwrap()));
    assert_eq!(result.device_id, agent.agent.device_id());

    // Without the latency term the search need not meet the budget, but
    // result.json still tells the truth about the measurement.
    let out = dir.path().join("off");
    let off = SearchSettings { latency_loss: "off".into(), budget_ms: Some(budget), ..s };
    let result = search::run(off, env(&agent, &out, &table_path)).await.unwrap();
    assert_eq!(result.budget_met, result.measured_latency_ms <= budget);
}

#[tokio::test(flavor = "current_thread")]
async fn reinforce_measures_sampled_archs_once_each() {
    let _one = ONE_AT_A_TIME.lock().await;
    let agent = TestAgent::start();
    let dir = tempfile::tempdir().unwrap();
    let table_path = build_table(&agent, dir.path()).await;
    let out = dir.path().join("rl");
    let s = SearchSettings { epochs: 2, arch_every: 4, ..tiny_search(Strategy::Reinforce, 1.0) };
    let result = search::run(s, env(&agent, &out, &table_path)).await.unwrap();
    let lines = std::fs::read_to_string(out.join("measurements.jsonl")).unwrap();
    let keys: Vec<(String, String)> = lines
        .lines()
        .map(|l| {
            let v: serde_json::Value = serde_json::from_str(l).unwrap();
            (v["device_id"].as_str().unwrap().to_string(), v["arch_hash"].as_str().unwrap().to_string())
        })
        .collect();
    let distinct: std::collections::HashSet<_> = keys.iter().collect();
    assert_eq!(distinct.len(), keys.len(), "an arch was measured twice");
    assert_eq!(result.device_measurements, keys.len());
    let rewards = csv_column(&out.join("search.csv"), "mean_reward");
    assert!(rewards[1..].iter().all(|r| r.is_finite() && *r > 0.0), "{rewards:?}");
    assert_eq!(result.budget_met, result.measured_latency_ms <= 1.0);
}

#[tokio::test(flavor = "current_thread")]
async fn energy_budget_prices_from_the_energy_table_and_judges_measured_energy() {
    let _one = ONE_AT_A_TIME.lock().await;
    let rapl = SimulatedRapl::start(2.0, 10.0);
    let agent = TestAgent::start_on_rapl(&rapl);
    let dir = tempfile::tempdir().unwrap();
    let space = Space::load("tiny", 1.0).unwrap();
    let table_path = dir.path().join("tiny--energy.csv");
    let template = MeasureRequest { energy: true, ..quick_request("") };
    table::build(&agent.client(), &space, &template, TablePrecision::Fp32, Some(&table_path)).await.unwrap();
    let energy_table = LatencyTable::load(&table_path).unwrap();
    assert!(energy_table.has_energy());
    assert!(energy_table.rows().iter().all(|r| r.energy.as_ref().is_some_and(|e| e.sensor == "rapl:package-0")));

    let predictor = Predictor::energy(&energy_table).unwrap();
    let uniform_mj =
        (0..64).map(|seed| predictor.predict(&space, &Arch::random(&space, seed)).unwrap().total_ms).sum::<f64>()
            / 64.0;
    let budget = 0.8 * uniform_mj;
    let out = dir.path().join("energy");
    let s = SearchSettings { budget_ms: None, energy_budget_mj: Some(budget), ..tiny_search(Strategy::Gradient, 0.0) };
    let result = search::run(s, env(&agent, &out, &table_path)).await.unwrap();

    let expected = csv_column(&out.join("search.csv"), "expected_energy_mj");
    assert!(expected[3] < expected[0], "E[energy] did not fall: {expected:?}");
    assert!(csv_column(&out.join("search.csv"), "argmax_measured_mj").iter().all(|mj| mj.is_finite()));
    let measured = result.measured_energy_mj.expect("the final model's energy was measured");
    assert_eq!(result.budget_met, measured <= budget, "{result:?}");
    assert_eq!(result.energy_budget_mj, Some(budget));
    assert_eq!(result.budget_ms, None);
    assert_eq!(result.energy_sensor.as_deref(), Some("rapl:package-0"));
    assert!(result.predicted_energy_mj.is_some_and(|mj| mj > 0.0));
    let cached = std::fs::read_to_string(out.join("measurements.jsonl")).unwrap();
    assert!(cached.lines().all(|l| l.contains("\"energy_mj\"")), "{cached}");
}
