//! Shared pieces of the end-to-end tests and benchmarks: a real agent on a
//! loopback port, a real client, and models built with the ONNX writer.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::Command;

use edgeloop::cache::MeasurementCache;
use edgeloop::client::AgentClient;
use edgeloop::measure::DevicePool;
use edgeloop_agent::runtime::Runtimes;
use edgeloop_agent::{AgentConfig, LocalAgent};
use edgeloop_api::MeasureRequest;
use edgeloop_onnx::samples::MbconvNet;
use edgeloop_onnx::{Attr, Dim, ElemType, GraphBuilder, encode};
use edgeloop_train::CostLossKind;
use tempfile::TempDir;
use tokio::sync::{RwLock, RwLockReadGuard, RwLockWriteGuard};

/// The suite is one binary whose tests run in parallel. A test that times
/// models against a budget or a window, or trains, takes the machine to
/// itself ([`exclusive`]): a measurement taken beside another test's work
/// would not be the device's latency. Every other test shares it
/// ([`shared`]), so none runs beside an exclusive one. The lock is fair: a
/// waiting exclusive test is not starved by a stream of shared ones.
static MACHINE: RwLock<()> = RwLock::const_new(());

pub async fn exclusive() -> RwLockWriteGuard<'static, ()> {
    MACHINE.write().await
}

pub async fn shared() -> RwLockReadGuard<'static, ()> {
    MACHINE.read().await
}

/// [`shared`] for a test without a runtime.
pub fn shared_blocking() -> RwLockReadGuard<'static, ()> {
    MACHINE.blocking_read()
}

pub const TOKEN: &str = "test-token-0123456789";

/// A real agent serving on 127.0.0.1 from a temp cache dir.
pub struct TestAgent {
    pub agent: LocalAgent,
    pub cache: TempDir,
}

impl TestAgent {
    pub fn start() -> Self {
        Self::start_with(|_| {})
    }

    /// Starts with the test token; `tweak` adjusts the rest of the config.
    pub fn start_with(tweak: impl FnOnce(&mut AgentConfig)) -> Self {
        let cache = tempfile::tempdir().expect("temp cache dir");
        let agent = Self::start_in(&cache, tweak);
        TestAgent { agent, cache }
    }

    /// Reads its energy from `rapl` (idle baseline and least energy window
    /// shortened to 200 ms — the simulated counter moves every millisecond —
    /// so energy measurements stay quick).
    pub fn start_on_rapl(rapl: &SimulatedRapl) -> Self {
        let sys = rapl.sysfs().to_path_buf();
        Self::start_with(move |config| {
            config.roots.sys = sys;
            config.meter.idle_baseline = std::time::Duration::from_millis(200);
            config.meter.min_window = std::time::Duration::from_millis(200);
        })
    }

    /// Starts an agent on an existing cache dir (e.g. after a restart).
    pub fn start_in(cache: &TempDir, tweak: impl FnOnce(&mut AgentConfig)) -> LocalAgent {
        Self::start_at(cache, SocketAddr::from(([127, 0, 0, 1], 0)), tweak)
    }

    fn start_at(cache: &TempDir, addr: SocketAddr, tweak: impl FnOnce(&mut AgentConfig)) -> LocalAgent {
        let mut config = AgentConfig::new(cache.path().to_path_buf());
        config.token = Some(TOKEN.into());
        tweak(&mut config);
        let runtimes = Runtimes::detect(&config.runtimes);
        LocalAgent::start_at(config, runtimes, addr).expect("agent starts")
    }

    /// Kills it as a crashing agent dies (`LocalAgent::kill`), keeping its
    /// cache dir and address for [`TestAgent::restart`].
    pub fn kill(self) -> KilledAgent {
        let addr = self.agent.addr();
        self.agent.kill().expect("agent thread");
        KilledAgent { cache: self.cache, addr }
    }

    /// The agent back, on the cache dir and address of a killed one.
    pub fn restart(killed: KilledAgent) -> TestAgent {
        let agent = Self::start_at(&killed.cache, killed.addr, |_| {});
        TestAgent { agent, cache: killed.cache }
    }

    pub fn url(&self) -> String {
        self.agent.url()
    }

    pub fn client(&self) -> AgentClient {
        AgentClient::new(&self.url(), Some(TOKEN.into())).expect("client")
    }

    /// The agent as a measurement service with a cache in memory (table
    /// builds and calibrations, as `edgeloop table` measures).
    pub async fn devices(&self) -> DevicePool {
        DevicePool::connect(vec![self.client()], MeasurementCache::in_memory()).await.expect("agent info")
    }
}

/// What a killed [`TestAgent`] leaves: its cache dir and its address.
pub struct KilledAgent {
    pub cache: TempDir,
    pub addr: SocketAddr,
}

/// A raw HTTP client, for requests the typed client never sends.
pub fn raw_http() -> reqwest::Client {
    let _ = rustls::crypto::ring::default_provider().install_default();
    reqwest::Client::new()
}

/// A request that measures briefly: tests assert behaviour, not speed.
pub fn quick_request(model: &str) -> MeasureRequest {
    MeasureRequest {
        model: model.to_string(),
        warmup_runs: 2,
        min_runs: 5,
        min_duration_ms: 20,
        max_duration_ms: 10_000,
        ..Default::default()
    }
}

pub fn small_model() -> Vec<u8> {
    encode(&MbconvNet::small().to_model())
}

/// Models that must be refused without harming the agent.
pub mod bad_models {
    use super::*;

    pub fn random_bytes() -> Vec<u8> {
        // Not a protobuf: 0xff starts a field with an invalid wire type.
        (0..4096u32).map(|i| (i.wrapping_mul(2_654_435_761) >> 13) as u8 | 0x07).collect()
    }

    pub fn truncated() -> Vec<u8> {
        let good = small_model();
        good[..good.len() / 2].to_vec()
    }

    /// Well-formed protobuf whose node reads a value nothing produces.
    pub fn missing_input() -> Vec<u8> {
        let mut g = GraphBuilder::new("missing_input");
        let x = g.input("x", ElemType::F32, &[1.into(), 4.into()]);
        let y = g.node("Add", &[&x, "nowhere"], vec![]);
        g.output(&y, ElemType::F32, &[1.into(), 4.into()]);
        encode(&g.finish())
    }

    /// A Conv whose `pads` has the wrong length: tract 0.23 panics on it.
    pub fn bad_conv_pads() -> Vec<u8> {
        let mut g = GraphBuilder::new("bad_pads");
        let x = g.input("x", ElemType::F32, &[1.into(), 2.into(), 8.into(), 8.into()]);
        let w = g.constant_f32("W", &[2, 2, 3, 3], vec![0.1; 36]);
        let y =
            g.node("Conv", &[&x, &w], vec![Attr::Ints("kernel_shape", vec![3, 3]), Attr::Ints("pads", vec![1, 1, 1])]);
        g.output(&y, ElemType::F32, &[1.into(), 2.into(), 8.into(), 8.into()]);
        encode(&g.finish())
    }
}

/// `y = x + 1` with a symbolic batch dimension.
pub fn dynamic_batch_model() -> Vec<u8> {
    let mut g = GraphBuilder::new("dynamic");
    let dims = [Dim::Dynamic("batch".into()), 16.into()];
    let x = g.input("x", ElemType::F32, &dims);
    let one = g.constant_f32("one", &[1], vec![1.0]);
    let y = g.add(&x, &one);
    g.output(&y, ElemType::F32, &dims);
    encode(&g.finish())
}

pub fn repo_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).parent().expect("tests/ is in the repo").to_path_buf()
}

/// The path in the environment variable `var`, else `default`, both
/// relative to the repo, and whether the variable named it.
fn path_from_env(var: &str, default: &str) -> (PathBuf, bool) {
    match std::env::var_os(var) {
        Some(path) => (repo_root().join(path), true),
        None => (repo_root().join(default), false),
    }
}

/// The static aarch64 agent the tests run under qemu, and whether it was
/// named: `EDGELOOP_AGENT_AARCH64` (relative to the repo), else the one
/// `scripts/build-agent.sh aarch64` ships.
pub fn aarch64_agent() -> (PathBuf, bool) {
    path_from_env("EDGELOOP_AGENT_AARCH64", "dist/edgeloop-agent-aarch64-linux-musl")
}

/// The glibc aarch64 agent with ONNX Runtime: `EDGELOOP_AGENT_AARCH64_GNU`
/// (relative to the repo), else the one `scripts/build-agent.sh aarch64-gnu`
/// ships.
pub fn aarch64_gnu_agent() -> PathBuf {
    path_from_env("EDGELOOP_AGENT_AARCH64_GNU", "dist/edgeloop-agent-aarch64-linux-gnu").0
}

/// ONNX Runtime's aarch64 library: `EDGELOOP_ORT_AARCH64` (relative to the
/// repo), else where `scripts/fetch-ort.sh aarch64` puts it.
pub fn aarch64_ort_lib() -> PathBuf {
    path_from_env("EDGELOOP_ORT_AARCH64", "dist/onnxruntime-aarch64/libonnxruntime.so").0
}

/// The fixed input shape of a model's first input, as tract reads it.
pub fn tract_input_shape(model: &[u8]) -> Vec<usize> {
    use tract_onnx::prelude::*;
    let model =
        tract_onnx::onnx().model_for_read(&mut &*model).and_then(|m| m.into_typed()).expect("tract reads the model");
    model.input_fact(0).expect("one input").shape.as_concrete().expect("fixed shape").to_vec()
}

/// The first output of `model` in tract (optimised, as the agent runs it) on `input`.
pub fn run_tract(model: &[u8], input: &[f32]) -> Vec<f32> {
    use tract_onnx::prelude::*;
    let shape = tract_input_shape(model);
    let plan = tract_onnx::onnx()
        .model_for_read(&mut &*model)
        .and_then(|m| m.into_optimized())
        .and_then(|m| m.into_runnable())
        .expect("tract loads the model");
    let output = plan.run(tvec![Tensor::from_shape(&shape, input).expect("input shape").into()]).expect("tract runs");
    output[0].to_plain_array_view::<f32>().expect("f32 output").iter().copied().collect()
}

/// Settings of a short search of `tiny` on a small synthetic set (seconds).
pub fn tiny_search(strategy: edgeloop::search::Strategy, budget_ms: f64) -> edgeloop::search::SearchSettings {
    use edgeloop::search::{
        GradientSettings, NaoSettings, RandomSettings, ReinforceSettings, RewardKind, StrategyArgs, UnasSettings,
    };
    edgeloop::search::SearchSettings {
        space: "tiny".into(),
        width: 1.0,
        recipe: tiny_recipe(),
        budget: edgeloop::search::BudgetSettings {
            budget_ms: Some(budget_ms),
            energy_budget_mj: None,
            budget_stat: edgeloop::predict::Stat::P50,
            lambda_lr: edgeloop::search::DEFAULT_LAMBDA_LR,
        },
        schedule: edgeloop::search::ScheduleSettings { warmup_epochs: 1, epochs: 3, arch_lr: 1e-2, arch_every: 1 },
        strategy: StrategyArgs {
            kind: strategy,
            gradient: GradientSettings {
                latency_loss: CostLossKind::AddLinear,
                loss_lambda: 5.0,
                ..GradientSettings::default()
            },
            reinforce: ReinforceSettings {
                reward: RewardKind::Mnas,
                samples: 2,
                baseline_decay: 0.9,
                ..ReinforceSettings::default()
            },
            random: RandomSettings { random_samples: 20 },
            nao: NaoSettings {
                nao_seeds: 30,
                nao_rounds: 2,
                nao_new: 8,
                nao_top: 10,
                nao_epd_epochs: 150,
                ..NaoSettings::default()
            },
            unas: UnasSettings::default(),
        }
        .settings(),
        prescreen: edgeloop::search::PrescreenSettings::default(),
        derive: edgeloop::search::DeriveSettings { derive_candidates: 3, max_rounds: 2 },
        runtime: "tract".into(),
        measure_threads: 1,
    }
}

/// `settings` with the gradient strategy's cost term `latency_loss` (strength `loss_lambda` for add#linear).
pub fn with_latency_loss(
    settings: edgeloop::search::SearchSettings,
    latency_loss: CostLossKind,
    loss_lambda: f64,
) -> edgeloop::search::SearchSettings {
    use edgeloop::search::{GradientSettings, StrategySettings};
    let StrategySettings::Gradient(gradient) = settings.strategy else {
        panic!("a cost term is the gradient strategy's");
    };
    let gradient = GradientSettings { latency_loss, loss_lambda, ..gradient };
    edgeloop::search::SearchSettings { strategy: StrategySettings::Gradient(gradient), ..settings }
}

/// The final-training recipe of the short test runs: one epoch on a small synthetic set.
pub fn tiny_recipe() -> edgeloop::search::TrainRecipe {
    edgeloop::search::TrainRecipe {
        dataset: "synthetic:640,128".into(),
        final_epochs: 1,
        batch_size: 32,
        lr: 0.05,
        momentum: 0.9,
        weight_decay: 4e-5,
        holdout: 0,
        seed: 7,
    }
}

/// Trains `net` for 30 SGD steps on the synthetic dataset along `paths()`
/// (so BatchNorm's running statistics are trained ones); returns a few
/// normalised test images (batch 1 each).
pub fn train_briefly(net: &edgeloop_train::Supernet, mut paths: impl FnMut() -> Vec<usize>) -> Vec<Vec<f32>> {
    use edgeloop_data::{BatchLoader, DatasetSpec, ImageShape, LoaderConfig};
    use edgeloop_train::trainer::{batch_tensors, weight_step};
    const SHAPE: ImageShape = ImageShape { channels: 3, height: 32, width: 32 };
    let data = DatasetSpec::Synthetic { train: 960, test: 16 }.load(SHAPE, 3).unwrap();
    let norm = data.train.normalization();
    let config = LoaderConfig { batch_size: 32, shuffle_seed: Some(1), augment: true, drop_last: true, prefetch: 2 };
    let mut sgd = edgeloop_train::optim::Sgd::nesterov(0.9, 4e-5);
    for batch in BatchLoader::new(std::sync::Arc::new(data.train), norm.clone(), config) {
        let (x, y) = batch_tensors(&batch, SHAPE, tch::Device::Cpu);
        assert!(weight_step(net, &mut sgd, &x, &y, &paths(), 0.05).is_finite());
    }
    let config = LoaderConfig { batch_size: 1, shuffle_seed: None, augment: false, drop_last: false, prefetch: 2 };
    BatchLoader::new(std::sync::Arc::new(data.test), norm, config).map(|b| b.images).collect()
}

/// Writes NAME.onnx, NAME.input.bin and NAME.expected.bin for check_onnx.py.
pub fn write_onnx_case(dir: &Path, name: &str, model: &[u8], input: &[f32], expected: &[f32]) {
    let raw = |v: &[f32]| v.iter().flat_map(|x| x.to_le_bytes()).collect::<Vec<u8>>();
    std::fs::write(dir.join(format!("{name}.onnx")), model).unwrap();
    std::fs::write(dir.join(format!("{name}.input.bin")), raw(input)).unwrap();
    std::fs::write(dir.join(format!("{name}.expected.bin")), raw(expected)).unwrap();
}

/// onnx.checker (full check) and ONNX Runtime against every case in `dir`
/// (max abs diff ≤ 1e-4), with the project's .venv.
pub fn check_with_onnx_runtime(dir: &Path) {
    let python = repo_root().join(".venv/bin/python");
    assert!(python.exists(), "{} is missing: run scripts/setup.sh first", python.display());
    let out = Command::new(python).arg(repo_root().join("scripts/check_onnx.py")).arg(dir).output().unwrap();
    assert!(
        out.status.success(),
        "check_onnx.py failed:\n{}\n{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
}

const RAPL_RANGE_UJ: u64 = 20_000_000;

/// A RAPL powercap tree whose package counter advances like a real one on
/// a machine that draws `idle_w` plus `w_per_busy_core` for every core this
/// process keeps busy: the counter follows the process's CPU time, so a
/// bigger network costs more energy per inference, as on real hardware.
/// For the agent's real RAPL reader on a machine without RAPL (this VM).
pub struct SimulatedRapl {
    pub root: TempDir,
    stop: std::sync::Arc<std::sync::atomic::AtomicBool>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl SimulatedRapl {
    pub fn start(idle_w: f64, w_per_busy_core: f64) -> Self {
        let root = tempfile::tempdir().expect("temp sysfs");
        let zone = root.path().join("class/powercap/intel-rapl:0");
        std::fs::create_dir_all(&zone).expect("rapl zone");
        std::fs::write(zone.join("name"), "package-0\n").expect("rapl name");
        // 20 J: small, so that a search sees the counter wrap, as long runs do.
        std::fs::write(zone.join("max_energy_range_uj"), format!("{RAPL_RANGE_UJ}\n")).expect("rapl range");
        let counter = zone.join("energy_uj");
        // Through a rename, so the reader never sees half a number.
        let write = move |uj: u64| {
            let tmp = counter.with_extension("tmp");
            std::fs::write(&tmp, format!("{uj}\n")).expect("rapl counter");
            std::fs::rename(&tmp, &counter).expect("rapl counter");
        };
        write(0);
        let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
        let thread = {
            let stop = stop.clone();
            std::thread::spawn(move || {
                let (wall0, cpu0) = (std::time::Instant::now(), process_cpu_seconds());
                while !stop.load(std::sync::atomic::Ordering::Relaxed) {
                    let joules =
                        idle_w * wall0.elapsed().as_secs_f64() + w_per_busy_core * (process_cpu_seconds() - cpu0);
                    write((joules * 1e6) as u64 % RAPL_RANGE_UJ);
                    std::thread::sleep(std::time::Duration::from_millis(1));
                }
            })
        };
        SimulatedRapl { root, stop, thread: Some(thread) }
    }

    /// The folder to give the agent as its sysfs root.
    pub fn sysfs(&self) -> &Path {
        self.root.path()
    }
}

impl Drop for SimulatedRapl {
    fn drop(&mut self) {
        self.stop.store(true, std::sync::atomic::Ordering::Relaxed);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

/// CPU time of this whole process (every thread), in seconds.
fn process_cpu_seconds() -> f64 {
    let mut ts = libc::timespec { tv_sec: 0, tv_nsec: 0 };
    // SAFETY: ts is a valid timespec for the call to fill.
    unsafe { libc::clock_gettime(libc::CLOCK_PROCESS_CPUTIME_ID, &mut ts) };
    ts.tv_sec as f64 + ts.tv_nsec as f64 * 1e-9
}

/// Counts reads of one file by any process (inotify `IN_ACCESS` on its
/// folder, which survives a fixture replacing the file by rename): a
/// sensor fixture changes after the agent has read it N times, instead of
/// after a sleep that guesses when the agent reads.
pub struct FileReads {
    inotify: std::os::fd::OwnedFd,
    name: Vec<u8>,
    path: PathBuf,
}

impl FileReads {
    pub fn watch(path: &Path) -> FileReads {
        use std::os::fd::FromRawFd as _;
        use std::os::unix::ffi::OsStrExt as _;
        // SAFETY: a plain syscall; the descriptor is owned from here on.
        let fd = unsafe { libc::inotify_init1(libc::IN_CLOEXEC) };
        assert!(fd >= 0, "inotify_init1: {}", std::io::Error::last_os_error());
        // SAFETY: `fd` is a fresh descriptor nothing else owns.
        let inotify = unsafe { std::os::fd::OwnedFd::from_raw_fd(fd) };
        let dir = std::ffi::CString::new(path.parent().expect("a file in a folder").as_os_str().as_bytes())
            .expect("no NUL in the path");
        // SAFETY: `dir` is a NUL-terminated path that outlives the call.
        let watch = unsafe { libc::inotify_add_watch(fd, dir.as_ptr(), libc::IN_ACCESS) };
        assert!(watch >= 0, "watching {}: {}", path.display(), std::io::Error::last_os_error());
        let name = path.file_name().expect("a file name").as_bytes().to_vec();
        FileReads { inotify, name, path: path.to_path_buf() }
    }

    /// Blocks until the file has been read `n` more times (a minute at most).
    pub fn wait(&mut self, n: usize) {
        use std::os::fd::AsRawFd as _;
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(60);
        let mut seen = 0;
        let mut buf = [0u8; 4096];
        while seen < n {
            let left = deadline.saturating_duration_since(std::time::Instant::now());
            assert!(!left.is_zero(), "{} was read {seen} of {n} times in a minute", self.path.display());
            let mut ready = libc::pollfd { fd: self.inotify.as_raw_fd(), events: libc::POLLIN, revents: 0 };
            // SAFETY: one valid pollfd.
            if unsafe { libc::poll(&mut ready, 1, left.as_millis() as i32) } <= 0 {
                continue;
            }
            // SAFETY: reads at most `buf.len()` bytes into `buf`.
            let len = unsafe { libc::read(self.inotify.as_raw_fd(), buf.as_mut_ptr().cast(), buf.len()) };
            assert!(len > 0, "reading inotify events: {}", std::io::Error::last_os_error());
            // struct inotify_event: wd, mask, cookie, len (4 bytes each), then a NUL-padded name.
            let mut at = 0;
            while at < len as usize {
                let name_len = u32::from_ne_bytes(buf[at + 12..at + 16].try_into().expect("4 bytes")) as usize;
                let name = buf[at + 16..at + 16 + name_len].split(|&b| b == 0).next().unwrap_or_default();
                seen += usize::from(name == self.name.as_slice());
                at += 16 + name_len;
            }
        }
    }
}
