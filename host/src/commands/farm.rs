//! `edgeloop farm`: run a farm's broker, serve agents to it, show its state.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use anyhow::Context as _;
use clap::{Args, Subcommand};

use super::flags::{Auth, FarmAuthArgs};
use crate::client::AgentClient;
use crate::farm::server::{LocalServer, ServerSettings};
use crate::farm::status::ClassStatus;
use crate::farm::worker::WorkerSettings;
use crate::farm::{Farm, FarmAddress, worker};

#[derive(Subcommand)]
pub enum FarmCommand {
    /// Run a nats-server with JetStream for a farm (in the foreground; Ctrl-C stops it, the jobs stay).
    Up(UpArgs),
    /// Take a device class's jobs from the farm and measure them on agents (one job at a time per agent).
    Worker(WorkerArgs),
    /// Per device class: live devices, and jobs pending, in flight and redelivered.
    Status(StatusArgs),
}

#[derive(Args)]
pub struct UpArgs {
    /// Listen on 127.0.0.1:4222 (the default): a farm for this machine.
    #[arg(long, conflicts_with = "listen")]
    local: bool,
    /// Address to listen on. Off loopback, users with keys are always on
    /// (see --auth); put TLS in front as README says.
    #[arg(long, value_name = "ADDR")]
    listen: Option<SocketAddr>,
    /// Users with keys and permissions: hosts publish jobs, workers take
    /// them. Their seeds go to DIR/keys/{host,worker}.nk.
    #[arg(long)]
    auth: bool,
    /// The server's folder: JetStream's store, configuration, keys, log
    /// [default: ~/.local/share/edgeloop/farm].
    #[arg(long, value_name = "DIR")]
    dir: Option<PathBuf>,
    /// The nats-server binary.
    #[arg(long, value_name = "PATH", default_value = crate::farm::server::DEFAULT_BINARY)]
    nats_server: PathBuf,
}

/// The farm's broker and how to authenticate to it.
#[derive(Args)]
pub struct FarmArgs {
    /// The farm's broker.
    #[arg(long, value_name = "nats://HOST:PORT", default_value = "nats://127.0.0.1:4222")]
    nats: String,
    #[command(flatten)]
    auth: FarmAuthArgs,
}

impl FarmArgs {
    async fn connect(&self, name: &str) -> anyhow::Result<Farm> {
        Ok(Farm::connect(&self.auth.address(&self.nats), name).await?)
    }
}

#[derive(Args)]
pub struct WorkerArgs {
    #[command(flatten)]
    farm: FarmArgs,
    /// The device class these agents serve, e.g. rk3588-a76x4 (lowercase letters, digits, '-', '_').
    #[arg(long, value_name = "NAME")]
    class: String,
    /// Base URL of an agent of that class; repeat for several.
    #[arg(long = "device", value_name = "URL", required = true)]
    devices: Vec<String>,
    #[command(flatten)]
    agent_auth: Auth,
    /// How long a job may go without word from its worker before the broker gives it to another
    /// (applies when this worker makes the class's queues; the worker tells the broker every
    /// quarter of it that it is still measuring).
    #[arg(long, value_name = "DURATION", default_value = "60s", value_parser = humantime::parse_duration)]
    ack_wait: Duration,
    /// How long a job that failed for a reason not the model's waits before another device may take it.
    #[arg(long, value_name = "DURATION", default_value = "5s", value_parser = humantime::parse_duration)]
    retry_delay: Duration,
    /// How long one measurement may take on the agent before it counts as failed (a hung runtime).
    #[arg(long, value_name = "DURATION", default_value = "10m", value_parser = humantime::parse_duration)]
    request_timeout: Duration,
    /// How this worker names itself in results [default: host name and process id].
    #[arg(long, value_name = "NAME")]
    name: Option<String>,
}

#[derive(Args)]
pub struct StatusArgs {
    #[command(flatten)]
    farm: FarmArgs,
    /// Print JSON instead of a table.
    #[arg(long)]
    json: bool,
}

pub async fn execute(command: FarmCommand) -> anyhow::Result<()> {
    match command {
        FarmCommand::Up(args) => up(args).await,
        FarmCommand::Worker(args) => run_worker(args).await,
        FarmCommand::Status(args) => {
            let farm = args.farm.connect("edgeloop status").await?;
            let classes = crate::farm::status::status(&farm).await?;
            if args.json {
                println!("{}", serde_json::to_string_pretty(&classes)?);
            } else {
                print!("{}", render_status(&farm.url, &classes));
            }
            Ok(())
        }
    }
}

async fn up(args: UpArgs) -> anyhow::Result<()> {
    let dir = match args.dir {
        Some(dir) => dir,
        None => dirs::data_local_dir().context("no home folder: give --dir")?.join("edgeloop").join("farm"),
    };
    let mut settings = ServerSettings::local(dir, args.nats_server);
    if let Some(listen) = args.listen {
        settings.listen = listen;
    }
    settings.auth = args.auth;
    let server = LocalServer::start(settings.clone())?;
    // The streams and buckets are made now, as a host: workers may not make them.
    let host_key = server.users.as_ref().map(|u| u.host.clone());
    Farm::connect(&FarmAddress { url: server.url.clone(), nkey_file: host_key, ca_file: None }, "edgeloop farm up")
        .await?;
    eprintln!("farm broker at {} (store: {})", server.url, settings.dir.display());
    if let Some(users) = &server.users {
        eprintln!("  hosts:   --farm {} --farm-nkey-file {}", server.url, users.host.display());
        eprintln!("  workers: --nats {} --farm-nkey-file {}", server.url, users.worker.display());
    }
    let status = server.wait()?;
    anyhow::ensure!(status.success(), "nats-server exited: {status}");
    Ok(())
}

async fn run_worker(args: WorkerArgs) -> anyhow::Result<()> {
    let token = args.agent_auth.token()?;
    let agents = args
        .devices
        .iter()
        .map(|url| Ok(AgentClient::new(url, token.clone())?.with_request_timeout(args.request_timeout)))
        .collect::<anyhow::Result<Vec<_>>>()?;
    let name = args.name.unwrap_or_else(|| {
        let host = std::fs::read_to_string("/etc/hostname").unwrap_or_default();
        format!("{}:{}", host.trim(), std::process::id())
    });
    let farm = args.farm.connect(&format!("edgeloop worker {name}")).await?;
    let settings = WorkerSettings { class: args.class, ack_wait: args.ack_wait, retry_delay: args.retry_delay, name };
    eprintln!("serving class '{}' of {} with {} agent(s)", settings.class, farm.url, agents.len());
    worker::run(farm, settings, agents).await?;
    Ok(())
}

/// Per class: its queues, then its devices.
pub fn render_status(url: &str, classes: &[ClassStatus]) -> String {
    let mut out = format!("farm at {url}\n");
    if classes.is_empty() {
        out += "  no device class yet (start `edgeloop farm worker`)\n";
    }
    for class in classes {
        out += &format!("class {} — {} live device(s)\n", class.class, class.devices.len());
        for q in &class.queues {
            out += &format!(
                "  {:?}: {} pending, {} in flight, {} redelivered, {} worker pull(s) waiting\n",
                q.priority, q.pending, q.in_flight, q.redelivered, q.waiting
            );
        }
        for d in &class.devices {
            out +=
                &format!("  device {} at {} (worker {}): {}\n", d.info.device_id, d.agent_url, d.worker, d.fingerprint);
        }
    }
    out
}
