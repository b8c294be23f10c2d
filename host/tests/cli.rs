//! The `edgeloop` binary against a real agent on a loopback port.

use std::path::{Path, PathBuf};
use std::process::Output;

use edgeloop_api::{DeviceInfo, Measurement};
use edgeloop_onnx::samples::MbconvNet;

use crate::support::AgentDir;

/// An agent, its token file and a model (`model.onnx`) in one folder.
struct Setup(AgentDir);

impl Setup {
    fn new() -> Self {
        let s = AgentDir::start();
        std::fs::write(s.dir.path().join("model.onnx"), edgeloop_onnx::encode(&MbconvNet::small().to_model())).unwrap();
        Setup(s)
    }

    fn path(&self, name: &str) -> PathBuf {
        self.0.dir.path().join(name)
    }
}

impl std::ops::Deref for Setup {
    type Target = AgentDir;
    fn deref(&self) -> &AgentDir {
        &self.0
    }
}

fn edgeloop(args: &[&str], token_file: Option<&Path>) -> Output {
    let mut cmd = crate::support::edgeloop();
    cmd.args(args);
    if let Some(f) = token_file {
        cmd.arg("--token-file").arg(f);
    }
    cmd.output().unwrap()
}

fn quick_measure<'a>(url: &'a str, model: &'a str) -> Vec<&'a str> {
    vec!["measure", "--device", url, model, "--runs", "5", "--warmup", "1", "--min-duration-ms", "10"]
}

#[test]
fn measure_uploads_once_and_prints_json_or_a_table() {
    let s = Setup::new();
    let url = s.agent.url();
    let model = s.path("model.onnx");
    let model = model.to_str().unwrap();
    let mut args = quick_measure(&url, model);
    args.push("--json");
    let out = edgeloop(&args, Some(&s.path("token")));
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let m: Measurement = serde_json::from_slice(&out.stdout).unwrap();
    assert!(m.latency_ms.n >= 5);
    assert_eq!(m.device_id, s.agent.device_id());

    let out = edgeloop(&quick_measure(&url, model), Some(&s.path("token")));
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(text.starts_with("model already on the agent, upload skipped"), "{text}");
    assert!(text.contains("p50"));
}

#[test]
fn measure_profiles_ops_and_pins_cpus() {
    let s = Setup::new();
    let url = s.agent.url();
    let model = s.path("model.onnx");
    let mut args = quick_measure(&url, model.to_str().unwrap());
    args.extend(["--profile", "--cpus", "0"]);
    let out = edgeloop(&args, Some(&s.path("token")));
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let text = String::from_utf8_lossy(&out.stdout);
    let profile: Vec<&str> = text.lines().skip_while(|l| !l.trim_start().starts_with("node")).collect();
    assert!(profile.len() > 5, "{text}");
    assert!(profile.last().unwrap().trim_start().starts_with("total"), "{text}");
    assert!(text.lines().any(|l| l.trim_start().starts_with("cpus") && l.trim_end().ends_with(" 0")), "{text}");

    let out = edgeloop(&["measure", "--device", &url, "x.onnx", "--cpus", "3-1"], Some(&s.path("token")));
    assert!(!out.status.success());
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("`3-1` in CPU list"),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
}

#[test]
fn measure_reports_a_refused_token_and_a_missing_file() {
    let s = Setup::new();
    let url = s.agent.url();
    std::fs::write(s.path("wrong"), "nope").unwrap();
    let model = s.path("model.onnx");
    let out = edgeloop(&quick_measure(&url, model.to_str().unwrap()), Some(&s.path("wrong")));
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("401") && err.contains("unauthorized"), "{err}");

    let out = edgeloop(&quick_measure(&url, "/no/such/model.onnx"), Some(&s.path("token")));
    assert!(String::from_utf8_lossy(&out.stderr).contains("/no/such/model.onnx"));
}

#[test]
fn devices_lists_every_agent_and_fails_on_unreachable_ones() {
    let s = Setup::new();
    let url = s.agent.url();
    let out = edgeloop(&["devices", "--device", &url, "--json"], Some(&s.path("token")));
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let listed: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    let info: DeviceInfo = serde_json::from_value(listed[0]["info"].clone()).unwrap();
    assert_eq!(info.device_id, s.agent.device_id());

    // Port 9 (discard) on loopback: nothing listens there.
    let out = edgeloop(
        &["devices", "--device", &url, "--device", "http://127.0.0.1:9", "--timeout-secs", "5"],
        Some(&s.path("token")),
    );
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stdout).contains(s.agent.device_id()));
    assert!(String::from_utf8_lossy(&out.stderr).contains("1 of 2 agents"));
}

#[test]
fn space_show_and_export() {
    let out = edgeloop(&["space", "show", "proxyless-mobile"], None);
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(text.contains("21 choice blocks (15 may be skipped with `zero`)"), "{text}");

    let dir = tempfile::tempdir().unwrap();
    let model = dir.path().join("m.onnx");
    let arch = dir.path().join("arch.json");
    let export = |extra: &[&str]| {
        let mut args = vec!["export", "--space", "tiny", "--out", model.to_str().unwrap()];
        args.extend_from_slice(extra);
        edgeloop(&args, None)
    };
    let out = export(&["--random", "5", "--arch-out", arch.to_str().unwrap()]);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let first = std::fs::read(&model).unwrap();
    assert!(edgeloop_onnx::decode(&first).is_ok());
    // Re-exporting the written arch gives the same bytes.
    assert!(export(&["--arch", arch.to_str().unwrap()]).status.success());
    assert_eq!(std::fs::read(&model).unwrap(), first);
    // An arch of another space is refused, naming the file.
    std::fs::write(&arch, r#"{"space":"proxyless-cifar","width":1.0,"ops":[]}"#).unwrap();
    let out = export(&["--arch", arch.to_str().unwrap()]);
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("arch.json"));
}
