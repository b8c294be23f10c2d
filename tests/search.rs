//! `edgeloop search` end to end through the library: the `tiny` space, the
//! synthetic dataset, a real agent on loopback measuring real ONNX.

use std::path::{Path, PathBuf};

use edgeloop::calibrate::{self, Calibration};
use edgeloop::events::{Discard, Event, Recorder};
use edgeloop::measure::Devices;
use edgeloop::predict::{Predictor, Stat};
use edgeloop::search::{self, SearchEnv, SearchResult, SearchSettings, Strategy};
use edgeloop::table::LatencyTable;
use edgeloop::table::build::{self, TablePrecision};
use edgeloop_api::MeasureRequest;
use edgeloop_e2e::{SimulatedRapl, TestAgent, quick_request, tiny_search, with_latency_loss};
use edgeloop_space::{Arch, Space};
use edgeloop_train::{CostLossKind, DeviceKind};

fn final_request() -> MeasureRequest {
    MeasureRequest { min_runs: 30, min_duration_ms: 200, ..quick_request("") }
}

fn env(agent: &TestAgent, out: &Path, table: &Path) -> SearchEnv {
    SearchEnv {
        out: out.to_path_buf(),
        resume: false,
        devices: Devices::Agents(vec![agent.client()]),
        table: Some(table.to_path_buf()),
        device_kind: DeviceKind::Cpu,
        probe_request: MeasureRequest { min_runs: 10, ..quick_request("") },
        final_request: final_request(),
        events: std::sync::Arc::new(Discard),
    }
}

/// A quickly measured table of tiny on `agent`.
async fn build_table(agent: &TestAgent, dir: &Path) -> PathBuf {
    let path = dir.join("tiny.csv");
    let template = MeasureRequest { min_duration_ms: 30, ..quick_request("") };
    build::build(&mut agent.devices().await, &tiny(), &template, TablePrecision::Fp32, Some(&path), &Discard)
        .await
        .unwrap();
    path
}

fn tiny() -> Space {
    Space::load("tiny", 1.0).unwrap()
}

/// The table at `path` calibrated on whole networks measured as final models are.
async fn calibrated(agent: &TestAgent, path: &Path) -> (LatencyTable, Calibration) {
    let table = LatencyTable::load(path).unwrap();
    let template = calibrate::network_request(&table, &final_request()).unwrap();
    let calibration =
        calibrate::run(&mut agent.devices().await, &tiny(), &table, &template, 6, 11, |_| {}).await.unwrap();
    (table, calibration)
}

/// An agent, its table of `tiny` and that table's calibration.
struct Calibrated {
    agent: TestAgent,
    dir: tempfile::TempDir,
    table_path: PathBuf,
    calibration: Calibration,
    /// Calibrated p50 of the cheapest architecture and the mean of random ones.
    cheapest: f64,
    uniform: f64,
}

impl Calibrated {
    async fn new() -> Calibrated {
        let agent = TestAgent::start();
        let dir = tempfile::tempdir().unwrap();
        let table_path = build_table(&agent, dir.path()).await;
        let (table, calibration) = calibrated(&agent, &table_path).await;
        let (cheapest, uniform) = cheapest_and_uniform_ms(&table, &calibration);
        Calibrated { agent, dir, table_path, calibration, cheapest, uniform }
    }
}

/// The space's cheapest architecture by the calibrated p50 predictor, as
/// the search finds it (`derive::cheapest`).
fn cheapest_arch(table: &LatencyTable, calibration: &Calibration) -> Arch {
    let space = tiny();
    let predictor = Predictor::calibrated(table, Some(calibration), Stat::P50).unwrap();
    let costs = search::costs::cost_model(&predictor, &space).unwrap();
    let selection = search::derive::cheapest(&costs);
    Arch {
        space: "tiny".into(),
        width: 1.0,
        ops: space.blocks.iter().zip(selection).map(|(b, i)| b.candidates[i]).collect(),
    }
}

/// The calibrated p50 of the space's cheapest architecture and the mean
/// over random ones (about E[latency] under uniform α).
fn cheapest_and_uniform_ms(table: &LatencyTable, calibration: &Calibration) -> (f64, f64) {
    let space = tiny();
    let predictor = Predictor::calibrated(table, Some(calibration), Stat::P50).unwrap();
    let ms = |arch: &Arch| predictor.predict(&space, arch).unwrap().total_ms;
    let uniform = (0..64).map(|seed| ms(&Arch::random(&space, seed))).sum::<f64>() / 64.0;
    (ms(&cheapest_arch(table, calibration)), uniform)
}

fn csv_column(path: &Path, column: &str) -> Vec<f64> {
    let mut reader = csv::Reader::from_path(path).unwrap();
    let index = reader.headers().unwrap().iter().position(|h| h == column).unwrap();
    reader.records().map(|r| r.unwrap()[index].parse().unwrap()).collect()
}

/// Settings of the constrained-search tests: long enough for α to move.
fn constrained(budget_ms: f64, latency_loss: CostLossKind) -> SearchSettings {
    let mut settings = with_latency_loss(tiny_search(Strategy::Gradient, budget_ms), latency_loss, 0.01);
    settings.schedule.epochs = 4;
    settings.schedule.arch_lr = 0.05;
    settings
}

fn assert_run_files(out: &Path, result: &SearchResult) {
    for file in
        ["arch.json", "search.csv", "archs.csv", "checkpoint", "model.onnx", "result.json", "measurements.jsonl"]
    {
        assert!(out.join(file).exists(), "{file} missing");
    }
    let arch: Arch = serde_json::from_str(&std::fs::read_to_string(out.join("arch.json")).unwrap()).unwrap();
    assert_eq!(arch, result.arch);
    assert_eq!(result.model_sha256, edgeloop::client::sha256_hex(&std::fs::read(out.join("model.onnx")).unwrap()));
}

#[tokio::test(flavor = "current_thread")]
async fn the_multiplier_meets_a_tight_budget_a_fixed_penalty_misses_and_vanishes_under_a_loose_one() {
    let _device = edgeloop_e2e::exclusive().await;
    let Calibrated { agent, dir, table_path, calibration: _, cheapest, uniform } = Calibrated::new().await;
    let tight = cheapest + 0.35 * (uniform - cheapest);

    // A weak fixed penalty leaves E[latency] above a tight budget…
    let out = dir.path().join("fixed");
    search::run(constrained(tight, CostLossKind::AddLinear), env(&agent, &out, &table_path)).await.unwrap();
    let fixed = csv_column(&out.join("search.csv"), "expected_cost_ratio");
    assert!(*fixed.last().unwrap() > 1.0, "E/T with add#linear λ=0.01: {fixed:?}");

    // …the multiplier grows until E[latency] is under it, and the final model meets it.
    let out = dir.path().join("lagrange");
    let result = search::run(constrained(tight, CostLossKind::Lagrange), env(&agent, &out, &table_path)).await.unwrap();
    let ratio = csv_column(&out.join("search.csv"), "expected_cost_ratio");
    let lambda = csv_column(&out.join("search.csv"), "lambda");
    assert!(*ratio.last().unwrap() <= 1.0, "E/T with lagrange: {ratio:?} (λ {lambda:?})");
    assert!(lambda.iter().skip(1).any(|l| *l > 0.0), "λ never grew: {lambda:?}");
    assert_eq!(result.budget_met, Some(true), "{result:?}");
    assert!(result.measured_latency_ms <= tight);
    assert_eq!(result.lambda, lambda.last().copied());
    assert!(!result.candidates.is_empty() && result.candidates.iter().all(|c| c.predicted <= tight));
    assert!(result.fastest_measured.is_some_and(|ms| ms <= tight));
    assert!(!result.hygiene.is_empty());
    assert_run_files(&out, &result);
    assert_eq!(result.device_id, agent.agent.device_id());

    // Under a budget every architecture meets, there is no pressure: λ stays at 0.
    let out = dir.path().join("loose");
    let loose = 3.0 * uniform;
    let result = search::run(constrained(loose, CostLossKind::Lagrange), env(&agent, &out, &table_path)).await.unwrap();
    let lambda = csv_column(&out.join("search.csv"), "lambda");
    assert!(lambda.iter().all(|l| *l == 0.0), "λ under a loose budget: {lambda:?}");
    assert_eq!(result.lambda, Some(0.0));
    assert_eq!(result.budget_met, Some(true));
}

#[tokio::test(flavor = "current_thread")]
async fn a_device_slower_than_its_calibration_is_met_by_growing_the_margin() {
    let _device = edgeloop_e2e::exclusive().await;
    let Calibrated { agent, dir, table_path, calibration, cheapest, uniform } = Calibrated::new().await;
    let budget = cheapest + 0.3 * (uniform - cheapest);
    // A stale calibration: the device now runs twice as slow as it says,
    // and its networks agree with it exactly, so its margin is the least.
    let mut stale = calibration.clone();
    let k = calibration.scale(Stat::P50).unwrap() * 0.5;
    stale.scale_p50 = Some(k);
    let c = stale.overhead_ms.unwrap();
    for sample in &mut stale.samples {
        sample.p50_ms = c + k * sample.layer_sum_ms;
    }
    stale.save_for(&table_path).unwrap();
    let first_margin = stale.margin(Stat::P50).unwrap();
    assert!(first_margin < 0.03, "{first_margin}");

    let out = dir.path().join("stale");
    let mut settings = constrained(budget, CostLossKind::Lagrange);
    settings.derive.max_rounds = 3;
    let result = search::run(settings, env(&agent, &out, &table_path)).await.unwrap();
    assert_eq!(result.budget_met, Some(true), "{result:?}");
    assert!(result.measured_latency_ms <= budget);
    // Candidates derived with the stale margin measured over the budget, so
    // the margin grew (within a round, or after a final model missed).
    let margins: std::collections::BTreeSet<u64> = result.candidates.iter().map(|c| (c.margin * 1e6) as u64).collect();
    assert!(result.margin.unwrap() > first_margin, "the margin never grew: {result:?}");
    assert!(margins.len() >= 2 || !result.misses.is_empty(), "{result:?}");
    // Something measured over the budget on the way: a candidate, or a final model.
    assert!(result.candidates.iter().any(|c| !c.met) || !result.misses.is_empty(), "nothing missed: {result:?}");
}

#[tokio::test(flavor = "current_thread")]
async fn a_stored_calibration_is_kept_while_the_device_agrees_and_fitted_again_when_it_does_not() {
    let _device = edgeloop_e2e::exclusive().await;
    let Calibrated { agent, dir: _dir, table_path, calibration, .. } = Calibrated::new().await;
    let mut pool = agent.devices().await;
    let load = async |pool: &mut edgeloop::measure::DevicePool| {
        let events = Recorder::default();
        let (_, fitted) =
            search::calibrated_table(pool, &tiny(), &table_path, Stat::P50, &final_request(), true, &events)
                .await
                .unwrap();
        let stale = events.events().into_iter().find_map(|e| match e {
            Event::CalibrationStale { ratio, .. } => Some(ratio),
            _ => None,
        });
        let refitted = events.events().iter().any(|e| matches!(e, Event::Calibrating { .. }));
        (fitted, stale, refitted)
    };

    let (kept, stale, refitted) = load(&mut pool).await;
    assert_eq!((stale, refitted), (None, false), "a calibration fitted a moment ago was refitted");
    assert_eq!(kept.archs, calibration.archs);

    // As if the table and its calibration had been measured while the device ran 5× slower.
    let mut slow = calibration.clone();
    slow.scale *= 5.0;
    slow.scale_p50 = slow.scale_p50.map(|k| k * 5.0);
    slow.scale_p90 = slow.scale_p90.map(|k| k * 5.0);
    let c = calibration.overhead_ms.unwrap();
    for sample in &mut slow.samples {
        for ms in [&mut sample.min_ms, &mut sample.p50_ms, &mut sample.p90_ms] {
            *ms = c + 5.0 * (*ms - c);
        }
    }
    slow.save_for(&table_path).unwrap();
    let (fitted, stale, refitted) = load(&mut pool).await;
    let ratio = stale.expect("the stale calibration was not noticed");
    assert!(ratio < 1.0 - slow.stale_tolerance(), "{ratio}");
    assert!(refitted);
    // Fitted to the device again. (Two fits on this shared VM differ by up
    // to half: whole seconds of it run slower. Five times they do not.)
    let k = |c: &Calibration| c.scale(Stat::Min).unwrap();
    assert!(k(&fitted) < k(&slow) / 2.5, "refitted {} vs the stale {}", k(&fitted), k(&slow));
    let stored = Calibration::load_for(&table_path).unwrap().unwrap();
    assert_eq!(stored.scale(Stat::P50), fitted.scale(Stat::P50), "the refitted calibration is stored");
}

#[tokio::test(flavor = "current_thread")]
async fn an_impossible_budget_is_refused_with_the_fastest_archs_measurement() {
    let _device = edgeloop_e2e::exclusive().await;
    let agent = TestAgent::start();
    let dir = tempfile::tempdir().unwrap();
    let table_path = build_table(&agent, dir.path()).await;
    let out = dir.path().join("impossible");
    let error =
        search::run(constrained(0.001, CostLossKind::Lagrange), env(&agent, &out, &table_path)).await.unwrap_err();
    let message = format!("{error:#}");
    assert!(message.contains("cannot be met on this device"), "{message}");
    assert!(message.contains("fastest architecture of tiny") && message.contains("measured"), "{message}");
    assert!(!out.join("result.json").exists());
}

#[tokio::test(flavor = "current_thread")]
async fn a_slow_cached_reading_of_the_fastest_arch_is_measured_again_before_a_refusal() {
    let _device = edgeloop_e2e::exclusive().await;
    let Calibrated { agent, dir, table_path, calibration, cheapest, uniform } = Calibrated::new().await;
    let budget = cheapest + 0.3 * (uniform - cheapest);
    // The run's cache holds a reading of the fastest arch from a slow
    // stretch of the device, far over the budget.
    let out = dir.path().join("slow-stretch");
    std::fs::create_dir_all(&out).unwrap();
    let fastest = cheapest_arch(&LatencyTable::load(&table_path).unwrap(), &calibration);
    let slow = 1000.0 * budget;
    let mut cache = edgeloop::cache::MeasurementCache::open(&out.join("measurements.jsonl")).unwrap();
    cache
        .insert(edgeloop::cache::CachedMeasurement {
            device_id: agent.agent.device_id().to_string(),
            arch_hash: fastest.hash(),
            ops: fastest.ops.iter().map(ToString::to_string).collect(),
            p50_ms: slow,
            p90_ms: slow,
            min_ms: slow,
            mean_ms: slow,
            energy_mj: None,
            other_busy_cores: None,
            remeasured: 0,
            suspect: None,
            measured_at: "2026-01-01T00:00:00Z".into(),
        })
        .unwrap();
    drop(cache);

    let events = std::sync::Arc::new(Recorder::default());
    let env = SearchEnv { events: events.clone(), ..env(&agent, &out, &table_path) };
    let result = search::run(constrained(budget, CostLossKind::Lagrange), env).await.unwrap();
    let fresh = result.fastest_measured.unwrap();
    let remeasured: Vec<_> =
        events.events().into_iter().filter(|e| matches!(e, Event::FastestRemeasured { .. })).collect();
    assert_eq!(remeasured.len(), 1, "{remeasured:?}");
    assert!(fresh <= budget, "the verdict used the stale reading: {fresh} ms > {budget} ms");
    assert_eq!(result.budget_met, Some(true), "{result:?}");
    let cache = edgeloop::cache::MeasurementCache::open(&out.join("measurements.jsonl")).unwrap();
    let kept = cache.get(&[agent.agent.device_id().to_string()], &fastest.hash(), false).unwrap();
    assert_eq!(kept.p50_ms, fresh, "the fresh reading replaces the stale one");
}

#[tokio::test(flavor = "current_thread")]
async fn reinforce_measures_sampled_archs_once_each_and_outlives_one_of_its_two_agents() {
    let _device = edgeloop_e2e::exclusive().await;
    let (agent, second) = (TestAgent::start(), TestAgent::start());
    let dir = tempfile::tempdir().unwrap();
    let table_path = build_table(&agent, dir.path()).await;
    let out = dir.path().join("rl");
    let mut s = tiny_search(Strategy::Reinforce, 1.0);
    (s.schedule.epochs, s.schedule.arch_every) = (2, 4);
    let mut env = env(&agent, &out, &table_path);
    env.devices = Devices::Agents(vec![agent.client(), second.client()]);
    // The second agent dies as a crashing one would once the search has measured a few archs.
    let measurements = out.join("measurements.jsonl");
    let measured_so_far = move || std::fs::read(&measurements).map_or(0, |b| b.iter().filter(|&&c| c == b'\n').count());
    let killer = std::thread::spawn(move || {
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(300);
        while measured_so_far() < 2 && std::time::Instant::now() < deadline {
            std::thread::sleep(std::time::Duration::from_millis(5));
        }
        second.kill();
        measured_so_far()
    });
    let result = search::run(s, env).await.unwrap();
    let killed_at = killer.join().unwrap();
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
    assert!(keys.len() > killed_at, "nothing was measured after the agent died ({killed_at} before)");
    let rewards = csv_column(&out.join("search.csv"), "mean_reward");
    assert!(rewards[1..].iter().all(|r| r.is_finite() && *r > 0.0), "{rewards:?}");
    // tiny runs in ~0.1–0.3 ms here: 1 ms is met by every architecture.
    assert_eq!(result.budget_met, Some(true), "{result:?}");
}

/// A short search by `strategy` (an arch step every `arch_every` weight
/// steps) under a budget halfway between the cheapest arch and a random
/// one, which it must meet on the device. Returns its result, its run
/// folder and the budget.
async fn halfway_search(strategy: Strategy, arch_every: usize) -> (SearchResult, tempfile::TempDir, PathBuf, f64) {
    let Calibrated { agent, dir, table_path, calibration: _, cheapest, uniform } = Calibrated::new().await;
    let budget = cheapest + 0.5 * (uniform - cheapest);
    let out = dir.path().join("run");
    let mut settings = tiny_search(strategy, budget);
    settings.schedule.arch_every = arch_every;
    let result = search::run(settings, env(&agent, &out, &table_path)).await.unwrap();
    assert_eq!(result.strategy, Some(strategy));
    assert_eq!(result.budget_met, Some(true), "{result:?}");
    assert!(result.measured_latency_ms <= budget);
    assert_run_files(&out, &result);
    (result, dir, out, budget)
}

#[tokio::test(flavor = "current_thread")]
async fn random_search_ranks_uniform_draws_within_the_budget_by_supernet_accuracy() {
    let _device = edgeloop_e2e::exclusive().await;
    let (result, _dir, out, budget) = halfway_search(Strategy::Random, 1).await;
    assert_eq!(result.lambda, None);
    // The first derivation's candidates: drawn within the limits, most accurate first.
    let first: Vec<_> = result.candidates.iter().take_while(|c| c.margin == result.candidates[0].margin).collect();
    assert!(!first.is_empty() && first.len() <= 3, "{result:?}");
    assert!(first.iter().all(|c| c.predicted <= budget && (0.0..=1.0).contains(&c.score)), "{first:?}");
    assert!(first.windows(2).all(|w| w[0].score >= w[1].score), "not ranked by accuracy: {first:?}");
    assert_eq!(result.derived_arch_hash.as_deref(), Some(first[0].arch_hash.as_str()));
    // Nothing moves α in a random search: search.csv has the common columns only.
    let header = std::fs::read_to_string(out.join("search.csv")).unwrap().lines().next().unwrap().to_string();
    assert!(header.ends_with(",seconds") && !header.contains("alpha_entropy"), "{header}");
}

#[tokio::test(flavor = "current_thread")]
async fn nao_grows_its_pool_with_new_archs_within_the_budget_and_derives_from_it() {
    let _device = edgeloop_e2e::exclusive().await;
    let (result, _dir, out, budget) = halfway_search(Strategy::Nao, 1).await;
    assert_eq!(result.lambda, None);
    // Two rounds, one after each search epoch but the last: the pool grows
    // by the archs each decoded (topped up with random ones within the
    // budget), all of them measured on the device.
    let csv = out.join("search.csv");
    let pool = csv_column(&csv, "pool");
    let accepted = csv_column(&csv, "accepted");
    let random = csv_column(&csv, "random");
    assert_eq!(pool[0], 30.0, "{pool:?}");
    let rounds: Vec<usize> = (0..accepted.len()).filter(|&i| accepted[i].is_finite()).collect();
    assert_eq!(rounds.len(), 2, "{accepted:?}");
    // Up to 8 new archs a round: fewer when the pool already holds most of
    // those the table puts within the limit (how many depends on the
    // calibration this noisy VM fitted).
    assert!(accepted[rounds[0]] + random[rounds[0]] > 0.0, "{pool:?} {accepted:?} {random:?}");
    for &i in &rounds {
        let added = accepted[i] + random[i];
        assert!(added <= 8.0 && pool[i] == pool[i - 1] + added, "{pool:?} {accepted:?} {random:?}");
        assert!(csv_column(&csv, "reconstruction")[i] > 0.5, "the decoder learnt little");
    }
    assert!(csv_column(&csv, "measured")[rounds[0]] > 0.0);
    // The leader after a round is a pool arch within the budget, measured.
    let measured = csv_column(&csv, "argmax_measured_ms");
    assert!(rounds.iter().all(|&i| measured[i].is_finite()), "{measured:?}");
    assert!(result.candidates.iter().all(|c| c.predicted <= budget && (0.0..=1.0).contains(&c.score)));
}

#[tokio::test(flavor = "current_thread")]
async fn unas_measures_every_architecture_it_draws_and_keeps_the_budget_with_its_multiplier() {
    let _device = edgeloop_e2e::exclusive().await;
    let (result, _dir, out, _) = halfway_search(Strategy::Unas, 4).await;
    let csv = out.join("search.csv");
    // Every search epoch's arch steps measured their draws on the device.
    let cost = csv_column(&csv, "sample_cost");
    assert!(cost[0].is_nan() && cost[1..].iter().all(|c| c.is_finite() && *c > 0.0), "{cost:?}");
    assert!(csv_column(&csv, "arch_loss")[1..].iter().all(|l| l.is_finite()));
    let lambda = csv_column(&csv, "lambda");
    assert!(lambda.iter().all(|l| *l >= 0.0), "{lambda:?}");
    assert_eq!(result.lambda, lambda.last().copied());
    assert!(result.device_measurements >= 3, "{result:?}");
}

#[tokio::test(flavor = "current_thread")]
async fn energy_budget_prices_from_the_energy_table_and_judges_measured_energy() {
    let _device = edgeloop_e2e::exclusive().await;
    let rapl = SimulatedRapl::start(2.0, 10.0);
    let agent = TestAgent::start_on_rapl(&rapl);
    let dir = tempfile::tempdir().unwrap();
    let space = Space::load("tiny", 1.0).unwrap();
    let table_path = dir.path().join("tiny--energy.csv");
    let template = MeasureRequest { energy: true, ..quick_request("") };
    build::build(&mut agent.devices().await, &space, &template, TablePrecision::Fp32, Some(&table_path), &Discard)
        .await
        .unwrap();
    let energy_table = LatencyTable::load(&table_path).unwrap();
    assert!(energy_table.has_energy());
    assert!(energy_table.rows().iter().all(|r| r.energy.as_ref().is_some_and(|e| e.sensor == "rapl:package-0")));

    let predictor = Predictor::energy(&energy_table).unwrap();
    let uniform_mj =
        (0..64).map(|seed| predictor.predict(&space, &Arch::random(&space, seed)).unwrap().total_ms).sum::<f64>()
            / 64.0;
    let budget = 0.8 * uniform_mj;
    let out = dir.path().join("energy");
    let mut s = tiny_search(Strategy::Gradient, 0.0);
    (s.budget.budget_ms, s.budget.energy_budget_mj) = (None, Some(budget));
    let result = search::run(s, env(&agent, &out, &table_path)).await.unwrap();

    let expected = csv_column(&out.join("search.csv"), "expected_energy_mj");
    assert!(expected[3] < expected[0], "E[energy] did not fall: {expected:?}");
    assert!(csv_column(&out.join("search.csv"), "argmax_measured_mj").iter().all(|mj| mj.is_finite()));
    let measured = result.measured_energy_mj.expect("the final model's energy was measured");
    assert_eq!(result.budget_met, Some(measured <= budget), "{result:?}");
    assert_eq!(result.energy_budget_mj, Some(budget));
    assert_eq!(result.budget_ms, None);
    assert_eq!(result.energy_sensor.as_deref(), Some("rapl:package-0"));
    assert!(result.predicted_energy_mj.is_some_and(|mj| mj > 0.0));
    let cached = std::fs::read_to_string(out.join("measurements.jsonl")).unwrap();
    assert!(cached.lines().all(|l| l.contains("\"energy_mj\"")), "{cached}");
}
