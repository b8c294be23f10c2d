//! `edgeloop table build` killed with SIGKILL mid-build and rerun, and
//! `edgeloop table predict` and `table validate`, against a real agent on a loopback port.

use std::path::Path;
use std::process::{Command, Stdio};
use std::time::Duration;

use edgeloop::table::LatencyTable;
use edgeloop::table::build::{TablePrecision, default_path, targets};
use edgeloop_space::{Arch, Space};

use crate::support::{AgentDir, edgeloop, kill_when, lines};

fn build_command(dir: &Path, url: &str, min_duration_ms: &str) -> Command {
    let mut cmd = edgeloop();
    cmd.current_dir(dir).args(["table", "build", "--device", url, "--space", "tiny"]);
    cmd.args(["--token-file", "token", "--warmup", "1", "--runs", "5", "--min-duration-ms", min_duration_ms]);
    cmd
}

#[test]
fn build_survives_sigkill_resumes_and_predicts() {
    let AgentDir { dir, agent } = AgentDir::start();
    let space = Space::load("tiny", 1.0).unwrap();
    let path = dir.path().join(default_path(agent.device_id(), "tract", "tiny", false, TablePrecision::Fp32));

    // Slow rows (100 ms each) so that the kill lands mid-build.
    let child = build_command(dir.path(), &agent.url(), "100").stdout(Stdio::null()).spawn().unwrap();
    kill_when(child, Duration::from_secs(120), || lines(&path) >= 4);
    let kept = LatencyTable::load(&path).unwrap();
    assert!(kept.len() >= 3 && kept.len() < targets(&space).len(), "{} rows", kept.len());
    // What a kill in the middle of a write leaves: a line without its end.
    let mut file = std::fs::OpenOptions::new().append(true).open(&path).unwrap();
    std::io::Write::write_all(&mut file, b"expanded_conv-input:8x8x16-output:8x8x16,expanded_c").unwrap();
    drop(file);

    let out = build_command(dir.path(), &agent.url(), "5").output().unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let total = targets(&space).len();
    let summary = format!("{} rows measured, {} already there, {total} in all", total - kept.len(), kept.len());
    assert!(String::from_utf8_lossy(&out.stdout).contains(&summary), "{}", String::from_utf8_lossy(&out.stdout));
    assert!(String::from_utf8_lossy(&out.stderr).contains("incomplete last line"));

    // Complete, each key once, every line a row, the rows from before the kill kept as they were.
    let text = std::fs::read_to_string(&path).unwrap();
    assert!(text.ends_with('\n'));
    assert_eq!(text.lines().count(), total + 1);
    let table = LatencyTable::load(&path).unwrap();
    let mut keys: Vec<String> = table.rows().iter().map(|r| r.key()).collect();
    keys.sort();
    let mut expected: Vec<String> = targets(&space).iter().map(|t| t.key()).collect();
    expected.sort();
    assert_eq!(keys, expected);
    assert_eq!(&table.rows()[..kept.len()], kept.rows());

    // Predict a random arch through the CLI.
    std::fs::write(dir.path().join("arch.json"), Arch::random(&space, 3).to_json()).unwrap();
    let predict = |extra: &[&str]| {
        let mut cmd = edgeloop();
        cmd.current_dir(dir.path()).args(["table", "predict", "--space", "tiny", "--arch", "arch.json", "--table"]);
        let out = cmd.arg(&path).args(extra).output().unwrap();
        assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
        String::from_utf8(out.stdout).unwrap()
    };
    let json: serde_json::Value = serde_json::from_str(&predict(&["--json"])).unwrap();
    let total_ms = json["total_ms"].as_f64().unwrap();
    let layers: f64 = json["per_layer"].as_array().unwrap().iter().map(|l| l["ms"].as_f64().unwrap()).sum();
    assert!(total_ms > 0.0 && (total_ms - layers - json["overhead_ms"].as_f64().unwrap()).abs() < 1e-9);
    let text = predict(&[]);
    assert!(text.lines().last().unwrap().starts_with("total"), "{text}");
    assert!(text.contains("stem") && text.contains("classifier"), "{text}");

    // The table has no rows for a wider tiny: the error names a missing key and the file.
    let wide = Space::load("tiny", 2.0).unwrap();
    std::fs::write(dir.path().join("wide.json"), Arch::random(&wide, 3).to_json()).unwrap();
    let out = edgeloop()
        .current_dir(dir.path())
        .args(["table", "predict", "--space", "tiny", "--width", "2", "--arch", "wide.json", "--table"])
        .arg(&path)
        .output()
        .unwrap();
    let error = String::from_utf8_lossy(&out.stderr);
    let expected = format!("latency table {} has no row Conv-input:32x32x3-output:16x16x16", path.display());
    assert!(!out.status.success() && error.contains(&expected), "{error}");

    // Medians need a calibration: without one the error says so.
    let predict_stat = |stat: &str| {
        edgeloop()
            .current_dir(dir.path())
            .args(["table", "predict", "--space", "tiny", "--arch", "arch.json", "--json", "--stat", stat, "--table"])
            .arg(&path)
            .output()
            .unwrap()
    };
    let out = predict_stat("p50");
    let error = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success() && error.contains("calibrat"), "{error}");

    // Calibrate on a few whole networks, then validate on others.
    let whole_networks = |command: &str, extra: &[&str]| {
        edgeloop()
            .current_dir(dir.path())
            .args(["table", command, "--device", &agent.url(), "--token-file", "token", "--space", "tiny"])
            .args(["--warmup", "1", "--runs", "3", "--min-duration-ms", "5"])
            .args(extra)
            .arg("--table")
            .arg(&path)
            .output()
            .unwrap()
    };
    let out = whole_networks("calibrate", &["--samples", "3", "--seed", "1"]);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let calibration: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(path.with_extension("calibration.json")).unwrap()).unwrap();
    assert!(calibration["scale"].as_f64().unwrap() > 0.0);
    let fitted_on: Vec<String> =
        calibration["archs"].as_array().unwrap().iter().map(|h| h.as_str().unwrap().to_string()).collect();
    assert_eq!(fitted_on.len(), 3);

    // Calibrated, the median and the tail are predicted above the fastest run.
    let predicted = |stat: &str| {
        let out = predict_stat(stat);
        assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
        serde_json::from_slice::<serde_json::Value>(&out.stdout).unwrap()["total_ms"].as_f64().unwrap()
    };
    let (min, p50, p90) = (predicted("min"), predicted("p50"), predicted("p90"));
    assert!(min > 0.0 && p50 >= min * 0.95 && p90 >= p50 * 0.95, "min {min}, p50 {p50}, p90 {p90}");
    let out =
        whole_networks("validate", &["--samples", "2", "--seed", "5", "--stat", "p90", "--out", "validation-p90"]);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let csv = std::fs::read_to_string(dir.path().join("validation-p90/validation.csv")).unwrap();
    assert!(
        csv.starts_with("arch_hash,stat,") && csv.lines().skip(1).all(|l| l.split(',').nth(1) == Some("p90")),
        "{csv}"
    );

    // Same seed as the calibration: validation still leaves those archs out.
    let out = whole_networks("validate", &["--samples", "4", "--seed", "1", "--json", "--out", "validation"]);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let metrics: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(metrics["samples"], 4);
    for key in ["within_10pct", "mape", "rmse_ms", "kendall_tau"] {
        assert!(metrics[key].is_number(), "{key} in {metrics}");
    }
    let csv = std::fs::read_to_string(dir.path().join("validation/validation.csv")).unwrap();
    assert_eq!(csv.lines().count(), 5);
    assert!(csv.lines().skip(1).all(|l| !fitted_on.iter().any(|h| l.starts_with(h.as_str()))), "{csv}");
    assert!(std::fs::read(dir.path().join("validation/validation.png")).unwrap().starts_with(b"\x89PNG"));
}
