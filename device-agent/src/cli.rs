//! The agent's command line (the binary's, not the library's). Parsed with
//! lexopt and a few lines of help layout rather than clap: clap weighed
//! ~0.3 MB of the static agent, whose whole overhead over tract has to stay
//! under 1.5 MB.
//!
//! Each group of flags is a struct with its defaults (`Default`), its
//! `--help` entries and a `take` that consumes one of its flags; commands
//! nest groups the way clap's `flatten` would.

use std::ffi::OsString;
use std::fmt::{self, Display};
use std::net::SocketAddr;
use std::num::NonZeroU32;
use std::path::PathBuf;
use std::str::FromStr;

use edgeloop_agent::AgentConfig;
use edgeloop_agent::energy::SensorChoice;
use edgeloop_agent::runtime::{OrtOptimization, RuntimeSettings};
use edgeloop_cli::measure_flags::{MeasureFlags, help};
use lexopt::{Arg, Parser, ValueExt};

use crate::logging::LogFilter;

const BIN: &str = "edgeloop-agent";
const ABOUT: &str = "Measures ONNX models on this device for edgeloop";

/// A parsed command line.
pub struct Cli {
    pub log_level: Option<LogFilter>,
    pub command: Command,
}

pub enum Command {
    Serve(ServeArgs),
    /// The measuring child of `serve --isolation process`; not for people.
    Worker,
    Bench(BenchArgs),
    Info(InfoArgs),
    Compare(CompareArgs),
}

/// Why a command line does not run a command.
#[derive(Debug)]
pub enum Exit {
    /// `--help` or `--version`: print this on stdout, exit 0.
    Print(String),
    /// A mistake: print it with a pointer to `--help`, exit 2.
    Usage { message: String, command: Option<&'static str> },
}

impl Display for Exit {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Exit::Print(text) => f.write_str(text),
            Exit::Usage { message, command } => {
                let help = command.map(|c| format!("{BIN} {c} --help")).unwrap_or_else(|| format!("{BIN} --help"));
                write!(f, "error: {message}\n\nFor more information, try '{help}'.")
            }
        }
    }
}

/// Parses the arguments after the program name.
pub fn parse(args: impl IntoIterator<Item = OsString>) -> Result<Cli, Exit> {
    let mut parser = Parser::from_args(args);
    let mut log = LogFlags::default();
    let usage = |e: lexopt::Error| Exit::Usage { message: e.to_string(), command: None };
    while let Some(arg) = parser.next().map_err(usage)? {
        match arg {
            Arg::Short('h') | Arg::Long("help") => return Err(Exit::Print(top_help())),
            Arg::Short('V') | Arg::Long("version") => {
                return Err(Exit::Print(format!("{BIN} {}\n", env!("CARGO_PKG_VERSION"))));
            }
            Arg::Long(name) => {
                let name = name.to_string();
                if !log.take(&name, &mut parser).map_err(usage)? {
                    return Err(usage(lexopt::Error::UnexpectedOption(format!("--{name}"))));
                }
            }
            Arg::Value(name) => {
                let name = name.string().map_err(usage)?;
                let command = match name.as_str() {
                    "serve" => Command::Serve(parse_command(&mut parser, &mut log)?),
                    "worker" => Command::Worker,
                    "bench" => Command::Bench(parse_command(&mut parser, &mut log)?),
                    "info" => Command::Info(parse_command(&mut parser, &mut log)?),
                    "compare" => Command::Compare(parse_command(&mut parser, &mut log)?),
                    "help" => return Err(Exit::Print(help_for(parser.next().ok().flatten())?)),
                    _ => return Err(usage(lexopt::Error::Custom(format!("unknown command '{name}'").into()))),
                };
                return Ok(Cli { log_level: log.filter, command });
            }
            other => return Err(usage(other.unexpected())),
        }
    }
    Err(Exit::Usage { message: "a command is required: serve, bench, info or compare".into(), command: None })
}

/// Builds a command's `--help` text.
type HelpText = fn() -> String;

/// Each command's name, summary and `--help` text, as `--help` lists them.
const COMMANDS: [(&str, &str, HelpText); 4] = [
    (ServeArgs::NAME, ServeArgs::ABOUT, command_help::<ServeArgs>),
    (BenchArgs::NAME, BenchArgs::ABOUT, command_help::<BenchArgs>),
    (InfoArgs::NAME, InfoArgs::ABOUT, command_help::<InfoArgs>),
    (CompareArgs::NAME, CompareArgs::ABOUT, command_help::<CompareArgs>),
];

/// `help [COMMAND]`.
fn help_for(command: Option<Arg<'_>>) -> Result<String, Exit> {
    match command {
        None => Ok(top_help()),
        Some(Arg::Value(name)) => COMMANDS
            .iter()
            .find(|(command, _, _)| name.to_str() == Some(command))
            .map(|(_, _, help)| help())
            .ok_or_else(|| Exit::Usage { message: format!("unknown command {name:?}"), command: None }),
        Some(other) => Err(Exit::Usage { message: other.unexpected().to_string(), command: None }),
    }
}

/// Parses one command's flags (and `--log-level`, accepted anywhere).
fn parse_command<C: Subcommand>(parser: &mut Parser, log: &mut LogFlags) -> Result<C, Exit> {
    let usage = |e: lexopt::Error| Exit::Usage { message: e.to_string(), command: Some(C::NAME) };
    let mut args = C::default();
    let mut argument = None;
    while let Some(arg) = parser.next().map_err(usage)? {
        match arg {
            Arg::Short('h') | Arg::Long("help") => return Err(Exit::Print(command_help::<C>())),
            Arg::Long(name) => {
                let name = name.to_string();
                if !(log.take(&name, parser).map_err(usage)? || args.take(&name, parser).map_err(usage)?) {
                    return Err(usage(lexopt::Error::UnexpectedOption(format!("--{name}"))));
                }
            }
            Arg::Value(value) if C::ARGUMENT.is_some() && argument.is_none() => argument = Some(value),
            other => return Err(usage(other.unexpected())),
        }
    }
    if let Some((name, _)) = C::ARGUMENT {
        let value = argument.ok_or_else(|| {
            usage(lexopt::Error::Custom(format!("the required argument <{name}> was not given").into()))
        })?;
        args.set_argument(value);
    }
    Ok(args)
}

/// One flag as `--help` lists it.
#[derive(Clone)]
pub struct FlagHelp {
    name: &'static str,
    value: Option<&'static str>,
    help: String,
}

fn switch(name: &'static str, help: &str) -> FlagHelp {
    FlagHelp { name, value: None, help: help.to_string() }
}

fn option(name: &'static str, value: &'static str, help: &str) -> FlagHelp {
    FlagHelp { name, value: Some(value), help: help.to_string() }
}

impl FlagHelp {
    /// Shows the value a flag takes when it is not given.
    fn default(mut self, default: impl Display) -> Self {
        self.help = format!("{} [default: {default}]", self.help);
        self
    }
}

/// A group of flags.
pub trait Flags: Default {
    /// Every flag of the group, with `self`'s values shown as defaults.
    fn help(&self) -> Vec<FlagHelp>;
    /// Consumes the flag `--name` (and its value from `parser`) if it is one
    /// of this group's; Ok(false) when it is not.
    fn take(&mut self, name: &str, parser: &mut Parser) -> Result<bool, lexopt::Error>;
}

/// A command: a group of flags with a name and at most one positional argument.
trait Subcommand: Flags {
    const NAME: &'static str;
    const ABOUT: &'static str;
    /// The positional argument's name and help, for commands that take one.
    const ARGUMENT: Option<(&'static str, &'static str)> = None;
    fn set_argument(&mut self, _value: OsString) {}
}

/// The flag's value, parsed; the error names the flag and the value.
fn value<T: FromStr>(parser: &mut Parser, name: &str) -> Result<T, lexopt::Error>
where
    T::Err: Display,
{
    let raw = parser.value()?;
    let text = raw.into_string().map_err(lexopt::Error::NonUnicodeValue)?;
    text.parse().map_err(|e| lexopt::Error::Custom(format!("invalid value '{text}' for '--{name}': {e}").into()))
}

fn path(parser: &mut Parser) -> Result<PathBuf, lexopt::Error> {
    parser.value().map(PathBuf::from)
}

/// `--log-level`, accepted before or after the command.
#[derive(Default)]
pub struct LogFlags {
    filter: Option<LogFilter>,
}

impl Flags for LogFlags {
    fn help(&self) -> Vec<FlagHelp> {
        vec![option(
            "log-level",
            "FILTER",
            "What to log on stderr [default: RUST_LOG, else edgeloop_agent=info]. A level for every target (off, \
             error, warn, info, debug or trace) and/or comma-separated TARGET=LEVEL pairs, where a target is a \
             module path prefix (tract's crates log too): e.g. `warn,edgeloop_agent=debug`. RUST_LOG takes \
             the same syntax; an unreadable RUST_LOG is ignored with a warning.",
        )]
    }

    fn take(&mut self, name: &str, parser: &mut Parser) -> Result<bool, lexopt::Error> {
        if name != "log-level" {
            return Ok(false);
        }
        self.filter = Some(value(parser, name)?);
        Ok(true)
    }
}

/// How the agent sets up its runtimes.
#[derive(Default)]
pub struct RuntimeArgs {
    pub settings: RuntimeSettings,
}

impl Flags for RuntimeArgs {
    fn help(&self) -> Vec<FlagHelp> {
        vec![
            option(
                "ort-lib",
                "PATH",
                "libonnxruntime.so for the `ort` runtime [default: ORT_DYLIB_PATH, else \
                 .venv/lib/python3*/site-packages/onnxruntime/capi/ in the current directory, the agent's, or a \
                 parent]. Ignored by builds without ORT.",
            ),
            option("ort-optimization", "LEVEL", "ONNX Runtime's graph optimisations: disable, basic, extended or all")
                .default(self.settings.ort_optimization),
        ]
    }

    fn take(&mut self, name: &str, parser: &mut Parser) -> Result<bool, lexopt::Error> {
        match name {
            "ort-lib" => self.settings.ort_lib = Some(path(parser)?),
            "ort-optimization" => self.settings.ort_optimization = value::<OrtOptimization>(parser, name)?,
            _ => return Ok(false),
        }
        Ok(true)
    }
}

/// Where the agent keeps its files and which sensors it reads.
pub struct CommonArgs {
    pub cache_dir: Option<PathBuf>,
    pub device_id: Option<String>,
    pub sysfs_root: PathBuf,
    pub energy_sensor: SensorChoice,
    pub energy_sample_hz: NonZeroU32,
    pub throttle_drop_pct: f64,
    pub runtimes: RuntimeArgs,
}

/// Where `--cache-dir` comes from when it is not given.
const CACHE_DIR_ENV: &str = "EDGELOOP_CACHE_DIR";

/// The library's own defaults, so that a flag left out changes nothing.
fn library_defaults() -> AgentConfig {
    AgentConfig::new(PathBuf::new())
}

impl Default for CommonArgs {
    fn default() -> Self {
        let library = library_defaults();
        CommonArgs {
            cache_dir: None,
            device_id: None,
            sysfs_root: library.roots.sys,
            energy_sensor: library.energy_sensor,
            energy_sample_hz: library.meter.sample_rate_hz,
            throttle_drop_pct: library.monitor.max_freq_drop * 100.0,
            runtimes: RuntimeArgs { settings: library.runtimes },
        }
    }
}

impl CommonArgs {
    /// `--cache-dir`, else EDGELOOP_CACHE_DIR when set and not empty.
    pub fn cache_dir(&self) -> Option<PathBuf> {
        self.cache_dir.clone().or_else(|| std::env::var_os(CACHE_DIR_ENV).filter(|v| !v.is_empty()).map(PathBuf::from))
    }
}

impl Flags for CommonArgs {
    fn help(&self) -> Vec<FlagHelp> {
        let mut flags = vec![
            option(
                "cache-dir",
                "DIR",
                &format!("Where models and the persisted device id live [env: {CACHE_DIR_ENV}]"),
            ),
            option("device-id", "ID", "Name this device explicitly instead of deriving an id from the machine"),
            option(
                "sysfs-root",
                "DIR",
                "Where to read thermal zones, CPU frequencies and power sensors (a copy of /sys for testing)",
            )
            .default(self.sysfs_root.display()),
            option(
                "energy-sensor",
                "SENSOR",
                "Power sensor for `energy: true`: auto (RAPL, then Jetson INA3221, then Android battery), none, \
                 rapl, jetson, jetson:RAIL or android",
            )
            .default(&self.energy_sensor),
            option("energy-sample-hz", "HZ", "Power sensor readings per second while measuring energy")
                .default(self.energy_sample_hz),
            option(
                "throttle-drop-pct",
                "PCT",
                "Flag a measurement as throttled when the CPU frequency drops more than this many percent below \
                 where it started",
            )
            .default(self.throttle_drop_pct),
        ];
        flags.extend(self.runtimes.help());
        flags
    }

    fn take(&mut self, name: &str, parser: &mut Parser) -> Result<bool, lexopt::Error> {
        match name {
            "cache-dir" => self.cache_dir = Some(path(parser)?),
            "device-id" => self.device_id = Some(value(parser, name)?),
            "sysfs-root" => self.sysfs_root = path(parser)?,
            "energy-sensor" => self.energy_sensor = value(parser, name)?,
            "energy-sample-hz" => self.energy_sample_hz = value(parser, name)?,
            "throttle-drop-pct" => self.throttle_drop_pct = value(parser, name)?,
            _ => return self.runtimes.take(name, parser),
        }
        Ok(true)
    }
}

/// `serve`.
pub struct ServeArgs {
    pub listen: SocketAddr,
    pub token_file: Option<PathBuf>,
    pub token: Option<String>,
    pub max_model_mb: u64,
    pub cache_max_mb: u64,
    pub addr_file: Option<PathBuf>,
    pub isolation: IsolationMode,
    pub max_input_mb: u64,
    pub max_nodes: usize,
    /// `None`: three quarters of the device's memory.
    pub max_worker_mb: Option<u64>,
    pub job_timeout_s: u64,
    pub max_queue: usize,
    pub read_timeout_s: u64,
    pub common: CommonArgs,
}

/// `--isolation`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum IsolationMode {
    Process,
    Thread,
}

impl FromStr for IsolationMode {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        match s {
            "process" => Ok(IsolationMode::Process),
            "thread" => Ok(IsolationMode::Thread),
            _ => Err("expected process or thread".into()),
        }
    }
}

impl Display for IsolationMode {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            IsolationMode::Process => "process",
            IsolationMode::Thread => "thread",
        })
    }
}

/// Where `--token` comes from when it is not given.
const TOKEN_ENV: &str = "EDGELOOP_TOKEN";

impl Default for ServeArgs {
    fn default() -> Self {
        let library = library_defaults();
        ServeArgs {
            listen: SocketAddr::from(([127, 0, 0, 1], 7878)),
            token_file: None,
            token: None,
            max_model_mb: library.max_model_bytes >> 20,
            cache_max_mb: library.cache_max_bytes >> 20,
            addr_file: None,
            isolation: IsolationMode::Process,
            max_input_mb: library.limits.max_input_bytes >> 20,
            max_nodes: library.limits.max_nodes,
            max_worker_mb: None,
            job_timeout_s: library.worker.job_timeout.as_secs(),
            max_queue: library.worker.max_queue,
            read_timeout_s: library.read_timeout.as_secs(),
            common: CommonArgs::default(),
        }
    }
}

impl ServeArgs {
    /// `--token`, else EDGELOOP_TOKEN when set and not empty.
    pub fn token(&self) -> Option<String> {
        self.token.clone().or_else(|| std::env::var(TOKEN_ENV).ok().filter(|v| !v.is_empty()))
    }
}

impl Flags for ServeArgs {
    fn help(&self) -> Vec<FlagHelp> {
        let mut flags = vec![
            option("listen", "ADDR", "Address to listen on. A non-loopback address requires a token.")
                .default(self.listen),
            option(
                "token-file",
                "FILE",
                "File holding the bearer token clients must present. Takes precedence over --token and \
                 EDGELOOP_TOKEN.",
            ),
            option(
                "token",
                "TOKEN",
                &format!(
                    "Bearer token (prefer --token-file: environment variables leak into process listings less, \
                     files not at all) [env: {TOKEN_ENV}]"
                ),
            ),
            option("max-model-mb", "MB", "Largest model accepted by PUT /v1/models, in MB").default(self.max_model_mb),
            option("cache-max-mb", "MB", "Models beyond this total size are evicted, least recently used first, in MB")
                .default(self.cache_max_mb),
            option("addr-file", "FILE", "Write the bound address (useful with port 0) to this file once listening"),
            option(
                "isolation",
                "MODE",
                "Where measurements run: process (a supervised child process; a crash, an out-of-memory abort or a \
                 hang costs one request) or thread (in the agent, for platforms that cannot re-execute it)",
            )
            .default(self.isolation),
            option("max-input-mb", "MB", "Largest total size of a model's inputs, checked before they are made")
                .default(self.max_input_mb),
            option("max-nodes", "N", "Most nodes a model may have, subgraphs included").default(self.max_nodes),
            option(
                "max-worker-mb",
                "MB",
                "Address-space limit of the measuring process (setrlimit); a model that needs more is answered 422 \
                 [default: three quarters of this device's memory]",
            ),
            option(
                "job-timeout-s",
                "S",
                "Wall-clock cap of one measurement, load included; past it the worker is \
                 killed and the request answered 504",
            )
            .default(self.job_timeout_s),
            option("max-queue", "N", "Measurements allowed to wait; more are answered 503 busy with Retry-After")
                .default(self.max_queue),
            option(
                "read-timeout-s",
                "S",
                "Longest wait for the next bytes of a request body (the whole body gets ten times this); slower \
                 clients are answered 408",
            )
            .default(self.read_timeout_s),
        ];
        flags.extend(self.common.help());
        flags
    }

    fn take(&mut self, name: &str, parser: &mut Parser) -> Result<bool, lexopt::Error> {
        match name {
            "listen" => self.listen = value(parser, name)?,
            "token-file" => self.token_file = Some(path(parser)?),
            "token" => self.token = Some(value(parser, name)?),
            "max-model-mb" => self.max_model_mb = value(parser, name)?,
            "cache-max-mb" => self.cache_max_mb = value(parser, name)?,
            "addr-file" => self.addr_file = Some(path(parser)?),
            "isolation" => self.isolation = value(parser, name)?,
            "max-input-mb" => self.max_input_mb = value(parser, name)?,
            "max-nodes" => self.max_nodes = value(parser, name)?,
            "max-worker-mb" => self.max_worker_mb = Some(value(parser, name)?),
            "job-timeout-s" => self.job_timeout_s = value(parser, name)?,
            "max-queue" => self.max_queue = value(parser, name)?,
            "read-timeout-s" => self.read_timeout_s = value(parser, name)?,
            _ => return self.common.take(name, parser),
        }
        Ok(true)
    }
}

impl Subcommand for ServeArgs {
    const NAME: &'static str = "serve";
    const ABOUT: &'static str = "Serve the measurement API (DESIGN §5) over HTTP";
}

/// The shared measurement flags (`edgeloop measure` documents them the same way).
impl Flags for MeasureFlags {
    fn help(&self) -> Vec<FlagHelp> {
        vec![
            option("runtime", "NAME", help::RUNTIME).default(&self.runtime),
            option("threads", "N", help::THREADS).default(self.threads),
            option("warmup", "N", help::WARMUP).default(self.warmup),
            option("runs", "N", help::RUNS).default(self.runs),
            option("min-duration-ms", "MS", help::MIN_DURATION_MS).default(self.min_duration_ms),
            option("max-duration-ms", "MS", help::MAX_DURATION_MS).default(self.max_duration_ms),
            option("seed", "N", help::SEED).default(self.seed),
            option("cpus", "LIST", help::CPUS),
            switch("energy", help::ENERGY),
            switch("profile", help::PROFILE),
            option("cooldown-c", "CELSIUS", help::COOLDOWN_C),
        ]
    }

    fn take(&mut self, name: &str, parser: &mut Parser) -> Result<bool, lexopt::Error> {
        match name {
            "runtime" => self.runtime = value(parser, name)?,
            "threads" => self.threads = value(parser, name)?,
            "warmup" => self.warmup = value(parser, name)?,
            "runs" => self.runs = value(parser, name)?,
            "min-duration-ms" => self.min_duration_ms = value(parser, name)?,
            "max-duration-ms" => self.max_duration_ms = value(parser, name)?,
            "seed" => self.seed = value(parser, name)?,
            "cpus" => self.cpus = Some(value(parser, name)?),
            "energy" => self.energy = true,
            "profile" => self.profile = true,
            "cooldown-c" => self.cooldown_c = Some(value(parser, name)?),
            _ => return Ok(false),
        }
        Ok(true)
    }
}

/// `--json` of bench and info.
#[derive(Default)]
pub struct JsonFlag {
    pub json: bool,
}

impl Flags for JsonFlag {
    fn help(&self) -> Vec<FlagHelp> {
        vec![switch("json", "Print JSON instead of a table")]
    }

    fn take(&mut self, name: &str, _parser: &mut Parser) -> Result<bool, lexopt::Error> {
        self.json |= name == "json";
        Ok(name == "json")
    }
}

/// `bench`.
#[derive(Default)]
pub struct BenchArgs {
    pub model: PathBuf,
    pub measure: MeasureFlags,
    pub output: JsonFlag,
    pub common: CommonArgs,
}

impl Flags for BenchArgs {
    fn help(&self) -> Vec<FlagHelp> {
        [self.measure.help(), self.output.help(), self.common.help()].concat()
    }

    fn take(&mut self, name: &str, parser: &mut Parser) -> Result<bool, lexopt::Error> {
        Ok(self.measure.take(name, parser)? || self.output.take(name, parser)? || self.common.take(name, parser)?)
    }
}

impl Subcommand for BenchArgs {
    const NAME: &'static str = "bench";
    const ABOUT: &'static str = "Measure a model file locally with the same engine the server uses";
    const ARGUMENT: Option<(&'static str, &'static str)> = Some(("MODEL", "The ONNX model to measure"));

    fn set_argument(&mut self, value: OsString) {
        self.model = value.into();
    }
}

/// `info`.
#[derive(Default)]
pub struct InfoArgs {
    pub output: JsonFlag,
    pub common: CommonArgs,
}

impl Flags for InfoArgs {
    fn help(&self) -> Vec<FlagHelp> {
        [self.output.help(), self.common.help()].concat()
    }

    fn take(&mut self, name: &str, parser: &mut Parser) -> Result<bool, lexopt::Error> {
        Ok(self.output.take(name, parser)? || self.common.take(name, parser)?)
    }
}

impl Subcommand for InfoArgs {
    const NAME: &'static str = "info";
    const ABOUT: &'static str = "Print this device's descriptor (what GET /v1/info answers)";
}

/// `compare`.
pub struct CompareArgs {
    pub model: PathBuf,
    pub runtimes: Vec<String>,
    pub seed: u64,
    pub threads: usize,
    pub tolerance: f64,
    pub runtime_args: RuntimeArgs,
}

impl Default for CompareArgs {
    fn default() -> Self {
        CompareArgs {
            model: PathBuf::new(),
            runtimes: vec!["tract".into(), "ort".into()],
            seed: 0,
            threads: 1,
            tolerance: 1e-4,
            runtime_args: RuntimeArgs::default(),
        }
    }
}

impl Flags for CompareArgs {
    fn help(&self) -> Vec<FlagHelp> {
        let mut flags = vec![
            option("runtimes", "LIST", "Runtimes to run it in, separated by commas; the first is the reference")
                .default(self.runtimes.join(",")),
            option("seed", "N", "Seed of the random inputs").default(self.seed),
            option("threads", "N", "Threads each runtime may use").default(self.threads),
            option("tolerance", "ABS", "Largest absolute difference allowed in any output element")
                .default(self.tolerance),
        ];
        flags.extend(self.runtime_args.help());
        flags
    }

    fn take(&mut self, name: &str, parser: &mut Parser) -> Result<bool, lexopt::Error> {
        match name {
            "runtimes" => {
                let list: String = value(parser, name)?;
                self.runtimes = list.split(',').map(|r| r.trim().to_string()).filter(|r| !r.is_empty()).collect();
                if self.runtimes.is_empty() {
                    return Err(lexopt::Error::Custom("--runtimes names no runtime".into()));
                }
            }
            "seed" => self.seed = value(parser, name)?,
            "threads" => self.threads = value(parser, name)?,
            "tolerance" => self.tolerance = value(parser, name)?,
            _ => return self.runtime_args.take(name, parser),
        }
        Ok(true)
    }
}

impl Subcommand for CompareArgs {
    const NAME: &'static str = "compare";
    const ABOUT: &'static str = "Run a model once in each runtime on the same seeded inputs and compare the \
                                 outputs; exits non-zero when any differs by more than --tolerance";
    const ARGUMENT: Option<(&'static str, &'static str)> = Some(("MODEL", "The ONNX model to run"));

    fn set_argument(&mut self, value: OsString) {
        self.model = value.into();
    }
}

/// Help lines are wrapped to this many columns.
const WIDTH: usize = 100;
/// Help texts start in this column when the flag fits before it.
const HELP_COLUMN: usize = 32;

fn top_help() -> String {
    let mut text = format!("{ABOUT}\n\nUsage: {BIN} [OPTIONS] <COMMAND>\n\nCommands:\n");
    for (name, about, _) in COMMANDS {
        push_entry(&mut text, name, about);
    }
    push_entry(&mut text, "help", "Print this message or the help of the given command");
    text.push_str("\nOptions:\n");
    push_flags(&mut text, &LogFlags::default().help());
    push_entry(&mut text, "-h, --help", "Print help");
    push_entry(&mut text, "-V, --version", "Print version");
    text
}

fn command_help<C: Subcommand>() -> String {
    let argument = C::ARGUMENT.map(|(name, _)| format!(" <{name}>")).unwrap_or_default();
    let mut text = format!("{}\n\nUsage: {BIN} {} [OPTIONS]{argument}\n", C::ABOUT, C::NAME);
    if let Some((name, help)) = C::ARGUMENT {
        text.push_str("\nArguments:\n");
        push_entry(&mut text, &format!("<{name}>"), help);
    }
    text.push_str("\nOptions:\n");
    push_flags(&mut text, &C::default().help());
    push_flags(&mut text, &LogFlags::default().help());
    push_entry(&mut text, "-h, --help", "Print help");
    text
}

fn push_flags(text: &mut String, flags: &[FlagHelp]) {
    for flag in flags {
        let value = flag.value.map(|v| format!(" <{v}>")).unwrap_or_default();
        push_entry(text, &format!("    --{}{value}", flag.name), &flag.help);
    }
}

/// One `  name   help` entry, the help wrapped in its column (on the
/// next line when the name reaches into it).
fn push_entry(text: &mut String, name: &str, help: &str) {
    let name = format!("  {name}");
    let mut lines = wrap(help, WIDTH - HELP_COLUMN).into_iter();
    if name.chars().count() + 2 <= HELP_COLUMN {
        let first = lines.next().unwrap_or_default();
        text.push_str(format!("{name:<HELP_COLUMN$}{first}").trim_end());
    } else {
        text.push_str(&name);
    }
    text.push('\n');
    for line in lines {
        text.push_str(&format!("{:HELP_COLUMN$}{line}\n", ""));
    }
}

/// `text`'s words in lines of at most `width` characters (longer words alone).
fn wrap(text: &str, width: usize) -> Vec<String> {
    let mut lines = Vec::new();
    let mut line = String::new();
    for word in text.split_whitespace() {
        if !line.is_empty() && line.chars().count() + 1 + word.chars().count() > width {
            lines.push(std::mem::take(&mut line));
        }
        if !line.is_empty() {
            line.push(' ');
        }
        line.push_str(word);
    }
    lines.push(line);
    lines
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse_line(line: &str) -> Result<Cli, Exit> {
        parse(line.split_whitespace().map(OsString::from))
    }

    fn usage_error(line: &str) -> String {
        match parse_line(line) {
            Err(e @ Exit::Usage { .. }) => e.to_string(),
            Err(Exit::Print(text)) => panic!("`{line}` printed help:\n{text}"),
            Ok(_) => panic!("`{line}` parsed"),
        }
    }

    fn printed(line: &str) -> String {
        match parse_line(line) {
            Err(Exit::Print(text)) => text,
            Err(e) => panic!("`{line}`: {e}"),
            Ok(_) => panic!("`{line}` ran a command"),
        }
    }

    #[test]
    fn serve_takes_every_flag_in_both_spellings() {
        let cli = parse_line(
            "--log-level warn serve --listen=0.0.0.0:9000 --token-file t --token abc --max-model-mb 8 \
             --cache-max-mb=16 --addr-file a --cache-dir c --device-id phone --sysfs-root /tmp/sys \
             --energy-sensor jetson:VDD_IN --energy-sample-hz 50 --throttle-drop-pct 5 --ort-lib lib.so \
             --ort-optimization basic --isolation=thread --max-input-mb 64 --max-nodes 900 --max-worker-mb 512 \
             --job-timeout-s 9 --max-queue 3 --read-timeout-s 2",
        )
        .unwrap_or_else(|e| panic!("{e}"));
        assert!(cli.log_level.is_some());
        let Command::Serve(s) = cli.command else { panic!("not serve") };
        assert_eq!(
            (s.isolation, s.max_input_mb, s.max_nodes, s.max_worker_mb),
            (IsolationMode::Thread, 64, 900, Some(512))
        );
        assert_eq!((s.job_timeout_s, s.max_queue, s.read_timeout_s), (9, 3, 2));
        assert_eq!(s.listen, "0.0.0.0:9000".parse().unwrap());
        assert_eq!((s.token_file.unwrap(), s.token.unwrap()), (PathBuf::from("t"), "abc".to_string()));
        assert_eq!((s.max_model_mb, s.cache_max_mb, s.addr_file.unwrap()), (8, 16, PathBuf::from("a")));
        let c = s.common;
        assert_eq!((c.cache_dir.unwrap(), c.device_id.unwrap()), (PathBuf::from("c"), "phone".to_string()));
        assert_eq!(c.sysfs_root, PathBuf::from("/tmp/sys"));
        assert_eq!(c.energy_sensor, SensorChoice::Jetson(Some("VDD_IN".into())));
        assert_eq!((c.energy_sample_hz.get(), c.throttle_drop_pct), (50, 5.0));
        assert_eq!(c.runtimes.settings.ort_lib, Some(PathBuf::from("lib.so")));
        assert_eq!(c.runtimes.settings.ort_optimization, OrtOptimization::Basic);
    }

    #[test]
    fn defaults_match_the_help() {
        let Command::Serve(s) = parse_line("serve").unwrap_or_else(|e| panic!("{e}")).command else { panic!() };
        assert_eq!(s.listen, "127.0.0.1:7878".parse().unwrap());
        assert_eq!(s.common.energy_sensor, SensorChoice::Auto);
        let help = printed("serve --help");
        assert!(help.contains("[default: 127.0.0.1:7878]") && help.contains("[default: auto]"), "{help}");
        assert!(help.contains("[env: EDGELOOP_TOKEN]") && help.contains("--log-level <FILTER>"), "{help}");
        // The library's defaults, shown as they are (wrapping may split them).
        let help = help.split_whitespace().collect::<Vec<_>>().join(" ");
        for default in ["[default: 256]", "[default: 4096]", "[default: /sys]", "[default: 200]", "[default: 10]"] {
            assert!(help.contains(default), "{default} missing:\n{help}");
        }
    }

    #[test]
    fn bench_and_compare_take_a_model_and_measure_flags() {
        let cli = parse_line("bench m.onnx --runs 7 --cpus 0-1 --energy --json --log-level debug")
            .unwrap_or_else(|e| panic!("{e}"));
        let Command::Bench(b) = cli.command else { panic!("not bench") };
        assert_eq!(b.model, PathBuf::from("m.onnx"));
        assert_eq!((b.measure.runs, b.measure.cpus.unwrap().0, b.measure.energy), (7, vec![0, 1], true));
        assert!(b.output.json && !b.measure.profile);
        assert_eq!(b.measure.threads, MeasureFlags::default().threads);
        let Command::Compare(c) = parse_line("compare --runtimes tract,tract m.onnx").unwrap().command else {
            panic!("not compare")
        };
        assert_eq!((c.model, c.runtimes, c.tolerance), (PathBuf::from("m.onnx"), vec!["tract".into(); 2], 1e-4));
    }

    #[test]
    fn mistakes_name_what_was_wrong() {
        let e = usage_error("bench");
        assert!(e.contains("<MODEL> was not given") && e.contains("edgeloop-agent bench --help"), "{e}");
        let e = usage_error("bench a.onnx b.onnx");
        assert!(e.contains("b.onnx"), "{e}");
        let e = usage_error("serve --listne 1.2.3.4:5");
        assert!(e.contains("--listne"), "{e}");
        let e = usage_error("serve --listen localhost");
        assert!(e.contains("invalid value 'localhost' for '--listen'"), "{e}");
        let e = usage_error("info --energy-sensor solar");
        assert!(e.contains("unknown energy sensor `solar`"), "{e}");
        let e = usage_error("serve --listen");
        assert!(e.contains("--listen"), "{e}");
        let e = usage_error("info --json=yes");
        assert!(e.contains("--json"), "{e}");
        let e = usage_error("--log-level agent=loud info");
        assert!(e.contains("'--log-level'") && e.contains("TARGET=LEVEL"), "{e}");
        assert!(usage_error("measure").contains("unknown command 'measure'"));
        assert!(usage_error("").contains("a command is required"));
    }

    #[test]
    fn every_listed_flag_is_accepted() {
        fn check<C: Subcommand>() {
            for flag in C::default().help() {
                let mut args = C::default();
                let sample = if flag.value.is_some() { vec!["1"] } else { vec![] };
                let mut parser = Parser::from_args(sample);
                // Ok(true), or a value error: either way the flag is known.
                assert!(!matches!(args.take(flag.name, &mut parser), Ok(false)), "--{} of {}", flag.name, C::NAME);
            }
        }
        check::<ServeArgs>();
        check::<BenchArgs>();
        check::<InfoArgs>();
        check::<CompareArgs>();
    }

    #[test]
    fn help_and_version_print() {
        let top = printed("--help");
        for command in ["serve", "bench", "info", "compare"] {
            assert!(top.contains(&format!("\n  {command} ")), "{top}");
            assert_eq!(printed(&format!("help {command}")), printed(&format!("{command} -h")));
        }
        assert!(printed("compare --help").contains("<MODEL>"));
        assert!(printed("-V").starts_with("edgeloop-agent "));
        for line in printed("bench --help").lines() {
            assert!(line.chars().count() <= WIDTH, "too wide: {line}");
        }
    }
}
