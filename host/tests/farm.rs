//! The device farm against a real nats-server (Debian's 2.9.10 in CI) on a
//! random loopback port with a temporary store, real agents, and workers
//! as child processes (`edgeloop farm worker`) killed as crashes kill.
//! Jobs wait 2 s for a silent worker before they are redelivered.
//!
//! Without nats-server the tests say so and pass, unless
//! `EDGELOOP_REQUIRE_NATS` is set (the test command sets it).

use std::path::PathBuf;
use std::process::{Child, Stdio};
use std::time::{Duration, Instant};

use async_nats::jetstream;
use base64::Engine as _;
use edgeloop::cache::{CachedMeasurement, MeasurementCache};
use edgeloop::farm::server::{LocalServer, ServerSettings};
use edgeloop::farm::{
    self, Farm, FarmAddress, FarmFleet, FarmResult, FarmTarget, Priority, status::status as farm_status,
};
use edgeloop::measure::{DevicePool, MeasureError, MeasureJob, Measurements, Procedure};
use edgeloop_api::{MeasureRequest, Measurement};
use edgeloop_onnx::samples::MbconvNet;

use crate::search::search_under;
use crate::support::{AgentDir, edgeloop, lines};

const CLASS: &str = "loopback";

/// A nats-server with JetStream in a temporary folder.
struct Broker {
    server: LocalServer,
    dir: tempfile::TempDir,
}

impl Broker {
    /// `None` (the test passes, saying why) when nats-server is not installed here.
    fn start(auth: bool) -> Option<Broker> {
        let binary = ["/usr/sbin/nats-server", "/usr/bin/nats-server", "/usr/local/bin/nats-server"]
            .into_iter()
            .map(PathBuf::from)
            .find(|p| p.exists());
        let Some(binary) = binary else {
            assert!(
                std::env::var_os("EDGELOOP_REQUIRE_NATS").is_none(),
                "nats-server is not installed (scripts/setup.sh installs it)"
            );
            eprintln!("skipped: nats-server is not installed");
            return None;
        };
        let dir = tempfile::tempdir().unwrap();
        let mut settings = ServerSettings::local(dir.path().join("farm"), binary);
        settings.listen.set_port(0);
        settings.auth = auth;
        Some(Broker { server: LocalServer::start(settings).unwrap(), dir })
    }

    fn nkey(&self, host: bool) -> Option<PathBuf> {
        self.server.users.as_ref().map(|u| if host { u.host.clone() } else { u.worker.clone() })
    }

    fn address(&self, host: bool) -> FarmAddress {
        FarmAddress { url: self.server.url.clone(), nkey_file: self.nkey(host), ca_file: None }
    }

    /// `edgeloop farm worker` for `agents`, logging to `<dir>/<name>.log`.
    fn worker(&self, name: &str, agents: &[&AgentDir], extra: &[&str]) -> Child {
        let mut cmd = edgeloop();
        cmd.args(["farm", "worker", "--nats", &self.server.url, "--class", CLASS, "--name", name]);
        cmd.args(["--ack-wait", "2s", "--retry-delay", "300ms"]).args(extra);
        cmd.arg("--token-file").arg(agents[0].dir.path().join("token"));
        for agent in agents {
            cmd.args(["--device", &agent.agent.url()]);
        }
        if let Some(nkey) = self.nkey(false) {
            cmd.arg("--farm-nkey-file").arg(nkey);
        }
        let log = std::fs::File::create(self.dir.path().join(format!("{name}.log"))).unwrap();
        cmd.env("EDGELOOP_LOG", "info").stdout(Stdio::null()).stderr(log).spawn().unwrap()
    }

    async fn farm(&self) -> Farm {
        Farm::connect(&self.address(true), "test").await.unwrap()
    }

    /// A host's measurement service on the class, once a worker has registered a device.
    async fn host(&self) -> DevicePool {
        let target = FarmTarget { address: self.address(true), class: CLASS.into(), priority: Priority::Hi };
        let started = Instant::now();
        loop {
            match FarmFleet::connect(target.clone()).await {
                Ok(fleet) => return DevicePool::over(Box::new(fleet), MeasurementCache::in_memory()),
                Err(farm::FarmError::NoDevices { .. }) if started.elapsed() < Duration::from_secs(20) => {
                    tokio::time::sleep(Duration::from_millis(100)).await
                }
                Err(e) => {
                    let log = std::fs::read_dir(self.dir.path())
                        .unwrap()
                        .flatten()
                        .filter(|f| f.path().extension().is_some_and(|x| x == "log"));
                    let logs: Vec<String> =
                        log.map(|f| std::fs::read_to_string(f.path()).unwrap_or_default()).collect();
                    panic!("{}\nworker logs:\n{}", edgeloop::client::error_line(&e), logs.join("\n"))
                }
            }
        }
    }

    /// A JetStream context of a raw client (for what the library does not expose).
    async fn jetstream(&self, host: bool) -> jetstream::Context {
        let mut options = async_nats::ConnectOptions::new();
        if let Some(path) = self.nkey(host) {
            options = options.nkey(std::fs::read_to_string(path).unwrap().trim().to_string());
        }
        jetstream::new(options.connect(&self.server.url).await.unwrap())
    }

    /// Polls `ready` (every 50 ms, at most `limit`).
    async fn until(&self, limit: Duration, mut ready: impl AsyncFnMut() -> bool) {
        let started = Instant::now();
        while !ready().await {
            assert!(started.elapsed() < limit, "not within {limit:?}; worker logs in {}", self.dir.path().display());
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    /// Jobs being measured, over both priorities.
    async fn in_flight(&self, farm: &Farm) -> usize {
        let classes = farm_status(farm).await.unwrap();
        classes.iter().flat_map(|c| &c.queues).map(|q| q.in_flight).sum()
    }

    fn log(&self, name: &str) -> String {
        std::fs::read_to_string(self.dir.path().join(format!("{name}.log"))).unwrap_or_default()
    }
}

fn agent(id: &str) -> AgentDir {
    AgentDir::start_with(|c| c.device_id = Some(id.into()))
}

fn model(seed: u64) -> Vec<u8> {
    edgeloop_onnx::encode(&MbconvNet { seed, ..MbconvNet::small() }.to_model())
}

fn job(seed: u64) -> MeasureJob {
    MeasureJob::model(format!("model-{seed}"), model(seed))
}

/// Measurements taking at least `min_duration_ms`.
fn request(min_duration_ms: u64) -> MeasureRequest {
    MeasureRequest { warmup_runs: 1, min_runs: 5, min_duration_ms, ..MeasureRequest::default() }
}

/// The key of `seed`'s model measured for a host's cache (see `DevicePool`).
fn jobkey(seed: u64, request: &MeasureRequest) -> String {
    let procedure = Procedure { request: request.clone(), clean: Some(1.0) };
    farm::jobkey(CLASS, &edgeloop::client::sha256_hex(&model(seed)), &procedure, None)
}

fn kill(mut child: Child) {
    child.kill().unwrap();
    child.wait().unwrap();
}

/// The one result kept for a job: the measurement, its device and delivery.
async fn measured(farm: &Farm, jobkey: &str) -> (Measurement, String, i64) {
    match farm.result(CLASS, jobkey).await.unwrap() {
        Some(FarmResult::Measured { checked, device_id, delivery, .. }) => (checked.measurement, device_id, delivery),
        other => panic!("not measured: {other:?}"),
    }
}

async fn stream_messages(js: &jetstream::Context) -> (u64, u64) {
    let mut stream = js.get_stream(farm::STREAM).await.unwrap();
    let state = &stream.info().await.unwrap().state;
    (state.messages, state.last_sequence)
}

#[tokio::test(flavor = "current_thread")]
async fn a_job_whose_worker_dies_mid_measurement_is_redelivered_and_its_result_written_once() {
    let Some(broker) = Broker::start(false) else { return };
    let (a, b) = (agent("agent-a"), agent("agent-b"));
    let worker_a = broker.worker("worker-a", &[&a], &[]);
    let mut host = broker.host().await;
    let farm = broker.farm().await;
    let request = request(3000);
    let killer = async {
        broker.until(Duration::from_secs(20), async || broker.in_flight(&farm).await == 1).await;
        tokio::time::sleep(Duration::from_millis(300)).await;
        kill(worker_a);
        broker.worker("worker-b", &[&b], &[])
    };
    let (measured_now, worker_b) = tokio::join!(host.measure(vec![job(1)], &request), killer);
    let measured_now = measured_now.unwrap();
    let (measurement, device, delivery) = measured(&farm, &jobkey(1, &request)).await;
    assert_eq!((device.as_str(), delivery), ("agent-b", 2));
    assert_eq!(measured_now[0].device_id, "agent-b");
    assert_eq!(measured_now[0].p50_ms, measurement.latency_ms.p50);
    let js = broker.jetstream(true).await;
    assert_eq!(stream_messages(&js).await.0, 0, "the job left the queue");
    let results = js.get_key_value(farm::RESULTS).await.unwrap();
    let entry = results.entry(farm::result_key(CLASS, &jobkey(1, &request))).await.unwrap().unwrap();
    assert_eq!(entry.revision, 1, "the result was written once");
    kill(worker_b);
}

#[tokio::test(flavor = "current_thread")]
async fn an_agent_that_dies_mid_measurement_hands_its_job_to_another_device() {
    let Some(broker) = Broker::start(false) else { return };
    let (a, b) = (agent("agent-a"), agent("agent-b"));
    let worker_a = broker.worker("worker-a", &[&a], &[]);
    let mut host = broker.host().await;
    let farm = broker.farm().await;
    let request = request(2000);
    let mut worker_b = None;
    let killer = async {
        broker.until(Duration::from_secs(20), async || broker.in_flight(&farm).await == 1).await;
        worker_b = Some(broker.worker("worker-b", &[&b], &[]));
        broker.until(Duration::from_secs(20), async || farm.devices(Some(CLASS)).await.unwrap().len() == 2).await;
        a.agent.kill().unwrap();
    };
    let (measured_now, ()) = tokio::join!(host.measure(vec![job(2)], &request), killer);
    assert_eq!(measured_now.unwrap()[0].device_id, "agent-b");
    let (_, device, delivery) = measured(&farm, &jobkey(2, &request)).await;
    assert_eq!((device.as_str(), delivery), ("agent-b", 2));
    // Worker A took its agent off the farm's list: it takes no more jobs.
    let devices = farm.devices(Some(CLASS)).await.unwrap();
    assert_eq!(devices.iter().map(|d| d.info.device_id.as_str()).collect::<Vec<_>>(), ["agent-b"]);
    assert!(broker.log("worker-a").contains("another device may take it"));
    kill(worker_a);
    kill(worker_b.unwrap());
}

#[tokio::test(flavor = "current_thread")]
async fn two_hosts_asking_for_one_job_get_one_measurement() {
    let Some(broker) = Broker::start(false) else { return };
    let a = agent("agent-a");
    let worker = broker.worker("worker", &[&a], &[]);
    let (mut first, mut second) = (broker.host().await, broker.host().await);
    let request = request(500);
    let (x, y) = tokio::join!(first.measure(vec![job(3)], &request), second.measure(vec![job(3)], &request));
    // One measurement; each host notes when it kept it (`measured_at`).
    let kept = |m: Vec<CachedMeasurement>| -> Vec<CachedMeasurement> {
        m.into_iter().map(|m| CachedMeasurement { measured_at: String::new(), ..m }).collect()
    };
    let (x, y) = (kept(x.unwrap()), kept(y.unwrap()));
    assert_eq!(x, y, "both hosts got the one measurement");
    let js = broker.jetstream(true).await;
    assert_eq!(stream_messages(&js).await, (0, 1), "one job was ever queued");
    // A later host finds it measured without queueing anything.
    let mut third = broker.host().await;
    assert_eq!(kept(third.measure(vec![job(3)], &request).await.unwrap()), x);
    assert_eq!(stream_messages(&js).await.1, 1);
    kill(worker);
}

#[tokio::test(flavor = "current_thread")]
async fn small_models_ride_in_their_jobs_large_ones_in_the_object_store_and_a_wrong_one_is_refused() {
    let Some(broker) = Broker::start(false) else { return };
    let a = agent("agent-a");
    let worker = broker.worker("worker", &[&a], &[]);
    let mut host = broker.host().await;
    // A classifier head of 1000 classes: its weights alone take 256 KB.
    let large = edgeloop_onnx::encode(&MbconvNet { classes: 1000, ..MbconvNet::small() }.to_model());
    assert!(large.len() > 256 * 1024 && model(4).len() < 256 * 1024);
    let jobs = vec![job(4), MeasureJob::model("large".into(), large.clone())];
    assert_eq!(host.measure(jobs, &request(100)).await.unwrap().len(), 2);
    let js = broker.jetstream(true).await;
    let models = js.get_object_store(farm::MODELS).await.unwrap();
    let stored = async |bytes: &[u8]| models.info(edgeloop::client::sha256_hex(bytes)).await.is_ok();
    assert!(stored(&large).await, "the large model went through the object store");
    assert!(!stored(&model(4)).await, "the small one did not");

    // A job whose model is not the one it names: refused, not measured.
    let named = edgeloop::client::sha256_hex(&model(5));
    let procedure = Procedure { request: request(100), clean: None };
    let jobkey = farm::jobkey(CLASS, &named, &procedure, Some("wrong"));
    let wrong = farm::FarmJob {
        v: 1,
        jobkey: jobkey.clone(),
        class: CLASS.into(),
        model: named,
        inline: Some(base64::engine::general_purpose::STANDARD.encode(model(6))),
        label: "wrong".into(),
        procedure,
        expected_min: None,
        reply: "nobody".into(),
    };
    let subject = format!("farm.job.{CLASS}.hi.{jobkey}");
    js.publish(subject, serde_json::to_vec(&wrong).unwrap().into()).await.unwrap().await.unwrap();
    let farm = broker.farm().await;
    broker.until(Duration::from_secs(20), async || farm.result(CLASS, &jobkey).await.unwrap().is_some()).await;
    match farm.result(CLASS, &jobkey).await.unwrap() {
        Some(FarmResult::Refused { reason, .. }) => assert!(reason.contains("its sha256 differs"), "{reason}"),
        other => panic!("{other:?}"),
    }
    kill(worker);
}

#[tokio::test(flavor = "current_thread")]
async fn jobs_survive_the_broker_being_killed_and_restarted_on_its_store() {
    let Some(mut broker) = Broker::start(false) else { return };
    let a = agent("agent-a");
    let worker = broker.worker("worker", &[&a], &[]);
    let mut host = broker.host().await;
    let request = request(1500);
    let restart = async {
        let farm = broker.farm().await;
        broker.until(Duration::from_secs(20), async || broker.in_flight(&farm).await == 1).await;
        drop(farm);
        broker.server.kill();
        tokio::time::sleep(Duration::from_secs(1)).await;
        broker.server.restart().unwrap();
    };
    let (measured_now, ()) = tokio::join!(host.measure(vec![job(4), job(5)], &request), restart);
    let measured_now = measured_now.unwrap();
    assert_eq!(measured_now.len(), 2);
    let farm = broker.farm().await;
    for seed in [4, 5] {
        measured(&farm, &jobkey(seed, &request)).await;
    }
    kill(worker);
}

#[tokio::test(flavor = "current_thread")]
async fn a_poison_model_fails_once_for_good_and_a_hanging_one_is_given_up() {
    let Some(broker) = Broker::start(false) else { return };
    let a = agent("agent-a");
    // Measurements time out on the worker after 1 s: the hanging model's take 3 s.
    let worker = broker.worker("worker", &[&a], &["--request-timeout", "1s"]);
    let mut host = broker.host().await;
    let poison = MeasureJob::model("poison".into(), b"not an onnx model".to_vec());
    let error = host.measure(vec![poison], &request(100)).await.unwrap_err();
    assert!(matches!(&error, MeasureError::FarmFailed { reason, .. } if reason.contains("refused")), "{error}");
    let farm = broker.farm().await;
    let classes = farm_status(&farm).await.unwrap();
    assert_eq!(classes[0].queues.iter().map(|q| q.redelivered).sum::<usize>(), 0, "never redelivered");

    let error = host.measure(vec![job(6)], &request(3000)).await.unwrap_err();
    let MeasureError::FarmFailed { reason, .. } = &error else { panic!("{error}") };
    assert!(reason.contains("given up after 4 deliveries"), "{reason}");
    let js = broker.jetstream(true).await;
    assert_eq!(stream_messages(&js).await.0, 0, "no job left to loop on");
    kill(worker);
}

#[tokio::test(flavor = "current_thread")]
async fn one_agent_measures_one_job_at_a_time_for_three_searches() {
    let Some(broker) = Broker::start(false) else { return };
    let a = agent("agent-a");
    // Two workers on one agent: the agent still measures one model at a time.
    let workers = [broker.worker("worker-1", &[&a], &[]), broker.worker("worker-2", &[&a], &[])];
    let mut hosts = [broker.host().await, broker.host().await, broker.host().await];
    let request = request(200);
    let [h1, h2, h3] = &mut hosts;
    let (r1, r2, r3) = tokio::join!(
        h1.measure(vec![job(10), job(11)], &request),
        h2.measure(vec![job(12), job(13)], &request),
        h3.measure(vec![job(14), job(15)], &request),
    );
    let farm = broker.farm().await;
    let mut spans = Vec::new();
    for (seed, _) in (10..16).zip([r1.unwrap(), r2.unwrap(), r3.unwrap()].concat()) {
        let (m, _, _) = measured(&farm, &jobkey(seed, &request)).await;
        spans.push((m.started_at, m.finished_at));
    }
    spans.sort();
    for pair in spans.windows(2) {
        assert!(pair[1].0 >= pair[0].1, "measurements overlap: {spans:?}");
    }
    workers.into_iter().for_each(kill);
}

#[tokio::test(flavor = "current_thread")]
async fn workers_cannot_publish_jobs_and_hosts_cannot_take_them() {
    let Some(broker) = Broker::start(true) else { return };
    let a = agent("agent-a");
    // Workers may not make the farm's streams: `farm up` made them (as a host).
    broker.farm().await;
    // Each user does its own part: a job goes through.
    let worker = broker.worker("worker", &[&a], &[]);
    let mut host = broker.host().await;
    host.measure(vec![job(20)], &request(100)).await.unwrap();
    kill(worker);

    // Nobody connects without a key.
    let anonymous = async_nats::ConnectOptions::new().connect(&broker.server.url).await;
    let refused = match anonymous {
        Err(_) => true,
        Ok(client) => client.flush().await.is_err() || jetstream::new(client).query_account().await.is_err(),
    };
    assert!(refused, "an anonymous client was let in");

    let (as_host, as_worker) = (broker.jetstream(true).await, broker.jetstream(false).await);
    let subject = format!("farm.job.{CLASS}.hi.0123456789abcdef");
    let published = async { as_worker.publish(subject.clone(), "{}".into()).await?.await };
    let published = tokio::time::timeout(Duration::from_secs(5), published).await;
    assert!(!matches!(published, Ok(Ok(_))), "a worker published a job");
    as_host.publish(subject, "{}".into()).await.unwrap().await.unwrap();

    let consumer = farm::consumer_name(CLASS, Priority::Hi);
    let take = async |js: &jetstream::Context| -> Option<jetstream::Message> {
        use futures_util::StreamExt as _;
        let stream = js.get_stream(farm::STREAM).await.ok()?;
        let consumer: jetstream::consumer::PullConsumer = stream.get_consumer(&consumer).await.ok()?;
        let mut batch = consumer.batch().max_messages(1).expires(Duration::from_secs(1)).messages().await.ok()?;
        batch.next().await?.ok()
    };
    assert!(take(&as_host).await.is_none(), "a host took a job");
    let taken = take(&as_worker).await.expect("the job is there for workers");
    taken.ack_with(jetstream::AckKind::Term).await.unwrap();
}

/// `edgeloop farm status` and `farm up` as a user runs them.
#[test]
fn status_lists_the_class_and_up_explains_a_missing_server() {
    let out = edgeloop()
        .args(["farm", "up", "--nats-server", "/no/such/nats-server"])
        .arg("--dir")
        .arg(tempfile::tempdir().unwrap().path())
        .output()
        .unwrap();
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("apt-get install nats-server"));
    let Some(broker) = Broker::start(false) else { return };
    let a = agent("agent-a");
    let worker = broker.worker("worker", &[&a], &[]);
    let started = Instant::now();
    let text = loop {
        let out = edgeloop().args(["farm", "status", "--nats", &broker.server.url]).output().unwrap();
        let text = String::from_utf8_lossy(&out.stdout).to_string();
        if text.contains("agent-a") || started.elapsed() > Duration::from_secs(20) {
            break text;
        }
        std::thread::sleep(Duration::from_millis(100));
    };
    assert!(text.contains(&format!("class {CLASS} — 1 live device(s)")), "{text}");
    assert!(text.contains("Hi: 0 pending"), "{text}");
    kill(worker);
}

/// A whole search through the farm loses a worker (and its agent's
/// device) and the broker mid-way, and finishes on the other worker.
#[test]
fn a_search_outlives_a_worker_and_the_broker() {
    let Some(mut broker) = Broker::start(false) else { return };
    let runtime = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
    let f = AgentDir::with_tables();
    let b = agent("agent-b");
    let worker_a = broker.worker("worker-a", &[&f], &[]);
    let worker_b = broker.worker("worker-b", &[&b], &[]);
    runtime.block_on(broker.host());
    // This machine's table, measured on the first agent's device: the class's.
    let tables = f.dir.path().join("latency-tables");
    let mut tables = std::fs::read_dir(&tables).unwrap().flatten().map(|e| e.path());
    let table = tables.find(|p| p.extension().is_some_and(|x| x == "csv")).expect("a seeded table");
    let on = ["--farm", &broker.server.url, "--farm-class", CLASS, "--table", table.to_str().unwrap()];
    let search = search_under(f.dir.path(), &on, "random", false, "1.0");
    let log = std::fs::File::create(broker.dir.path().join("search.log")).unwrap();
    let child = { search }.stdout(Stdio::null()).stderr(log).spawn().unwrap();
    let measurements = f.dir.path().join("run").join("measurements.jsonl");
    let started = Instant::now();
    while lines(&measurements) < 2 {
        assert!(started.elapsed() < Duration::from_secs(240), "{}", broker.log("search"));
        std::thread::sleep(Duration::from_millis(100));
    }
    kill(worker_a);
    broker.server.kill();
    std::thread::sleep(Duration::from_secs(1));
    broker.server.restart().unwrap();
    let out = child.wait_with_output().unwrap();
    assert!(out.status.success(), "{}", broker.log("search"));
    let result: serde_json::Value =
        serde_json::from_slice(&std::fs::read(f.dir.path().join("run").join("result.json")).unwrap()).unwrap();
    assert_eq!(result["budget_met"].as_bool(), Some(true), "{result}");
    let devices: std::collections::BTreeSet<String> = std::fs::read_to_string(&measurements)
        .unwrap()
        .lines()
        .map(|l| serde_json::from_str::<serde_json::Value>(l).unwrap()["device_id"].as_str().unwrap().to_string())
        .collect();
    assert!(devices.contains("agent-b"), "{devices:?}");
    kill(worker_b);
}
