//! The agent's HTTP API end to end: real agent on 127.0.0.1, real tract,
//! models built by the tests, the host's client. DESIGN §5 and §6.

use edgeloop::client::{AgentClient, ClientError, UploadStatus, sha256_hex};
use edgeloop_api::{ErrorBody, ErrorCode, MeasureRequest, Measurement};
use edgeloop_e2e::{TOKEN, TestAgent, bad_models, dynamic_batch_model, quick_request, raw_http, small_model};

fn api_code(err: ClientError) -> (u16, ErrorCode, String) {
    match err {
        ClientError::Api { status, code, message } => (status, code, message),
        other => panic!("expected an API error, got {other:?}"),
    }
}

async fn assert_still_measures(client: &AgentClient) {
    let model = small_model();
    let up = client.upload(&model).await.expect("upload good model");
    let m = client.measure(&quick_request(&up.sha256)).await.expect("agent still measures a good model");
    assert!(m.latency_ms.n >= 5);
}

#[tokio::test(flavor = "multi_thread")]
async fn happy_path_every_endpoint() {
    let _device = edgeloop_e2e::shared().await;
    let agent = TestAgent::start();
    let client = agent.client();
    let health = client.health().await.unwrap();
    assert_eq!(health.status, "ok");

    let info = client.info().await.unwrap();
    assert_eq!(info.device_id, agent.agent.device_id());
    assert_eq!(info.arch, std::env::consts::ARCH);
    assert!(info.logical_cores >= 1);
    let tract = info.runtimes.iter().find(|r| r.name == "tract").expect("tract listed");
    // Found out by probing: tract runs fp32 and int8 convs natively on every
    // CPU; fp16 depends on the CPU, and is either listed or said why not.
    assert!(tract.precisions.starts_with(&["fp32".into(), "int8".into()]), "{tract:?}");
    for precision in ["fp32", "int8", "fp16"] {
        let native = tract.precisions.iter().any(|p| p == precision);
        assert_ne!(native, tract.precisions_unavailable.contains_key(precision), "{precision}: {tract:?}");
    }

    let model = small_model();
    let sha = sha256_hex(&model);
    assert!(!client.has_model(&sha).await.unwrap());
    let up = client.upload(&model).await.unwrap();
    assert_eq!((up.sha256.as_str(), up.status), (sha.as_str(), UploadStatus::Stored));
    assert!(client.has_model(&sha).await.unwrap());

    let m = client.measure(&quick_request(&sha)).await.unwrap();
    assert_eq!(m.model, sha);
    assert_eq!(m.device_id, info.device_id);
    assert_eq!(m.runtime, "tract");
    assert_eq!(m.runtime_version, tract.version);
    assert!(m.load_ms > 0.0 && m.first_run_ms > 0.0);
}

#[tokio::test(flavor = "multi_thread")]
async fn upload_is_idempotent() {
    let _device = edgeloop_e2e::shared().await;
    let agent = TestAgent::start();
    let client = agent.client();
    let model = small_model();
    assert_eq!(client.upload(&model).await.unwrap().status, UploadStatus::Stored);
    assert_eq!(client.upload(&model).await.unwrap().status, UploadStatus::AlreadyPresent);
    // A raw PUT of a stored model answers 200, not 201, and stores nothing new.
    let path = agent.cache.path().join("models").join(format!("{}.onnx", sha256_hex(&model)));
    // A rewrite (temp file + rename) would give the path another inode.
    let inode = std::os::unix::fs::MetadataExt::ino(&std::fs::metadata(&path).unwrap());
    let resp = raw_http()
        .put(format!("{}/v1/models/{}", agent.url(), sha256_hex(&model)))
        .bearer_auth(TOKEN)
        .body(model.clone())
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 200);
    assert_eq!(std::fs::read(&path).unwrap(), model);
    assert_eq!(std::os::unix::fs::MetadataExt::ino(&std::fs::metadata(&path).unwrap()), inode, "rewritten");
}

#[tokio::test(flavor = "multi_thread")]
async fn hash_mismatch_is_400() {
    let _device = edgeloop_e2e::shared().await;
    let agent = TestAgent::start();
    let model = small_model();
    let wrong = sha256_hex(b"something else");
    let resp = raw_http()
        .put(format!("{}/v1/models/{wrong}", agent.url()))
        .bearer_auth(TOKEN)
        .body(model)
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 400);
    let body: ErrorBody = resp.json().await.unwrap();
    assert_eq!(body.error.code, ErrorCode::BadRequest);
    assert!(body.error.message.contains("hashes to"), "{}", body.error.message);
    assert!(!agent.client().has_model(&wrong).await.unwrap());
    assert_still_measures(&agent.client()).await;
}

#[tokio::test(flavor = "multi_thread")]
async fn unknown_model_is_404() {
    let _device = edgeloop_e2e::shared().await;
    let agent = TestAgent::start();
    let missing = sha256_hex(b"never uploaded");
    let (status, code, message) = api_code(agent.client().measure(&quick_request(&missing)).await.unwrap_err());
    assert_eq!((status, code), (404, ErrorCode::NotFound));
    assert!(message.contains(&missing));
}

#[tokio::test(flavor = "multi_thread")]
async fn oversize_upload_is_413() {
    let _device = edgeloop_e2e::shared().await;
    let agent = TestAgent::start_with(|c| c.max_model_bytes = 10_000);
    let client = agent.client();
    let (status, code, message) = api_code(client.upload(&small_model()).await.unwrap_err());
    assert_eq!((status, code), (413, ErrorCode::PayloadTooLarge));
    assert!(message.contains("--max-model-mb"), "{message}");
    // A model under the limit still goes through.
    let tiny = dynamic_batch_model();
    assert!(tiny.len() < 10_000);
    let up = client.upload(&tiny).await.unwrap();
    let mut req = quick_request(&up.sha256);
    req.inputs.insert("x".into(), vec![2, 16]);
    client.measure(&req).await.unwrap();
}

#[tokio::test(flavor = "multi_thread")]
async fn missing_or_bad_token_is_401_except_health() {
    let _device = edgeloop_e2e::shared().await;
    let agent = TestAgent::start();
    let model = small_model();
    let sha = sha256_hex(&model);
    let http = raw_http();
    let base = agent.url();
    for token in [None, Some("wrong-token"), Some("")] {
        let with = |rb: reqwest::RequestBuilder| match token {
            Some(t) => rb.bearer_auth(t),
            None => rb,
        };
        let requests = [
            with(http.get(format!("{base}/v1/info"))),
            with(http.get(format!("{base}/v1/models/{sha}"))),
            with(http.put(format!("{base}/v1/models/{sha}")).body(model.clone())),
            with(http.post(format!("{base}/v1/measure")).json(&quick_request(&sha))),
        ];
        for rb in requests {
            let resp = rb.send().await.unwrap();
            assert_eq!(resp.status(), 401, "token {token:?}");
            let body: ErrorBody = resp.json().await.unwrap();
            assert_eq!(body.error.code, ErrorCode::Unauthorized);
        }
    }
    assert_eq!(http.get(format!("{base}/v1/health")).send().await.unwrap().status(), 200);
    let wrong = AgentClient::new(&base, Some("wrong".into())).unwrap();
    assert_eq!(api_code(wrong.info().await.unwrap_err()).0, 401);
}

#[tokio::test(flavor = "multi_thread")]
async fn malformed_models_are_refused_and_the_agent_keeps_serving() {
    let _device = edgeloop_e2e::shared().await;
    let agent = TestAgent::start();
    let client = agent.client();
    let cases = [
        ("random bytes", bad_models::random_bytes()),
        ("truncated protobuf", bad_models::truncated()),
        ("valid protobuf, missing input", bad_models::missing_input()),
    ];
    for (what, bytes) in cases {
        let refusal = match client.upload(&bytes).await {
            Err(e) => api_code(e),
            Ok(up) => api_code(client.measure(&quick_request(&up.sha256)).await.unwrap_err()),
        };
        let (status, code, message) = refusal;
        assert!(
            matches!((status, code), (400, ErrorCode::MalformedModel) | (422, ErrorCode::UnsupportedModel)),
            "{what}: {status} {code:?} {message}"
        );
        assert!(!message.is_empty());
        assert_still_measures(&client).await;
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn a_runtime_panic_is_answered_and_contained() {
    let _device = edgeloop_e2e::shared().await;
    let agent = TestAgent::start();
    let client = agent.client();
    let up = client.upload(&bad_models::bad_conv_pads()).await.unwrap();
    let (status, code, message) = api_code(client.measure(&quick_request(&up.sha256)).await.unwrap_err());
    assert_eq!((status, code), (500, ErrorCode::RuntimeCrashed), "{message}");
    assert!(message.contains("panicked"), "{message}");
    // Twice: the worker thread survived the first panic.
    assert_eq!(api_code(client.measure(&quick_request(&up.sha256)).await.unwrap_err()).0, 500);
    assert_still_measures(&client).await;
}

#[tokio::test(flavor = "multi_thread")]
async fn dynamic_dims_need_a_shape() {
    let _device = edgeloop_e2e::shared().await;
    let agent = TestAgent::start();
    let client = agent.client();
    let up = client.upload(&dynamic_batch_model()).await.unwrap();
    let (status, code, message) = api_code(client.measure(&quick_request(&up.sha256)).await.unwrap_err());
    assert_eq!((status, code), (400, ErrorCode::BadRequest));
    assert!(message.contains("`x`") && message.contains("batch"), "{message}");
    let mut req = quick_request(&up.sha256);
    req.inputs.insert("x".into(), vec![4, 16]);
    client.measure(&req).await.unwrap();
}

#[tokio::test(flavor = "multi_thread")]
async fn bad_requests_are_400() {
    let _device = edgeloop_e2e::shared().await;
    let agent = TestAgent::start();
    let client = agent.client();
    let up = client.upload(&small_model()).await.unwrap();
    let bad = [
        MeasureRequest { min_runs: 0, ..quick_request(&up.sha256) },
        MeasureRequest { threads: 0, ..quick_request(&up.sha256) },
        MeasureRequest { min_duration_ms: 100, max_duration_ms: 10, ..quick_request(&up.sha256) },
        MeasureRequest { model: "not-a-hash".into(), ..quick_request(&up.sha256) },
    ];
    for req in bad {
        let (status, code, _) = api_code(client.measure(&req).await.unwrap_err());
        assert_eq!((status, code), (400, ErrorCode::BadRequest), "{req:?}");
    }
    let (status, code, message) = api_code(
        client.measure(&MeasureRequest { runtime: "nope".into(), ..quick_request(&up.sha256) }).await.unwrap_err(),
    );
    assert_eq!((status, code), (422, ErrorCode::RuntimeUnavailable));
    assert!(message.contains("tract"), "names what is available: {message}");
    let resp = raw_http()
        .post(format!("{}/v1/measure", agent.url()))
        .bearer_auth(TOKEN)
        .header("content-type", "application/json")
        .body(r#"{"model": 12"#)
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 400);
    assert_eq!(resp.json::<ErrorBody>().await.unwrap().error.code, ErrorCode::BadRequest);
}

#[tokio::test(flavor = "multi_thread")]
async fn concurrent_measurements_never_overlap() {
    let _device = edgeloop_e2e::shared().await;
    let agent = TestAgent::start();
    let client = agent.client();
    let up = client.upload(&small_model()).await.unwrap();
    let tasks: Vec<_> = (0..10)
        .map(|seed| {
            let client = client.clone();
            let req = MeasureRequest { seed, min_duration_ms: 30, ..quick_request(&up.sha256) };
            tokio::spawn(async move { client.measure(&req).await })
        })
        .collect();
    let mut windows: Vec<Measurement> = Vec::new();
    for t in tasks {
        windows.push(t.await.unwrap().unwrap());
    }
    windows.sort_by_key(|m| m.started_at);
    for pair in windows.windows(2) {
        assert!(
            pair[0].finished_at <= pair[1].started_at,
            "windows overlap: [{}, {}] and [{}, {}]",
            pair[0].started_at,
            pair[0].finished_at,
            pair[1].started_at,
            pair[1].finished_at
        );
    }
    let waited = windows.iter().filter(|m| m.queue_wait_ms > 1.0).count();
    assert!(waited >= 1, "queued requests report their wait");
}

#[tokio::test(flavor = "multi_thread")]
async fn statistics_are_consistent() {
    let _device = edgeloop_e2e::shared().await;
    let agent = TestAgent::start();
    let client = agent.client();
    let up = client.upload(&small_model()).await.unwrap();
    let req = MeasureRequest { min_runs: 20, min_duration_ms: 150, keep_samples: true, ..quick_request(&up.sha256) };
    let m = client.measure(&req).await.unwrap();
    let l = m.latency_ms;
    assert!(l.min <= l.p50 && l.p50 <= l.p90 && l.p90 <= l.p99 && l.p99 <= l.max, "{l:?}");
    assert!(l.min <= l.mean && l.mean <= l.max);
    assert!(l.n >= 20, "n ≥ min_runs");
    assert!(m.finished_at - m.started_at >= 150_000, "timed for at least min_duration");
    let samples = m.samples_ms.expect("samples kept when asked");
    assert_eq!(samples.len(), l.n);
    let sum: f64 = samples.iter().sum();
    assert!(sum <= (m.finished_at - m.started_at) as f64 / 1e3 + 1e-6, "samples time only the run call");
    // The cap wins over min_runs.
    let capped =
        MeasureRequest { min_runs: 1_000_000, min_duration_ms: 0, max_duration_ms: 100, ..quick_request(&up.sha256) };
    let c = client.measure(&capped).await.unwrap();
    assert!(c.latency_ms.n < 1_000_000);
    assert!(c.finished_at - c.started_at < 5_000_000);
    assert!(client.measure(&quick_request(&up.sha256)).await.unwrap().samples_ms.is_none());
}

#[tokio::test(flavor = "multi_thread")]
async fn restart_keeps_device_id_and_models() {
    let _device = edgeloop_e2e::shared().await;
    let first = TestAgent::start();
    let client = first.client();
    let up = client.upload(&small_model()).await.unwrap();
    let id = client.info().await.unwrap().device_id;
    let TestAgent { agent, cache } = first;
    agent.stop().unwrap();
    let again = TestAgent::start_in(&cache, |_| {});
    let client = AgentClient::new(&again.url(), Some(TOKEN.into())).unwrap();
    assert_eq!(client.info().await.unwrap().device_id, id);
    assert!(client.has_model(&up.sha256).await.unwrap());
    client.measure(&quick_request(&up.sha256)).await.unwrap();
}
