//! The `edgeloop` command line: parses arguments and hands over to the library.

use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use anyhow::Context;
use clap::{Args, Parser, Subcommand};
use edgeloop::AgentClient;
use edgeloop::baseline::{self, Baseline};
use edgeloop::calibrate::Calibration;
use edgeloop::client::{DEFAULT_REQUEST_TIMEOUT, error_line};
use edgeloop::commands::table::{self, TablePrecision};
use edgeloop::commands::{devices, export, measure, space};
use edgeloop::predict::{Predictor, Stat};
use edgeloop::quantize::{self, Constraint, QuantizeEnv, QuantizeSettings};
use edgeloop::search::{self, FinalSettings, RewardKind, SearchEnv, SearchSettings, Strategy, TrainRecipe};
use edgeloop::table::LatencyTable;
use edgeloop::train::TrainEnv;
use edgeloop::validate;
use edgeloop_api::MeasureRequest;
use edgeloop_api::cli::MeasureFlags;
use edgeloop_api::token::resolve_token;
use edgeloop_space::Arch;
use edgeloop_train::DeviceKind;
use tracing_subscriber::EnvFilter;

/// Hardware-in-the-loop neural architecture search: measure models on real devices.
#[derive(Parser)]
#[command(name = "edgeloop", version, propagate_version = true)]
#[command(after_help = "Log verbosity: EDGELOOP_LOG=debug (default: warn).")]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Upload an ONNX model to an agent (unless it has it) and measure its latency there.
    Measure(MeasureArgs),
    /// Show the device behind each agent: CPU, memory, runtimes and precisions.
    Devices(DevicesArgs),
    /// Inspect search spaces.
    #[command(subcommand)]
    Space(SpaceCommand),
    /// Export an architecture of a space to ONNX (seeded random weights, BatchNorm folded).
    Export(ExportArgs),
    /// Per-layer latency tables of a device: build one, predict networks from one.
    #[command(subcommand)]
    Table(TableCommand),
    /// Search an architecture under a latency budget measured on a device (ProxylessNAS).
    Search(Box<SearchArgs>),
    /// Train one fixed architecture (a file, or MobileNetV2's block) with a search's final recipe and measure it.
    Train(Box<TrainArgs>),
    /// Train and measure MobileNetV2's block at a sweep of widths: the baseline a search must beat.
    Baseline(Box<BaselineArgs>),
    /// Runs and a baseline sweep in one report: report.md, pareto.png, latency.png.
    Report(ReportArgs),
    /// Choose per-layer precisions of a searched network under a latency, energy or size budget (HAQ).
    Quantize(Box<QuantizeArgs>),
}

/// `edgeloop quantize`: see README "Mixed-precision quantization".
#[derive(Args)]
#[command(group(clap::ArgGroup::new("budget").required(true).args(["latency_ms", "energy_mj", "size_kb"])))]
struct QuantizeArgs {
    /// A finished `edgeloop search --out` directory: its retrained network is quantized.
    #[arg(long, value_name = "DIR")]
    run: PathBuf,
    /// Base URL of the agent on the target device.
    #[arg(long, value_name = "URL")]
    device: String,
    #[command(flatten)]
    auth: Auth,
    /// Latency budget: p50 on the device, ms.
    #[arg(long, value_name = "MS")]
    latency_ms: Option<f64>,
    /// Energy budget: mJ per inference above idle, from the agent's power sensor.
    #[arg(long, value_name = "MJ")]
    energy_mj: Option<f64>,
    /// Size budget: the weights' Σ bits·params, kB.
    #[arg(long, value_name = "KB")]
    size_kb: Option<f64>,
    /// DDPG episodes (each a policy, fine-tuned and scored).
    #[arg(long, value_name = "N", default_value_t = 60)]
    episodes: usize,
    /// Episodes of random policies before the agent's actor acts.
    #[arg(long, value_name = "N", default_value_t = 20)]
    warmup_episodes: usize,
    /// Fine-tune steps of each episode's policy before its accuracy is taken.
    #[arg(long, value_name = "N", default_value_t = 30)]
    finetune_steps: usize,
    /// Fine-tune steps of the chosen policy (and of uniform int8, to compare).
    #[arg(long, value_name = "N", default_value_t = 300)]
    final_steps: usize,
    /// Learning rate of the fine-tunes (SGD, Nesterov).
    #[arg(long, value_name = "LR", default_value_t = 0.005)]
    lr: f64,
    /// Held-out images each episode's accuracy is taken on.
    #[arg(long, value_name = "N", default_value_t = 500)]
    eval_images: usize,
    /// Training images the activation ranges are calibrated on.
    #[arg(long, value_name = "N", default_value_t = 64)]
    calibration_images: usize,
    /// Keep every layer integer (2–8 bits); by default a layer may also stay fp32.
    #[arg(long)]
    no_fp32: bool,
    #[command(flatten)]
    run_on: RunOn,
    /// The device's fp32 table [default: latency-tables/<device_id>--<runtime>--<space>.csv; built when rows are missing].
    #[arg(long, value_name = "FILE")]
    fp32_table: Option<PathBuf>,
    /// The device's int8 table [default: …--int8.csv next to it].
    #[arg(long, value_name = "FILE")]
    int8_table: Option<PathBuf>,
    /// Output directory [default: <run>/quant].
    #[arg(long, value_name = "DIR")]
    out: Option<PathBuf>,
    /// Continue the search checkpointed in --out.
    #[arg(long)]
    resume: bool,
}

/// `edgeloop search`: see README "Search".
#[derive(Args)]
#[command(group(clap::ArgGroup::new("budget").required(true).args(["budget_ms", "energy_budget_mj"])))]
struct SearchArgs {
    #[command(flatten)]
    space: SpaceArgs,
    #[command(flatten)]
    recipe: RecipeArgs,
    /// Base URL of an agent on the target device; repeat for several devices of one class.
    #[arg(long = "device", value_name = "URL", required = true)]
    devices: Vec<String>,
    #[command(flatten)]
    auth: Auth,
    /// Latency budget on the device, ms (judged on the final model's --budget-stat).
    #[arg(long, value_name = "MS")]
    budget_ms: Option<f64>,
    /// The statistic of the device's runs a latency budget is judged (and predicted) on.
    #[arg(long, value_enum, value_name = "STAT", default_value_t = Stat::P50)]
    budget_stat: Stat,
    /// Energy budget instead: mJ per inference above idle, read from the
    /// agent's power sensor (RAPL, Jetson INA3221 or Android battery).
    #[arg(long, value_name = "MJ")]
    energy_budget_mj: Option<f64>,
    /// Latency table of the device [default: latency-tables/<device_id>--<runtime>--<space>.csv,
    /// or …--energy.csv with --energy-budget-mj; built through the agent when rows are missing].
    #[arg(long, value_name = "FILE")]
    table: Option<PathBuf>,
    #[arg(long, value_enum, default_value_t = Strategy::Gradient)]
    strategy: Strategy,
    /// Search epochs (after the warm-up).
    #[arg(long, value_name = "N", default_value_t = 30)]
    epochs: usize,
    /// Weight-only epochs first, on uniformly sampled paths. A supernet
    /// learns far slower than one network (each op trains on a fraction of
    /// the steps): on `tiny` its loss leaves chance level after about 5 epochs.
    #[arg(long, value_name = "N", default_value_t = 20)]
    warmup_epochs: usize,
    /// Adam learning rate of α (betas 0, 0.999). ProxylessNAS's 1e-3 is for
    /// hundreds of epochs: at a few thousand arch steps α hardly moves.
    #[arg(long, value_name = "LR", default_value_t = 1e-2)]
    arch_lr: f64,
    /// Weight steps per architecture update.
    #[arg(long, value_name = "N", default_value_t = 5)]
    arch_every: usize,
    /// Binary gates of a gradient arch step: `two` sampled paths or `full`.
    #[arg(long, value_name = "MODE", default_value = "two")]
    gate_mode: String,
    /// Cost term of the gradient strategy: lagrange (the budget as a constraint
    /// with a multiplier λ by dual ascent), mul#log, add#linear (ProxylessNAS's
    /// fixed-strength penalties) or off.
    #[arg(long, value_name = "LOSS", default_value = "lagrange")]
    latency_loss: String,
    /// mul#log: L = a·CE·(log E[LAT] / log T)^b — the a.
    #[arg(long, value_name = "A", default_value_t = 0.2)]
    loss_a: f64,
    /// mul#log: the b.
    #[arg(long, value_name = "B", default_value_t = 0.3)]
    loss_b: f64,
    /// add#linear: L = CE + λ·(E[LAT] − T)/T — the λ.
    #[arg(long, value_name = "L", default_value_t = 0.1)]
    loss_lambda: f64,
    /// lagrange: the multiplier's step: λ ← λ + η·(E[COST]/T′ − 1) after each arch step
    /// while E[COST] > T′ = T·(1 − margin), halved while under (0 below 0.001).
    #[arg(long, value_name = "ETA", default_value_t = search::DEFAULT_LAMBDA_LR)]
    lambda_lr: f64,
    /// REINFORCE: how the reward takes the budget: lagrange (acc − λ·(COST/T − 1))
    /// or mnas (acc·(COST/T)^w, see --reward-w and --hard-constraint).
    #[arg(long, value_enum, default_value_t = RewardKind::Lagrange)]
    reward: RewardKind,
    /// REINFORCE: archs sampled (and measured) per update.
    #[arg(long, value_name = "M", default_value_t = 4)]
    samples: usize,
    /// REINFORCE (mnas): reward = acc·(LAT/T)^w, the soft w.
    #[arg(long, value_name = "W", default_value_t = -0.07, allow_negative_numbers = true)]
    reward_w: f64,
    /// REINFORCE (mnas): w = 0 within the budget, −1 above it.
    #[arg(long)]
    hard_constraint: bool,
    /// REINFORCE: baseline ← d·baseline + (1 − d)·mean reward.
    #[arg(long, value_name = "D", default_value_t = 0.99)]
    baseline_decay: f64,
    /// Architectures derived under the budget (most likely first) and measured on the device.
    #[arg(long, value_name = "K", default_value_t = search::DEFAULT_CANDIDATES)]
    derive_candidates: usize,
    /// Final trainings at most: when the final model misses the budget on the
    /// device, derive again with a larger margin and retrain, up to this many times in all.
    #[arg(long, value_name = "N", default_value_t = search::DEFAULT_ROUNDS)]
    max_rounds: usize,
    #[command(flatten)]
    run_on: RunOn,
    /// CPU threads for training [default: libtorch's choice].
    #[arg(long, value_name = "N")]
    threads: Option<i32>,
    /// Run directory: arch.json, search.csv, archs.csv, checkpoint, model.onnx, result.json.
    #[arg(long, value_name = "DIR")]
    out: PathBuf,
    /// Continue the search (or final training) checkpointed in --out.
    #[arg(long)]
    resume: bool,
}

/// How a final network is trained (`search`, `train`, `baseline`).
#[derive(Args)]
struct RecipeArgs {
    /// synthetic[:TRAIN,TEST], cifar10:DIR, mnist:DIR or folder:DIR.
    #[arg(long, value_name = "SPEC", default_value = "synthetic")]
    dataset: String,
    /// Epochs of training the final network from scratch.
    #[arg(long, value_name = "N", default_value_t = 30)]
    final_epochs: usize,
    #[arg(long, value_name = "N", default_value_t = 64)]
    batch_size: usize,
    /// Initial learning rate of the weights (SGD, Nesterov, cosine schedule).
    #[arg(long, value_name = "LR", default_value_t = 0.05)]
    lr: f64,
    #[arg(long, value_name = "M", default_value_t = 0.9)]
    momentum: f64,
    #[arg(long, value_name = "WD", default_value_t = 4e-5)]
    weight_decay: f64,
    /// Training images held out (for architecture steps; they set the input
    /// normalisation, and the final network trains on them too) [default: 10% of train].
    #[arg(long, value_name = "N", default_value_t = 0)]
    holdout: usize,
}

impl RecipeArgs {
    fn recipe(&self, seed: u64) -> TrainRecipe {
        TrainRecipe {
            dataset: self.dataset.clone(),
            final_epochs: self.final_epochs,
            batch_size: self.batch_size,
            lr: self.lr,
            momentum: self.momentum,
            weight_decay: self.weight_decay,
            holdout: self.holdout,
            seed,
        }
    }
}

/// Training and measuring one fixed architecture (`train`, `baseline`).
#[derive(Args)]
struct FixedRunArgs {
    /// Base URL of the agent on the target device.
    #[arg(long, value_name = "URL")]
    device: String,
    #[command(flatten)]
    auth: Auth,
    #[command(flatten)]
    recipe: RecipeArgs,
    /// The statistic of the device's runs a budget is judged on, and the table predicts.
    #[arg(long, value_enum, value_name = "STAT", default_value_t = Stat::P50)]
    budget_stat: Stat,
    /// Latency table of the device [default: latency-tables/<device_id>--<runtime>--<space>.csv,
    /// built and calibrated through the agent when rows or the calibration are missing].
    #[arg(long, value_name = "FILE")]
    table: Option<PathBuf>,
    #[command(flatten)]
    run_on: RunOn,
    /// CPU threads for training [default: libtorch's choice].
    #[arg(long, value_name = "N")]
    threads: Option<i32>,
}

impl FixedRunArgs {
    fn settings(&self, space: &str, width: f64) -> FinalSettings {
        FinalSettings {
            space: space.to_string(),
            width,
            recipe: self.recipe.recipe(self.run_on.seed),
            runtime: self.run_on.runtime.clone(),
            measure_threads: self.run_on.measure_threads,
        }
    }

    fn env(&self, out: PathBuf, resume: bool) -> anyhow::Result<TrainEnv> {
        if let Some(n) = self.threads {
            tch::set_num_threads(n);
        }
        Ok(TrainEnv {
            out,
            resume,
            device: AgentClient::new(&self.device, self.auth.token()?)?,
            table: self.table.clone(),
            device_kind: self.run_on.device_kind,
            final_request: self.run_on.final_request(),
        })
    }
}

/// `edgeloop train`: see README "Baselines and reports".
#[derive(Args)]
#[command(group(clap::ArgGroup::new("which").required(true).args(["arch", "baseline"])))]
struct TrainArgs {
    #[command(flatten)]
    space: SpaceArgs,
    /// Architecture JSON ({"space", "width", "ops": [...]}) to train.
    #[arg(long, value_name = "A.json")]
    arch: Option<PathBuf>,
    /// A hand-designed architecture of the space's layout instead.
    #[arg(long, value_enum)]
    baseline: Option<Baseline>,
    #[command(flatten)]
    run: FixedRunArgs,
    /// Judge the trained model against this latency budget, ms (optional).
    #[arg(long, value_name = "MS")]
    budget_ms: Option<f64>,
    /// Run directory: arch.json, model.onnx, result.json, final.checkpoint.
    #[arg(long, value_name = "DIR")]
    out: PathBuf,
    /// Continue the training checkpointed in --out.
    #[arg(long)]
    resume: bool,
}

/// `edgeloop baseline`: see README "Baselines and reports".
#[derive(Args)]
struct BaselineArgs {
    /// Preset (proxyless-mobile, proxyless-cifar, tiny) or path to a space TOML file.
    #[arg(long, value_name = "NAME|FILE")]
    space: String,
    /// Width multipliers to train (widths whose channels round alike are trained once).
    #[arg(long, value_name = "W,W,…", value_delimiter = ',', default_values_t = baseline::DEFAULT_WIDTHS)]
    widths: Vec<f64>,
    /// Train only the widest width whose untrained network measures within
    /// this many ms on the device (all widths are measured first).
    #[arg(long, value_name = "MS")]
    fit_ms: Option<f64>,
    #[command(flatten)]
    run: FixedRunArgs,
    /// Folder of the sweep: baselines.csv and a run folder per width (w0.5/, …).
    /// Rerunning continues it: finished widths are read back.
    #[arg(long, value_name = "DIR")]
    out: PathBuf,
}

/// `edgeloop report`.
#[derive(Args)]
struct ReportArgs {
    /// Run directories (of search, train or quantize) to report on.
    #[arg(value_name = "RUN", required = true)]
    runs: Vec<PathBuf>,
    /// A baseline sweep's folder (with baselines.csv).
    #[arg(long, value_name = "DIR")]
    baselines: Option<PathBuf>,
    /// Where report.md, pareto.png and latency.png go.
    #[arg(long, value_name = "DIR")]
    out: PathBuf,
}

/// Where a search measures and trains (`search` and `quantize`).
#[derive(Args)]
struct RunOn {
    #[arg(long, value_name = "N", default_value_t = 0)]
    seed: u64,
    /// Inference runtime on the device.
    #[arg(long, value_name = "NAME", default_value_t = MeasureRequest::default().runtime)]
    runtime: String,
    /// Threads the device's runtime may use.
    #[arg(long, value_name = "N", default_value_t = MeasureRequest::default().threads)]
    measure_threads: usize,
    /// Timed runs of each candidate (arch or policy) measured during the search
    /// (the final models get 50 and 1 s).
    #[arg(long, value_name = "N", default_value_t = 20)]
    probe_runs: usize,
    /// Where training runs: auto (CUDA when available), cpu or cuda.
    #[arg(long, value_name = "KIND", default_value = "auto")]
    device_kind: DeviceKind,
}

impl RunOn {
    /// The short measurement of candidates during a search.
    fn probe_request(&self) -> MeasureRequest {
        MeasureRequest {
            runtime: self.runtime.clone(),
            threads: self.measure_threads,
            warmup_runs: 5,
            min_runs: self.probe_runs,
            min_duration_ms: 200,
            ..MeasureRequest::default()
        }
    }

    /// The measurement of a final model, the one a budget is judged on.
    fn final_request(&self) -> MeasureRequest {
        MeasureRequest { runtime: self.runtime.clone(), threads: self.measure_threads, ..MeasureRequest::default() }
    }
}

#[derive(Subcommand)]
enum TableCommand {
    /// Measure every layer of a space on an agent into a latency table.
    /// Resumable: rows already in the file are skipped.
    Build(TableBuildArgs),
    /// Predict the latency of an architecture from a latency table.
    Predict(TablePredictArgs),
    /// Measure random whole networks on the device and report how well the table predicts them.
    Validate(TableValidateArgs),
    /// Fit the predictor's correction factor on a few whole networks (held out from validation).
    Calibrate(TableCalibrateArgs),
}

/// Measuring random whole networks against a table.
#[derive(Args)]
struct WholeNetworkArgs {
    /// Latency table (CSV) of the device; its device, runtime and threads are used.
    #[arg(long, value_name = "FILE")]
    table: PathBuf,
    /// Base URL of the agent on the table's device.
    #[arg(long, value_name = "URL")]
    device: String,
    #[command(flatten)]
    auth: Auth,
    #[command(flatten)]
    space: SpaceArgs,
    /// Untimed runs per network.
    #[arg(long, value_name = "N", default_value_t = MeasureRequest::default().warmup_runs)]
    warmup: usize,
    /// Timed runs per network, at least [default: as a final model's measurement].
    #[arg(long, value_name = "N", default_value_t = MeasureRequest::default().min_runs)]
    runs: usize,
    /// Timed duration per network, at least, in ms.
    #[arg(long, value_name = "MS", default_value_t = MeasureRequest::default().min_duration_ms)]
    min_duration_ms: u64,
}

#[derive(Args)]
struct TableCalibrateArgs {
    #[command(flatten)]
    net: WholeNetworkArgs,
    /// Whole networks to fit on.
    #[arg(long, value_name = "N", default_value_t = edgeloop::calibrate::DEFAULT_SAMPLES)]
    samples: usize,
    /// Seed of the architecture sampler (keep it apart from validation seeds).
    #[arg(long, value_name = "S", default_value_t = edgeloop::calibrate::DEFAULT_SEED)]
    seed: u64,
}

#[derive(Args)]
struct TableValidateArgs {
    #[command(flatten)]
    net: WholeNetworkArgs,
    /// Random architectures to measure.
    #[arg(long, value_name = "N", default_value_t = 100)]
    samples: usize,
    /// Statistic of each network's runs to predict and compare: min (the
    /// table's own), p50 or p90 (these need a calibration).
    #[arg(long, value_enum, default_value_t = Stat::Min)]
    stat: Stat,
    /// Seed of the architecture sampler.
    #[arg(long, value_name = "S", default_value_t = 0)]
    seed: u64,
    /// Where validation.csv and validation.png go [default: next to the table, <table>.validation/].
    #[arg(long, value_name = "DIR")]
    out: Option<PathBuf>,
    /// Print the metrics as one JSON object.
    #[arg(long)]
    json: bool,
}

#[derive(Args)]
struct TableBuildArgs {
    /// Base URL of the agent, e.g. http://192.168.1.20:7878
    #[arg(long, value_name = "URL")]
    device: String,

    #[command(flatten)]
    auth: Auth,

    #[command(flatten)]
    space: SpaceArgs,

    /// Inference runtime on the device.
    #[arg(long, value_name = "NAME", default_value_t = table::default_request().runtime)]
    runtime: String,

    /// Threads the runtime may use.
    #[arg(long, value_name = "N", default_value_t = table::default_request().threads)]
    threads: usize,

    /// Untimed runs before each row's timing starts.
    #[arg(long, value_name = "N", default_value_t = table::default_request().warmup_runs)]
    warmup: usize,

    /// Minimum number of timed runs per row.
    #[arg(long, value_name = "N", default_value_t = table::default_request().min_runs)]
    runs: usize,

    /// Keep running each row until its timed runs took at least this long.
    #[arg(long, value_name = "MS", default_value_t = table::default_request().min_duration_ms)]
    min_duration_ms: u64,

    /// Stop a row after this long even when fewer than --runs runs were done.
    #[arg(long, value_name = "MS", default_value_t = table::default_request().max_duration_ms)]
    max_duration_ms: u64,

    /// Also measure each row's energy per inference (agent's power sensor)
    /// into the columns energy_mj and energy_sensor. Each row then runs at least 1 s.
    #[arg(long)]
    energy: bool,

    /// Arithmetic of the layer models: fp32, or int8 (QLinearConv / MatMulInteger;
    /// the runtime must run int8 natively, per /v1/info), for `edgeloop quantize`.
    #[arg(long, value_enum, default_value_t = TablePrecision::Fp32)]
    precision: TablePrecision,

    /// Table file to create or complete [default: latency-tables/<device_id>--<runtime>--<space>.csv,
    /// with --int8 before .csv for int8 and --energy with --energy].
    #[arg(long, value_name = "FILE")]
    out: Option<PathBuf>,
}

#[derive(Args)]
struct TablePredictArgs {
    /// Latency table (CSV) of the device.
    #[arg(long, value_name = "FILE")]
    table: PathBuf,

    #[command(flatten)]
    space: SpaceArgs,

    /// Architecture JSON ({"space", "width", "ops": [...]}).
    #[arg(long, value_name = "A.json")]
    arch: PathBuf,

    /// Statistic of the runs to predict: min (the table's own), p50 or p90
    /// (these need `table calibrate`).
    #[arg(long, value_enum, default_value_t = Stat::Min)]
    stat: Stat,

    /// Print the prediction as JSON instead of a table.
    #[arg(long)]
    json: bool,
}

#[derive(Subcommand)]
enum SpaceCommand {
    /// Print a space's blocks, candidate ops and number of architectures.
    Show(ShowArgs),
}

#[derive(Args)]
struct ShowArgs {
    /// Preset (proxyless-mobile, proxyless-cifar, tiny) or path to a space TOML file.
    #[arg(value_name = "NAME|FILE")]
    space: String,
    /// Width multiplier applied to every channel count (rounded to multiples of 8).
    #[arg(long, value_name = "W", default_value_t = 1.0)]
    width: f64,
}

/// Which search space: a preset name or a TOML file, and its width multiplier.
#[derive(Args)]
struct SpaceArgs {
    /// Preset (proxyless-mobile, proxyless-cifar, tiny) or path to a space TOML file.
    #[arg(long, value_name = "NAME|FILE")]
    space: String,
    /// Width multiplier applied to every channel count (rounded to multiples of 8).
    #[arg(long, value_name = "W", default_value_t = 1.0)]
    width: f64,
}

impl SpaceArgs {
    fn load(&self) -> anyhow::Result<edgeloop_space::Space> {
        Ok(edgeloop_space::Space::load(&self.space, self.width)?)
    }
}

#[derive(Args)]
#[command(group(clap::ArgGroup::new("which").required(true).args(["arch", "random", "baseline"])))]
struct ExportArgs {
    #[command(flatten)]
    space: SpaceArgs,
    /// Architecture JSON ({"space", "width", "ops": [...]}).
    #[arg(long, value_name = "A.json")]
    arch: Option<PathBuf>,
    /// Export a random architecture drawn with this seed instead.
    #[arg(long, value_name = "SEED")]
    random: Option<u64>,
    /// Export a hand-designed architecture of the space's layout instead.
    #[arg(long, value_enum)]
    baseline: Option<Baseline>,
    /// Seed of the random weights.
    #[arg(long, value_name = "N", default_value_t = 0)]
    weights_seed: u64,
    /// Where to write the model.
    #[arg(long, value_name = "FILE")]
    out: PathBuf,
    /// Also write the architecture as JSON here (useful with --random).
    #[arg(long, value_name = "FILE")]
    arch_out: Option<PathBuf>,
}

/// How to authenticate to agents.
#[derive(Args)]
struct Auth {
    /// File holding the agents' bearer token (surrounding whitespace is ignored).
    /// Takes precedence over --token and EDGELOOP_TOKEN.
    #[arg(long, value_name = "FILE")]
    token_file: Option<PathBuf>,

    /// Bearer token of the agents. Prefer EDGELOOP_TOKEN or --token-file:
    /// other users of the machine can read command lines.
    #[arg(long, value_name = "TOKEN", env = "EDGELOOP_TOKEN", hide_env_values = true)]
    token: Option<String>,
}

impl Auth {
    fn token(&self) -> anyhow::Result<Option<String>> {
        Ok(resolve_token(self.token_file.as_deref(), self.token.as_deref())?)
    }
}

#[derive(Args)]
struct MeasureArgs {
    /// Base URL of the agent, e.g. http://192.168.1.20:7878
    #[arg(long, value_name = "URL")]
    device: String,

    #[command(flatten)]
    auth: Auth,

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

#[derive(Args)]
struct DevicesArgs {
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

#[tokio::main(flavor = "current_thread")]
async fn main() -> ExitCode {
    let cli = Cli::parse();
    tracing_subscriber::fmt()
        .with_env_filter(EnvFilter::try_from_env("EDGELOOP_LOG").unwrap_or_else(|_| "warn".into()))
        .with_writer(std::io::stderr)
        .without_time()
        .with_target(false)
        .init();
    let outcome = match cli.command {
        Command::Measure(args) => run_measure(args).await,
        Command::Devices(args) => run_devices(args).await,
        Command::Space(SpaceCommand::Show(args)) => edgeloop_space::Space::load(&args.space, args.width)
            .map(|s| print!("{}", space::render(&s)))
            .map_err(Into::into),
        Command::Export(args) => run_export(args),
        Command::Table(TableCommand::Build(args)) => run_table_build(args).await,
        Command::Table(TableCommand::Predict(args)) => run_table_predict(args),
        Command::Table(TableCommand::Validate(args)) => run_table_validate(args).await,
        Command::Table(TableCommand::Calibrate(args)) => run_table_calibrate(args).await,
        Command::Search(args) => run_search(*args).await,
        Command::Train(args) => run_train(*args).await,
        Command::Baseline(args) => run_baseline(*args).await,
        Command::Report(args) => run_report(args),
        Command::Quantize(args) => run_quantize(*args).await,
    };
    // One line, not anyhow's multi-line report (with a backtrace under RUST_BACKTRACE).
    match outcome {
        Ok(()) => ExitCode::SUCCESS,
        Err(error) => {
            eprintln!("error: {}", error_line(error.as_ref()));
            ExitCode::FAILURE
        }
    }
}

async fn run_measure(args: MeasureArgs) -> anyhow::Result<()> {
    let client = AgentClient::new(&args.device, args.auth.token()?)?
        .with_request_timeout(Duration::from_secs(args.timeout_secs));
    let template = args.measure.request(String::new());
    print!("{}", measure::run(&client, &args.model, &template, args.json).await?);
    Ok(())
}

async fn run_devices(args: DevicesArgs) -> anyhow::Result<()> {
    let token = args.auth.token()?;
    let reports = devices::query(&args.devices, token.as_deref(), Duration::from_secs(args.timeout_secs)).await;
    let output = if args.json {
        devices::render_json(&reports).context("cannot encode the device list")?
    } else {
        devices::render_human(&reports)
    };
    print!("{output}");
    let failed = reports.iter().filter(|r| r.info.is_err()).count();
    anyhow::ensure!(failed == 0, "{failed} of {} agents could not be queried", reports.len());
    Ok(())
}

fn run_export(args: ExportArgs) -> anyhow::Result<()> {
    let space = args.space.load()?;
    let source = match (&args.arch, args.random, args.baseline) {
        (Some(path), _, _) => export::ArchSource::File(path),
        (None, Some(seed), _) => export::ArchSource::Random(seed),
        (None, None, baseline) => export::ArchSource::Baseline(baseline.expect("clap requires one source")),
    };
    let exported = export::run(&space, source, args.weights_seed, &args.out)?;
    if let Some(path) = &args.arch_out {
        std::fs::write(path, exported.arch.to_json() + "\n").with_context(|| format!("writing {}", path.display()))?;
    }
    println!(
        "{} ({} bytes, sha256 {}, arch {})",
        args.out.display(),
        exported.bytes,
        exported.sha256,
        &exported.arch.hash()[..12]
    );
    Ok(())
}

async fn run_table_build(args: TableBuildArgs) -> anyhow::Result<()> {
    let space = args.space.load()?;
    let client = AgentClient::new(&args.device, args.auth.token()?)?;
    let template = MeasureRequest {
        runtime: args.runtime,
        threads: args.threads,
        warmup_runs: args.warmup,
        min_runs: args.runs,
        min_duration_ms: args.min_duration_ms,
        max_duration_ms: args.max_duration_ms,
        energy: args.energy,
        ..table::default_request()
    };
    let report = table::build(&client, &space, &template, args.precision, args.out.as_deref()).await?;
    println!(
        "{}: {} rows measured, {} already there, {} in all",
        report.path.display(),
        report.measured,
        report.skipped,
        report.total
    );
    Ok(())
}

fn run_table_predict(args: TablePredictArgs) -> anyhow::Result<()> {
    let space = args.space.load()?;
    let latency = LatencyTable::load(&args.table)?;
    let text = std::fs::read_to_string(&args.arch).with_context(|| format!("cannot read {}", args.arch.display()))?;
    let arch = Arch::from_json(&text).with_context(|| format!("cannot read {}", args.arch.display()))?;
    let calibration = Calibration::load_for(&args.table)?;
    let prediction = Predictor::calibrated(&latency, calibration.as_ref(), args.stat)?.predict(&space, &arch)?;
    print!("{}", table::render_prediction(&prediction, args.json)?);
    Ok(())
}

/// What measuring whole networks against a table needs.
struct WholeNetworkRun {
    space: edgeloop_space::Space,
    latency: LatencyTable,
    client: AgentClient,
    template: MeasureRequest,
}

impl WholeNetworkArgs {
    /// Loads the table and checks that the agent is the table's device.
    async fn open(&self) -> anyhow::Result<WholeNetworkRun> {
        let space = self.space.load()?;
        let latency = LatencyTable::load(&self.table)?;
        let provenance =
            latency.provenance().with_context(|| format!("latency table {} has no rows", self.table.display()))?;
        let client = AgentClient::new(&self.device, self.auth.token()?)?;
        let device_id = client.info().await?.device_id;
        anyhow::ensure!(
            device_id == provenance.device_id,
            "the agent at {} is device {device_id}, but {} was measured on {}",
            self.device,
            self.table.display(),
            provenance.device_id
        );
        let template = MeasureRequest {
            runtime: provenance.runtime.clone(),
            threads: provenance.threads,
            warmup_runs: self.warmup,
            min_runs: self.runs,
            min_duration_ms: self.min_duration_ms,
            ..MeasureRequest::default()
        };
        Ok(WholeNetworkRun { space, latency, client, template })
    }
}

impl WholeNetworkRun {
    /// Measures `archs` as whole networks, with a progress bar.
    async fn measure(&self, archs: &[edgeloop_space::Arch]) -> anyhow::Result<Vec<validate::NetworkMeasurement>> {
        let bar = edgeloop::progress::bar(archs.len(), "archs");
        let measured = validate::measure_networks(&self.client, &self.space, archs, &self.template, |m| {
            bar.set_message(format!("last: p50 {:.3} ms, fastest {:.3} ms", m.stats.p50, m.stats.min));
            bar.inc(1);
        })
        .await?;
        bar.finish_and_clear();
        Ok(measured)
    }
}

async fn run_table_calibrate(args: TableCalibrateArgs) -> anyhow::Result<()> {
    let run = args.net.open().await?;
    let archs = validate::sample_archs(&run.space, args.samples, args.seed, &[]);
    let measured = run.measure(&archs).await?;
    let calibration = Calibration::fit(&measured, &Predictor::new(&run.latency), &run.space)?;
    let path = calibration.save_for(&args.net.table)?;
    let scales: Vec<String> = [Stat::Min, Stat::P50, Stat::P90]
        .iter()
        .map(|&stat| {
            let margin = calibration.margin(stat).map_or(String::new(), |m| format!(", margin {:.1}%", m * 100.0));
            format!("{stat} {:.4}{margin}", calibration.scale(stat).unwrap_or(f64::NAN))
        })
        .collect();
    println!("scale {} fitted on {} archs; wrote {}", scales.join("; "), measured.len(), path.display());
    Ok(())
}

async fn run_table_validate(args: TableValidateArgs) -> anyhow::Result<()> {
    let run = args.net.open().await?;
    let calibration = Calibration::load_for(&args.net.table)?;
    let held_out = calibration.as_ref().map_or(&[][..], |c| &c.archs[..]);
    let predictor = Predictor::calibrated(&run.latency, calibration.as_ref(), args.stat)?;
    let archs = validate::sample_archs(&run.space, args.samples, args.seed, held_out);
    let measured = run.measure(&archs).await?;
    let samples = validate::samples(&predictor, &run.space, &measured, args.stat)?;
    let metrics = validate::metrics(&samples);
    let out = args.out.unwrap_or_else(|| args.net.table.with_extension("validation"));
    std::fs::create_dir_all(&out).with_context(|| format!("creating {}", out.display()))?;
    validate::write_csv(&out.join("validation.csv"), &samples, args.stat)?;
    validate::write_plot(&out.join("validation.png"), &samples, &metrics, run.space.name(), args.stat)?;
    if args.json {
        println!("{}", serde_json::to_string(&metrics)?);
    } else {
        let correction = match calibration.as_ref().and_then(|c| c.scale(args.stat)) {
            Some(scale) => format!("calibrated, scale {scale:.4}"),
            None => "no calibration".to_string(),
        };
        println!(
            "{} archs, {} ({correction}): {:.1}% within ±10%, MAPE {:.2}%, RMSE {:.4} ms, Kendall τ {:.3}\nwrote {}/validation.csv and validation.png",
            metrics.samples,
            args.stat,
            metrics.within_10pct * 100.0,
            metrics.mape,
            metrics.rmse_ms,
            metrics.kendall_tau,
            out.display()
        );
    }
    Ok(())
}

async fn run_search(args: SearchArgs) -> anyhow::Result<()> {
    let token = args.auth.token()?;
    let devices = args.devices.iter().map(|url| AgentClient::new(url, token.clone())).collect::<Result<Vec<_>, _>>()?;
    if let Some(n) = args.threads {
        tch::set_num_threads(n);
    }
    let settings = SearchSettings {
        space: args.space.space.clone(),
        width: args.space.width,
        recipe: args.recipe.recipe(args.run_on.seed),
        budget_ms: args.budget_ms,
        energy_budget_mj: args.energy_budget_mj,
        budget_stat: args.budget_stat,
        strategy: args.strategy,
        warmup_epochs: args.warmup_epochs,
        epochs: args.epochs,
        arch_lr: args.arch_lr,
        arch_every: args.arch_every,
        gate_mode: args.gate_mode,
        latency_loss: args.latency_loss,
        loss_a: args.loss_a,
        loss_b: args.loss_b,
        loss_lambda: args.loss_lambda,
        lambda_lr: args.lambda_lr,
        reward: args.reward,
        samples: args.samples,
        reward_w: args.reward_w,
        hard_constraint: args.hard_constraint,
        baseline_decay: args.baseline_decay,
        derive_candidates: args.derive_candidates,
        max_rounds: args.max_rounds,
        runtime: args.run_on.runtime.clone(),
        measure_threads: args.run_on.measure_threads,
    };
    let env = SearchEnv {
        out: args.out.clone(),
        resume: args.resume,
        devices,
        table: args.table,
        device_kind: args.run_on.device_kind,
        probe_request: args.run_on.probe_request(),
        final_request: args.run_on.final_request(),
    };
    let result = search::run(settings, env).await?;
    print!("{}", search::render_summary(&result, &args.out));
    Ok(())
}

async fn run_train(args: TrainArgs) -> anyhow::Result<()> {
    let space = args.space.load()?;
    let arch = match (&args.arch, args.baseline) {
        (Some(path), _) => export::load_arch(&space, path)?,
        (None, baseline) => baseline.expect("clap requires --arch or --baseline").arch(&space)?,
    };
    let settings = args.run.settings(&args.space.space, args.space.width);
    let env = args.run.env(args.out.clone(), args.resume)?;
    let result = edgeloop::train::run(&settings, &arch, args.budget_ms, args.run.budget_stat, &env).await?;
    print!("{}", search::render_summary(&result, &args.out));
    Ok(())
}

async fn run_baseline(args: BaselineArgs) -> anyhow::Result<()> {
    anyhow::ensure!(!args.widths.is_empty(), "--widths: give at least one width");
    let settings = args.run.settings(&args.space, 1.0);
    let env = args.run.env(args.out.clone(), false)?;
    let stat = args.run.budget_stat;
    let widths = match args.fit_ms {
        Some(limit) => {
            let (widest, _) = baseline::widest_within(&args.space, &args.widths, limit, stat, &env).await?;
            println!("training width {widest}: the widest within {limit} ms {stat} (or the narrowest, if none is)");
            vec![widest]
        }
        None => args.widths.clone(),
    };
    let rows = baseline::run(&settings, &widths, stat, &args.out, &env).await?;
    println!("width  channels        accuracy  p50 ms   p90 ms   size");
    for r in &rows {
        println!(
            "{:<6} {:<15} {:>7.2}%  {:>7.3}  {:>7.3}  {:.1} kB",
            r.width,
            r.channels,
            100.0 * r.test_accuracy,
            r.measured_p50_ms,
            r.measured_p90_ms,
            r.model_kb
        );
    }
    println!("wrote {}", args.out.join("baselines.csv").display());
    Ok(())
}

fn run_report(args: ReportArgs) -> anyhow::Result<()> {
    let written = edgeloop::report::run(&args.runs, args.baselines.as_deref(), &args.out)?;
    if !written.comparisons.is_empty() {
        print!("{}", edgeloop::report::comparison_table(&written.comparisons));
    }
    println!("wrote {} (with pareto.png and latency.png)", written.markdown.display());
    Ok(())
}

async fn run_quantize(args: QuantizeArgs) -> anyhow::Result<()> {
    let constraint = match (args.latency_ms, args.energy_mj, args.size_kb) {
        (Some(ms), _, _) => Constraint::LatencyMs(ms),
        (_, Some(mj), _) => Constraint::EnergyMj(mj),
        (_, _, Some(kb)) => Constraint::SizeKb(kb),
        _ => unreachable!("clap requires one budget"),
    };
    let settings = QuantizeSettings {
        constraint,
        episodes: args.episodes,
        warmup_episodes: args.warmup_episodes,
        finetune_steps: args.finetune_steps,
        final_steps: args.final_steps,
        lr: args.lr,
        eval_images: args.eval_images,
        calibration_images: args.calibration_images,
        allow_fp32: !args.no_fp32,
        seed: args.run_on.seed,
        runtime: args.run_on.runtime.clone(),
        measure_threads: args.run_on.measure_threads,
    };
    let out = args.out.unwrap_or_else(|| args.run.join("quant"));
    let env = QuantizeEnv {
        run: args.run,
        out: out.clone(),
        resume: args.resume,
        device: AgentClient::new(&args.device, args.auth.token()?)?,
        fp32_table: args.fp32_table,
        int8_table: args.int8_table,
        device_kind: args.run_on.device_kind,
        probe_request: args.run_on.probe_request(),
        final_request: args.run_on.final_request(),
    };
    let result = quantize::run(settings, env).await?;
    print!("{}", quantize::render_summary(&result, &out));
    Ok(())
}
