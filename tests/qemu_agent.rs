//! The static aarch64 agent (scripts/build-agent.sh) under qemu-user, driven
//! by the host's client: the binary shipped to ARM boards and phones starts,
//! reports itself as aarch64, and uploads and measures a model with tract's
//! ARM kernels. Timings under emulation mean nothing; behaviour does.
//!
//! `EDGELOOP_AGENT_AARCH64` names the binary (default
//! `dist/edgeloop-agent-aarch64-linux-musl`; relative paths are from the
//! workspace root). Without the binary or `qemu-aarch64-static` the test is
//! skipped, unless `EDGELOOP_REQUIRE_CROSS=1` (scripts/test.sh, so CI) makes
//! that a failure.

use std::fs::File;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use edgeloop::client::{AgentClient, UploadStatus};
use edgeloop_e2e::{TOKEN, quick_request, small_model};
use tempfile::TempDir;

const QEMU: &str = "qemu-aarch64-static";
const BUILD_HINT: &str = "bash scripts/build-agent.sh aarch64";
/// Emulated start-up takes well under a second here; this leaves room for a
/// loaded CI machine.
const START_TIMEOUT: Duration = Duration::from_secs(60);

/// The agent binary and qemu, or why they are not there.
fn prerequisites() -> Result<(PathBuf, PathBuf), String> {
    let (agent, _) = edgeloop_e2e::aarch64_agent();
    if !agent.is_file() {
        return Err(format!("no aarch64 agent at {}", agent.display()));
    }
    let qemu = std::env::split_paths(&std::env::var_os("PATH").unwrap_or_default())
        .map(|dir| dir.join(QEMU))
        .find(|path| path.is_file())
        .ok_or_else(|| format!("{QEMU} is not on PATH (Debian package qemu-user-static)"))?;
    Ok((agent, qemu))
}

/// The agent under qemu; killed when dropped, so a failing assertion never
/// leaves it running.
struct QemuAgent {
    child: Child,
    dir: TempDir,
}

impl QemuAgent {
    fn start(qemu: &Path, agent: &Path) -> Self {
        let dir = tempfile::tempdir().expect("temp dir");
        let token_file = dir.path().join("token");
        std::fs::write(&token_file, TOKEN).expect("token file");
        let log = File::create(dir.path().join("agent.log")).expect("agent log");
        let child = Command::new(qemu)
            .arg(agent)
            // qemu-user without binfmt_misc cannot run the worker process
            // the agent would re-execute (the host kernel refuses an
            // aarch64 binary): that is the platform `--isolation thread` is for.
            .args(["serve", "--isolation", "thread", "--listen", "127.0.0.1:0", "--addr-file"])
            .arg(dir.path().join("addr"))
            .arg("--token-file")
            .arg(&token_file)
            .arg("--cache-dir")
            .arg(dir.path().join("cache"))
            .stdin(Stdio::null())
            .stdout(log.try_clone().expect("agent log"))
            .stderr(log)
            .spawn()
            .unwrap_or_else(|e| panic!("running {} {}: {e}", qemu.display(), agent.display()));
        QemuAgent { child, dir }
    }

    /// The address the agent bound, once it has written it.
    fn wait_for_addr(&mut self) -> SocketAddr {
        let deadline = Instant::now() + START_TIMEOUT;
        loop {
            // The file may be seen half written: retry until it parses.
            if let Some(addr) =
                std::fs::read_to_string(self.dir.path().join("addr")).ok().and_then(|s| s.trim().parse().ok())
            {
                return addr;
            }
            if let Some(status) = self.child.try_wait().expect("agent status") {
                panic!("the aarch64 agent exited ({status}) before listening:\n{}", self.log());
            }
            assert!(
                Instant::now() < deadline,
                "the aarch64 agent did not listen within {START_TIMEOUT:?}:\n{}",
                self.log()
            );
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    fn log(&self) -> String {
        std::fs::read_to_string(self.dir.path().join("agent.log")).unwrap_or_default()
    }
}

impl Drop for QemuAgent {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn aarch64_agent_measures_under_qemu() {
    let _device = edgeloop_e2e::shared().await;
    let (agent_bin, qemu) = match prerequisites() {
        Ok(found) => found,
        Err(why) if std::env::var("EDGELOOP_REQUIRE_CROSS").as_deref() == Ok("1") => {
            panic!("{why}; EDGELOOP_REQUIRE_CROSS=1 requires it: build it (and install qemu) with `{BUILD_HINT}`")
        }
        Err(why) => {
            eprintln!("skipped: {why}; `{BUILD_HINT}` builds it (set EDGELOOP_REQUIRE_CROSS=1 to fail instead)");
            return;
        }
    };
    let mut agent = QemuAgent::start(&qemu, &agent_bin);
    let addr = agent.wait_for_addr();
    let client = AgentClient::new(&format!("http://{addr}"), Some(TOKEN.into())).expect("client");

    let health = client.health().await.unwrap_or_else(|e| panic!("health: {e}\n{}", agent.log()));
    assert_eq!(health.status, "ok");
    let info = client.info().await.expect("info");
    assert_eq!(info.arch, "aarch64", "{info:?}");
    let tract = info.runtimes.iter().find(|r| r.name == "tract").expect("tract listed");
    // Static musl builds cannot dlopen ONNX Runtime; offering it would be a lie.
    assert!(info.runtimes.iter().all(|r| r.name != "ort"), "{:?}", info.runtimes);

    let model = small_model();
    let (upload, m) = client
        .upload_and_measure(&model, &quick_request(""))
        .await
        .unwrap_or_else(|e| panic!("upload and measure: {e}\n{}", agent.log()));
    assert_eq!(upload.status, UploadStatus::Stored);
    assert_eq!((m.model.as_str(), m.device_id.as_str()), (upload.sha256.as_str(), info.device_id.as_str()));
    assert_eq!((m.runtime.as_str(), m.runtime_version.as_str()), ("tract", tract.version.as_str()));
    let l = &m.latency_ms;
    assert!(l.n >= 5, "{l:?}");
    assert!(l.min > 0.0 && l.min <= l.p50 && l.p50 <= l.max && l.max.is_finite(), "{l:?}");
    assert!(m.load_ms > 0.0 && m.first_run_ms > 0.0, "{m:?}");
    assert!(agent.child.try_wait().expect("agent status").is_none(), "the agent died:\n{}", agent.log());
}
