//! `edgeloop search` as a user runs it: killed with SIGKILL mid-search and
//! resumed with `--resume`, against a real agent on a loopback port.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use crate::support::{AgentDir, kill_when, lines};

fn search_command(dir: &Path, url: &str, strategy: &str, resume: bool) -> Command {
    search_under(dir, &["--device", url], strategy, resume, "1.0")
}

/// A short search by `strategy` in `dir` on the devices that `on` names.
pub fn search_under(dir: &Path, on: &[&str], strategy: &str, resume: bool, budget_ms: &str) -> Command {
    let mut cmd = crate::support::edgeloop();
    cmd.current_dir(dir).args(["search", "--space", "tiny"]).args(on);
    cmd.args(["--token-file", "token", "--dataset", "synthetic:1280,128", "--budget-ms", budget_ms]);
    cmd.args(["--strategy", strategy, "--warmup-epochs", "1", "--epochs", "3", "--final-epochs", "1"]);
    cmd.args(["--batch-size", "32", "--arch-every", "2", "--samples", "2", "--random-samples", "20"]);
    cmd.args(["--nao-seeds", "20", "--nao-new", "6", "--nao-top", "8", "--nao-epd-epochs", "100"]);
    // Short probes: what these tests check does not depend on their precision.
    cmd.args(["--probe-runs", "5", "--probe-ms", "20"]);
    cmd.args(["--device-kind", "cpu", "--threads", "1", "--out", "run"]);
    if resume {
        cmd.arg("--resume");
    }
    cmd
}

/// How long a search may take to reach the point where it is killed.
const LIMIT: Duration = Duration::from_secs(300);

fn fixture() -> AgentDir {
    AgentDir::with_tables()
}

/// A search by `strategy` started in the fixture's folder (its stderr
/// dropped): its run folder, its measurement cache and the process.
fn start_search(f: &AgentDir, strategy: &str) -> (PathBuf, PathBuf, Child) {
    let run = f.dir.path().join("run");
    let child = search_command(f.dir.path(), &f.agent.url(), strategy, false).stderr(Stdio::null()).spawn().unwrap();
    (run.clone(), run.join("measurements.jsonl"), child)
}

/// Kills the search in the middle of a search epoch, after it measured
/// archs the checkpoint does not know about (the resumed epoch samples them
/// again); returns the measurements cached by then.
fn kill_mid_epoch(child: Child, run: &Path, cache: &Path) -> usize {
    kill_when(child, LIMIT, || {
        let done = lines(&run.join("search.csv"));
        done >= 2 && run.join("checkpoint").exists() && lines(cache) >= done + 3
    });
    lines(cache)
}

fn resume_to_the_end(f: &AgentDir, strategy: &str) -> (serde_json::Value, String) {
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
    kill_when(child, LIMIT, || lines(&run.join("search.csv")) >= 2 && run.join("checkpoint").exists());
    assert!(!run.join("result.json").exists());

    let again = search_command(f.dir.path(), &f.agent.url(), "gradient", false).output().unwrap();
    assert!(!again.status.success());
    assert!(String::from_utf8_lossy(&again.stderr).contains("--resume"), "{}", String::from_utf8_lossy(&again.stderr));

    let (result, stderr) = resume_to_the_end(&f, "gradient");
    assert!(stderr.contains("resuming the search after epoch"), "{stderr}");
    let csv = std::fs::read_to_string(run.join("search.csv")).unwrap();
    let epochs: Vec<&str> = csv.lines().skip(1).map(|l| l.split(',').next().unwrap()).collect();
    assert_eq!(epochs, ["1", "2", "3", "4"], "{csv}");
    let accuracy = result["test_accuracy"].as_f64().unwrap();
    assert!(accuracy > 0.0 && accuracy <= 1.0, "{result}");
    let model = std::fs::read(run.join("model.onnx")).unwrap();
    assert_eq!(result["model_sha256"].as_str().unwrap(), edgeloop::client::sha256_hex(&model), "{result}");
    // tiny runs in ~0.1–0.3 ms here: 1 ms is met by every architecture.
    assert_eq!(result["budget_met"].as_bool(), Some(true), "{result}");
}

#[test]
fn reinforce_resume_answers_from_the_measurement_cache() {
    let f = fixture();
    let (run, cache, child) = start_search(&f, "reinforce");
    let before = kill_mid_epoch(child, &run, &cache);

    let (result, _) = resume_to_the_end(&f, "reinforce");
    assert_measured_once_each(&result, &cache, before);
}

/// The resumed run answered from the cache, and no arch is in it twice.
fn assert_measured_once_each(result: &serde_json::Value, cache: &Path, before: usize) {
    assert!(result["cache_hits"].as_u64().unwrap() > 0, "{result}");
    let text = std::fs::read_to_string(cache).unwrap();
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

#[test]
fn nao_resumed_after_a_round_keeps_its_pool_and_measures_nothing_twice() {
    let f = fixture();
    let (run, cache, child) = start_search(&f, "nao");
    // Killed once the first round's archs are measured (the fastest arch
    // was the first measurement) and its epoch is checkpointed.
    kill_when(child, LIMIT, || lines(&cache) >= 2 && lines(&run.join("search.csv")) >= 3);
    let before = lines(&cache);

    let (result, stderr) = resume_to_the_end(&f, "nao");
    assert!(stderr.contains("resuming the search after epoch"), "{stderr}");
    assert_eq!(result["strategy"], "nao", "{result}");
    assert_eq!(result["budget_met"].as_bool(), Some(true), "{result}");
    assert_measured_once_each(&result, &cache, before);
}

#[test]
fn unas_resume_answers_from_the_measurement_cache() {
    let f = fixture();
    let (run, cache, child) = start_search(&f, "unas");
    let before = kill_mid_epoch(child, &run, &cache);
    let (result, _) = resume_to_the_end(&f, "unas");
    assert_eq!(result["strategy"], "unas", "{result}");
    assert_measured_once_each(&result, &cache, before);
}

#[test]
fn random_search_resumed_while_deriving_draws_and_measures_the_same_archs() {
    let f = fixture();
    let (run, cache, child) = start_search(&f, "random");
    // Killed once the derived candidates are measured (the fastest arch was
    // the first measurement), before the final model is trained.
    kill_when(child, LIMIT, || lines(&cache) >= 2);
    assert!(!run.join("final.checkpoint").exists());
    let before = lines(&cache);

    let (result, _) = resume_to_the_end(&f, "random");
    assert_eq!(result["strategy"], "random", "{result}");
    assert_eq!(result["budget_met"].as_bool(), Some(true), "{result}");
    assert_measured_once_each(&result, &cache, before);
}

fn edgeloop(dir: &Path) -> Command {
    let mut cmd = crate::support::edgeloop();
    cmd.current_dir(dir);
    cmd
}

fn succeed(cmd: &mut Command) -> String {
    let out = cmd.output().unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{cmd:?} failed: {stderr}");
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// The recipe of the short runs below: one epoch on a small synthetic set.
const SHORT_RECIPE: [&str; 10] = [
    "--dataset",
    "synthetic:640,128",
    "--final-epochs",
    "1",
    "--batch-size",
    "32",
    "--device-kind",
    "cpu",
    "--threads",
    "1",
];

#[test]
fn an_impossible_budget_exits_non_zero_with_the_evidence() {
    let f = fixture();
    let out = search_under(f.dir.path(), &["--device", &f.agent.url()], "gradient", false, "0.0005").output().unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success(), "{stderr}");
    assert!(stderr.contains("cannot be met on this device") && stderr.contains("measured"), "{stderr}");
    assert!(!f.dir.path().join("run/result.json").exists());
}

#[test]
fn train_baseline_and_report_write_their_files() {
    let f = fixture();
    let dir = f.dir.path();
    let device = ["--device", &f.agent.url(), "--token-file", "token"];
    succeed(
        edgeloop(dir)
            .args(["train", "--space", "tiny", "--baseline", "mbv2", "--width", "0.5", "--budget-ms", "5"])
            .args(device)
            .args(SHORT_RECIPE)
            .args(["--out", "mbv2"]),
    );
    let result: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(dir.join("mbv2/result.json")).unwrap()).unwrap();
    assert_eq!(result["kind"], "train");
    assert!(result["arch"]["ops"].as_array().unwrap().iter().all(|op| op == "3x3_MBConv6"), "{result}");
    assert_eq!(result["budget_met"].as_bool(), Some(result["measured_latency_ms"].as_f64().unwrap() <= 5.0));
    assert!(dir.join("mbv2/model.onnx").exists());

    // 0.5 and 0.52 round to the same channels: trained once.
    let stdout = succeed(
        edgeloop(dir)
            .args(["baseline", "--space", "tiny", "--widths", "0.35,0.5,0.52"])
            .args(device)
            .args(SHORT_RECIPE)
            .args(["--out", "sweep"]),
    );
    let csv = std::fs::read_to_string(dir.join("sweep/baselines.csv")).unwrap();
    let header: Vec<&str> = csv.lines().next().unwrap().split(',').collect();
    for column in ["width", "arch_hash", "test_accuracy", "measured_p50_ms", "measured_p90_ms", "model_kb"] {
        assert!(header.contains(&column), "{column} missing from {header:?}");
    }
    assert_eq!(csv.lines().count(), 1 + 3, "{csv}\n{stdout}");
    let run_of = |width: &str| {
        csv.lines().find(|l| l.starts_with(&format!("{width},"))).unwrap().rsplit(',').next().unwrap().to_string()
    };
    assert_eq!(run_of("0.52"), run_of("0.5"), "{csv}");
    assert!(dir.join("sweep/w0.35/result.json").exists() && !dir.join("sweep/w0.52").exists());

    let stdout = succeed(edgeloop(dir).args(["report", "mbv2", "--baselines", "sweep", "--out", "report"]));
    assert!(stdout.contains("| mbv2 |"), "{stdout}");
    let md = std::fs::read_to_string(dir.join("report/report.md")).unwrap();
    assert!(md.contains("mbv2"), "{md}");
    for png in ["pareto.png", "latency.png"] {
        let image = image::open(dir.join("report").join(png)).unwrap();
        assert!(image.width() > 100 && image.height() > 100, "{png}");
    }
}

#[test]
fn the_quickstart_runs_end_to_end_at_reduced_epochs() {
    let f = fixture();
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).parent().unwrap();
    let out = f.dir.path().join("quickstart");
    let run = Command::new("bash")
        .arg(root.join("scripts/quickstart.sh"))
        .args(["--device-kind", "cpu", "--probe-runs", "5"])
        .env("EDGELOOP_BIN", env!("CARGO_BIN_EXE_edgeloop"))
        .env("AGENT_URL", f.agent.url())
        .env("AGENT_TOKEN_FILE", f.dir.path().join("token"))
        .env("QUICKSTART_OUT", &out)
        // The fixture's tables, not the checkout's latency-tables/.
        .env("EDGELOOP_TABLES", f.dir.path().join("latency-tables"))
        .env("EPOCHS_SCALE", "0.05")
        .env("DATASET", "synthetic:640,128")
        .env_remove("EDGELOOP_TOKEN")
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&run.stdout);
    let stderr = String::from_utf8_lossy(&run.stderr);
    assert!(run.status.success(), "{stdout}\n{stderr}");
    assert!(stderr.contains("the budget is"), "{stderr}");
    assert!(stdout.contains("| run | budget |"), "no comparison table: {stdout}");
    let latest = out.join("latest");
    let result: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(latest.join("result.json")).unwrap()).unwrap();
    assert_eq!(result["budget_met"].as_bool(), Some(true), "{result}");
    let reports: Vec<_> = std::fs::read_dir(&out)
        .unwrap()
        .filter_map(|e| e.ok())
        .filter(|e| e.file_name().to_string_lossy().starts_with("report-"))
        .collect();
    assert_eq!(reports.len(), 1);
    assert!(reports[0].path().join("pareto.png").exists());
}
