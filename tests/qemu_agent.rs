//! The aarch64 agents under qemu-user, driven by the host's client: the
//! static (musl) one shipped to ARM boards and phones starts, reports itself
//! as aarch64, and uploads and measures a model with tract's ARM kernels;
//! the glibc one (`scripts/build-agent.sh aarch64-gnu`) does the same with
//! ONNX Runtime's aarch64 library, whose outputs match tract's there.
//! Timings under emulation mean nothing; behaviour does.
//!
//! `EDGELOOP_AGENT_AARCH64` names the static binary (default
//! `dist/edgeloop-agent-aarch64-linux-musl`), `EDGELOOP_AGENT_AARCH64_GNU`
//! the glibc one (default `dist/edgeloop-agent-aarch64-linux-gnu`) and
//! `EDGELOOP_ORT_AARCH64` ONNX Runtime's library (default
//! `dist/onnxruntime-aarch64/libonnxruntime.so`, from scripts/fetch-ort.sh);
//! relative paths are from the workspace root. The glibc agent runs on
//! Debian's arm64 cross libraries (`qemu-aarch64-static -L`, see
//! [`glibc_sysroot`]). Without a binary, the library, those libraries or
//! `qemu-aarch64-static` a test is skipped, unless `EDGELOOP_REQUIRE_CROSS=1`
//! (scripts/test.sh, so CI) makes that a failure.

use std::ffi::OsStr;
use std::fs::File;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use edgeloop::client::{AgentClient, UploadStatus};
use edgeloop_e2e::{TOKEN, quick_request, small_model};
use tempfile::TempDir;

use crate::ort::{
    COMPARED_OPTIMIZATIONS, COMPARED_SEEDS_AND_THREADS, OUTPUT_TOLERANCE, assert_sane, models, ort_request,
};

const QEMU: &str = "qemu-aarch64-static";
/// Debian's arm64 cross libraries (libc6-arm64-cross, libstdc++6-arm64-cross):
/// the glibc agent's and ONNX Runtime's, found by qemu through `-L`.
const SYSROOT: &str = "/usr/aarch64-linux-gnu";
const MUSL_BUILD_HINT: &str = "bash scripts/build-agent.sh aarch64";
const GNU_BUILD_HINT: &str = "bash scripts/build-agent.sh aarch64-gnu";
/// Emulated start-up takes well under a second here; this leaves room for a
/// loaded CI machine.
const START_TIMEOUT: Duration = Duration::from_secs(60);

/// The CPU qemu emulates for the glibc agent: a Cortex-A76 (a Raspberry
/// Pi 5's), whose NEON, dot-product and fp16 kernels both tract and ONNX
/// Runtime have. qemu's default CPU, `max`, which the static agent's test
/// keeps (tract's SVE kernels), has SVE, which qemu emulates slowly: there,
/// comparing the large network took 25 s instead of 4.
const GLIBC_CPU: &str = "cortex-a76";
/// Its MIDR_EL1 (r4p1 of Arm's part 0xd0b) as Linux shows it in
/// /proc/cpuinfo, which is where ONNX Runtime reads it.
const GLIBC_CPU_MIDR: &str = "CPU implementer\t: 0x41\nCPU architecture: 8\nCPU variant\t: 0x4\nCPU part\t: 0xd0b\n\
                              CPU revision\t: 1\n";

/// An aarch64 agent binary and how qemu runs it.
struct Emulated {
    qemu: PathBuf,
    agent: PathBuf,
    /// For a glibc binary: its libraries (`-L`), on a [`GLIBC_CPU`]. A
    /// static binary needs neither.
    sysroot: Option<TempDir>,
}

impl Emulated {
    /// `qemu [-cpu GLIBC_CPU -L SYSROOT] AGENT`, for the agent's arguments to follow.
    fn command(&self) -> Command {
        let mut command = Command::new(&self.qemu);
        if let Some(sysroot) = &self.sysroot {
            command.args(["-cpu", GLIBC_CPU, "-L"]).arg(sysroot.path());
        }
        command.arg(&self.agent);
        command
    }
}

/// qemu's `-L` for the glibc agent: Debian's arm64 cross libraries
/// ([`SYSROOT`]`/lib`, the dynamic loader's and ONNX Runtime's), and a
/// `/proc/cpuinfo` that describes the emulated CPU ([`GLIBC_CPU`]).
/// qemu-user before 8.1 (Debian 12 has 7.2) shows the guest the host's x86
/// `/proc/cpuinfo`, and the cpuinfo library inside ONNX Runtime
/// dereferences NULL parsing it while the library loads (SIGSEGV in
/// `dlopen`); qemu 8.1 and later write one like this themselves. The CPU's
/// features come from the auxiliary vector, which qemu fills in. qemu looks
/// up every absolute path the guest opens under `-L` first, so the guest
/// sees these two and the host's files otherwise.
fn glibc_sysroot() -> Result<TempDir, String> {
    let libs = Path::new(SYSROOT).join("lib");
    for lib in ["ld-linux-aarch64.so.1", "libc.so.6", "libstdc++.so.6"] {
        existing_file(
            libs.join(lib),
            "arm64 cross library (Debian packages libc6-arm64-cross, libstdc++6-arm64-cross)",
        )?;
    }
    let root = tempfile::tempdir().map_err(|e| format!("temp dir: {e}"))?;
    std::os::unix::fs::symlink(&libs, root.path().join("lib"))
        .map_err(|e| format!("linking {}: {e}", libs.display()))?;
    let host = std::fs::read_to_string("/proc/cpuinfo").unwrap_or_default();
    let cpus = host.lines().filter(|l| l.starts_with("processor")).count().max(1);
    let cpuinfo: String = (0..cpus)
        .map(|cpu| format!("processor\t: {cpu}\nBogoMIPS\t: 100.00\nFeatures\t: fp asimd\n{GLIBC_CPU_MIDR}\n"))
        .collect();
    std::fs::create_dir(root.path().join("proc")).map_err(|e| format!("sysroot: {e}"))?;
    std::fs::write(root.path().join("proc/cpuinfo"), cpuinfo).map_err(|e| format!("sysroot: {e}"))?;
    Ok(root)
}

fn existing_file(path: PathBuf, what: &str) -> Result<PathBuf, String> {
    if path.is_file() { Ok(path) } else { Err(format!("no {what} at {}", path.display())) }
}

fn qemu() -> Result<PathBuf, String> {
    std::env::split_paths(&std::env::var_os("PATH").unwrap_or_default())
        .map(|dir| dir.join(QEMU))
        .find(|path| path.is_file())
        .ok_or_else(|| format!("{QEMU} is not on PATH (Debian package qemu-user-static)"))
}

/// The static agent and qemu, or why they are not there.
fn musl_agent() -> Result<Emulated, String> {
    let agent = existing_file(edgeloop_e2e::aarch64_agent().0, "aarch64 agent")?;
    Ok(Emulated { qemu: qemu()?, agent, sysroot: None })
}

/// The glibc agent, qemu, the arm64 libraries and ONNX Runtime's, or why
/// one is not there.
fn gnu_agent() -> Result<(Emulated, PathBuf), String> {
    let agent = existing_file(edgeloop_e2e::aarch64_gnu_agent(), "glibc aarch64 agent")?;
    let ort_lib = existing_file(edgeloop_e2e::aarch64_ort_lib(), "aarch64 ONNX Runtime library")?;
    Ok((Emulated { qemu: qemu()?, agent, sysroot: Some(glibc_sysroot()?) }, ort_lib))
}

/// What a test needs, or `None` when it is missing and the test is skipped;
/// under `EDGELOOP_REQUIRE_CROSS=1` a missing piece fails the test instead,
/// with `build_hint`.
fn required<T>(found: Result<T, String>, build_hint: &str) -> Option<T> {
    match found {
        Ok(found) => Some(found),
        Err(why) if std::env::var("EDGELOOP_REQUIRE_CROSS").as_deref() == Ok("1") => {
            panic!("{why}; EDGELOOP_REQUIRE_CROSS=1 requires it: build it (and install qemu) with `{build_hint}`")
        }
        Err(why) => {
            eprintln!("skipped: {why}; `{build_hint}` builds it (set EDGELOOP_REQUIRE_CROSS=1 to fail instead)");
            None
        }
    }
}

/// The agent serving under qemu; killed when dropped, so a failing assertion
/// never leaves it running.
struct QemuAgent {
    child: Child,
    dir: TempDir,
}

impl QemuAgent {
    /// Starts `serve` with the test token, a fresh cache dir and `extra` arguments.
    fn start(emulated: &Emulated, extra: &[&OsStr]) -> Self {
        let dir = tempfile::tempdir().expect("temp dir");
        let token_file = dir.path().join("token");
        std::fs::write(&token_file, TOKEN).expect("token file");
        let log = File::create(dir.path().join("agent.log")).expect("agent log");
        let child = emulated
            .command()
            // qemu-user without binfmt_misc cannot run the worker process
            // the agent would re-execute (the host kernel refuses an
            // aarch64 binary): that is the platform `--isolation thread` is for.
            .args(["serve", "--isolation", "thread", "--listen", "127.0.0.1:0", "--addr-file"])
            .arg(dir.path().join("addr"))
            .arg("--token-file")
            .arg(&token_file)
            .arg("--cache-dir")
            .arg(dir.path().join("cache"))
            .args(extra)
            .stdin(Stdio::null())
            .stdout(log.try_clone().expect("agent log"))
            .stderr(log)
            .spawn()
            .unwrap_or_else(|e| panic!("running {} {}: {e}", emulated.qemu.display(), emulated.agent.display()));
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

    /// A client of the agent, once it listens and reports itself healthy.
    async fn client(&mut self) -> AgentClient {
        let addr = self.wait_for_addr();
        let client = AgentClient::new(&format!("http://{addr}"), Some(TOKEN.into())).expect("client");
        let health = client.health().await.unwrap_or_else(|e| panic!("health: {e}\n{}", self.log()));
        assert_eq!(health.status, "ok");
        client
    }

    fn assert_alive(&mut self) {
        assert!(self.child.try_wait().expect("agent status").is_none(), "the agent died:\n{}", self.log());
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
    let Some(emulated) = required(musl_agent(), MUSL_BUILD_HINT) else { return };
    let mut agent = QemuAgent::start(&emulated, &[]);
    let client = agent.client().await;
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
    assert_sane(&m);
    agent.assert_alive();
}

#[tokio::test(flavor = "multi_thread")]
async fn aarch64_gnu_agent_measures_with_ort_under_qemu() {
    let _device = edgeloop_e2e::shared().await;
    let Some((emulated, ort_lib)) = required(gnu_agent(), GNU_BUILD_HINT) else { return };
    let mut agent = QemuAgent::start(&emulated, &[OsStr::new("--ort-lib"), ort_lib.as_os_str()]);
    let client = agent.client().await;
    let info = client.info().await.expect("info");
    assert_eq!(info.arch, "aarch64", "{info:?}");
    assert!(info.runtimes.iter().any(|r| r.name == "tract"), "{:?}", info.runtimes);
    let ort = info
        .runtimes
        .iter()
        .find(|r| r.name == "ort")
        .unwrap_or_else(|| panic!("ort is not listed: {:?}\n{}", info.runtimes_unavailable, agent.log()));
    // The version the library reports; scripts/fetch-ort.sh records the
    // wheel's beside it.
    let fetched = std::fs::read_to_string(ort_lib.with_file_name("VERSION")).unwrap_or_default();
    match fetched.split_whitespace().next() {
        Some(version) => assert_eq!(ort.version, version, "{ort:?}"),
        None => assert!(!ort.version.is_empty(), "{ort:?}"),
    }
    assert!(ort.precisions.starts_with(&["fp32".into(), "int8".into()]), "{ort:?}");

    let (upload, m) = client
        .upload_and_measure(&small_model(), &ort_request(""))
        .await
        .unwrap_or_else(|e| panic!("upload and measure with ort: {e}\n{}", agent.log()));
    assert_eq!(m.model, upload.sha256);
    assert_eq!((m.runtime.as_str(), m.runtime_version.as_str()), ("ort", ort.version.as_str()));
    assert_sane(&m);
    agent.assert_alive();
}

/// The comparisons of tests/ort.rs (its models, cases and tolerance), made
/// by the aarch64 agent itself (`edgeloop-agent compare`): tract's ARM
/// kernels against ONNX Runtime's. Under emulation one takes seconds, so
/// each model gets one of the cases, in turn: every model, optimisation
/// level and thread count is compared, though not every combination.
#[test]
fn aarch64_gnu_agent_ort_outputs_match_tract_under_qemu() {
    let _device = edgeloop_e2e::shared_blocking();
    let Some((emulated, ort_lib)) = required(gnu_agent(), GNU_BUILD_HINT) else { return };
    let dir = tempfile::tempdir().expect("temp dir");
    let tolerance = OUTPUT_TOLERANCE.to_string();
    let cases: Vec<_> = COMPARED_OPTIMIZATIONS
        .into_iter()
        .flat_map(|optimization| COMPARED_SEEDS_AND_THREADS.map(|(seed, threads)| (optimization, seed, threads)))
        .collect();
    for ((name, model), (optimization, seed, threads)) in models().into_iter().zip(cases.iter().cycle()) {
        let case = format!("{name} ({optimization}, seed {seed}, {threads} threads)");
        let path = dir.path().join(format!("{name}.onnx"));
        std::fs::write(&path, model).expect("model file");
        let out = emulated
            .command()
            .arg("compare")
            .arg(&path)
            .args(["--runtimes", "tract,ort", "--ort-lib"])
            .arg(&ort_lib)
            .args(["--ort-optimization", &optimization.to_string(), "--tolerance", &tolerance])
            .args(["--seed", &seed.to_string(), "--threads", &threads.to_string()])
            .output()
            .expect("running the agent's compare under qemu");
        let stdout = String::from_utf8_lossy(&out.stdout);
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(out.status.success(), "{case}: {}\n{stdout}{stderr}", out.status);
        assert!(stdout.lines().any(|l| l.contains(" ort ")), "{case}: no output compared:\n{stdout}");
    }
}
