//! scripts/deploy-android.sh and scripts/deploy-ssh.sh against recording
//! stand-ins: `adb`, `ssh` and `scp` are small bash scripts first on PATH
//! that append their argv to a log (one line per call) and emulate a phone or
//! a board in a temp dir. The fake device's loopback is this machine's, so a
//! port forward or ssh tunnel maps a port to the same port. The agent they
//! start is real (this machine's build, or the static aarch64 build under
//! qemu), so the scripts' health checks and a real client run for real.
//!
//! Every process a test starts runs from its fixture's temp dir; dropping the
//! fixture kills whatever still does, also when the test fails.

use std::fmt;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::OnceLock;
use std::time::{Duration, Instant};

use edgeloop::client::AgentClient;
use edgeloop_e2e::{quick_request, repo_root, small_model};
use tempfile::TempDir;

const PHONE_TMP: &str = "/data/local/tmp";
const HOST: &str = "board@127.0.0.1";
const CRASH_MESSAGE: &str = "edgeloop-agent: simulated crash at start";

/// The agent binary for this machine, built with the target dir and profile
/// of this test (cargo builds only the library for a dependent crate).
/// EDGELOOP_AGENT_BIN overrides it.
fn agent_binary() -> &'static Path {
    static BIN: OnceLock<PathBuf> = OnceLock::new();
    BIN.get_or_init(|| {
        if let Some(path) = std::env::var_os("EDGELOOP_AGENT_BIN") {
            return PathBuf::from(path);
        }
        // This test runs as <target>/<profile>/deps/deploy-<hash>.
        let exe = std::env::current_exe().expect("test executable path");
        let profile_dir = exe.parent().and_then(Path::parent).expect("<target>/<profile>/deps");
        let target_dir = profile_dir.parent().expect("<target>");
        let profile = profile_dir.file_name().and_then(|p| p.to_str()).expect("profile dir name");
        let cargo = std::env::var("CARGO").unwrap_or_else(|_| env!("CARGO").to_string());
        let mut cmd = Command::new(cargo);
        cmd.args(["build", "--quiet", "-p", "edgeloop-agent", "--bin", "edgeloop-agent"])
            .env("CARGO_TARGET_DIR", target_dir)
            .current_dir(repo_root());
        match profile {
            "debug" => {}
            "release" => {
                cmd.arg("--release");
            }
            other => {
                cmd.args(["--profile", other]);
            }
        }
        let status = cmd.status().expect("running cargo build for edgeloop-agent");
        assert!(status.success(), "cargo build -p edgeloop-agent failed");
        let bin = profile_dir.join("edgeloop-agent");
        assert!(bin.exists(), "{} missing after the build", bin.display());
        bin
    })
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port()
}

/// Whether `pid` is a live (not zombie) process.
fn alive(pid: u32) -> bool {
    match std::fs::read_to_string(format!("/proc/{pid}/stat")) {
        Ok(stat) => !matches!(stat.rsplit_once(") ").and_then(|(_, rest)| rest.chars().next()), Some('Z' | 'X')),
        Err(_) => false,
    }
}

fn cmdline(pid: u32) -> String {
    let raw = std::fs::read(format!("/proc/{pid}/cmdline")).unwrap_or_default();
    raw.split(|b| *b == 0)
        .filter(|a| !a.is_empty())
        .map(|a| String::from_utf8_lossy(a).into_owned())
        .collect::<Vec<_>>()
        .join(" ")
}

fn read_pid(path: &Path) -> u32 {
    let text = std::fs::read_to_string(path).unwrap_or_else(|e| panic!("reading pid file {}: {e}", path.display()));
    text.trim().parse().unwrap_or_else(|e| panic!("pid file {} holds {text:?}: {e}", path.display()))
}

fn wait_gone(pid: u32) -> bool {
    let deadline = Instant::now() + Duration::from_secs(5);
    while alive(pid) && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(50));
    }
    !alive(pid)
}

fn mode(path: &Path) -> u32 {
    std::fs::metadata(path).unwrap_or_else(|e| panic!("{}: {e}", path.display())).permissions().mode() & 0o777
}

fn on_path(name: &str) -> Option<PathBuf> {
    std::env::split_paths(&std::env::var_os("PATH")?).map(|d| d.join(name)).find(|p| p.is_file())
}

/// A real client, as `edgeloop --device URL --token-file F` would use it.
fn client(url: &str, token_file: &Path) -> AgentClient {
    let token = std::fs::read_to_string(token_file).unwrap().trim().to_string();
    AgentClient::new(url, Some(token)).expect("client")
}

fn block_on<F: std::future::Future>(f: F) -> F::Output {
    tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap().block_on(f)
}

/// Text after `label` on the line that has it, e.g. "token file:".
fn field(stdout: &str, label: &str) -> String {
    stdout
        .lines()
        .find_map(|l| l.trim_start().strip_prefix(label))
        .map(|v| v.trim().to_string())
        .unwrap_or_else(|| panic!("no '{label}' line in:\n{stdout}"))
}

struct Outcome {
    code: i32,
    stdout: String,
    stderr: String,
}

impl fmt::Display for Outcome {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "exit {}\n--- stdout ---\n{}--- stderr ---\n{}", self.code, self.stdout, self.stderr)
    }
}

impl Outcome {
    #[track_caller]
    fn success(self) -> Self {
        assert_eq!(self.code, 0, "expected success:\n{self}");
        self
    }

    #[track_caller]
    fn failure(self, code: i32) -> Self {
        assert_eq!(self.code, code, "expected exit {code}:\n{self}");
        self
    }
}

/// One expected stand-in call: the whole line, or a prefix plus fragments
/// (for `adb shell` / remote scripts, whose text is long).
enum Call {
    Is(String),
    Has(String, Vec<String>),
}

fn is(line: impl Into<String>) -> Call {
    Call::Is(line.into())
}

fn has(prefix: impl Into<String>, fragments: &[&str]) -> Call {
    Call::Has(prefix.into(), fragments.iter().map(|s| s.to_string()).collect())
}

#[track_caller]
fn assert_calls(actual: &[String], expected: &[Call]) {
    let show = || actual.iter().map(|l| format!("  {l}\n")).collect::<String>();
    assert_eq!(actual.len(), expected.len(), "calls:\n{}", show());
    for (i, (line, want)) in actual.iter().zip(expected).enumerate() {
        let ok = match want {
            Call::Is(l) => line == l,
            Call::Has(prefix, fragments) => line.starts_with(prefix) && fragments.iter().all(|f| line.contains(f)),
        };
        let want = match want {
            Call::Is(l) => l.clone(),
            Call::Has(p, f) => format!("{p}… containing {f:?}"),
        };
        assert!(ok, "call {i} is\n  {line}\nexpected\n  {want}\nall calls:\n{}", show());
    }
}

/// A temp dir with the stand-ins, the fake phones and board, and a
/// workstation HOME for the scripts.
struct Fixture {
    dir: TempDir,
    runs: std::cell::Cell<u32>,
    env: Vec<(String, String)>,
}

impl Fixture {
    fn new() -> Self {
        let dir = tempfile::Builder::new().prefix("edgeloop-deploy-").tempdir().expect("temp dir");
        let fx = Fixture { dir, runs: 0.into(), env: Vec::new() };
        for d in ["bin", "board-bin", "home", "board-home", "phones", "state"] {
            std::fs::create_dir_all(fx.path(d)).unwrap();
        }
        std::fs::write(fx.path("state/devices"), "").unwrap();
        fx.tool("bin/adb", ADB_STANDIN);
        fx.tool("bin/ssh", SSH_STANDIN);
        fx.tool("bin/scp", SCP_STANDIN);
        fx
    }

    fn path(&self, rel: &str) -> PathBuf {
        self.dir.path().join(rel)
    }

    fn tool(&self, rel: &str, template: &str) {
        let text = template
            .replace("@LOG@", self.path("calls.log").to_str().unwrap())
            .replace("@STATE@", self.path("state").to_str().unwrap())
            .replace("@PHONES@", self.path("phones").to_str().unwrap())
            .replace("@BOARD_HOME@", self.path("board-home").to_str().unwrap())
            .replace("@BOARD_BIN@", self.path("board-bin").to_str().unwrap());
        let path = self.path(rel);
        std::fs::write(&path, text).unwrap();
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o755)).unwrap();
    }

    /// Phones `adb devices` lists, as (serial, state).
    fn phones(&self, phones: &[(&str, &str)]) {
        let list: String = phones.iter().map(|(s, st)| format!("{s} {st}\n")).collect();
        std::fs::write(self.path("state/devices"), list).unwrap();
        for (serial, _) in phones {
            std::fs::create_dir_all(self.phone(serial, PHONE_TMP)).unwrap();
        }
    }

    /// A path on a fake phone.
    fn phone(&self, serial: &str, device_path: &str) -> PathBuf {
        self.path(&format!("phones/{serial}{device_path}"))
    }

    /// The board's tools: a user systemd, or one that cannot reach a bus.
    fn board(&self, systemd: bool) {
        if systemd {
            self.tool("board-bin/systemctl", SYSTEMCTL_STANDIN);
            self.tool("board-bin/journalctl", JOURNALCTL_STANDIN);
            self.tool("board-bin/loginctl", LOGINCTL_STANDIN);
        } else {
            self.tool("board-bin/systemctl", SYSTEMCTL_NO_BUS);
        }
    }

    fn board_path(&self, rel: &str) -> PathBuf {
        self.path(&format!("board-home/{rel}"))
    }

    /// A binary that exits at once, as a wrong or broken build does.
    fn crashing_binary(&self) -> PathBuf {
        let path = self.path("crashing-agent");
        std::fs::write(&path, format!("#!/bin/sh\necho '{CRASH_MESSAGE}' >&2\nexit 1\n")).unwrap();
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o755)).unwrap();
        path
    }

    fn set_env(&mut self, key: &str, value: &str) {
        self.env.push((key.into(), value.into()));
    }

    /// Runs scripts/<script> with the stand-ins first on PATH. Output goes to
    /// files, not pipes, so an agent that kept a pipe open could not hang it.
    fn run(&self, script: &str, args: &[&str]) -> Outcome {
        let n = self.runs.get() + 1;
        self.runs.set(n);
        let (out_path, err_path) = (self.path(&format!("run{n}.out")), self.path(&format!("run{n}.err")));
        let path = format!("{}:{}", self.path("bin").display(), std::env::var("PATH").unwrap_or_default());
        let mut cmd = Command::new("bash");
        cmd.arg(repo_root().join("scripts").join(script))
            .args(args)
            .env("PATH", path)
            .env("HOME", self.path("home"))
            .env_remove("XDG_CONFIG_HOME")
            .env_remove("XDG_RUNTIME_DIR")
            .env_remove("EDGELOOP_DIST_DIR")
            .env_remove("EDGELOOP_ORT_AARCH64")
            .env_remove("EDGELOOP_ORT_X86_64")
            .stdin(Stdio::null())
            .stdout(std::fs::File::create(&out_path).unwrap())
            .stderr(std::fs::File::create(&err_path).unwrap());
        for (k, v) in &self.env {
            cmd.env(k, v);
        }
        let mut child = cmd.spawn().expect("running bash");
        let deadline = Instant::now() + Duration::from_secs(180);
        let status = loop {
            if let Some(status) = child.try_wait().unwrap() {
                break status;
            }
            if Instant::now() > deadline {
                let _ = child.kill();
                let _ = child.wait();
                panic!(
                    "{script} {args:?} did not finish in 180 s; stderr:\n{}",
                    std::fs::read_to_string(&err_path).unwrap()
                );
            }
            std::thread::sleep(Duration::from_millis(20));
        };
        Outcome {
            code: status.code().unwrap_or(-1),
            stdout: std::fs::read_to_string(&out_path).unwrap(),
            stderr: std::fs::read_to_string(&err_path).unwrap(),
        }
    }

    /// Stand-in calls so far, and forgets them.
    fn take_calls(&self) -> Vec<String> {
        let path = self.path("calls.log");
        let text = std::fs::read_to_string(&path).unwrap_or_default();
        std::fs::write(&path, "").unwrap();
        text.lines().map(str::to_string).collect()
    }

    /// Calls of the workstation's stand-ins (adb, ssh, scp), not the board's tools.
    fn take_host_calls(&self) -> (Vec<String>, Vec<String>) {
        self.take_calls().into_iter().partition(|l| !l.starts_with("board: "))
    }

    fn forwards(&self) -> String {
        std::fs::read_to_string(self.path("state/forwards")).unwrap_or_default()
    }
}

impl Drop for Fixture {
    fn drop(&mut self) {
        // Every process the scripts started runs a binary from this dir (or
        // has it in its arguments, like qemu): kill exactly those.
        let marker = self.dir.path().to_string_lossy().into_owned();
        let me = std::process::id();
        for entry in std::fs::read_dir("/proc").into_iter().flatten().flatten() {
            let Some(pid) = entry.file_name().to_str().and_then(|s| s.parse::<u32>().ok()) else { continue };
            if pid != me && alive(pid) && cmdline(pid).contains(&marker) {
                // SAFETY: kill(2) on a pid we just read; no memory involved.
                unsafe { libc::kill(pid as i32, libc::SIGKILL) };
            }
        }
    }
}

// ---------------------------------------------------------------- android

/// The start sequence for one phone: a state check, the forward check,
/// push, chmod, start in the background, forward.
fn android_start_calls(
    serial: &str,
    binary: &Path,
    token: &Path,
    port: u16,
    local: u16,
    serve_args: &str,
) -> Vec<Call> {
    let adb = format!("adb -s {serial}");
    vec![
        has(format!("{adb} shell alive() {{"), &["cat /data/local/tmp/edgeloop-agent.pid", "echo stopped"]),
        is(format!("{adb} forward --list")),
        is(format!("{adb} push {} /data/local/tmp/edgeloop-agent", binary.display())),
        is(format!("{adb} push {} /data/local/tmp/edgeloop-agent.token", token.display())),
        is(format!(
            "{adb} shell chmod 755 /data/local/tmp/edgeloop-agent && chmod 600 /data/local/tmp/edgeloop-agent.token"
        )),
        has(
            format!("{adb} shell cd /data/local/tmp && rm -f /data/local/tmp/edgeloop-agent.pid && "),
            &[
                "NO_COLOR=1 setsid nohup sh -c 'echo $$ >/data/local/tmp/edgeloop-agent.pid; exec /data/local/tmp/edgeloop-agent serve",
                &format!(
                    "serve --listen 127.0.0.1:{port} --token-file /data/local/tmp/edgeloop-agent.token --cache-dir /data/local/tmp/edgeloop-cache{serve_args}'"
                ),
                ">/data/local/tmp/edgeloop-agent.log 2>&1 </dev/null &",
            ],
        ),
        is(format!("{adb} forward tcp:{local} tcp:{port}")),
    ]
}

#[test]
fn android_start_status_restart_stop() {
    let _device = edgeloop_e2e::shared_blocking();
    let fx = Fixture::new();
    fx.phones(&[("FAKE1", "device"), ("OLD9", "unauthorized")]);
    let bin = agent_binary();
    let port = free_port();
    let port_s = port.to_string();
    // Arguments after -- go to `serve`.
    let args =
        |action| vec!["--binary", bin.to_str().unwrap(), "--port", &port_s, action, "--", "--device-id", "fake-phone"];

    // start, without --serial: the one ready phone is picked and named in every call.
    let out = fx.run("deploy-android.sh", &args("start")).success();
    let token = fx.path("home/.config/edgeloop/tokens/FAKE1.token");
    let mut expected = vec![is("adb devices")];
    expected.extend(android_start_calls("FAKE1", bin, &token, port, port, " --device-id fake-phone"));
    assert_calls(&fx.take_calls(), &expected);
    let url = format!("http://127.0.0.1:{port}");
    assert_eq!(field(&out.stdout, "URL:"), url, "{out}");
    assert_eq!(field(&out.stdout, "token file:"), token.display().to_string(), "{out}");
    assert!(out.stdout.contains(&format!("edgeloop devices --device {url} --token-file {}", token.display())), "{out}");

    // The token: created once, private, the same on both sides.
    let secret = std::fs::read_to_string(&token).unwrap();
    assert_eq!(secret.len(), 48, "24 random bytes in hex: {secret:?}");
    assert!(secret.chars().all(|c| c.is_ascii_hexdigit()));
    assert_eq!(mode(&token), 0o600);
    let phone_token = fx.phone("FAKE1", "/data/local/tmp/edgeloop-agent.token");
    assert_eq!(std::fs::read_to_string(&phone_token).unwrap(), secret);
    assert_eq!(mode(&phone_token), 0o600);
    let phone_bin = fx.phone("FAKE1", "/data/local/tmp/edgeloop-agent");
    assert_eq!(mode(&phone_bin), 0o755);
    assert_eq!(std::fs::read(&phone_bin).unwrap(), std::fs::read(bin).unwrap());

    // The agent: running from the phone's dir with the phone's paths.
    let pid = read_pid(&fx.phone("FAKE1", "/data/local/tmp/edgeloop-agent.pid"));
    assert!(alive(pid));
    let root = fx.phone("FAKE1", PHONE_TMP);
    assert_eq!(
        cmdline(pid),
        format!(
            "{r}/edgeloop-agent serve --listen 127.0.0.1:{port} --token-file {r}/edgeloop-agent.token --cache-dir {r}/edgeloop-cache --device-id fake-phone",
            r = root.display()
        )
    );
    assert_eq!(fx.forwards(), format!("FAKE1 tcp:{port} tcp:{port}\n"));
    assert!(fx.phone("FAKE1", "/data/local/tmp/edgeloop-cache").is_dir());

    // A real client with the printed URL and token file measures a model.
    let api = client(&url, &token);
    let (info, (_, measurement)) = block_on(async {
        (
            api.info().await.expect("info"),
            api.upload_and_measure(&small_model(), &quick_request("")).await.expect("measure"),
        )
    });
    assert_eq!(info.arch, std::env::consts::ARCH);
    assert_eq!(info.device_id, "fake-phone");
    assert!(measurement.latency_ms.n >= 5);

    // status: running and healthy through the forward.
    let out = fx.run("deploy-android.sh", &["--port", &port_s, "status"]).success();
    assert!(out.stdout.contains(&format!("running (pid {pid}), healthy at {url}")), "{out}");
    fx.take_calls();

    // start again: refused, nothing pushed.
    let out = fx.run("deploy-android.sh", &args("start")).failure(1);
    assert!(out.stderr.contains(&format!("already runs on FAKE1 (pid {pid}); use 'restart'")), "{out}");
    assert!(!fx.take_calls().iter().any(|l| l.contains(" push ")));

    // restart: a new agent, the same token file (reused, not replaced).
    let out = fx.run("deploy-android.sh", &args("restart")).success();
    assert!(wait_gone(pid), "old agent {pid} still runs after restart");
    let pid2 = read_pid(&fx.phone("FAKE1", "/data/local/tmp/edgeloop-agent.pid"));
    assert_ne!(pid, pid2);
    assert!(alive(pid2));
    assert_eq!(std::fs::read_to_string(&token).unwrap(), secret);
    assert_eq!(field(&out.stdout, "URL:"), url);
    fx.take_calls();

    // stop: the agent is gone, so is the forward.
    fx.run("deploy-android.sh", &["--port", &port_s, "stop"]).success();
    assert_calls(
        &fx.take_calls(),
        &[
            is("adb devices"),
            has("adb -s FAKE1 shell alive() {", &["kill \"$pid\"", "rm -f /data/local/tmp/edgeloop-agent.pid"]),
            is("adb -s FAKE1 forward --list"),
            is(format!("adb -s FAKE1 forward --remove tcp:{port}")),
        ],
    );
    assert!(wait_gone(pid2), "agent {pid2} still runs after stop");
    assert_eq!(fx.forwards(), "");
    assert!(!fx.phone("FAKE1", "/data/local/tmp/edgeloop-agent.pid").exists());

    let out = fx.run("deploy-android.sh", &["--port", &port_s, "status"]).failure(3);
    assert!(out.stdout.contains("edgeloop-agent on FAKE1: not running"), "{out}");
    // stop twice is fine.
    let out = fx.run("deploy-android.sh", &["--port", &port_s, "stop"]).success();
    assert!(out.stderr.contains("was not running"), "{out}");
}

#[test]
fn android_serial_goes_to_every_adb_call_and_several_phones_need_it() {
    let _device = edgeloop_e2e::shared_blocking();
    let fx = Fixture::new();
    fx.phones(&[("FAKE1", "device"), ("FAKE2", "device")]);
    let bin = agent_binary();
    let (port, local) = (free_port(), free_port());
    let (port_s, local_s) = (port.to_string(), local.to_string());

    // Several phones, no --serial: a clear error listing them, nothing else run.
    let out = fx.run("deploy-android.sh", &["--binary", bin.to_str().unwrap(), "start"]).failure(1);
    assert!(out.stderr.contains("several devices are attached; pick one with --serial"), "{out}");
    assert!(out.stderr.contains("  FAKE1\tdevice") && out.stderr.contains("  FAKE2\tdevice"), "{out}");
    assert_calls(&fx.take_calls(), &[is("adb devices")]);

    let token = fx.path("my.token");
    std::fs::write(&token, "serial-test-token\n").unwrap();
    std::fs::set_permissions(&token, std::fs::Permissions::from_mode(0o600)).unwrap();
    let token_s = token.to_str().unwrap();

    // A local port another phone's forward holds is refused before anything is pushed.
    std::fs::write(fx.path("state/forwards"), format!("FAKE1 tcp:{local} tcp:7878\n")).unwrap();
    let out = fx
        .run(
            "deploy-android.sh",
            &[
                "--serial",
                "FAKE2",
                "--token-file",
                token_s,
                "--binary",
                bin.to_str().unwrap(),
                "--local-port",
                &local_s,
                "start",
            ],
        )
        .failure(1);
    assert!(out.stderr.contains(&format!("local port {local} is already forwarded to FAKE1 tcp:7878")), "{out}");
    assert!(fx.take_calls().iter().all(|l| !l.contains(" push ")));
    std::fs::write(fx.path("state/forwards"), "").unwrap();

    // With --serial (and its own port, since the fake phones share this loopback).
    let common = ["--serial", "FAKE2", "--port", &port_s, "--token-file", token_s];
    let start: Vec<&str> = common.iter().copied().chain(["--binary", bin.to_str().unwrap(), "start"]).collect();
    let out = fx.run("deploy-android.sh", &start).success();
    let mut expected = vec![is("adb -s FAKE2 get-state")];
    expected.extend(android_start_calls("FAKE2", bin, &token, port, port, ""));
    assert_calls(&fx.take_calls(), &expected);
    assert_eq!(field(&out.stdout, "token file:"), token.display().to_string());
    assert!(!fx.path("home/.config/edgeloop/tokens").exists(), "no token created when one is given");
    assert!(!fx.phone("FAKE1", "/data/local/tmp/edgeloop-agent").exists(), "FAKE1 untouched");
    let pid = read_pid(&fx.phone("FAKE2", "/data/local/tmp/edgeloop-agent.pid"));

    for action in ["status", "stop"] {
        let args: Vec<&str> = common.iter().copied().chain([action]).collect();
        fx.run("deploy-android.sh", &args).success();
    }
    let calls = fx.take_calls();
    assert!(calls.iter().all(|l| l.starts_with("adb -s FAKE2 ")), "every call names FAKE2: {calls:#?}");
    assert!(wait_gone(pid));

    // An unknown serial, and an unauthorized phone, say so.
    let out = fx.run("deploy-android.sh", &["--serial", "NOPE", "status"]).failure(1);
    assert!(out.stderr.contains("device 'NOPE' is not available: error: device 'NOPE' not found"), "{out}");
    fx.phones(&[("FAKE1", "unauthorized")]);
    let out = fx.run("deploy-android.sh", &["--serial", "FAKE1", "status"]).failure(1);
    assert!(out.stderr.contains("device 'FAKE1' is 'unauthorized', not ready"), "{out}");
    let out = fx.run("deploy-android.sh", &["status"]).failure(1);
    assert!(out.stderr.contains("no phone ready over adb") && out.stderr.contains("FAKE1\tunauthorized"), "{out}");
}

#[test]
fn android_failed_health_check_shows_the_phone_log() {
    let _device = edgeloop_e2e::shared_blocking();
    let fx = Fixture::new();
    fx.phones(&[("FAKE1", "device")]);
    let bin = fx.crashing_binary();
    let port = free_port().to_string();
    let out = fx
        .run("deploy-android.sh", &["--binary", bin.to_str().unwrap(), "--port", &port, "--wait", "2", "start"])
        .failure(1);
    assert!(out.stderr.contains(&format!("no answer from http://127.0.0.1:{port}/v1/health within 2s")), "{out}");
    assert!(out.stderr.contains("agent process is not running"), "{out}");
    // (the stand-in maps every /data/local/tmp, this one included)
    assert!(out.stderr.contains("/data/local/tmp/edgeloop-agent.log ---\n"), "{out}");
    assert!(out.stderr.contains(CRASH_MESSAGE), "{out}");
    assert!(out.stderr.contains("failed its health check"), "{out}");
    assert!(!out.stdout.contains("URL:"), "{out}");
    let calls = fx.take_calls();
    assert!(calls.last().unwrap().contains("tail -n 40 /data/local/tmp/edgeloop-agent.log"), "{calls:#?}");
}

#[test]
fn android_usage_errors_are_clear() {
    let _device = edgeloop_e2e::shared_blocking();
    let mut fx = Fixture::new();
    fx.phones(&[("FAKE1", "device")]);
    let out = fx.run("deploy-android.sh", &["--help"]).success();
    assert!(out.stdout.contains("Usage: scripts/deploy-android.sh [options] start|stop|restart|status"), "{out}");
    let out = fx.run("deploy-android.sh", &[]).failure(2);
    assert!(out.stderr.contains("no action given"), "{out}");
    let out = fx.run("deploy-android.sh", &["--port", "http", "start"]).failure(2);
    assert!(out.stderr.contains("--port must be a port number (1-65535), got 'http'"), "{out}");
    let out = fx.run("deploy-android.sh", &["--bogus", "start"]).failure(2);
    assert!(out.stderr.contains("unknown argument '--bogus'"), "{out}");
    let out = fx.run("deploy-android.sh", &["start", "--", "--device-id", "my phone"]).failure(2);
    assert!(out.stderr.contains("agent argument 'my phone' after -- has characters other than"), "{out}");
    let out =
        fx.run("deploy-android.sh", &["--token-file", "/nonexistent/t", "--binary", "/bin/sh", "start"]).failure(1);
    assert!(out.stderr.contains("token file '/nonexistent/t' does not exist"), "{out}");
    // The default binary, from an empty dist dir.
    fx.set_env("EDGELOOP_DIST_DIR", fx.path("state").to_str().unwrap());
    let out = fx.run("deploy-android.sh", &["start"]).failure(1);
    assert!(
        out.stderr.contains("edgeloop-agent-aarch64-linux-musl: build it with 'scripts/build-agent.sh aarch64'"),
        "{out}"
    );
}

#[test]
fn android_aarch64_static_agent_under_qemu() {
    let _device = edgeloop_e2e::shared_blocking();
    let (bin, named) = edgeloop_e2e::aarch64_agent();
    if !bin.exists() {
        eprintln!("skipped: {} is missing (build it with scripts/build-agent.sh aarch64)", bin.display());
        return;
    }
    let Some(qemu) = on_path("qemu-aarch64-static") else {
        eprintln!("skipped: qemu-aarch64-static is not on PATH (Debian: apt-get install qemu-user-static)");
        return;
    };
    let fx = Fixture::new();
    fx.phones(&[("FAKE1", "device")]);
    // The stand-in runs the pushed agent under qemu, as an arm64 phone would natively.
    std::fs::write(fx.path("state/exec-prefix"), qemu.to_str().unwrap()).unwrap();
    let port = free_port();
    let port_s = port.to_string();
    // No --binary unless one was named: the default, dist/edgeloop-agent-aarch64-linux-musl.
    // Under qemu-user the agent cannot re-execute itself as a worker
    // process (no binfmt_misc here), so it measures on a thread.
    let bin_s = bin.to_str().unwrap().to_string();
    let mut args = vec!["--port", &port_s, "--wait", "90"];
    if named {
        args.extend(["--binary", &bin_s]);
    }
    args.extend(["start", "--", "--isolation", "thread"]);
    let out = fx.run("deploy-android.sh", &args).success();
    let token = PathBuf::from(field(&out.stdout, "token file:"));
    let mut expected = vec![is("adb devices")];
    expected.extend(android_start_calls("FAKE1", &bin, &token, port, port, " --isolation thread"));
    assert_calls(&fx.take_calls(), &expected);
    let pid = read_pid(&fx.phone("FAKE1", "/data/local/tmp/edgeloop-agent.pid"));
    assert!(cmdline(pid).starts_with(qemu.to_str().unwrap()), "{}", cmdline(pid));

    let url = field(&out.stdout, "URL:");
    let info = block_on(client(&url, &token).info()).expect("info");
    assert_eq!(info.arch, "aarch64");

    fx.run("deploy-android.sh", &["--port", &port_s, "status"]).success();
    fx.run("deploy-android.sh", &["--port", &port_s, "stop"]).success();
    assert!(wait_gone(pid));
}

// ---------------------------------------------------------------- ssh

fn tunnel_sock(fx: &Fixture) -> PathBuf {
    fx.path(&format!("home/.cache/edgeloop/tunnel-{HOST}.sock"))
}

/// The start sequence after the architecture is known: state (probes
/// systemd), directories, copies (ONNX Runtime's library with `--with-ort`),
/// start, tunnel.
fn ssh_start_calls(
    binary: &Path,
    token: &Path,
    ort_lib: Option<&Path>,
    mode: &str,
    listen: &str,
    tunnel: Option<(&Path, u16, u16)>,
) -> Vec<Call> {
    let mut calls = vec![
        is(format!("ssh {HOST} sh -s -- state")),
        is(format!("ssh {HOST} sh -s -- prepare{}", if ort_lib.is_some() { " ort" } else { "" })),
        is(format!("scp -q {} {HOST}:.local/bin/edgeloop-agent", binary.display())),
        is(format!("scp -q {} {HOST}:.config/edgeloop/agent.token", token.display())),
    ];
    if let Some(lib) = ort_lib {
        calls.push(is(format!("scp -q {} {HOST}:.local/lib/edgeloop/libonnxruntime.so", lib.display())));
    }
    calls.push(is(format!("ssh {HOST} sh -s -- start-{mode} {listen}")));
    match tunnel {
        Some((sock, local, port)) => calls.push(is(format!(
            "ssh -f -N -M -S {} -o ExitOnForwardFailure=yes -L {local}:127.0.0.1:{port} {HOST}",
            sock.display()
        ))),
        None => calls.push(is(format!("ssh -G {HOST}"))),
    }
    calls
}

#[track_caller]
fn assert_in_order(lines: &[String], wanted: &[&str]) {
    let mut rest = lines.iter();
    for w in wanted {
        assert!(rest.any(|l| l == w), "'{w}' missing (or out of order) in:\n{lines:#?}");
    }
}

#[test]
fn ssh_systemd_board_through_a_tunnel() {
    let _device = edgeloop_e2e::shared_blocking();
    let fx = Fixture::new();
    fx.board(true);
    let bin = agent_binary();
    let port = free_port();
    let port_s = port.to_string();
    let token = fx.path("board.token");
    std::fs::write(&token, "ssh-test-token\n").unwrap();
    std::fs::set_permissions(&token, std::fs::Permissions::from_mode(0o600)).unwrap();
    let args = |action| {
        vec![
            HOST,
            "--binary",
            bin.to_str().unwrap(),
            "--port",
            &port_s,
            "--token-file",
            token.to_str().unwrap(),
            action,
        ]
    };

    let mut start = args("start");
    start.extend(["--", "--device-id", "fake-board"]);
    let out = fx.run("deploy-ssh.sh", &start).success();
    let sock = tunnel_sock(&fx);
    let (host_calls, board_calls) = fx.take_host_calls();
    let listen = format!("127.0.0.1:{port} --device-id fake-board");
    assert_calls(&host_calls, &ssh_start_calls(bin, &token, None, "systemd", &listen, Some((&sock, port, port))));
    assert_in_order(
        &board_calls,
        &[
            "board: systemctl --user show-environment",
            "board: systemctl --user daemon-reload",
            "board: systemctl --user enable --quiet edgeloop-agent.service",
            "board: systemctl --user restart edgeloop-agent.service",
        ],
    );
    // Lingering checked, so the agent outlives the ssh session.
    assert!(
        board_calls.iter().any(|l| l.starts_with("board: loginctl show-user ") && l.ends_with(" -p Linger")),
        "{board_calls:#?}"
    );
    let url = format!("http://127.0.0.1:{port}");
    assert_eq!(field(&out.stdout, "URL:"), url, "{out}");
    assert_eq!(field(&out.stdout, "token file:"), token.display().to_string());

    // What landed on the board: binary, token (private), the unit.
    assert_eq!(std::fs::read(fx.board_path(".local/bin/edgeloop-agent")).unwrap(), std::fs::read(bin).unwrap());
    assert_eq!(mode(&fx.board_path(".local/bin/edgeloop-agent")), 0o755);
    assert_eq!(std::fs::read_to_string(fx.board_path(".config/edgeloop/agent.token")).unwrap(), "ssh-test-token\n");
    assert_eq!(mode(&fx.board_path(".config/edgeloop/agent.token")), 0o600);
    assert_eq!(mode(&fx.board_path(".config/edgeloop")), 0o700);
    let unit = std::fs::read_to_string(fx.board_path(".config/systemd/user/edgeloop-agent.service")).unwrap();
    assert!(unit.contains(&format!(
        "\nExecStart=%h/.local/bin/edgeloop-agent serve --listen 127.0.0.1:{port} --token-file %h/.config/edgeloop/agent.token --cache-dir %h/.cache/edgeloop-agent --device-id fake-board\n"
    )), "{unit}");
    assert!(unit.contains("\nRestart=on-failure\n") && unit.contains("\nWantedBy=default.target\n"), "{unit}");
    let pid = read_pid(&fx.board_path(".fake-systemd/edgeloop-agent.service.pid"));
    assert!(alive(pid) && cmdline(pid).contains("edgeloop-agent serve --listen 127.0.0.1"), "{}", cmdline(pid));
    assert!(sock.exists(), "tunnel control socket");
    assert_eq!(block_on(client(&url, &token).info()).expect("info").device_id, "fake-board");

    let out = fx.run("deploy-ssh.sh", &args("status")).success();
    assert!(out.stdout.contains(&format!("running (pid {pid}, systemd), healthy at {url}")), "{out}");
    fx.take_calls();

    fx.run("deploy-ssh.sh", &args("stop")).success();
    let (host_calls, board_calls) = fx.take_host_calls();
    assert_calls(
        &host_calls,
        &[is(format!("ssh {HOST} sh -s -- stop")), is(format!("ssh -S {} -O exit {HOST}", sock.display()))],
    );
    assert_in_order(
        &board_calls,
        &[
            "board: systemctl --user stop edgeloop-agent.service",
            "board: systemctl --user disable --quiet edgeloop-agent.service",
        ],
    );
    assert!(wait_gone(pid), "agent {pid} still runs after stop");
    assert!(!sock.exists(), "tunnel closed");
    let out = fx.run("deploy-ssh.sh", &args("status")).failure(3);
    assert!(out.stdout.contains(&format!("edgeloop-agent on {HOST}: not running")), "{out}");
}

#[test]
fn ssh_nohup_board_with_auto_arch() {
    let _device = edgeloop_e2e::shared_blocking();
    let mut fx = Fixture::new();
    fx.board(false);
    // --arch auto asks the board (this machine) and picks dist/edgeloop-agent-<arch>-linux-musl.
    let dist = fx.path("dist");
    std::fs::create_dir_all(&dist).unwrap();
    let bin = dist.join(format!("edgeloop-agent-{}-linux-musl", std::env::consts::ARCH));
    std::fs::copy(agent_binary(), &bin).unwrap();
    fx.set_env("EDGELOOP_DIST_DIR", dist.to_str().unwrap());
    let port = free_port();
    let port_s = port.to_string();

    let out = fx.run("deploy-ssh.sh", &[HOST, "--port", &port_s, "start"]).success();
    let token = fx.path(&format!("home/.config/edgeloop/tokens/{HOST}.token"));
    let sock = tunnel_sock(&fx);
    let (host_calls, board_calls) = fx.take_host_calls();
    let mut expected = vec![is(format!("ssh {HOST} uname -m"))];
    expected.extend(ssh_start_calls(
        &bin,
        &token,
        None,
        "nohup",
        &format!("127.0.0.1:{port}"),
        Some((&sock, port, port)),
    ));
    assert_calls(&host_calls, &expected);
    // The probe failed, and nothing else of systemd was tried.
    assert_eq!(board_calls, vec!["board: systemctl --user show-environment".to_string()]);
    assert_eq!(field(&out.stdout, "token file:"), token.display().to_string());
    assert_eq!(mode(&token), 0o600);
    assert_eq!(
        std::fs::read_to_string(&token).unwrap(),
        std::fs::read_to_string(fx.board_path(".config/edgeloop/agent.token")).unwrap()
    );
    assert!(!fx.board_path(".config/systemd").exists(), "no unit without systemd");

    let pid = read_pid(&fx.board_path(".local/state/edgeloop/agent.pid"));
    let home = fx.board_path("");
    let home = home.to_str().unwrap().trim_end_matches('/');
    assert_eq!(
        cmdline(pid),
        format!(
            "{home}/.local/bin/edgeloop-agent serve --listen 127.0.0.1:{port} --token-file {home}/.config/edgeloop/agent.token --cache-dir {home}/.cache/edgeloop-agent"
        )
    );
    let url = field(&out.stdout, "URL:");
    assert!(block_on(client(&url, &token).info()).is_ok());

    let out = fx.run("deploy-ssh.sh", &[HOST, "--port", &port_s, "status"]).success();
    assert!(out.stdout.contains(&format!("running (pid {pid}, nohup), healthy at {url}")), "{out}");
    // Running already: start refuses before copying anything.
    fx.take_calls();
    let out = fx.run("deploy-ssh.sh", &[HOST, "--port", &port_s, "start"]).failure(1);
    assert!(out.stderr.contains(&format!("already runs on {HOST} (pid {pid}, nohup)")), "{out}");
    assert!(fx.take_calls().iter().all(|l| !l.starts_with("scp")));

    fx.run("deploy-ssh.sh", &[HOST, "--port", &port_s, "stop"]).success();
    let (host_calls, _) = fx.take_host_calls();
    assert_calls(
        &host_calls,
        &[is(format!("ssh {HOST} sh -s -- stop")), is(format!("ssh -S {} -O exit {HOST}", sock.display()))],
    );
    assert!(wait_gone(pid), "agent {pid} still runs after stop");
    assert!(!fx.board_path(".local/state/edgeloop/agent.pid").exists());
    fx.run("deploy-ssh.sh", &[HOST, "--port", &port_s, "status"]).failure(3);
}

#[test]
fn ssh_direct_listens_on_the_network_with_the_token() {
    let _device = edgeloop_e2e::shared_blocking();
    let fx = Fixture::new();
    fx.board(false);
    let bin = agent_binary();
    let port = free_port();
    let port_s = port.to_string();
    let args = |action| vec![HOST, "--direct", "--binary", bin.to_str().unwrap(), "--port", &port_s, action];

    let out = fx.run("deploy-ssh.sh", &args("start")).success();
    let token = fx.path(&format!("home/.config/edgeloop/tokens/{HOST}.token"));
    let (host_calls, _) = fx.take_host_calls();
    assert_calls(&host_calls, &ssh_start_calls(bin, &token, None, "nohup", &format!("0.0.0.0:{port}"), None));
    // The URL is the board's address from ssh's config, not a tunnel.
    assert_eq!(field(&out.stdout, "URL:"), format!("http://127.0.0.1:{port}"));
    assert!(!tunnel_sock(&fx).exists());
    let pid = read_pid(&fx.board_path(".local/state/edgeloop/agent.pid"));
    assert!(cmdline(pid).contains(&format!("serve --listen 0.0.0.0:{port} --token-file ")), "{}", cmdline(pid));

    let out = fx.run("deploy-ssh.sh", &args("status")).success();
    assert!(out.stdout.contains("healthy at http://127.0.0.1:"), "{out}");
    fx.take_calls();
    fx.run("deploy-ssh.sh", &args("stop")).success();
    let (host_calls, _) = fx.take_host_calls();
    assert_calls(&host_calls, &[is(format!("ssh {HOST} sh -s -- stop"))]);
    assert!(wait_gone(pid));
}

#[test]
fn ssh_failed_health_check_shows_the_board_log() {
    let _device = edgeloop_e2e::shared_blocking();
    for systemd in [true, false] {
        let fx = Fixture::new();
        fx.board(systemd);
        let bin = fx.crashing_binary();
        let port = free_port().to_string();
        let out = fx
            .run("deploy-ssh.sh", &[HOST, "--binary", bin.to_str().unwrap(), "--port", &port, "--wait", "2", "start"])
            .failure(1);
        assert!(out.stderr.contains(&format!("no answer from http://127.0.0.1:{port}/v1/health within 2s")), "{out}");
        let log_header = if systemd {
            "--- last 40 lines of journalctl --user -u edgeloop-agent.service ---"
        } else {
            "agent process is not running"
        };
        assert!(out.stderr.contains(log_header), "{out}");
        assert!(out.stderr.contains(CRASH_MESSAGE), "{out}");
        assert!(out.stderr.contains("failed its health check"), "{out}");
        let (host_calls, _) = fx.take_host_calls();
        let mode = if systemd { "systemd" } else { "nohup" };
        assert_eq!(host_calls.last().unwrap(), &format!("ssh {HOST} sh -s -- log {mode}"), "{host_calls:#?}");
        // Cleaning up as the message says closes the tunnel.
        fx.run("deploy-ssh.sh", &[HOST, "--port", &port, "stop"]).success();
        assert!(!tunnel_sock(&fx).exists());
    }
}

/// The onnxruntime wheel's library in the project's .venv (scripts/setup.sh).
fn venv_ort_library() -> PathBuf {
    let lib = repo_root().join(".venv/lib");
    std::fs::read_dir(&lib)
        .unwrap_or_else(|e| panic!("{}: {e} (run scripts/setup.sh)", lib.display()))
        .flatten()
        .flat_map(|python| {
            std::fs::read_dir(python.path().join("site-packages/onnxruntime/capi")).into_iter().flatten()
        })
        .flatten()
        .map(|entry| entry.path())
        .find(|path| path.file_name().and_then(|n| n.to_str()).is_some_and(|n| n.starts_with("libonnxruntime.so")))
        .expect("no libonnxruntime.so in .venv: run scripts/setup.sh")
}

#[test]
fn ssh_with_ort_copies_the_library_and_the_agent_loads_it() {
    let _device = edgeloop_e2e::shared_blocking();
    let bin = agent_binary();
    // This machine's library stands in for the one scripts/fetch-ort.sh
    // fetches for a board of this architecture.
    let lib = venv_ort_library();
    let arch = std::env::consts::ARCH;
    for systemd in [true, false] {
        let mut fx = Fixture::new();
        fx.board(systemd);
        fx.set_env(&format!("EDGELOOP_ORT_{}", arch.to_uppercase()), lib.to_str().unwrap());
        let port = free_port();
        let port_s = port.to_string();
        let args = |with_ort: bool, action| {
            let mut args = vec![HOST, "--binary", bin.to_str().unwrap(), "--port", &port_s, action];
            if with_ort {
                args.insert(1, "--with-ort");
            }
            args
        };

        let out = fx.run("deploy-ssh.sh", &args(true, "start")).success();
        let token = fx.path(&format!("home/.config/edgeloop/tokens/{HOST}.token"));
        let mode = if systemd { "systemd" } else { "nohup" };
        let (host_calls, _) = fx.take_host_calls();
        // The library is per architecture: the board is asked for its own.
        let mut expected = vec![is(format!("ssh {HOST} uname -m"))];
        let listen = format!("127.0.0.1:{port}");
        expected.extend(ssh_start_calls(bin, &token, Some(&lib), mode, &listen, Some((&tunnel_sock(&fx), port, port))));
        assert_calls(&host_calls, &expected);
        let board_lib = fx.board_path(".local/lib/edgeloop/libonnxruntime.so");
        assert_eq!(std::fs::read(&board_lib).unwrap(), std::fs::read(&lib).unwrap());
        let pid_file =
            if systemd { ".fake-systemd/edgeloop-agent.service.pid" } else { ".local/state/edgeloop/agent.pid" };
        let pid = read_pid(&fx.board_path(pid_file));
        assert!(cmdline(pid).ends_with(&format!(" --ort-lib {}", board_lib.display())), "{}", cmdline(pid));
        if systemd {
            let unit = std::fs::read_to_string(fx.board_path(".config/systemd/user/edgeloop-agent.service")).unwrap();
            assert!(
                unit.contains(
                    " --cache-dir %h/.cache/edgeloop-agent --ort-lib %h/.local/lib/edgeloop/libonnxruntime.so\n"
                ),
                "{unit}"
            );
        }
        // The agent on the board loaded it.
        let info = block_on(client(&field(&out.stdout, "URL:"), &token).info()).expect("info");
        assert!(info.runtimes.iter().any(|r| r.name == "ort"), "{:?}", info.runtimes_unavailable);

        // Started again without --with-ort: the library is gone, and the
        // agent is not told about it.
        fx.run("deploy-ssh.sh", &args(false, "restart")).success();
        assert!(wait_gone(pid), "old agent {pid} still runs after restart");
        assert!(!board_lib.exists(), "the library of the earlier start is removed");
        let pid = read_pid(&fx.board_path(pid_file));
        assert!(!cmdline(pid).contains("--ort-lib"), "{}", cmdline(pid));
        fx.run("deploy-ssh.sh", &args(false, "stop")).success();
        assert!(wait_gone(pid));
    }
}

#[test]
fn ssh_usage_errors_are_clear() {
    let _device = edgeloop_e2e::shared_blocking();
    let mut fx = Fixture::new();
    fx.board(false);
    let out = fx.run("deploy-ssh.sh", &["--help"]).success();
    assert!(
        out.stdout.contains("Usage: scripts/deploy-ssh.sh [USER@]HOST [options] start|stop|restart|status"),
        "{out}"
    );
    let out = fx.run("deploy-ssh.sh", &["start"]).failure(2);
    assert!(out.stderr.contains("no host given"), "{out}");
    let out = fx.run("deploy-ssh.sh", &[HOST, "--arch", "riscv64", "start"]).failure(2);
    assert!(out.stderr.contains("--arch must be auto, x86_64 or aarch64, got 'riscv64'"), "{out}");
    let out = fx.run("deploy-ssh.sh", &[HOST, "other-host", "start"]).failure(2);
    assert!(out.stderr.contains("one host at a time"), "{out}");
    // An architecture without a static build yet.
    fx.set_env("EDGELOOP_DIST_DIR", fx.path("state").to_str().unwrap());
    let out = fx.run("deploy-ssh.sh", &[HOST, "--arch", "aarch64", "start"]).failure(1);
    assert!(
        out.stderr.contains("edgeloop-agent-aarch64-linux-musl: build it with 'scripts/build-agent.sh aarch64'"),
        "{out}"
    );
    // --with-ort: the glibc build, a glibc binary and the library for the board.
    let out = fx.run("deploy-ssh.sh", &[HOST, "--with-ort", "--arch", "aarch64", "start"]).failure(1);
    assert!(
        out.stderr.contains("edgeloop-agent-aarch64-linux-gnu: build it with 'scripts/build-agent.sh aarch64-gnu'"),
        "{out}"
    );
    let musl = fx.path("state/edgeloop-agent-aarch64-linux-musl");
    std::fs::write(&musl, "").unwrap();
    let out = fx
        .run("deploy-ssh.sh", &[HOST, "--with-ort", "--arch", "aarch64", "--binary", musl.to_str().unwrap(), "start"])
        .failure(1);
    assert!(out.stderr.contains("is a static musl agent, which cannot load ONNX Runtime"), "{out}");
    let out =
        fx.run("deploy-ssh.sh", &[HOST, "--with-ort", "--arch", "aarch64", "--binary", "/bin/sh", "start"]).failure(1);
    assert!(
        out.stderr.contains("onnxruntime-aarch64/libonnxruntime.so: fetch it with 'scripts/fetch-ort.sh aarch64' (or set EDGELOOP_ORT_AARCH64)"),
        "{out}"
    );
    assert!(fx.take_calls().is_empty(), "nothing run on the board");
}

// ---------------------------------------------------------------- stand-ins

/// adb: devices, get-state, push, shell, forward. Phones are listed in
/// state/devices ("SERIAL STATE" a line); each has its filesystem under
/// phones/SERIAL, and /data/local/tmp in shell commands is mapped there.
const ADB_STANDIN: &str = r#"#!/usr/bin/env bash
# Stand-in for adb (test fixture): records argv, emulates phones in temp dirs.
set -euo pipefail
line=adb
for a in "$@"; do line+=" ${a//$'\n'/\\n}"; done
printf '%s\n' "$line" >>'@LOG@'
devices='@STATE@/devices'
forwards='@STATE@/forwards'
touch "$forwards"
serial=""
if [[ ${1:-} == -s ]]; then serial=$2; shift 2; fi
verb=${1:-}
shift || true
# The phone a command goes to, as adb picks it.
pick() {
  if [[ -z $serial ]]; then
    case $(awk '$2 == "device"' "$devices" | wc -l) in
      0) echo "adb: no devices/emulators found" >&2; exit 1 ;;
      1) serial=$(awk '$2 == "device" {print $1}' "$devices") ;;
      *) echo "adb: more than one device/emulator" >&2; exit 1 ;;
    esac
  fi
  awk -v s="$serial" '$1 == s && $2 == "device" {f = 1} END {exit !f}' "$devices" ||
    { echo "adb: device '$serial' not found" >&2; exit 1; }
  root='@PHONES@'/$serial
}
case $verb in
  devices)
    echo "List of devices attached"
    awk '{print $1 "\t" $2}' "$devices"
    echo ;;
  get-state)
    state=$(awk -v s="$serial" '$1 == s {print $2}' "$devices")
    [[ -n $state ]] || { echo "error: device '$serial' not found" >&2; exit 1; }
    echo "$state" ;;
  push)
    pick
    cp "$1" "$root$2"
    echo "$1: 1 file pushed, 0 skipped." ;;
  shell)
    pick
    cmd="$*"
    cmd=${cmd//\/data\/local\/tmp/$root\/data\/local\/tmp}
    if [[ -s '@STATE@/exec-prefix' ]]; then
      agent="$root/data/local/tmp/edgeloop-agent serve"
      cmd=${cmd//"$agent"/"$(cat '@STATE@/exec-prefix') $agent"}
    fi
    exec sh -c "$cmd" ;;
  forward)
    pick
    case $1 in
      --list) cat "$forwards" ;;
      --remove)
        grep -q -- " $2 " "$forwards" || { echo "adb: error: listener '$2' not found" >&2; exit 1; }
        grep -v -- " $2 " "$forwards" >"$forwards.new" || true
        mv "$forwards.new" "$forwards" ;;
      tcp:*)
        # The phone's loopback is this machine's: only a forward to the same port is honest.
        [[ ${1#tcp:} == "${2#tcp:}" ]] || { echo "stand-in adb: only same-port forwards are emulated" >&2; exit 1; }
        grep -v -- " $1 " "$forwards" >"$forwards.new" || true
        mv "$forwards.new" "$forwards"
        echo "$serial $1 $2" >>"$forwards" ;;
      *) echo "stand-in adb: forward $1 is not emulated" >&2; exit 1 ;;
    esac ;;
  *) echo "stand-in adb: '$verb' is not emulated" >&2; exit 1 ;;
esac
"#;

/// ssh: `-G HOST`, control-socket `-O check|exit`, `-f -N -M -S -L` tunnels
/// (a marker file: the board's loopback is this machine's), and remote
/// commands, run with sh in the board's home with the board's tools first.
const SSH_STANDIN: &str = r#"#!/usr/bin/env bash
# Stand-in for ssh (test fixture): records argv, emulates one board.
set -euo pipefail
line=ssh
for a in "$@"; do line+=" ${a//$'\n'/\\n}"; done
printf '%s\n' "$line" >>'@LOG@'
sock="" ctl="" fwd="" show=0
while (($#)); do
  case $1 in
    -S) sock=$2; shift 2 ;;
    -O) ctl=$2; shift 2 ;;
    -L) fwd=$2; shift 2 ;;
    -o | -p | -i | -l | -F | -J) shift 2 ;;
    -G) show=1; shift ;;
    -f | -N | -M | -n | -q | -T) shift ;;
    -*) echo "stand-in ssh: option $1 is not emulated" >&2; exit 255 ;;
    *) break ;;
  esac
done
host=$1
shift
if ((show)); then
  printf 'user %s\nhostname %s\nport 22\n' "${host%@*}" "${host#*@}"
  exit 0
fi
case $ctl in
  check)
    [[ -e $sock ]] || { echo "Control socket connect($sock): No such file or directory" >&2; exit 255; }
    echo "Master running (pid=$$)" >&2
    exit 0 ;;
  exit)
    [[ -e $sock ]] || { echo "Control socket connect($sock): No such file or directory" >&2; exit 255; }
    rm -f "$sock"
    echo "Exit request sent." >&2
    exit 0 ;;
  "") ;;
  *) echo "stand-in ssh: -O $ctl is not emulated" >&2; exit 255 ;;
esac
if [[ -n $fwd ]]; then
  IFS=: read -r local_port _ remote_port <<<"$fwd"
  [[ $local_port == "$remote_port" ]] || { echo "stand-in ssh: only same-port tunnels are emulated" >&2; exit 255; }
  [[ -z $sock ]] || : >"$sock"
  exit 0
fi
(($#)) || { echo "stand-in ssh: interactive sessions are not emulated" >&2; exit 255; }
cd '@BOARD_HOME@'
HOME='@BOARD_HOME@' PATH='@BOARD_BIN@':$PATH exec sh -c "$*"
"#;

/// scp SRC HOST:PATH, PATH relative to the board's home.
const SCP_STANDIN: &str = r#"#!/usr/bin/env bash
# Stand-in for scp (test fixture): records argv, copies into the board's home.
set -euo pipefail
line=scp
for a in "$@"; do line+=" ${a//$'\n'/\\n}"; done
printf '%s\n' "$line" >>'@LOG@'
while [[ ${1:-} == -* ]]; do shift; done
src=$1 dst=$2
path=${dst#*:}
[[ $path != /* ]] || { echo "stand-in scp: absolute remote paths are not emulated" >&2; exit 1; }
dest='@BOARD_HOME@'/$path
[[ -d $(dirname "$dest") ]] || { echo "scp: dest open \"$path\": No such file or directory" >&2; exit 1; }
cp "$src" "$dest"
"#;

/// systemctl --user on a board with a user manager: units run in the
/// background, pid and output under ~/.fake-systemd.
const SYSTEMCTL_STANDIN: &str = r#"#!/usr/bin/env bash
# Stand-in for systemctl --user (test fixture).
set -euo pipefail
printf 'board: systemctl %s\n' "$*" >>'@LOG@'
[[ ${1:-} == --user ]] || { echo "stand-in systemctl: only --user is emulated" >&2; exit 1; }
shift
run=$HOME/.fake-systemd
mkdir -p "$run"
quiet=0 prop="" words=()
while (($#)); do
  case $1 in
    --quiet) quiet=1 ;;
    --no-pager) ;;
    -p) prop=$2; shift ;;
    *) words+=("$1") ;;
  esac
  shift
done
verb=${words[0]}
unit=${words[1]:-}
pid_of() { cat "$run/$unit.pid" 2>/dev/null || true; }
active() {
  local pid
  pid=$(pid_of)
  # A zombie (nobody reaps here) has an empty cmdline; /proc sizes read 0.
  [[ -n $pid ]] && kill -0 "$pid" 2>/dev/null && [[ -n $(tr -d '\0' <"/proc/$pid/cmdline" 2>/dev/null) ]]
}
stop_unit() {
  local pid
  pid=$(pid_of)
  if active; then
    kill "$pid"
    for _ in $(seq 50); do active || break; sleep 0.1; done
  fi
  rm -f "$run/$unit.pid"
}
case $verb in
  show-environment) echo "HOME=$HOME" ;;
  daemon-reload | enable | disable) ;;
  start | restart)
    stop_unit
    exec_start=$(sed -n 's/^ExecStart=//p' "$HOME/.config/systemd/user/$unit")
    exec_start=${exec_start//%h/$HOME}
    setsid sh -c 'echo $$ >"$0"; exec "$@"' "$run/$unit.pid" $exec_start >>"$run/$unit.journal" 2>&1 </dev/null &
    for _ in $(seq 50); do [[ -s $run/$unit.pid ]] && break; sleep 0.02; done ;;
  stop) stop_unit ;;
  is-active)
    if active; then ((quiet)) || echo active; else ((quiet)) || echo inactive; exit 3; fi ;;
  show)
    [[ $prop == MainPID ]] || { echo "stand-in systemctl: show -p $prop is not emulated" >&2; exit 1; }
    if active; then echo "MainPID=$(pid_of)"; else echo "MainPID=0"; fi ;;
  status)
    echo "* $unit - edgeloop device agent"
    if active; then echo "     Active: active (running)"; else echo "     Active: failed"; exit 3; fi ;;
  *) echo "stand-in systemctl: '$verb' is not emulated" >&2; exit 1 ;;
esac
"#;

/// systemctl on a board without a user manager (containers, minimal images).
const SYSTEMCTL_NO_BUS: &str = r#"#!/usr/bin/env bash
printf 'board: systemctl %s\n' "$*" >>'@LOG@'
echo "Failed to connect to bus: No medium found" >&2
exit 1
"#;

/// journalctl --user -u UNIT -n N: the unit's output.
const JOURNALCTL_STANDIN: &str = r#"#!/usr/bin/env bash
printf 'board: journalctl %s\n' "$*" >>'@LOG@'
unit="" n=10
while (($#)); do
  case $1 in
    -u) unit=$2; shift ;;
    -n) n=$2; shift ;;
  esac
  shift
done
tail -n "$n" "$HOME/.fake-systemd/$unit.journal" 2>/dev/null || echo "-- No entries --"
"#;

/// loginctl show-user USER -p Linger: lingering is on.
const LOGINCTL_STANDIN: &str = r#"#!/usr/bin/env bash
printf 'board: loginctl %s\n' "$*" >>'@LOG@'
echo "Linger=yes"
"#;
