//! Human-readable renderings shared by `edgeloop` and `edgeloop-agent`, so
//! both print a measurement or a device the same way.

use std::fmt::Write;

use crate::cpus::format_cpu_list;
use edgeloop_api::{DeviceInfo, Measurement, OpTime};

/// Two-column table: one labelled value per line.
fn rows(rows: &[(&str, String)]) -> String {
    let width = rows.iter().map(|(k, _)| k.len()).max().unwrap_or(0);
    let mut out = String::new();
    for (k, v) in rows {
        let _ = writeln!(out, "  {k:<width$}  {v}");
    }
    out
}

fn ms(v: f64) -> String {
    format!("{v:.4} ms")
}

pub fn measurement_table(m: &Measurement) -> String {
    let l = &m.latency_ms;
    let mut table = vec![
        ("model", m.model.clone()),
        ("device", m.device_id.clone()),
        (
            "runtime",
            format!(
                "{} {} ({} thread{})",
                m.runtime,
                m.runtime_version,
                m.threads,
                if m.threads == 1 { "" } else { "s" }
            ),
        ),
        ("load", ms(m.load_ms)),
        ("first run", ms(m.first_run_ms)),
        ("warm-up runs", m.warmup_runs.to_string()),
        ("timed runs", l.n.to_string()),
        ("mean ± std", format!("{:.4} ± {:.4} ms", l.mean, l.std)),
        ("min", ms(l.min)),
        ("p50", ms(l.p50)),
        ("p90", ms(l.p90)),
        ("p99", ms(l.p99)),
        ("max", ms(l.max)),
        ("queue wait", ms(m.queue_wait_ms)),
    ];
    if let Some(cpus) = &m.cpus {
        table.push(("cpus", format_cpu_list(cpus)));
    }
    if let Some(e) = &m.energy {
        table.push((
            "energy",
            format!(
                "{:.4} mJ/inference, {:.3} W avg, {:.3} W idle ({}, {} readings over {:.0} ms)",
                e.mj_per_inference, e.avg_power_w, e.idle_power_w, e.sensor, e.readings, e.window_ms
            ),
        ));
    } else if let Some(reason) = &m.energy_unavailable_reason {
        table.push(("energy", format!("unavailable: {reason}")));
    }
    if let Some(t) = &m.thermal {
        let c = |v: Option<f64>| v.map_or("?".into(), |v| format!("{v:.1}°C"));
        let mhz = |v: Option<f64>| v.map_or("?".into(), |v| format!("{v:.0} MHz"));
        table.push(("temperature", format!("{} → {}", c(t.start_c), c(t.end_c))));
        table.push((
            "cpu frequency",
            format!("{} → {} (min {})", mhz(t.cpu_freq_start_mhz), mhz(t.cpu_freq_end_mhz), mhz(t.cpu_freq_min_mhz)),
        ));
        if t.cooldown_wait_ms > 0.0 {
            table.push(("cool-down", format!("waited {:.0} ms", t.cooldown_wait_ms)));
        }
        if t.throttled {
            table.push(("THROTTLED", t.throttle_reason.clone().unwrap_or_default()));
        }
    }
    if let Some(load) = &m.load {
        table.push((
            "other load",
            format!("{:.2} cores busy with other work over {:.0} ms", load.other_busy_cores, load.window_ms),
        ));
    }
    let mut out = rows(&table);
    if let Some(ops) = &m.ops {
        out.push_str(&ops_table(ops));
    }
    out
}

/// The per-op profile, slowest first, with a cumulative share so the few
/// nodes that matter stand out.
pub fn ops_table(ops: &[OpTime]) -> String {
    let node_width = ops.iter().map(|o| o.node.len()).max().unwrap_or(0).max(4);
    let op_width = ops.iter().map(|o| o.op_type.len()).max().unwrap_or(0).max(2);
    let mut out =
        format!("\n  {:<node_width$}  {:<op_width$}  {:>10}  {:>6}  {:>6}\n", "node", "op", "ms", "share", "cum");
    let mut cumulative = 0.0;
    for o in ops {
        cumulative += o.share;
        let _ = writeln!(
            out,
            "  {:<node_width$}  {:<op_width$}  {:>10.4}  {:>5.1}%  {:>5.1}%",
            o.node,
            o.op_type,
            o.ms,
            o.share * 100.0,
            cumulative * 100.0
        );
    }
    let total: f64 = ops.iter().map(|o| o.ms).sum();
    let _ = writeln!(out, "  {:<node_width$}  {:<op_width$}  {total:>10.4}", "total", "");
    out
}

pub fn device_table(d: &DeviceInfo) -> String {
    let runtimes = d
        .runtimes
        .iter()
        .map(|r| {
            // The reasons are in the JSON; the table only names what is not native.
            let not_native = r.precisions_unavailable.keys().map(String::as_str).collect::<Vec<_>>().join(", ");
            let not_native = if not_native.is_empty() { String::new() } else { format!("; not native: {not_native}") };
            format!("{} {} [{}{not_native}]", r.name, r.version, r.precisions.join(", "))
        })
        .collect::<Vec<_>>()
        .join("; ");
    let mut table = vec![
        ("device_id", d.device_id.clone()),
        ("agent", d.agent_version.clone()),
        ("host", d.hostname.clone()),
        ("os / arch", format!("{} / {}", d.os, d.arch)),
        ("cpu", format!("{} ({} logical cores)", d.cpu_model, d.logical_cores)),
        ("memory", format!("{} MB", d.memory_mb)),
        ("runtimes", runtimes),
    ];
    for (name, reason) in &d.runtimes_unavailable {
        table.push(("unavailable", format!("{name}: {reason}")));
    }
    let sensors = if d.energy_sensors.is_empty() { "none".to_string() } else { d.energy_sensors.join(", ") };
    table.push(("energy sensors", sensors));
    let zones = d
        .thermal_zones
        .iter()
        .map(|z| match z.temp_c {
            Some(t) => format!("{} {:.1}°C", z.kind, t),
            None => z.kind.clone(),
        })
        .collect::<Vec<_>>();
    table.push(("thermal zones", if zones.is_empty() { "none".into() } else { zones.join(", ") }));
    rows(&table)
}

#[cfg(test)]
mod tests {
    use super::*;
    use edgeloop_api::LatencyStats;

    #[test]
    fn measurement_table_lists_percentiles() {
        let m = Measurement {
            model: "ab".into(),
            device_id: "dev".into(),
            runtime: "tract".into(),
            runtime_version: "0.23.9".into(),
            threads: 1,
            load_ms: 1.0,
            first_run_ms: 2.0,
            warmup_runs: 10,
            latency_ms: LatencyStats { n: 50, mean: 1.0, std: 0.1, min: 0.9, p50: 1.0, p90: 1.1, p99: 1.2, max: 1.3 },
            samples_ms: None,
            energy: None,
            energy_unavailable_reason: Some("no meter".into()),
            thermal: None,
            load: Some(edgeloop_api::LoadStats { other_busy_cores: 0.25, window_ms: 1000.0 }),
            ops: None,
            cpus: None,
            queue_wait_ms: 0.0,
            started_at: 0,
            finished_at: 0,
        };
        let t = measurement_table(&m);
        assert!(t.contains("p99") && t.contains("1.2000 ms"), "{t}");
        assert!(t.contains("tract 0.23.9 (1 thread)"));
        assert!(t.contains("unavailable: no meter"));
        assert!(t.contains("0.25 cores busy with other work over 1000 ms"), "{t}");
        assert!(!t.contains("node"), "no profile table without ops");

        let ops = vec![
            OpTime { node: "conv1".into(), op_type: "Conv".into(), ms: 0.75, share: 0.75 },
            OpTime { node: "fc".into(), op_type: "MatMul".into(), ms: 0.25, share: 0.25 },
        ];
        let t = measurement_table(&Measurement { ops: Some(ops), cpus: Some(vec![0, 1, 2]), ..m });
        assert!(t.contains("cpus") && t.contains("0-2"), "{t}");
        let lines: Vec<&str> = t.lines().skip_while(|l| !l.trim_start().starts_with("node")).collect();
        assert_eq!(lines.len(), 4, "{t}");
        assert!(lines[1].contains("conv1") && lines[1].contains("75.0%"), "{t}");
        assert!(lines[2].contains("fc") && lines[2].trim_end().ends_with("100.0%"), "{t}");
        assert!(lines[3].contains("total") && lines[3].contains("1.0000"), "{t}");
    }
}
