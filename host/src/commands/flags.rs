//! Flag groups that several subcommands share, declared once.

use std::path::PathBuf;

use clap::Args;
use edgeloop_api::MeasureRequest;
use edgeloop_cli::token::resolve_token;
use edgeloop_space::Space;
use edgeloop_train::DeviceKind;

use crate::AgentClient;
use crate::cache::MeasurementCache;
use crate::farm::{FarmAddress, FarmTarget, Priority};
use crate::measure::{DevicePool, Devices};
use crate::predict::Stat;
use crate::search::{FinalSettings, TrainRecipe};
use crate::train::TrainEnv;

/// How to authenticate to agents.
#[derive(Args)]
pub struct Auth {
    /// File holding the agents' bearer token (surrounding whitespace is ignored).
    /// Takes precedence over --token and EDGELOOP_TOKEN.
    #[arg(long, value_name = "FILE")]
    pub(crate) token_file: Option<PathBuf>,

    /// Bearer token of the agents. Prefer EDGELOOP_TOKEN or --token-file:
    /// other users of the machine can read command lines.
    #[arg(long, value_name = "TOKEN", env = "EDGELOOP_TOKEN", hide_env_values = true)]
    pub(crate) token: Option<String>,
}

impl Auth {
    pub(crate) fn token(&self) -> anyhow::Result<Option<String>> {
        Ok(resolve_token(self.token_file.as_deref(), self.token.as_deref())?)
    }
}

/// The agent a command talks to, and its token.
#[derive(Args)]
pub struct AgentArgs {
    /// Base URL of the agent on the target device, e.g. http://192.168.1.20:7878
    #[arg(long, value_name = "URL")]
    pub(crate) device: String,
    #[command(flatten)]
    pub(crate) auth: Auth,
}

impl AgentArgs {
    pub(crate) fn client(&self) -> anyhow::Result<AgentClient> {
        Ok(AgentClient::new(&self.device, self.auth.token()?)?)
    }
}

/// The agents a command measures on (one device class), and their token;
/// or a device class of a farm.
#[derive(Args)]
pub struct DevicesArgs {
    /// Base URL of an agent on the target device, e.g. http://192.168.1.20:7878;
    /// repeat for several agents of one device class: they share the measuring
    /// and stand in for one another when one fails.
    #[arg(long = "device", value_name = "URL", required_unless_present = "farm", conflicts_with = "farm")]
    pub(crate) devices: Vec<String>,
    #[command(flatten)]
    pub(crate) auth: Auth,
    /// Measure through a device farm instead (see `edgeloop farm`): its broker's URL.
    #[arg(long, value_name = "nats://HOST:PORT", requires = "farm_class")]
    pub(crate) farm: Option<String>,
    /// The farm's device class to measure on (as its workers were started with).
    #[arg(long, value_name = "NAME")]
    pub(crate) farm_class: Option<String>,
    #[command(flatten)]
    pub(crate) farm_auth: FarmAuthArgs,
}

/// How to authenticate to a farm's broker.
#[derive(Args)]
pub struct FarmAuthArgs {
    /// File holding this user's nkey seed (`edgeloop farm up --auth` writes them).
    #[arg(long, value_name = "FILE")]
    pub(crate) farm_nkey_file: Option<PathBuf>,
    /// CA certificate of the broker's TLS certificate (TLS is then required).
    #[arg(long, value_name = "FILE")]
    pub(crate) farm_ca_file: Option<PathBuf>,
}

impl FarmAuthArgs {
    pub(crate) fn address(&self, url: &str) -> FarmAddress {
        FarmAddress { url: url.to_string(), nkey_file: self.farm_nkey_file.clone(), ca_file: self.farm_ca_file.clone() }
    }
}

impl DevicesArgs {
    /// Where to measure; farm jobs at `priority`.
    pub(crate) fn devices(&self, priority: Priority) -> anyhow::Result<Devices> {
        if let (Some(url), Some(class)) = (&self.farm, &self.farm_class) {
            return Ok(Devices::Farm(FarmTarget {
                address: self.farm_auth.address(url),
                class: class.clone(),
                priority,
            }));
        }
        let token = self.auth.token()?;
        let clients = self.devices.iter().map(|url| AgentClient::new(url, token.clone())).collect::<Result<_, _>>()?;
        Ok(Devices::Agents(clients))
    }

    /// The devices as a measurement service, for work with no run folder to
    /// cache in (tables): what it measures is the command's output. Batch
    /// work: on a farm, searches' jobs go first.
    pub(crate) async fn pool(&self) -> anyhow::Result<DevicePool> {
        Ok(self.devices(Priority::Lo)?.connect(MeasurementCache::in_memory()).await?)
    }

    /// How errors name the devices.
    pub(crate) fn describe(&self) -> String {
        match (&self.farm, &self.farm_class) {
            (Some(url), Some(class)) => format!("class '{class}' of the farm at {url}"),
            _ => format!("the agent at {}", self.devices.join(", ")),
        }
    }
}

/// Which search space: a preset name or a TOML file, and its width multiplier.
#[derive(Args)]
pub struct SpaceArgs {
    /// Preset (proxyless-mobile, proxyless-cifar, tiny) or path to a space TOML file.
    #[arg(long, value_name = "NAME|FILE")]
    pub(crate) space: String,
    /// Width multiplier applied to every channel count (rounded to multiples of 8).
    #[arg(long, value_name = "W", default_value_t = 1.0)]
    pub(crate) width: f64,
}

impl SpaceArgs {
    pub(crate) fn load(&self) -> anyhow::Result<Space> {
        Ok(Space::load(&self.space, self.width)?)
    }
}

/// How a final network is trained (`search`, `train`, `baseline`).
#[derive(Args)]
pub struct RecipeArgs {
    /// synthetic[:TRAIN,TEST], cifar10:DIR, mnist:DIR or folder:DIR.
    #[arg(long, value_name = "SPEC", default_value = "synthetic")]
    pub(crate) dataset: String,
    /// Epochs of training the final network from scratch.
    #[arg(long, value_name = "N", default_value_t = 30)]
    pub(crate) final_epochs: usize,
    #[arg(long, value_name = "N", default_value_t = 64)]
    pub(crate) batch_size: usize,
    /// Initial learning rate of the weights (SGD, Nesterov, cosine schedule).
    #[arg(long, value_name = "LR", default_value_t = 0.05)]
    pub(crate) lr: f64,
    #[arg(long, value_name = "M", default_value_t = 0.9)]
    pub(crate) momentum: f64,
    #[arg(long, value_name = "WD", default_value_t = 4e-5)]
    pub(crate) weight_decay: f64,
    /// Training images held out (for architecture steps; they set the input
    /// normalisation, and the final network trains on them too) [default: 10% of train].
    #[arg(long, value_name = "N", default_value_t = 0)]
    pub(crate) holdout: usize,
}

impl RecipeArgs {
    pub(crate) fn recipe(&self, seed: u64) -> TrainRecipe {
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

/// Where a search measures and trains (`search` and `quantize`).
#[derive(Args)]
pub struct RunOn {
    #[arg(long, value_name = "N", default_value_t = 0)]
    pub(crate) seed: u64,
    /// Inference runtime on the device.
    #[arg(long, value_name = "NAME", default_value_t = MeasureRequest::default().runtime)]
    pub(crate) runtime: String,
    /// Threads the device's runtime may use.
    #[arg(long, value_name = "N", default_value_t = MeasureRequest::default().threads)]
    pub(crate) measure_threads: usize,
    /// Timed runs of each candidate (arch or policy) measured during the search
    /// (the final models get 50 and 1 s).
    #[arg(long, value_name = "N", default_value_t = 20)]
    pub(crate) probe_runs: usize,
    /// How long each candidate measured during the search is timed at
    /// least, in ms (tiny networks need the runs this adds to settle).
    #[arg(long, value_name = "MS", default_value_t = 200)]
    pub(crate) probe_ms: u64,
    /// Where training runs: auto (CUDA when available), cpu or cuda.
    #[arg(long, value_name = "KIND", default_value = "auto")]
    pub(crate) device_kind: DeviceKind,
}

impl RunOn {
    /// The short measurement of candidates during a search.
    pub(crate) fn probe_request(&self) -> MeasureRequest {
        MeasureRequest {
            runtime: self.runtime.clone(),
            threads: self.measure_threads,
            warmup_runs: 5,
            min_runs: self.probe_runs,
            min_duration_ms: self.probe_ms,
            ..MeasureRequest::default()
        }
    }

    /// The measurement of a final model, the one a budget is judged on.
    pub(crate) fn final_request(&self) -> MeasureRequest {
        MeasureRequest { runtime: self.runtime.clone(), threads: self.measure_threads, ..MeasureRequest::default() }
    }
}

/// Training and measuring one fixed architecture (`train`, `baseline`).
#[derive(Args)]
pub struct FixedRunArgs {
    #[command(flatten)]
    pub(crate) agents: DevicesArgs,
    #[command(flatten)]
    pub(crate) recipe: RecipeArgs,
    /// The statistic of the device's runs a budget is judged on, and the table predicts.
    #[arg(long, value_enum, value_name = "STAT", default_value_t = Stat::P50)]
    pub(crate) budget_stat: Stat,
    /// Latency table of the device [default: latency-tables/<device_id>--<runtime>--<space>.csv,
    /// built and calibrated through the agent when rows or the calibration are missing].
    #[arg(long, value_name = "FILE")]
    pub(crate) table: Option<PathBuf>,
    #[command(flatten)]
    pub(crate) run_on: RunOn,
    /// CPU threads for training [default: libtorch's choice].
    #[arg(long, value_name = "N")]
    pub(crate) threads: Option<i32>,
}

impl FixedRunArgs {
    pub(crate) fn settings(&self, space: &str, width: f64) -> FinalSettings {
        FinalSettings {
            space: space.to_string(),
            width,
            recipe: self.recipe.recipe(self.run_on.seed),
            runtime: self.run_on.runtime.clone(),
            measure_threads: self.run_on.measure_threads,
        }
    }

    pub(crate) fn env(&self, out: PathBuf, resume: bool) -> anyhow::Result<TrainEnv> {
        if let Some(n) = self.threads {
            tch::set_num_threads(n);
        }
        Ok(TrainEnv {
            out,
            resume,
            devices: self.agents.devices(Priority::Hi)?,
            table: self.table.clone(),
            device_kind: self.run_on.device_kind,
            final_request: self.run_on.final_request(),
            events: std::sync::Arc::new(super::progress::Terminal::default()),
        })
    }
}
