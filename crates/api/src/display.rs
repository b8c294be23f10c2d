//! Human-readable renderings shared by `edgeloop` and `edgeloop-agent`, so
//! both print a measurement or a device the same way.

use std::fmt::Write;

use crate::{DeviceInfo, Measurement};

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
    if let Some(e) = &m.energy {
        table.push((
            "energy",
            format!("{:.4} mJ/inference, {:.3} W avg ({})", e.mj_per_inference, e.avg_power_w, e.sensor),
        ));
    } else if let Some(reason) = &m.energy_unavailable_reason {
        table.push(("energy", format!("unavailable: {reason}")));
    }
    rows(&table)
}

pub fn device_table(d: &DeviceInfo) -> String {
    let runtimes = d
        .runtimes
        .iter()
        .map(|r| format!("{} {} [{}]", r.name, r.version, r.precisions.join(", ")))
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
    use crate::LatencyStats;

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
            ops: None,
            queue_wait_ms: 0.0,
            started_at: 0,
            finished_at: 0,
        };
        let t = measurement_table(&m);
        assert!(t.contains("p99") && t.contains("1.2000 ms"), "{t}");
        assert!(t.contains("tract 0.23.9 (1 thread)"));
        assert!(t.contains("unavailable: no meter"));
    }
}
