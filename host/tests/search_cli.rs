//! `edgeloop search` as a user runs it: killed with SIGKILL mid-search and
//! resumed with `--resume`, against a real agent on a loopback port.

use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use edgeloop_agent::runtime::Runtimes;
use edgeloop_agent::{AgentConfig, LocalAgent};

const TOKEN: &str = "search-cli-test-token";

fn search_command(dir: &Path, url: &str, strategy: &str, resume: bool) -> Command {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_edgeloop"));
    cmd.current_dir(dir).env_remove("EDGELOOP_TOKEN").args(["search", "--space", "tiny", "--device", url]);
    cmd.args(["--token-file", "token", "--dataset", "synthetic:1280,128", "--budget-ms", "1.0"]);
    cmd.args(["--strategy", strategy, "--warmup-epochs", "1", "--epochs", "3", "--final-epochs", "1"]);
    cmd.args(["--batch-size", "32", "--arch-every", "2", "--samples", "2", "--probe-runs", "5"]);
    cmd.args(["--device-kind", "cpu", "--threads", "1", "--out", "run"]);
    if resume {
        cmd.arg("--resume");
    }
    cmd
}

fn lines(path: &Path) -> usize {
    std::fs::read_to_string(path).map_or(0, |t| t.lines().count())
}

/// Waits for `ready`, failing if `child` ends first; then SIGKILLs it.
fn kill_when(mut child: Child, ready: impl Fn() -> bool) {
    let deadline = Instant::now() + Duration::from_secs(300);
    while !ready() {
        assert!(Instant::now() < deadline, "not ready after 300 s");
        assert!(child.try_wait().unwrap().is_none(), "the search ended before it could be killed");
        std::thread::sleep(Duration::from_millis(20));
    }
    child.kill().unwrap();
    child.wait().unwrap();
}

struct Fixture {
    dir: tempfile::TempDir,
    agent: LocalAgent,
}

fn fixture() -> Fixture {
    let dir = tempfile::tempdir().unwrap();
    let mut config = AgentConfig::new(dir.path().join("cache"));
    config.token = Some(TOKEN.into());
    let runtimes = Runtimes::detect(&config.runtimes);
    let agent = LocalAgent::start(config, runtimes).unwrap();
    std::fs::write(dir.path().join("token"), TOKEN).unwrap();
    Fixture { dir, agent }
}

fn resume_to_the_end(f: &Fixture, strategy: &str) -> (serde_json::Value, String) {
    let out = search_command(f.dir.path(), &f.agent.url(), strategy, true).output().unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr).to_string();
    assert!(out.status.success(), "{stderr}");
    assert!(String::from_utf8_lossy(&out.stdout).contains("test accuracy"), "no summary");
    let result = std::fs::read_to_string(f.dir.path().join("run/result.json")).unwrap();
    (serde_json::from_str(&result).unwrap(), stderr)
}

#[test]
fn gradient_search_resumes_after_sigkill() {
    let f = fixture();
    let run = f.dir.path().join("run");
    let child = search_command(f.dir.path(), &f.agent.url(), "gradient", false).stderr(Stdio::null()).spawn().unwrap();
    // Killed once the first epoch's checkpoint is there, inside the second.
    kill_when(child, || lines(&run.join("search.csv")) >= 2 && run.join("checkpoint").exists());
    assert!(!run.join("result.json").exists());

    let again = search_command(f.dir.path(), &f.agent.url(), "gradient", false).output().unwrap();
    assert!(!again.status.success());
    assert!(String::from_utf8_lossy(&again.stderr).contains("--resume"), "{}", String::from_utf8_lossy(&again.stderr));

    let (result, stderr) = resume_to_the_end(&f, "gradient");
    assert!(stderr.contains("resuming the search after epoch"), "{stderr}");
    let csv = std::fs::read_to_string(run.join("search.csv")).unwrap();
    let epochs: Vec<&str> = csv.lines().skip(1).map(|l| l.split(',').next().unwrap()).collect();
    assert_eq!(epochs, ["1", "2", "3", "4"], "{csv}");
    assert!(result["test_accuracy"].as_f64().unwrap() >= 0.0);
    assert_eq!(result["budget_met"].as_bool().unwrap(), result["measured_latency_ms"].as_f64().unwrap() <= 1.0);
}

#[test]
fn reinforce_resume_answers_from_the_measurement_cache() {
    let f = fixture();
    let run = f.dir.path().join("run");
    let cache = run.join("measurements.jsonl");
    let child = search_command(f.dir.path(), &f.agent.url(), "reinforce", false).stderr(Stdio::null()).spawn().unwrap();
    // Killed in the middle of a search epoch, after it measured archs the
    // checkpoint does not know about: the resumed epoch samples them again.
    kill_when(child, || {
        let done = lines(&run.join("search.csv"));
        done >= 2 && run.join("checkpoint").exists() && lines(&cache) >= done + 3
    });
    let before = lines(&cache);

    let (result, _) = resume_to_the_end(&f, "reinforce");
    assert!(result["cache_hits"].as_u64().unwrap() > 0, "{result}");
    let text = std::fs::read_to_string(&cache).unwrap();
    let keys: Vec<(String, String)> = text
        .lines()
        .map(|l| {
            let v: serde_json::Value = serde_json::from_str(l).unwrap();
            (v["device_id"].as_str().unwrap().into(), v["arch_hash"].as_str().unwrap().into())
        })
        .collect();
    let distinct: std::collections::HashSet<_> = keys.iter().collect();
    assert_eq!(distinct.len(), keys.len(), "an arch was measured twice");
    assert_eq!(result["device_measurements"].as_u64().unwrap() as usize, keys.len() - before);
}
