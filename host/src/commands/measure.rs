//! `edgeloop measure`: measure one ONNX file on one agent.

use std::path::{Path, PathBuf};
use std::time::Duration;

use anyhow::Context;
use edgeloop_api::{MeasureRequest, Measurement};
use edgeloop_cli::display::measurement_table;

use super::flags::AgentArgs;
use crate::client::DEFAULT_REQUEST_TIMEOUT;
use crate::client::{AgentClient, UploadStatus};
use clap::Args;
use edgeloop_cli::measure_flags::MeasureFlags;

/// Uploads the model at `model` unless the agent has it, measures it with the
/// settings of `template`, and renders the result with [`render`].
pub async fn run(client: &AgentClient, model: &Path, template: &MeasureRequest, json: bool) -> anyhow::Result<String> {
    let bytes = tokio::fs::read(model).await.with_context(|| format!("cannot read model file {}", model.display()))?;
    let (upload, measurement) = client
        .upload_and_measure(&bytes, template)
        .await
        .with_context(|| format!("cannot measure {} on {}", model.display(), client.base_url()))?;
    Ok(render(upload.status, &measurement, json)?)
}

/// The agent's measurement as pretty JSON, unchanged so scripts can rely on
/// the wire format; or a line on the upload followed by the shared table.
pub fn render(upload: UploadStatus, measurement: &Measurement, json: bool) -> serde_json::Result<String> {
    if json {
        return Ok(serde_json::to_string_pretty(measurement)? + "\n");
    }
    let upload = match upload {
        UploadStatus::Stored => "model uploaded",
        UploadStatus::AlreadyPresent => "model already on the agent, upload skipped",
    };
    Ok(format!("{upload}\n{}", measurement_table(measurement)))
}

#[derive(Args)]
pub struct MeasureArgs {
    #[command(flatten)]
    agent: AgentArgs,

    /// ONNX model to measure.
    #[arg(value_name = "MODEL.onnx")]
    model: PathBuf,

    #[command(flatten)]
    measure: MeasureFlags,

    /// Seconds to wait for the result. The agent measures one model at a time,
    /// so this includes waiting behind other hosts' measurements.
    #[arg(
        long,
        value_name = "SECS",
        default_value_t = DEFAULT_REQUEST_TIMEOUT.as_secs(),
        value_parser = clap::value_parser!(u64).range(1..)
    )]
    timeout_secs: u64,

    /// Print the agent's measurement as JSON instead of a table.
    #[arg(long)]
    json: bool,
}

pub async fn execute(args: MeasureArgs) -> anyhow::Result<()> {
    let client = args.agent.client()?.with_request_timeout(Duration::from_secs(args.timeout_secs));
    let template = args.measure.request(String::new());
    print!("{}", run(&client, &args.model, &template, args.json).await?);
    Ok(())
}

#[cfg(test)]
mod tests {
    use edgeloop_api::LatencyStats;

    use super::*;

    fn measurement() -> Measurement {
        Measurement {
            model: "ab12".into(),
            device_id: "pi4".into(),
            runtime: "tract".into(),
            runtime_version: "0.23.9".into(),
            threads: 2,
            load_ms: 12.5,
            first_run_ms: 3.25,
            warmup_runs: 10,
            latency_ms: LatencyStats {
                n: 50,
                mean: 1.5,
                std: 0.125,
                min: 1.0,
                p50: 1.5,
                p90: 1.75,
                p99: 2.0,
                max: 2.5,
            },
            samples_ms: None,
            energy: None,
            energy_unavailable_reason: None,
            thermal: None,
            load: None,
            ops: None,
            cpus: None,
            queue_wait_ms: 0.0,
            started_at: 1,
            finished_at: 2,
        }
    }

    #[test]
    fn human_output_is_the_upload_line_then_the_table() {
        let m = measurement();
        let text = render(UploadStatus::AlreadyPresent, &m, false).unwrap();
        let (first, rest) = text.split_once('\n').unwrap();
        assert_eq!(first, "model already on the agent, upload skipped");
        assert_eq!(rest, measurement_table(&m));
        assert!(render(UploadStatus::Stored, &m, false).unwrap().starts_with("model uploaded\n"));
    }

    #[test]
    fn json_output_is_the_measurement() {
        let m = measurement();
        let text = render(UploadStatus::Stored, &m, true).unwrap();
        assert_eq!(serde_json::from_str::<Measurement>(&text).unwrap(), m);
        assert!(text.ends_with("}\n"));
    }
}
