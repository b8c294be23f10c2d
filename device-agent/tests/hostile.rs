//! The agent against hostile input: a real `edgeloop-agent serve` (process
//! isolation, real tract, real ONNX) on loopback, over two thousand
//! requests this test makes itself — crafted and mutated models, junk and
//! oversized JSON, path tricks, partial uploads, crashing and hanging
//! workers — then: no connection dropped, every refusal a JSON error with
//! a 4xx/5xx code, a good model still measures, the agent's memory stays
//! bounded and no worker outlives it.

use std::collections::HashSet;
use std::io::{Read, Write};
use std::net::TcpStream;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use edgeloop_agent::runtime::Runtimes;
use edgeloop_agent::store::sha256_hex;
use edgeloop_agent::{AgentConfig, Isolation, LocalAgent};
use edgeloop_api::{DeviceInfo, ErrorBody, ErrorCode, Health, Measurement};
use edgeloop_onnx::pb;
use edgeloop_onnx::samples::MbconvNet;
use edgeloop_onnx::{Dim, ElemType, GraphBuilder};
use rand::rngs::SmallRng;
use rand::{Rng, SeedableRng};

const TOKEN: &str = "hostile-suite-token";

/// A served agent, killed (SIGKILL) when dropped; a client of it.
struct Served {
    child: Child,
    client: Client,
    _dir: tempfile::TempDir,
    cache: std::path::PathBuf,
}

impl std::ops::Deref for Served {
    type Target = Client;
    fn deref(&self) -> &Client {
        &self.client
    }
}

/// Raw HTTP/1.1 to an agent, one connection per request.
struct Client {
    addr: String,
}

impl Served {
    fn start(flags: &[&str], faults: &str) -> Served {
        let dir = tempfile::tempdir().unwrap();
        let (addr_file, token_file, cache) =
            (dir.path().join("addr"), dir.path().join("token"), dir.path().join("cache"));
        std::fs::write(&token_file, TOKEN).unwrap();
        let child = Command::new(env!("CARGO_BIN_EXE_edgeloop-agent"))
            .args(["serve", "--listen", "127.0.0.1:0", "--addr-file"])
            .arg(&addr_file)
            .arg("--token-file")
            .arg(&token_file)
            .arg("--cache-dir")
            .arg(&cache)
            .args(flags)
            .env("EDGELOOP_WORKER_FAULT", faults)
            .env_remove("EDGELOOP_TOKEN")
            .stderr(Stdio::null())
            .spawn()
            .unwrap();
        let deadline = Instant::now() + Duration::from_secs(30);
        let addr = loop {
            if let Ok(addr) = std::fs::read_to_string(&addr_file)
                && !addr.is_empty()
            {
                break addr;
            }
            assert!(Instant::now() < deadline, "agent did not start");
            std::thread::sleep(Duration::from_millis(20));
        };
        Served { child, client: Client { addr }, _dir: dir, cache }
    }

    fn pid(&self) -> u32 {
        self.child.id()
    }
}

impl Client {
    fn info(&self) -> DeviceInfo {
        let answer = self.send("GET", "/v1/info", &[], b"", true);
        assert_eq!(answer.status, 200, "{}", answer.text());
        serde_json::from_slice(&answer.body).unwrap()
    }

    fn upload(&self, model: &[u8]) -> Answer {
        self.send("PUT", &format!("/v1/models/{}", sha256_hex(model)), &[], model, true)
    }

    fn measure(&self, sha256: &str) -> Answer {
        self.send("POST", "/v1/measure", &[], quick_request(sha256).as_bytes(), true)
    }

    /// One request on its own connection; panics if no answer comes back.
    fn send(&self, method: &str, path: &str, headers: &[&str], body: &[u8], auth: bool) -> Answer {
        let mut head = format!("{method} {path} HTTP/1.1\r\nHost: {}\r\nConnection: close\r\n", self.addr);
        if auth {
            head += &format!("Authorization: Bearer {TOKEN}\r\n");
        }
        for h in headers {
            head += &format!("{h}\r\n");
        }
        if !headers.iter().any(|h| h.to_ascii_lowercase().starts_with("content-length")) {
            head += &format!("Content-Length: {}\r\n", body.len());
        }
        head += "\r\n";
        let mut raw = head.into_bytes();
        raw.extend_from_slice(body);
        exchange(&self.addr, &raw, |_| {})
    }
}

impl Drop for Served {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// An HTTP answer.
struct Answer {
    status: u16,
    head: String,
    body: Vec<u8>,
}

impl Answer {
    fn text(&self) -> String {
        String::from_utf8_lossy(&self.body).into_owned()
    }

    /// The JSON error body of a refusal.
    fn error(&self) -> ErrorBody {
        assert!(self.status >= 400, "expected a refusal, got {}: {}", self.status, self.text());
        serde_json::from_slice(&self.body)
            .unwrap_or_else(|e| panic!("{}: not a JSON error ({e}): {}", self.status, self.text()))
    }

    fn code(&self) -> ErrorCode {
        let code = self.error().error.code;
        assert_eq!(code.http_status(), self.status, "{code:?} answered with {}", self.status);
        code
    }
}

/// Writes `raw` (what it can: the agent may answer and close early), lets
/// `then` act on the open connection, and reads the answer. Panics when the
/// connection ends without one: that is a dropped connection.
fn exchange(addr: &str, raw: &[u8], then: impl FnOnce(&mut TcpStream)) -> Answer {
    let mut stream = TcpStream::connect(addr).unwrap();
    stream.set_read_timeout(Some(Duration::from_secs(60))).unwrap();
    let _ = stream.write_all(raw);
    then(&mut stream);
    let mut bytes = Vec::new();
    // A reset after the answer (the agent closed with our body unread) still leaves the answer read.
    let _ = stream.read_to_end(&mut bytes);
    let text = String::from_utf8_lossy(&bytes);
    let split = text.find("\r\n\r\n").unwrap_or_else(|| panic!("connection dropped without an answer: {text:?}"));
    let head = text[..split].to_string();
    let status = head.get(9..12).and_then(|s| s.parse().ok()).unwrap_or_else(|| panic!("no status line: {head:?}"));
    Answer { status, head, body: bytes[split + 4..].to_vec() }
}

fn quick_request(sha256: &str) -> String {
    format!(r#"{{"model":"{sha256}","warmup_runs":0,"min_runs":1,"min_duration_ms":0,"max_duration_ms":100}}"#)
}

fn good_model() -> pb::ModelProto {
    MbconvNet::small().to_model()
}

fn graph(model: &mut pb::ModelProto) -> &mut pb::GraphProto {
    model.graph.as_mut().unwrap()
}

fn with_input_dims(dims: &[i64]) -> Vec<u8> {
    let mut model = good_model();
    edgeloop_onnx::samples::set_input_dims(&mut model, dims);
    edgeloop_onnx::encode(&model)
}

fn with_input_type(elem_type: i32) -> Vec<u8> {
    let mut model = good_model();
    if let Some(pb::type_proto::Value::TensorType(t)) =
        graph(&mut model).input[0].r#type.as_mut().and_then(|t| t.value.as_mut())
    {
        t.elem_type = elem_type;
    }
    edgeloop_onnx::encode(&model)
}

/// The first Conv's attribute `name` set to `ints`.
fn with_conv_attr(name: &str, ints: Vec<i64>) -> Vec<u8> {
    let mut model = good_model();
    let conv = graph(&mut model).node.iter_mut().find(|n| n.op_type == "Conv").unwrap();
    conv.attribute.retain(|a| a.name != name);
    let r#type = if name == "group" { 2 } else { 7 };
    let (i, ints) = if name == "group" { (ints[0], vec![]) } else { (0, ints) };
    conv.attribute.push(pb::AttributeProto { name: name.into(), r#type, i, ints, ..Default::default() });
    edgeloop_onnx::encode(&model)
}

/// `depth` If nodes, each inside the then-branch of the one before.
fn deep_graph(depth: usize) -> Vec<u8> {
    let mut inner = pb::GraphProto { name: "leaf".into(), ..Default::default() };
    for level in 0..depth {
        let node = pb::NodeProto {
            op_type: "If".into(),
            input: vec!["c".into()],
            output: vec![format!("o{level}")],
            attribute: vec![
                pb::AttributeProto { name: "then_branch".into(), r#type: 5, g: Some(inner), ..Default::default() },
                pb::AttributeProto {
                    name: "else_branch".into(),
                    r#type: 5,
                    g: Some(Default::default()),
                    ..Default::default()
                },
            ],
            ..Default::default()
        };
        inner = pb::GraphProto { name: format!("g{level}"), node: vec![node], ..Default::default() };
    }
    let mut model = good_model();
    graph(&mut model).node.push(inner.node.remove(0));
    edgeloop_onnx::encode(&model)
}

fn relu_chain(nodes: usize) -> Vec<u8> {
    let mut g = GraphBuilder::new("chain");
    let mut x = g.input("x", ElemType::F32, &[Dim::Fixed(4)]);
    for _ in 0..nodes {
        x = g.node("Relu", &[&x], vec![]);
    }
    g.output(&x, ElemType::F32, &[Dim::Fixed(4)]);
    edgeloop_onnx::encode(&g.finish())
}

/// A model whose run allocates 8 GiB: Expand of one float to 2^31 of them.
fn memory_hog() -> Vec<u8> {
    let mut g = GraphBuilder::new("hog");
    let x = g.input("x", ElemType::F32, &[Dim::Fixed(1)]);
    let shape = g.constant::<i64>("shape", &[2], &[1 << 16, 1 << 15]);
    let y = g.node("Expand", &[&x, &shape], vec![]);
    g.output(&y, ElemType::F32, &[Dim::Fixed(1 << 16), Dim::Fixed(1 << 15)]);
    edgeloop_onnx::encode(&g.finish())
}

fn external_data(location: &str) -> Vec<u8> {
    let mut model = good_model();
    let init = &mut graph(&mut model).initializer[0];
    init.raw_data.clear();
    init.float_data.clear();
    init.data_location = Some(pb::tensor_proto::DataLocation::External as i32);
    init.external_data = vec![pb::StringStringEntryProto { key: "location".into(), value: location.into() }];
    edgeloop_onnx::encode(&model)
}

fn lying_initializer() -> Vec<u8> {
    let mut model = good_model();
    graph(&mut model).initializer[0].dims = vec![1 << 20, 1 << 20, 1 << 10];
    edgeloop_onnx::encode(&model)
}

/// Uploads `model` and, if stored, measures it; checks that every answer
/// is a success or a well-formed refusal, and counts requests.
struct Run<'a> {
    agent: &'a Client,
    uploaded: HashSet<String>,
    requests: usize,
}

impl Run<'_> {
    fn answer(&mut self, answer: Answer) -> Answer {
        self.requests += 1;
        if answer.status >= 400 {
            answer.code();
        }
        answer
    }

    /// The upload's and, when it was stored, the measurement's answer.
    fn try_model(&mut self, model: &[u8]) -> (Answer, Option<Answer>) {
        let sha = sha256_hex(model);
        if !self.uploaded.insert(sha.clone()) {
            // A mutation may repeat an earlier one; it is stored already.
            let measured = self.answer(self.agent.measure(&sha));
            return (Answer { status: 200, head: String::new(), body: vec![] }, Some(measured));
        }
        let upload = self.answer(self.agent.upload(model));
        if upload.status >= 300 {
            return (upload, None);
        }
        let measured = self.answer(self.agent.measure(&sha));
        if measured.status == 200 {
            serde_json::from_slice::<Measurement>(&measured.body).expect("a measurement");
        }
        (upload, Some(measured))
    }

    /// `model` must be refused, at upload or at measurement, with `code`.
    fn refused(&mut self, model: &[u8], code: ErrorCode) {
        let (upload, measured) = self.try_model(model);
        let last = measured.unwrap_or(upload);
        assert_eq!(last.code(), code, "{}", last.text());
    }

    fn request(&mut self, method: &str, path: &str, body: &[u8]) -> Answer {
        let answer = self.agent.send(method, path, &["Content-Type: application/json"], body, true);
        self.answer(answer)
    }
}

fn worker_pids(agent_pid: u32) -> Vec<u32> {
    std::fs::read_dir("/proc")
        .unwrap()
        .filter_map(|e| e.ok()?.file_name().to_str()?.parse::<u32>().ok())
        .filter(|pid| {
            let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
            let after_name = stat.rsplit_once(')').map(|(_, rest)| rest).unwrap_or("");
            after_name.split_whitespace().nth(1).and_then(|p| p.parse::<u32>().ok()) == Some(agent_pid)
        })
        .collect()
}

fn rss_mb(pid: u32) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    let kb: u64 = status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.split_whitespace().next()?.parse().ok())
        .unwrap();
    kb / 1024
}

fn alive(pid: u32) -> bool {
    std::fs::read_to_string(format!("/proc/{pid}/stat"))
        .is_ok_and(|stat| stat.rsplit_once(')').is_some_and(|(_, rest)| !rest.trim_start().starts_with('Z')))
}

#[test]
fn the_agent_survives_two_thousand_hostile_requests() {
    // Fault injection picks these by hash; they are never measured.
    let (abort, segv) = (with_input_dims(&[1, 3, 7, 7]), with_input_dims(&[1, 3, 9, 9]));
    let faults = format!("abort:{},segv:{}", sha256_hex(&abort), sha256_hex(&segv));
    let agent = Served::start(&["--max-worker-mb", "1024", "--job-timeout-s", "20", "--read-timeout-s", "1"], &faults);
    let mut run = Run { agent: &agent, uploaded: HashSet::new(), requests: 0 };
    let mut rng = SmallRng::seed_from_u64(15);
    let good = edgeloop_onnx::encode(&good_model());

    // The model that killed the old agent's measuring thread, then more dims.
    run.refused(&with_input_dims(&[1 << 30, 1 << 30]), ErrorCode::LimitExceeded);
    assert_eq!(run.try_model(&good).1.unwrap().status, 200, "the next good model measures");
    for _ in 0..40 {
        let huge = [rng.random_range(1 << 14..1 << 40), rng.random_range(1 << 14..1 << 40)];
        run.refused(&with_input_dims(&huge), ErrorCode::LimitExceeded);
        run.refused(&with_input_dims(&[1, 3, 0, rng.random_range(0..64)]), ErrorCode::MalformedModel);
        run.refused(&with_input_dims(&[1, -rng.random_range(1..1 << 40)]), ErrorCode::MalformedModel);
        run.refused(&with_input_dims(&[i64::MAX, i64::MAX, rng.random_range(2..64)]), ErrorCode::LimitExceeded);
    }
    // Broken Conv attributes: a runtime refuses them (or panics, which is caught).
    for _ in 0..25 {
        for (name, len) in [("strides", 2), ("pads", 4), ("dilations", 2), ("kernel_shape", 2)] {
            let len = if rng.random_bool(0.5) { len } else { rng.random_range(0..7) };
            let ints =
                (0..len).map(|_| rng.random_range(-3..4) * if rng.random_bool(0.1) { 1 << 40 } else { 1 }).collect();
            let (upload, measured) = run.try_model(&with_conv_attr(name, ints));
            assert!(upload.status < 300, "{}", upload.text());
            assert!(measured.is_some_and(|m| m.status == 200 || m.status == 400 || m.status == 422 || m.status == 500));
        }
        let (_, measured) = run.try_model(&with_conv_attr("group", vec![rng.random_range(-4..1000)]));
        assert!(measured.is_some_and(|m| m.status != 503 && m.status != 504));
    }
    // Wrong element types, lying tensors, external data outside the store.
    for code in [0, 8, 14, 15, 16, 999, -1] {
        run.refused(&with_input_type(code), ErrorCode::MalformedModel);
    }
    run.refused(&lying_initializer(), ErrorCode::MalformedModel);
    for location in ["../../../../etc/passwd", "/etc/shadow", "weights.bin", "..\\..\\boot.ini"] {
        run.refused(&external_data(location), ErrorCode::MalformedModel);
    }
    // Deep and huge graphs.
    run.refused(&deep_graph(150), ErrorCode::MalformedModel);
    run.refused(&relu_chain(100_001), ErrorCode::LimitExceeded);
    // A model that needs more memory than --max-worker-mb.
    run.refused(&memory_hog(), ErrorCode::LimitExceeded);
    // Crashing workers cost one request each.
    let crashed = run.try_model(&abort).1.unwrap();
    assert_eq!(crashed.code(), ErrorCode::RuntimeCrashed);
    assert!(crashed.text().contains("SIGABRT"), "{}", crashed.text());
    let crashed = run.try_model(&segv).1.unwrap();
    assert!(crashed.text().contains("SIGSEGV"), "{}", crashed.text());
    let (_, measured) = run.try_model(&good);
    assert_eq!(measured.unwrap().status, 200, "a good model measures right after a crash");

    // Truncated and bit-flipped protobufs.
    for _ in 0..400 {
        let cut = rng.random_range(0..good.len());
        run.try_model(&good[..cut]);
    }
    for _ in 0..500 {
        let mut bytes = good.clone();
        for _ in 0..rng.random_range(1..9) {
            let at = rng.random_range(0..bytes.len());
            bytes[at] ^= 1 << rng.random_range(0..8);
        }
        run.try_model(&bytes);
    }
    // Junk, wrong and oversized JSON.
    let sha = sha256_hex(&good);
    let deep_json = "[".repeat(10_000) + &"]".repeat(10_000);
    let big_json = format!(r#"{{"model":"{sha}","inputs":{{"x":[{}]}}}}"#, vec!["1"; 40_000].join(","));
    let junk: Vec<Vec<u8>> = vec![
        b"".to_vec(),
        b"{".to_vec(),
        b"null".to_vec(),
        b"{\"model\": 7}".to_vec(),
        format!(r#"{{"model":"{sha}","min_runs":0}}"#).into_bytes(),
        format!(r#"{{"model":"{sha}","threads":0}}"#).into_bytes(),
        format!(r#"{{"model":"{sha}","runz":3}}"#).into_bytes(),
        format!(r#"{{"model":"{sha}","runtime":"tensorrt"}}"#).into_bytes(),
        format!(r#"{{"model":"{sha}","max_duration_ms":18446744073709551615}}"#).into_bytes(),
        format!(r#"{{"model":"{sha}","inputs":{{"nope":[1]}}}}"#).into_bytes(),
        format!(r#"{{"model":"{sha}","cpus":[100000]}}"#).into_bytes(),
        format!(r#"{{"model":"{}"}}"#, "0".repeat(64)).into_bytes(),
        deep_json.into_bytes(),
        big_json.into_bytes(),
    ];
    for _ in 0..10 {
        for body in &junk {
            let answer = run.request("POST", "/v1/measure", body);
            assert!(answer.status >= 400, "{}", answer.text());
        }
        let random: Vec<u8> = (0..rng.random_range(1..2000)).map(|_| rng.random()).collect();
        run.request("POST", "/v1/measure", &random);
    }
    // Path tricks.
    let tricks = [
        "/v1/models/../../../etc/passwd",
        "/v1/models/%2e%2e%2f%2e%2e%2fetc%2fpasswd",
        "/v1/models/..%2f..%2fmodels",
        "/v1//measure",
        "/v1/models/",
        "/v1/models/ZZZ",
        "/v1/models/0000000000000000000000000000000000000000000000000000000000000000/../x",
        "/v1/info/../../etc/passwd",
        "/../../../etc/passwd",
        "/v2/measure",
    ];
    for _ in 0..15 {
        for path in tricks {
            for method in ["GET", "PUT", "POST", "DELETE"] {
                let answer = run.request(method, path, b"x");
                assert!(answer.status >= 400, "{method} {path}: {}", answer.text());
            }
        }
        let upper = run.request("PUT", &format!("/v1/models/{}", sha.to_uppercase()), b"");
        assert_eq!(upper.code(), ErrorCode::BadRequest);
        let long = format!("/v1/models/{}", "a".repeat(rng.random_range(65..5000)));
        run.request("PUT", &long, b"");
    }
    // Without the token.
    for _ in 0..50 {
        let answer = run.answer(agent.send("POST", "/v1/measure", &[], quick_request(&sha).as_bytes(), false));
        assert_eq!(answer.code(), ErrorCode::Unauthorized);
    }
    // Partial uploads: the client stops sending and is answered 408 after the read timeout.
    for _ in 0..5 {
        let head = format!(
            "PUT /v1/models/{sha} HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer {TOKEN}\r\nConnection: close\r\n\
             Content-Length: {}\r\n\r\n",
            1000
        );
        let mut raw = head.into_bytes();
        raw.extend_from_slice(&[0u8; 10]);
        let mut fresh = [0u8; 32];
        rng.fill(&mut fresh[..]);
        let raw = String::from_utf8_lossy(&raw).replace(&sha, &hex_of(&fresh)).into_bytes();
        let answer = run.answer(exchange(&agent.addr, &raw, |_| {}));
        assert_eq!(answer.code(), ErrorCode::RequestTimeout);
    }

    // A request head that never ends is cut off after the read timeout.
    let started = Instant::now();
    let mut trickle = TcpStream::connect(&agent.addr).unwrap();
    trickle.write_all(b"GET /v1/hea").unwrap();
    trickle.set_read_timeout(Some(Duration::from_secs(30))).unwrap();
    let _ = trickle.read_to_end(&mut Vec::new());
    assert!(started.elapsed() < Duration::from_secs(10), "a trickling request head held its connection");

    assert!(run.requests >= 2000, "only {} requests", run.requests);
    // Still serving, still measuring, memory bounded, one warm worker.
    let health: Health = serde_json::from_slice(&agent.send("GET", "/v1/health", &[], b"", false).body).unwrap();
    assert_eq!(health.status, "ok");
    let measured = agent.measure(&sha);
    assert_eq!(measured.status, 200, "{}", measured.text());
    let status = agent.info().agent.expect("a serving agent reports its workers");
    assert!(status.worker_restarts >= 2, "the abort and the segfault: {status:?}");
    assert_eq!(status.queue_depth, 0);
    let rss = rss_mb(agent.pid());
    assert!(rss < 256, "the agent holds {rss} MB after the suite");
    let workers = worker_pids(agent.pid());
    assert_eq!(workers.len(), 1, "one warm worker: {workers:?}");
    let leftovers: Vec<_> = std::fs::read_dir(agent.cache.join("models"))
        .unwrap()
        .filter_map(|e| e.ok()?.file_name().into_string().ok())
        .filter(|n| edgeloop_durable::is_temp_name(n))
        .collect();
    assert!(leftovers.is_empty(), "{leftovers:?}");
    eprintln!("{} requests; agent RSS {rss} MB; {} worker restarts", run.requests, status.worker_restarts);

    // No worker outlives the agent.
    let pid = agent.pid();
    drop(agent);
    let deadline = Instant::now() + Duration::from_secs(5);
    while workers.iter().any(|&w| alive(w)) {
        assert!(Instant::now() < deadline, "worker {workers:?} outlived agent {pid}");
        std::thread::sleep(Duration::from_millis(20));
    }
}

fn hex_of(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

/// Uploads the good model and one whose measurement hangs (fault injection).
fn good_and_hanging(faults_for: impl FnOnce(&str) -> Vec<String>, flags: &[&str]) -> (Served, String, String) {
    let good = edgeloop_onnx::encode(&good_model());
    let hang = with_input_dims(&[1, 3, 11, 11]);
    let agent = Served::start(flags, &faults_for(&sha256_hex(&hang)).join(","));
    for model in [&good, &hang] {
        assert!(agent.upload(model).status < 300);
    }
    (agent, sha256_hex(&good), sha256_hex(&hang))
}

fn wait_until(what: &str, mut done: impl FnMut() -> bool) {
    let deadline = Instant::now() + Duration::from_secs(30);
    while !done() {
        assert!(Instant::now() < deadline, "timed out waiting until {what}");
        std::thread::sleep(Duration::from_millis(20));
    }
}

#[test]
fn a_hung_worker_is_killed_at_the_cap_and_a_full_queue_answers_busy() {
    let (agent, good, hang) =
        good_and_hanging(|h| vec![format!("hang:{h}")], &["--job-timeout-s", "3", "--max-queue", "1"]);
    std::thread::scope(|s| {
        let hung = s.spawn(|| agent.measure(&hang));
        wait_until("the hanging job runs", || measuring(&agent));
        let waiting = s.spawn(|| agent.measure(&good));
        wait_until("one job waits", || agent.info().agent.unwrap().queue_depth == 1);
        let busy = agent.measure(&good);
        assert_eq!(busy.code(), ErrorCode::Busy);
        assert!(busy.head.to_ascii_lowercase().contains("retry-after: "), "{}", busy.head);
        let hung = hung.join().unwrap();
        assert_eq!(hung.code(), ErrorCode::Timeout);
        assert!(hung.text().contains("--job-timeout-s"), "{}", hung.text());
        assert_eq!(waiting.join().unwrap().status, 200, "the job behind the hung one measures");
    });
    assert_eq!(agent.info().agent.unwrap().worker_restarts, 1);
}

fn measuring(agent: &Served) -> bool {
    agent.info().agent.unwrap().measuring
}

#[test]
fn a_queued_measurement_whose_client_left_is_dropped() {
    let (agent, good, hang) = good_and_hanging(|h| vec![format!("hang:{h}")], &["--job-timeout-s", "3"]);
    std::thread::scope(|s| {
        let hung = s.spawn(|| agent.measure(&hang));
        wait_until("the hanging job runs", || measuring(&agent));
        let body = quick_request(&good);
        let raw = format!(
            "POST /v1/measure HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer {TOKEN}\r\nContent-Length: {}\r\n\r\n{body}",
            body.len()
        );
        let mut leaving = TcpStream::connect(&agent.addr).unwrap();
        leaving.write_all(raw.as_bytes()).unwrap();
        wait_until("the request waits", || agent.info().agent.unwrap().queue_depth == 1);
        drop(leaving);
        assert_eq!(hung.join().unwrap().code(), ErrorCode::Timeout);
    });
    wait_until("the dropped job is counted", || agent.info().agent.unwrap().cancelled == 1);
    assert_eq!(agent.measure(&good).status, 200);
}

#[test]
fn health_says_degraded_while_no_worker_can_start() {
    let dir = tempfile::tempdir().unwrap();
    let mut config = AgentConfig::new(dir.path().to_path_buf());
    config.token = Some(TOKEN.into());
    let missing = dir.path().join("no-such-agent");
    config.worker.isolation = Isolation::Process { program: missing };
    let local = LocalAgent::start(config, Runtimes::default()).unwrap();
    let agent = Client { addr: local.addr().to_string() };
    let health = || agent.send("GET", "/v1/health", &[], b"", false);
    wait_until("health says so", || health().status == 503);
    let health: Health = serde_json::from_slice(&health().body).unwrap();
    assert_eq!(health.status, "degraded");
    assert!(health.reason.as_deref().is_some_and(|r| r.contains("no-such-agent")), "{health:?}");
    let good = edgeloop_onnx::encode(&good_model());
    assert!(agent.upload(&good).status < 300);
    let answer = agent.measure(&sha256_hex(&good));
    assert_eq!(answer.code(), ErrorCode::WorkerUnavailable);
    assert!(agent.info().agent.unwrap().degraded.is_some());
}

#[test]
fn thread_isolation_refuses_the_same_models_and_keeps_measuring() {
    let agent = Served::start(&["--isolation", "thread"], "");
    let mut run = Run { agent: &agent, uploaded: HashSet::new(), requests: 0 };
    run.refused(&with_input_dims(&[1 << 30, 1 << 30]), ErrorCode::LimitExceeded);
    run.refused(&lying_initializer(), ErrorCode::MalformedModel);
    let (_, measured) = run.try_model(&edgeloop_onnx::encode(&good_model()));
    assert_eq!(measured.unwrap().status, 200);
    assert_eq!(agent.info().agent.unwrap().isolation, "thread");
    assert!(worker_pids(agent.pid()).is_empty(), "thread isolation starts no process");
}
