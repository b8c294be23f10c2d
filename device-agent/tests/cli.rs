//! The `edgeloop-agent` binary: flags, refusals, and a real `serve` process.

use std::io::{Read, Write};
use std::net::TcpStream;
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use edgeloop_api::{DeviceInfo, Measurement};
use edgeloop_onnx::samples::MbconvNet;

fn agent() -> Command {
    Command::new(env!("CARGO_BIN_EXE_edgeloop-agent"))
}

fn write_small_model(dir: &Path) -> std::path::PathBuf {
    let path = dir.join("small.onnx");
    std::fs::write(&path, edgeloop_onnx::encode(&MbconvNet::small().to_model())).unwrap();
    path
}

/// Minimal HTTP/1.1 GET, enough to probe a freshly started agent.
fn http_get(addr: &str, path: &str, token: Option<&str>) -> (u16, String) {
    let mut stream = TcpStream::connect(addr).unwrap();
    let auth = token.map(|t| format!("Authorization: Bearer {t}\r\n")).unwrap_or_default();
    write!(stream, "GET {path} HTTP/1.1\r\nHost: {addr}\r\n{auth}Connection: close\r\n\r\n").unwrap();
    let mut response = String::new();
    stream.read_to_string(&mut response).unwrap();
    let status = response[9..12].parse().unwrap();
    let body = response.split_once("\r\n\r\n").map(|(_, b)| b.to_string()).unwrap_or_default();
    (status, body)
}

struct Served(Child);

impl Drop for Served {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn wait_for_file(path: &Path) -> String {
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        if let Ok(s) = std::fs::read_to_string(path)
            && !s.is_empty()
        {
            return s;
        }
        assert!(Instant::now() < deadline, "agent did not start");
        std::thread::sleep(Duration::from_millis(50));
    }
}

#[test]
fn serve_refuses_a_public_address_without_token() {
    let dir = tempfile::tempdir().unwrap();
    let out = agent()
        .args(["serve", "--listen", "0.0.0.0:0", "--cache-dir"])
        .arg(dir.path())
        .env_remove("EDGELOOP_TOKEN")
        .output()
        .unwrap();
    assert!(!out.status.success());
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("refusing to listen on 0.0.0.0:0 without a token"), "{stderr}");
}

#[test]
fn serve_with_token_file_answers_health_and_requires_the_token() {
    let dir = tempfile::tempdir().unwrap();
    let token_file = dir.path().join("token");
    std::fs::write(&token_file, "s3cret-token\n").unwrap();
    let addr_file = dir.path().join("addr");
    let child = agent()
        .args(["serve", "--listen", "127.0.0.1:0", "--token-file"])
        .arg(&token_file)
        .arg("--addr-file")
        .arg(&addr_file)
        .arg("--cache-dir")
        .arg(dir.path().join("cache"))
        .env_remove("EDGELOOP_TOKEN")
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let _served = Served(child);
    let addr = wait_for_file(&addr_file);
    assert_eq!(http_get(&addr, "/v1/health", None).0, 200);
    assert_eq!(http_get(&addr, "/v1/info", None).0, 401);
    let (status, body) = http_get(&addr, "/v1/info", Some("s3cret-token"));
    assert_eq!(status, 200);
    let info: DeviceInfo = serde_json::from_str(&body).unwrap();
    assert_eq!(info.arch, std::env::consts::ARCH);
}

#[test]
fn empty_token_file_is_an_error() {
    let dir = tempfile::tempdir().unwrap();
    let token_file = dir.path().join("token");
    std::fs::write(&token_file, "  \n").unwrap();
    let out = agent().args(["serve", "--token-file"]).arg(&token_file).output().unwrap();
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("is empty"));
}

#[test]
fn bench_prints_a_measurement() {
    let dir = tempfile::tempdir().unwrap();
    let model = write_small_model(dir.path());
    let cache = dir.path().join("cache");
    let json = agent()
        .arg("bench")
        .arg(&model)
        .args(["--runs", "7", "--warmup", "1", "--min-duration-ms", "10", "--json", "--cache-dir"])
        .arg(&cache)
        .output()
        .unwrap();
    assert!(json.status.success(), "{}", String::from_utf8_lossy(&json.stderr));
    let m: Measurement = serde_json::from_slice(&json.stdout).unwrap();
    assert!(m.latency_ms.n >= 7);
    assert_eq!(m.runtime, "tract");
    let table = agent()
        .arg("bench")
        .arg(&model)
        .args(["--runs", "3", "--min-duration-ms", "0", "--cache-dir"])
        .arg(&cache)
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&table.stdout);
    assert!(text.contains("p99") && text.contains("timed runs"), "{text}");
}

#[test]
fn bench_names_a_missing_model_file() {
    let out = agent().args(["bench", "/nonexistent/model.onnx"]).output().unwrap();
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("/nonexistent/model.onnx"));
}

#[test]
fn info_is_stable_across_runs() {
    let dir = tempfile::tempdir().unwrap();
    let info = || {
        let out = agent().args(["info", "--json", "--cache-dir"]).arg(dir.path()).output().unwrap();
        assert!(out.status.success());
        serde_json::from_slice::<DeviceInfo>(&out.stdout).unwrap()
    };
    let first = info();
    assert_eq!(info().device_id, first.device_id);
    assert!(first.runtimes.iter().any(|r| r.name == "tract"));
    let human = agent().args(["info", "--cache-dir"]).arg(dir.path()).output().unwrap();
    assert!(String::from_utf8_lossy(&human.stdout).contains(&first.device_id));
}

#[test]
fn info_and_bench_explain_a_broken_ort_library() {
    let dir = tempfile::tempdir().unwrap();
    let garbage = dir.path().join("libonnxruntime.so");
    std::fs::write(&garbage, "not a shared library\n").unwrap();
    let out = agent()
        .args(["info", "--json", "--cache-dir"])
        .arg(dir.path())
        .arg("--ort-lib")
        .arg(&garbage)
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let info: DeviceInfo = serde_json::from_slice(&out.stdout).unwrap();
    assert!(info.runtimes.iter().all(|r| r.name != "ort"));
    let reason = &info.runtimes_unavailable["ort"];
    // A fresh process: the loader's own error, never a panic.
    if cfg!(feature = "ort") {
        assert!(reason.starts_with(&format!("cannot load ONNX Runtime: {}: ", garbage.display())), "{reason}");
    } else {
        assert!(reason.contains("built without ONNX Runtime"), "{reason}");
    }

    let model = write_small_model(dir.path());
    let out = agent()
        .arg("bench")
        .arg(&model)
        .args(["--runtime", "ort", "--ort-lib"])
        .arg(&garbage)
        .arg("--cache-dir")
        .arg(dir.path())
        .output()
        .unwrap();
    assert!(!out.status.success());
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("runtime `ort` is not available") && stderr.contains(reason.as_str()), "{stderr}");
    assert!(!stderr.contains("panicked"), "{stderr}");
}

#[test]
fn compare_a_runtime_with_itself() {
    let dir = tempfile::tempdir().unwrap();
    let model = write_small_model(dir.path());
    let out = agent().arg("compare").arg(&model).args(["--runtimes", "tract,tract", "--seed", "3"]).output().unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(text.contains("0.000e0") && text.contains("every output within 1e-4 of tract's"), "{text}");
}

#[cfg(feature = "ort")]
#[test]
fn compare_tract_with_ort_and_fail_over_tolerance() {
    let dir = tempfile::tempdir().unwrap();
    let model = write_small_model(dir.path());
    let out = agent().arg("compare").arg(&model).output().unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(text.lines().any(|l| l.contains(" ort ")), "one row per output for ort: {text}");
    // Two implementations never agree to the last bit on a conv network.
    let out = agent().arg("compare").arg(&model).args(["--tolerance", "1e-30", "--threads", "2"]).output().unwrap();
    assert!(!out.status.success());
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("differ from tract's by more than 1e-30"), "{stderr}");
}
