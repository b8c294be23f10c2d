//! `edgeloop proxy` as a user runs it: sampled archs of `tiny` scored at
//! initialisation, as JSON and as a table.

use crate::support::edgeloop;

fn proxy(args: &[&str]) -> std::process::Output {
    let mut cmd = edgeloop();
    cmd.args(["proxy", "--space", "tiny", "--dataset", "synthetic:640,128", "--device-kind", "cpu"]).args(args);
    cmd.output().unwrap()
}

#[test]
fn proxies_score_sampled_archs_reproducibly_beside_their_size() {
    let out = proxy(&["--samples", "4", "--json", "--seed", "3"]);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let scores: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    let archs = scores.as_array().unwrap();
    assert_eq!(archs.len(), 4);
    let hashes: std::collections::HashSet<&str> = archs.iter().map(|a| a["arch_hash"].as_str().unwrap()).collect();
    assert_eq!(hashes.len(), 4, "the sampled archs are distinct");
    for arch in archs {
        assert!(arch["params"].as_u64().unwrap() > 1000 && arch["macs"].as_u64().unwrap() > 10_000, "{arch}");
        for proxy in ["synflow", "grad_norm", "snip"] {
            let score = arch["scores"][proxy].as_f64().unwrap();
            assert!(score.is_finite() && score > 0.0, "{proxy}: {arch}");
        }
        // NASWOT is a log-determinant: finite, or null (−∞) when two examples share every unit.
        assert!(arch["scores"]["naswot"].is_number() || arch["scores"]["naswot"].is_null(), "{arch}");
    }
    // Same seed, same archs and scores to the bit (only the timings differ).
    let again = proxy(&["--samples", "4", "--json", "--seed", "3"]);
    let again: serde_json::Value = serde_json::from_slice(&again.stdout).unwrap();
    let scored = |v: &serde_json::Value| -> Vec<(serde_json::Value, serde_json::Value)> {
        v.as_array().unwrap().iter().map(|a| (a["arch_hash"].clone(), a["scores"].clone())).collect()
    };
    assert_eq!(scored(&again), scored(&scores));

    let table = proxy(&["--samples", "2", "--proxies", "synflow,snip"]);
    assert!(table.status.success(), "{}", String::from_utf8_lossy(&table.stderr));
    let text = String::from_utf8_lossy(&table.stdout);
    let header = text.lines().next().unwrap();
    assert!(header.contains("params") && header.contains("MMACs") && header.contains("synflow"), "{text}");
    assert!(!header.contains("naswot"), "{text}");
    assert_eq!(text.lines().count(), 3, "{text}");

    let wrong = proxy(&["--proxies", "zen"]);
    assert!(!wrong.status.success());
    assert!(String::from_utf8_lossy(&wrong.stderr).contains("unknown proxy `zen`"));
}
