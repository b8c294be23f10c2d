//! `edgeloop devices`: describe the devices behind one or more agents.

use std::time::Duration;

use edgeloop_api::DeviceInfo;
use edgeloop_cli::display::device_table;
use futures_util::future::join_all;
use serde::Serialize;

use super::flags::Auth;
use crate::client::{AgentClient, ClientError, error_line};
use anyhow::Context as _;
use clap::Args;

/// What one agent answered.
#[derive(Debug)]
pub struct DeviceReport {
    /// The URL as the user gave it.
    pub url: String,
    pub info: Result<DeviceInfo, ClientError>,
}

/// Asks every agent for its `DeviceInfo`, all at once so that one slow agent
/// does not hold up the others. Reports come back in the order of `urls`.
pub async fn query(urls: &[String], token: Option<&str>, timeout: Duration) -> Vec<DeviceReport> {
    join_all(urls.iter().map(|url| async move {
        let info = match AgentClient::new(url, token.map(str::to_owned)) {
            Ok(client) => client.with_request_timeout(timeout).info().await,
            Err(error) => Err(error),
        };
        DeviceReport { url: url.clone(), info }
    }))
    .await
}

/// One block per agent, or one `URL: error: ...` line for an agent that failed.
pub fn render_human(reports: &[DeviceReport]) -> String {
    let blocks: Vec<String> = reports
        .iter()
        .map(|report| match &report.info {
            Ok(info) => format!("{}\n{}", report.url, device_table(info)),
            Err(error) => format!("{}: error: {}\n", report.url, error_line(error)),
        })
        .collect();
    blocks.join("\n")
}

/// A JSON array of `{"url", "info"}` or `{"url", "error"}` objects.
pub fn render_json(reports: &[DeviceReport]) -> serde_json::Result<String> {
    /// A struct rather than `json!`, which would sort the keys.
    #[derive(Serialize)]
    struct Entry<'a> {
        url: &'a str,
        #[serde(skip_serializing_if = "Option::is_none")]
        info: Option<&'a DeviceInfo>,
        #[serde(skip_serializing_if = "Option::is_none")]
        error: Option<String>,
    }
    let entries: Vec<Entry> = reports
        .iter()
        .map(|report| Entry {
            url: &report.url,
            info: report.info.as_ref().ok(),
            error: report.info.as_ref().err().map(|e| error_line(e)),
        })
        .collect();
    Ok(serde_json::to_string_pretty(&entries)? + "\n")
}

#[derive(Args)]
pub struct DevicesArgs {
    /// Base URL of an agent, e.g. http://192.168.1.20:7878; repeat for several.
    #[arg(long = "device", value_name = "URL", required = true)]
    devices: Vec<String>,

    #[command(flatten)]
    auth: Auth,

    /// Seconds to wait for each agent's answer.
    #[arg(
        long,
        value_name = "SECS",
        default_value_t = 30,
        value_parser = clap::value_parser!(u64).range(1..)
    )]
    timeout_secs: u64,

    /// Print a JSON array of {"url", "info"} or {"url", "error"} objects instead of tables.
    #[arg(long)]
    json: bool,
}

pub async fn execute(args: DevicesArgs) -> anyhow::Result<()> {
    let token = args.auth.token()?;
    let reports = query(&args.devices, token.as_deref(), Duration::from_secs(args.timeout_secs)).await;
    let output = if args.json {
        render_json(&reports).context("cannot encode the device list")?
    } else {
        render_human(&reports)
    };
    print!("{output}");
    let failed = reports.iter().filter(|r| r.info.is_err()).count();
    anyhow::ensure!(failed == 0, "{failed} of {} agents could not be queried", reports.len());
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn info() -> DeviceInfo {
        DeviceInfo {
            device_id: "pi4".into(),
            agent_version: "0.1.0".into(),
            hostname: "raspberrypi".into(),
            os: "linux".into(),
            arch: "aarch64".into(),
            cpu_model: "Cortex-A72".into(),
            logical_cores: 4,
            memory_mb: 3906,
            runtimes: vec![],
            runtimes_unavailable: Default::default(),
            energy_sensors: vec![],
            energy_unavailable_reason: None,
            thermal_zones: vec![],
            agent: None,
        }
    }

    #[test]
    fn devices_are_blocks_under_their_url() {
        let reports = [
            DeviceReport { url: "http://a".into(), info: Ok(info()) },
            DeviceReport { url: "http://b".into(), info: Ok(info()) },
        ];
        let block = format!("{}\n{}", "http://a", device_table(&info()));
        assert_eq!(render_human(&reports), format!("{block}\n{}", block.replace("http://a", "http://b")));
        let json: serde_json::Value = serde_json::from_str(&render_json(&reports).unwrap()).unwrap();
        assert_eq!(json[0]["url"], "http://a");
        assert_eq!(json[0]["info"]["device_id"], "pi4");
        assert!(json[0].get("error").is_none());
    }

    #[tokio::test]
    async fn failures_get_one_line_each_in_order() {
        let urls = ["not a url".to_string(), "http://127.0.0.1:1".to_string()];
        let reports = query(&urls, None, Duration::from_secs(5)).await;
        let text = render_human(&reports);
        let lines: Vec<_> = text.lines().collect();
        assert_eq!(lines.len(), 3, "{text}");
        assert!(lines[0].starts_with("not a url: error: invalid agent URL"), "{text}");
        assert!(
            lines[2].starts_with("http://127.0.0.1:1: error: cannot connect to agent at http://127.0.0.1:1/: "),
            "{text}"
        );
        let json: serde_json::Value = serde_json::from_str(&render_json(&reports).unwrap()).unwrap();
        assert_eq!(json[1]["url"], "http://127.0.0.1:1");
        assert!(json[1]["error"].as_str().unwrap().starts_with("cannot connect"));
    }
}
