//! Latency tables end to end (DESIGN §7): a table of the `tiny` space built
//! on a real agent through the library, resumed, and used to predict.

use std::collections::HashSet;

use edgeloop::events::{Discard, Event, Recorder};
use edgeloop::predict::Predictor;
use edgeloop::table::LatencyTable;
use edgeloop::table::build::{self, BuildReport, TablePrecision};
use edgeloop_e2e::{TestAgent, quick_request};
use edgeloop_space::{Arch, Space};

#[tokio::test(flavor = "multi_thread")]
async fn tiny_table_builds_resumes_and_predicts() {
    let _device = edgeloop_e2e::exclusive().await;
    let agent = TestAgent::start();
    let mut devices = agent.devices().await;
    let space = Space::load("tiny", 1.0).unwrap();
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("tables/tiny.csv");
    let template = quick_request("");

    let events = Recorder::default();
    let report =
        build::build(&mut devices, &space, &template, TablePrecision::Fp32, Some(&path), &events).await.unwrap();
    let targets = build::targets(&space);
    assert_eq!(report, BuildReport { path: path.clone(), total: targets.len(), skipped: 0, measured: targets.len() });
    // One unit of work per row, each named by its key, then the end of the work.
    let events = events.events();
    assert_eq!(events[0], Event::WorkStarted { unit: "rows", total: targets.len() as u64, done: 0 });
    let advanced: Vec<String> = events
        .iter()
        .filter_map(|e| match e {
            Event::WorkAdvanced { status } => status.clone(),
            _ => None,
        })
        .collect();
    assert_eq!(advanced, targets.iter().map(|t| t.key()).collect::<Vec<_>>());
    assert_eq!(events.last(), Some(&Event::WorkFinished));

    // Every key exactly once (loading refuses duplicates), the overhead row included.
    let built = LatencyTable::load(&path).unwrap();
    let keys: Vec<String> = built.rows().iter().map(|r| r.key()).collect();
    let expected: Vec<String> = targets.iter().map(|t| t.key()).collect();
    assert_eq!(keys, expected);
    assert_eq!(keys.iter().collect::<HashSet<_>>().len(), keys.len());
    assert!(built.overhead(space.prefix_layers()[0].input).is_some());
    let provenance = built.provenance().unwrap();
    assert_eq!((provenance.device_id.as_str(), provenance.runtime.as_str()), (agent.agent.device_id(), "tract"));
    assert!(built.rows().iter().all(|r| r.n >= template.min_runs && r.p50_ms > 0.0));

    // A second build finds nothing to do and leaves the file as it was.
    let before = std::fs::read(&path).unwrap();
    let again =
        build::build(&mut devices, &space, &template, TablePrecision::Fp32, Some(&path), &Discard).await.unwrap();
    assert_eq!((again.skipped, again.measured), (targets.len(), 0));
    assert_eq!(std::fs::read(&path).unwrap(), before);

    // Another thread count is another table.
    let two_threads = edgeloop_api::MeasureRequest { threads: 2, ..template.clone() };
    let error = build::build(&mut devices, &space, &two_threads, TablePrecision::Fp32, Some(&path), &Discard)
        .await
        .unwrap_err()
        .to_string();
    assert!(error.contains("1 thread(s), not with") && error.contains("2 thread(s)"), "{error}");

    let arch = Arch::random(&space, 7);
    let prediction = Predictor::new(&built).predict(&space, &arch).unwrap();
    let layers = arch.layers(&space).unwrap();
    assert_eq!(prediction.per_layer.len(), layers.len());
    assert!(prediction.per_layer.iter().zip(&layers).all(|(cost, layer)| cost.key == layer.key()));
    assert!(prediction.total_ms > 0.0 && prediction.overhead_ms > 0.0);
    let sum = prediction.overhead_ms + prediction.per_layer.iter().map(|l| l.ms).sum::<f64>();
    assert!((prediction.total_ms - sum).abs() < 1e-9, "{} != {sum}", prediction.total_ms);
}
