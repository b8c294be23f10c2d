//! `edgeloop farm up`: a nats-server with JetStream for a farm, from a
//! generated configuration. Users are nkeys inside an account (never a
//! top-level `authorization` block, the pattern of CVE-2023-47090, which
//! Debian's 2.9.10 still has), with per-subject permissions: hosts
//! publish jobs and cannot take them; workers take jobs and write results
//! and cannot publish jobs.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

/// Where Debian's package puts the server.
pub const DEFAULT_BINARY: &str = "nats-server";

#[derive(Debug, thiserror::Error)]
pub enum ServerError {
    #[error(
        "cannot run {}: is nats-server installed? (Debian/Ubuntu: `apt-get install nats-server`; \
         or name the binary with --nats-server)", binary.display()
    )]
    Spawn {
        binary: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("cannot write {}", path.display())]
    Write {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("nats-server did not start within {:.0} s (its output: {log})", limit.as_secs_f64())]
    NotReady { limit: Duration, log: String },
    #[error("nats-server exited at start ({status}); its output: {log}")]
    Exited { status: std::process::ExitStatus, log: String },
}

/// How to run the farm's server.
#[derive(Debug, Clone)]
pub struct ServerSettings {
    /// Address to listen on; port 0 picks a free one.
    pub listen: SocketAddr,
    /// The server's folder: JetStream's store, the configuration, the users' keys.
    pub dir: PathBuf,
    /// Users with nkeys and permissions (always on off loopback).
    pub auth: bool,
    pub binary: PathBuf,
}

/// The nkey seed files of the two users (`None` without auth).
#[derive(Debug, Clone)]
pub struct Users {
    pub host: PathBuf,
    pub worker: PathBuf,
}

/// A running nats-server, stopped when dropped.
pub struct LocalServer {
    child: Child,
    pub url: String,
    pub users: Option<Users>,
    settings: ServerSettings,
}

/// What hosts may not publish: pulling and acknowledging jobs, writing results or devices.
const HOST_DENY: &[&str] = &[
    "$JS.API.CONSUMER.MSG.NEXT.FARM_JOBS.>",
    "$JS.ACK.FARM_JOBS.>",
    "$JS.API.CONSUMER.CREATE.FARM_JOBS.>",
    "$JS.API.CONSUMER.DURABLE.CREATE.FARM_JOBS.>",
    "$JS.API.CONSUMER.DELETE.FARM_JOBS.>",
    "$KV.farm-results.>",
    "$KV.farm-devices.>",
];

/// What workers may not publish: jobs, models, and changes to the streams.
const WORKER_DENY: &[&str] = &[
    "farm.job.>",
    "$O.farm-models.>",
    "$JS.API.STREAM.CREATE.>",
    "$JS.API.STREAM.UPDATE.>",
    "$JS.API.STREAM.DELETE.>",
    "$JS.API.STREAM.PURGE.>",
    "$JS.API.STREAM.MSG.DELETE.>",
];

impl ServerSettings {
    /// The loopback default of one machine: port 4222, no users.
    pub fn local(dir: PathBuf, binary: PathBuf) -> ServerSettings {
        ServerSettings { listen: SocketAddr::from(([127, 0, 0, 1], 4222)), dir, auth: false, binary }
    }

    fn auth(&self) -> bool {
        self.auth || !self.listen.ip().is_loopback()
    }

    /// Writes the configuration (and, with auth, the users' keys unless
    /// they exist: restarting keeps them).
    fn write_config(&self) -> Result<(PathBuf, Option<Users>), ServerError> {
        let write = |path: &Path, bytes: &[u8]| {
            edgeloop_durable::write_atomic(path, bytes)
                .map_err(|source| ServerError::Write { path: path.to_path_buf(), source })
        };
        let mkdir = |path: &Path| {
            std::fs::create_dir_all(path).map_err(|source| ServerError::Write { path: path.to_path_buf(), source })
        };
        mkdir(&self.dir)?;
        mkdir(&self.dir.join("ports"))?;
        let port = if self.listen.port() == 0 { "-1".to_string() } else { self.listen.port().to_string() };
        let store = self.dir.join("jetstream");
        let mut config = format!("listen: \"{}:{port}\"\n", self.listen.ip());
        let users = if self.auth() {
            let keys = self.dir.join("keys");
            mkdir(&keys)?;
            restrict(&keys).map_err(|source| ServerError::Write { path: keys.clone(), source })?;
            let users = Users { host: keys.join("host.nk"), worker: keys.join("worker.nk") };
            let host = user_key(&users.host, write)?;
            let worker = user_key(&users.worker, write)?;
            config += &format!("jetstream {{ store_dir: {:?} }}\n", store.display().to_string());
            config += "accounts {\n  FARM: {\n    jetstream: enabled\n    users: [\n";
            config += &format!("      {{ nkey: {host}, permissions: {{ publish: {{ deny: {HOST_DENY:?} }} }} }}\n");
            config += &format!("      {{ nkey: {worker}, permissions: {{ publish: {{ deny: {WORKER_DENY:?} }} }} }}\n");
            config += "    ]\n  }\n}\n";
            Some(users)
        } else {
            config += &format!("jetstream {{ store_dir: {:?} }}\n", store.display().to_string());
            None
        };
        let path = self.dir.join("nats-server.conf");
        write(&path, config.as_bytes())?;
        Ok((path, users))
    }
}

/// The public key of the user whose seed is in `path`, made first when missing.
fn user_key(path: &Path, write: impl Fn(&Path, &[u8]) -> Result<(), ServerError>) -> Result<String, ServerError> {
    if let Ok(seed) = std::fs::read_to_string(path)
        && let Ok(pair) = nkeys::KeyPair::from_seed(seed.trim())
    {
        return Ok(pair.public_key());
    }
    let pair = nkeys::KeyPair::new_user();
    write(path, format!("{}\n", pair.seed().expect("a new key pair has a seed")).as_bytes())?;
    Ok(pair.public_key())
}

/// Only the owner may read the keys' folder.
fn restrict(dir: &Path) -> std::io::Result<()> {
    use std::os::unix::fs::PermissionsExt as _;
    std::fs::set_permissions(dir, std::fs::Permissions::from_mode(0o700))
}

impl LocalServer {
    /// Starts the server and waits until it listens.
    pub fn start(settings: ServerSettings) -> Result<LocalServer, ServerError> {
        let (config, users) = settings.write_config()?;
        let ports = settings.dir.join("ports");
        let log = settings.dir.join("nats-server.log");
        let log_file =
            std::fs::File::create(&log).map_err(|source| ServerError::Write { path: log.clone(), source })?;
        let child = Command::new(&settings.binary)
            .arg("-c")
            .arg(&config)
            .arg("--ports_file_dir")
            .arg(&ports)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(log_file)
            .spawn()
            .map_err(|source| ServerError::Spawn { binary: settings.binary.clone(), source })?;
        let mut server = LocalServer { child, url: String::new(), users, settings };
        server.url = server.wait_for_port()?;
        Ok(server)
    }

    /// The client URL from the ports file the server writes once it listens.
    fn wait_for_port(&mut self) -> Result<String, ServerError> {
        let limit = Duration::from_secs(20);
        let started = Instant::now();
        let file = self.settings.dir.join("ports").join(format!("nats-server_{}.ports", self.child.id()));
        let log = || std::fs::read_to_string(self.settings.dir.join("nats-server.log")).unwrap_or_default();
        loop {
            if let Ok(text) = std::fs::read_to_string(&file)
                && let Ok(ports) = serde_json::from_str::<serde_json::Value>(&text)
                && let Some(url) = ports["nats"][0].as_str()
            {
                return Ok(url.to_string());
            }
            if let Ok(Some(status)) = self.child.try_wait() {
                return Err(ServerError::Exited { status, log: log() });
            }
            if started.elapsed() > limit {
                return Err(ServerError::NotReady { limit, log: log() });
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// Kills the server the way a crash would (SIGKILL); its store stays.
    pub fn kill(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }

    /// Starts it again on the same store, listening where it listened.
    pub fn restart(&mut self) -> Result<(), ServerError> {
        self.kill();
        let mut settings = self.settings.clone();
        if let Some(port) = self.url.rsplit(':').next().and_then(|p| p.parse().ok()) {
            settings.listen.set_port(port);
        }
        *self = LocalServer::start(settings)?;
        Ok(())
    }

    /// Waits until the server exits (`farm up` in the foreground).
    pub fn wait(mut self) -> std::io::Result<std::process::ExitStatus> {
        self.child.wait()
    }
}

impl Drop for LocalServer {
    fn drop(&mut self) {
        self.kill();
    }
}
