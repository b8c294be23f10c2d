//! A shared device farm on NATS JetStream (design: FARM.md).
//!
//! Hosts publish measurement jobs to one work-queue stream; `edgeloop farm
//! worker` processes pull them, one at a time per agent, for their device
//! class; results land in a key-value bucket that doubles as a cache shared
//! by every search and host; model bytes travel through an object store.
//! The broker keeps jobs through host, worker and broker restarts:
//!
//! - stream `FARM_JOBS`, subjects `farm.job.<class>.<prio>.<jobkey>`, one
//!   message per subject, publishes de-duplicated by job key;
//! - durable pull consumers `W_<class>_<prio>` (the workers');
//! - KV `farm-results` (`<class>.<jobkey>` → [`FarmResult`], first writer
//!   wins), KV `farm-devices` (`<class>.<device>` → [`DeviceRecord`],
//!   heartbeats expiring after 30 s), object store `farm-models` (sha256 → ONNX).
//!
//! Only features of nats-server 2.9 (Debian 12's) are used.

mod fleet;
pub mod server;
pub mod status;
pub mod worker;

use std::path::PathBuf;
use std::time::Duration;

use async_nats::jetstream::{self, kv, object_store, stream};
use edgeloop_api::DeviceInfo;
pub use fleet::FarmFleet;
use serde::{Deserialize, Serialize};
use sha2::{Digest as _, Sha256};

use crate::measure::{Checked, Procedure};

pub const STREAM: &str = "FARM_JOBS";
pub const RESULTS: &str = "farm-results";
pub const DEVICES: &str = "farm-devices";
pub const MODELS: &str = "farm-models";

/// How long a device stays listed after its worker's last heartbeat.
pub const DEVICE_TTL: Duration = Duration::from_secs(30);

/// How often a worker says that its devices are alive.
pub const HEARTBEAT: Duration = Duration::from_secs(10);

/// How long the broker keeps a job nobody took.
const JOB_MAX_AGE: Duration = Duration::from_secs(24 * 3600);

/// A job published again within this window is the same job.
const DUPLICATE_WINDOW: Duration = Duration::from_secs(600);

/// How long models stay in the object store.
const MODEL_MAX_AGE: Duration = Duration::from_secs(7 * 24 * 3600);

type BoxError = Box<dyn std::error::Error + Send + Sync>;

#[derive(Debug, thiserror::Error)]
pub enum FarmError {
    #[error("cannot connect to the farm at {url}")]
    Connect {
        url: String,
        #[source]
        source: BoxError,
    },
    #[error("the farm's broker failed: {what}")]
    Broker {
        what: String,
        #[source]
        source: BoxError,
    },
    #[error("'{0}' is not a device class name: use lowercase letters, digits, '-' and '_'")]
    ClassName(String),
    #[error(
        "no device of class '{class}' is live in the farm at {url}; \
         start `edgeloop farm worker --nats {url} --class {class} --device URL`"
    )]
    NoDevices { class: String, url: String },
    #[error("cannot read {}", path.display())]
    Credentials {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("the agent at {url} is {found}, but class '{class}' is {registered}; a class holds one kind of device")]
    Mixed { url: String, class: String, found: String, registered: String },
}

/// What a broker call was doing when it failed.
fn broker<E: Into<BoxError>>(what: impl Into<String>) -> impl FnOnce(E) -> FarmError {
    let what = what.into();
    move |source| FarmError::Broker { what, source: source.into() }
}

/// Which jobs workers take first.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, clap::ValueEnum)]
#[serde(rename_all = "lowercase")]
pub enum Priority {
    /// Searches, quantization, training: someone waits.
    Hi,
    /// Table builds and validation: batch work.
    Lo,
}

impl Priority {
    pub const ALL: [Priority; 2] = [Priority::Hi, Priority::Lo];

    fn name(self) -> &'static str {
        match self {
            Priority::Hi => "hi",
            Priority::Lo => "lo",
        }
    }
}

/// How to reach the farm's broker.
#[derive(Debug, Clone)]
pub struct FarmAddress {
    /// `nats://host:port` (`tls://` requires TLS).
    pub url: String,
    /// A file holding the user's nkey seed (`SU…`), as `edgeloop farm up` writes.
    pub nkey_file: Option<PathBuf>,
    /// CA certificate to trust for the broker's TLS certificate.
    pub ca_file: Option<PathBuf>,
}

/// A device class of a farm: where hosts send their jobs.
#[derive(Debug, Clone)]
pub struct FarmTarget {
    pub address: FarmAddress,
    pub class: String,
    pub priority: Priority,
}

/// `name` if it can be a device class (it goes into subjects, consumer names and keys).
pub fn class_name(name: &str) -> Result<&str, FarmError> {
    let ok = !name.is_empty()
        && name.len() <= 64
        && name.bytes().all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-' || b == b'_');
    if ok { Ok(name) } else { Err(FarmError::ClassName(name.to_string())) }
}

/// The subject of a job.
fn job_subject(class: &str, priority: Priority, jobkey: &str) -> String {
    format!("farm.job.{class}.{}.{jobkey}", priority.name())
}

/// The durable consumer the workers of `class` pull `priority` jobs from.
pub fn consumer_name(class: &str, priority: Priority) -> String {
    format!("W_{class}_{}", priority.name())
}

/// Where a job's result is kept.
pub fn result_key(class: &str, jobkey: &str) -> String {
    format!("{class}.{jobkey}")
}

/// Where a device's heartbeat is kept (KV keys admit `[-/_=.a-zA-Z0-9]`).
fn device_key(class: &str, device_id: &str) -> String {
    let id: String =
        device_id.chars().map(|c| if c.is_ascii_alphanumeric() || "-_=".contains(c) { c } else { '_' }).collect();
    format!("{class}.{id}")
}

/// A job's identity: the same model measured the same way on the same
/// class is the same job, whoever asks. `nonce` makes a job that must be
/// measured afresh (a final model, a table row) one of its own.
pub fn jobkey(class: &str, model_sha256: &str, procedure: &Procedure, nonce: Option<&str>) -> String {
    let mut hash = Sha256::new();
    for part in [
        "edgeloop-job-v1",
        class,
        model_sha256,
        &serde_json::to_string(procedure).expect("a procedure serializes"),
        nonce.unwrap_or(""),
    ] {
        hash.update(part.as_bytes());
        hash.update([0]);
    }
    hex::encode(&hash.finalize()[..16])
}

/// Models up to this size travel inside their job (base64, within
/// [`JOB_MAX_BYTES`]), which saves the object store's round trips at both
/// ends: most of the farm's overhead on a small model. Search candidates
/// of the CIFAR-sized spaces are this small; ImageNet-sized ones are not.
const INLINE_MAX: usize = 256 * 1024;

/// The largest job the stream takes (under nats-server's default 1 MiB payload limit).
const JOB_MAX_BYTES: i32 = 512 * 1024;

/// `model` as its job carries it, when small enough.
fn inline(model: &[u8]) -> Option<String> {
    use base64::Engine as _;
    (model.len() <= INLINE_MAX).then(|| base64::engine::general_purpose::STANDARD.encode(model))
}

/// A job as the stream carries it.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct FarmJob {
    pub v: u32,
    pub jobkey: String,
    pub class: String,
    /// sha256 of the model.
    pub model: String,
    /// The model itself (base64) when small, else it is in the object store.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub inline: Option<String>,
    /// How errors name it.
    pub label: String,
    pub procedure: Procedure,
    pub expected_min: Option<f64>,
    /// Where the worker says that the result is written, with a copy of
    /// it (best effort: the result bucket is the truth).
    pub reply: String,
}

/// What a worker sends to a job's `reply` once it kept the job's result.
#[derive(Debug, Serialize, Deserialize)]
struct Written {
    jobkey: String,
    result: FarmResult,
}

/// What the farm keeps for a job.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "status", rename_all = "snake_case")]
pub enum FarmResult {
    Measured {
        checked: Box<Checked>,
        device_id: String,
        /// The worker that measured it, and the delivery it was.
        worker: String,
        delivery: i64,
        measured_at: u64,
    },
    /// The model's fault (the agent refused it): measuring it again elsewhere cannot help.
    Refused { reason: String, worker: String },
    /// Failed on every device it was tried on, for reasons not the model's.
    GaveUp { reason: String, deliveries: i64 },
}

/// A device as its worker registers it.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct DeviceRecord {
    pub class: String,
    pub info: DeviceInfo,
    /// `measure::class_fingerprint` of `info`: every device of a class has the same.
    pub fingerprint: String,
    pub agent_url: String,
    pub worker: String,
}

/// A connection to a farm, its stream and buckets.
#[derive(Clone)]
pub struct Farm {
    pub url: String,
    client: async_nats::Client,
    js: jetstream::Context,
    results: kv::Store,
    devices: kv::Store,
    models: object_store::ObjectStore,
}

fn now_ms() -> u64 {
    std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map_or(0, |d| d.as_millis() as u64)
}

impl Farm {
    /// Connects and opens (creating on first use) the farm's stream and buckets.
    pub async fn connect(address: &FarmAddress, name: &str) -> Result<Farm, FarmError> {
        let url = address.url.clone();
        let connect_error = |source: BoxError| FarmError::Connect { url: url.clone(), source };
        let mut options = async_nats::ConnectOptions::new()
            .name(name)
            .connection_timeout(Duration::from_secs(5))
            // Keep reconnecting through a broker restart (the jobs survive it).
            .max_reconnects(None);
        if let Some(path) = &address.nkey_file {
            let seed = std::fs::read_to_string(path)
                .map_err(|source| FarmError::Credentials { path: path.clone(), source })?;
            options = options.nkey(seed.trim().to_string());
        }
        if let Some(ca) = &address.ca_file {
            options = options.add_root_certificates(ca.clone()).require_tls(true);
        }
        let client = options.connect(&address.url).await.map_err(|e| connect_error(e.into()))?;
        let js = jetstream::new(client.clone());
        js.get_or_create_stream(stream::Config {
            name: STREAM.into(),
            subjects: vec!["farm.job.>".into()],
            retention: stream::RetentionPolicy::WorkQueue,
            storage: stream::StorageType::File,
            discard: stream::DiscardPolicy::New,
            max_messages_per_subject: 1,
            discard_new_per_subject: true,
            duplicate_window: DUPLICATE_WINDOW,
            max_age: JOB_MAX_AGE,
            max_message_size: JOB_MAX_BYTES,
            ..Default::default()
        })
        .await
        .map_err(broker(format!("opening stream {STREAM}")))?;
        let results = open_kv(&js, RESULTS, Duration::ZERO).await?;
        let devices = open_kv(&js, DEVICES, DEVICE_TTL).await?;
        let models = match js.get_object_store(MODELS).await {
            Ok(store) => store,
            Err(_) => js
                .create_object_store(object_store::Config {
                    bucket: MODELS.into(),
                    max_age: MODEL_MAX_AGE,
                    storage: stream::StorageType::File,
                    ..Default::default()
                })
                .await
                .map_err(broker(format!("opening object store {MODELS}")))?,
        };
        Ok(Farm { url: address.url.clone(), client, js, results, devices, models })
    }

    /// What the farm holds for `jobkey` of `class`.
    pub async fn result(&self, class: &str, jobkey: &str) -> Result<Option<FarmResult>, FarmError> {
        let key = result_key(class, jobkey);
        let Some(bytes) = self.results.get(&key).await.map_err(broker(format!("reading result {key}")))? else {
            return Ok(None);
        };
        serde_json::from_slice(&bytes).map(Some).map_err(broker(format!("decoding result {key}")))
    }

    /// Keeps `result` unless one is kept already (the first writer wins; a
    /// job may run twice, its result is written once).
    pub async fn keep_result(&self, class: &str, jobkey: &str, result: &FarmResult) -> Result<bool, FarmError> {
        let key = result_key(class, jobkey);
        let bytes = serde_json::to_vec(result).expect("a result serializes");
        match self.results.create(&key, bytes.into()).await {
            Ok(_) => Ok(true),
            Err(e) if e.kind() == kv::CreateErrorKind::AlreadyExists => Ok(false),
            Err(e) => Err(broker(format!("writing result {key}"))(e)),
        }
    }

    /// The devices of `class` whose workers sent a heartbeat lately.
    pub async fn devices(&self, class: Option<&str>) -> Result<Vec<DeviceRecord>, FarmError> {
        use futures_util::TryStreamExt as _;
        let keys: Vec<String> = self
            .devices
            .keys()
            .await
            .map_err(broker("listing devices"))?
            .try_collect()
            .await
            .map_err(broker("listing devices"))?;
        let mut records = Vec::new();
        for key in keys.iter().filter(|k| class.is_none_or(|c| k.starts_with(&format!("{c}.")))) {
            if let Some(bytes) = self.devices.get(key).await.map_err(broker(format!("reading device {key}")))?
                && let Ok(record) = serde_json::from_slice::<DeviceRecord>(&bytes)
            {
                records.push(record);
            }
        }
        records.sort_by(|a, b| a.info.device_id.cmp(&b.info.device_id));
        Ok(records)
    }

    async fn register(&self, class: &str, record: &DeviceRecord) -> Result<(), FarmError> {
        let key = device_key(class, &record.info.device_id);
        let bytes = serde_json::to_vec(record).expect("a record serializes");
        self.devices.put(&key, bytes.into()).await.map_err(broker(format!("registering device {key}")))?;
        Ok(())
    }

    async fn deregister(&self, class: &str, device_id: &str) -> Result<(), FarmError> {
        let key = device_key(class, device_id);
        self.devices.delete(&key).await.map_err(broker(format!("removing device {key}")))
    }

    /// Stores `bytes` (whose sha256 is `sha`) unless the farm has it.
    async fn put_model(&self, sha: &str, bytes: &[u8]) -> Result<(), FarmError> {
        if self.models.info(sha).await.is_ok() {
            return Ok(());
        }
        self.models.put(sha, &mut &bytes[..]).await.map_err(broker(format!("storing model {sha}")))?;
        Ok(())
    }

    /// `job`'s model, from the job or the object store; `Err` says why
    /// there is none (it expired from the store, or it is not the model
    /// the job names).
    async fn job_model(&self, job: &FarmJob) -> Result<Result<Vec<u8>, String>, FarmError> {
        use base64::Engine as _;
        let sha = &job.model;
        let bytes = match &job.inline {
            Some(text) => match base64::engine::general_purpose::STANDARD.decode(text) {
                Ok(bytes) => bytes,
                Err(e) => return Ok(Err(format!("the job's model is not base64: {e}"))),
            },
            None => {
                use tokio::io::AsyncReadExt as _;
                let mut object = match self.models.get(sha).await {
                    Ok(object) => object,
                    Err(e) if e.kind() == object_store::GetErrorKind::NotFound => {
                        return Ok(Err(format!("the farm no longer holds model {sha}")));
                    }
                    Err(e) => return Err(broker(format!("fetching model {sha}"))(e)),
                };
                let mut bytes = Vec::new();
                object.read_to_end(&mut bytes).await.map_err(broker(format!("fetching model {sha}")))?;
                bytes
            }
        };
        if crate::client::sha256_hex(&bytes) != *sha {
            return Ok(Err(format!("the job's model is not model {sha} (its sha256 differs)")));
        }
        Ok(Ok(bytes))
    }

    async fn jobs(&self) -> Result<stream::Stream, FarmError> {
        self.js.get_stream(STREAM).await.map_err(broker(format!("opening stream {STREAM}")))
    }
}

/// Opens the bucket of `bucket`, making its stream first when missing.
/// The stream is made here, as a KV's stream (what async-nats's
/// `create_key_value` would make): that method first asks for the
/// account's info, whose nats-server 2.9 answer async-nats 0.52 cannot read.
async fn open_kv(js: &jetstream::Context, bucket: &str, max_age: Duration) -> Result<kv::Store, FarmError> {
    js.get_or_create_stream(stream::Config {
        name: format!("KV_{bucket}"),
        subjects: vec![format!("$KV.{bucket}.>")],
        max_messages_per_subject: 1,
        max_age,
        storage: stream::StorageType::File,
        allow_rollup: true,
        deny_delete: true,
        allow_direct: true,
        discard: stream::DiscardPolicy::New,
        num_replicas: 1,
        duplicate_window: if max_age.is_zero() {
            Duration::from_secs(120)
        } else {
            max_age.min(Duration::from_secs(120))
        },
        ..Default::default()
    })
    .await
    .map_err(broker(format!("opening bucket {bucket}")))?;
    js.get_key_value(bucket).await.map_err(broker(format!("opening bucket {bucket}")))
}
