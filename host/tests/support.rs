//! What the host's integration tests share: a real agent on a loopback port
//! in a folder holding its token, the `edgeloop` binary, and a way to kill
//! a job mid-way.

use std::path::Path;
use std::process::{Child, Command};
use std::sync::OnceLock;
use std::time::{Duration, Instant};

use edgeloop_agent::runtime::Runtimes;
use edgeloop_agent::{AgentConfig, LocalAgent};

pub const TOKEN: &str = "host-test-token";

/// An agent requiring [`TOKEN`], and a folder holding it in `token` (the
/// agent's cache is `cache/` there).
pub struct AgentDir {
    pub dir: tempfile::TempDir,
    pub agent: LocalAgent,
}

impl AgentDir {
    pub fn start() -> AgentDir {
        AgentDir::start_with(|_| {})
    }

    /// [`AgentDir::start`] with `tweak` applied to the agent's configuration.
    pub fn start_with(tweak: impl FnOnce(&mut AgentConfig)) -> AgentDir {
        let dir = tempfile::tempdir().unwrap();
        let mut config = AgentConfig::new(dir.path().join("cache"));
        config.token = Some(TOKEN.into());
        tweak(&mut config);
        let runtimes = Runtimes::detect(&config.runtimes);
        let agent = LocalAgent::start(config, runtimes).unwrap();
        std::fs::write(dir.path().join("token"), format!("{TOKEN}\n")).unwrap();
        AgentDir { dir, agent }
    }
}

/// The `edgeloop` binary, without a token from the environment.
pub fn edgeloop() -> Command {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_edgeloop"));
    cmd.env_remove("EDGELOOP_TOKEN");
    cmd
}

/// Complete lines of a file (0 while it is missing).
pub fn lines(path: &Path) -> usize {
    std::fs::read(path).map_or(0, |bytes| bytes.iter().filter(|&&b| b == b'\n').count())
}

impl AgentDir {
    /// [`AgentDir::start`] with this machine's table of `tiny` and its
    /// calibration already in `latency-tables/`, as a user's second search
    /// finds them: searches then measure only what they are about.
    pub fn with_tables() -> AgentDir {
        let f = AgentDir::start();
        let tables = seeded_tables().join("latency-tables");
        let into = f.dir.path().join("latency-tables");
        std::fs::create_dir_all(&into).unwrap();
        for entry in std::fs::read_dir(&tables).unwrap() {
            let path = entry.unwrap().path();
            std::fs::copy(&path, into.join(path.file_name().unwrap())).unwrap();
        }
        f
    }
}

/// A folder whose `latency-tables/` holds the table of `tiny` for this
/// machine's agents (every agent here is one device), measured and
/// calibrated briefly through the CLI, once per test binary.
fn seeded_tables() -> &'static Path {
    static SEEDED: OnceLock<tempfile::TempDir> = OnceLock::new();
    SEEDED
        .get_or_init(|| {
            let AgentDir { dir, agent } = AgentDir::start();
            let url = agent.url();
            let quick = ["--token-file", "token", "--space", "tiny", "--warmup", "1", "--runs", "5"];
            let build = edgeloop()
                .current_dir(dir.path())
                .args(["table", "build", "--device", &url, "--min-duration-ms", "5"])
                .args(quick)
                .output()
                .unwrap();
            assert!(build.status.success(), "{}", String::from_utf8_lossy(&build.stderr));
            let table = std::fs::read_dir(dir.path().join("latency-tables")).unwrap().next().unwrap().unwrap().path();
            let calibrate = edgeloop()
                .current_dir(dir.path())
                .args(["table", "calibrate", "--device", &url, "--min-duration-ms", "50", "--table"])
                .arg(&table)
                .args(quick)
                .output()
                .unwrap();
            assert!(calibrate.status.success(), "{}", String::from_utf8_lossy(&calibrate.stderr));
            dir
        })
        .path()
}

/// Polls `ready` (a file the job writes reaching some state), failing if
/// `child` ends first or after `limit`; then SIGKILLs it.
pub fn kill_when(mut child: Child, limit: Duration, ready: impl Fn() -> bool) {
    let deadline = Instant::now() + limit;
    while !ready() {
        assert!(Instant::now() < deadline, "not ready after {limit:?}");
        assert!(child.try_wait().unwrap().is_none(), "the job ended before it could be killed");
        std::thread::sleep(Duration::from_millis(5));
    }
    child.kill().unwrap();
    child.wait().unwrap();
}
