//! The devices a search measures on: agents of one device class sharing the
//! work, one measurement in flight per agent, every result cached.

use std::collections::VecDeque;
use std::sync::Mutex;

use edgeloop_api::{DeviceInfo, MeasureRequest};
use edgeloop_space::Arch;
use futures_util::future::join_all;

use crate::cache::{CacheError, CachedMeasurement, MeasurementCache};
use crate::client::{AgentClient, ClientError};
use crate::search::hygiene;

#[derive(Debug, thiserror::Error)]
pub enum PoolError {
    #[error("cannot reach the agent at {url}")]
    Info {
        url: String,
        #[source]
        source: ClientError,
    },
    #[error(
        "the agents are not one device class: {first_url} is {first} and {url} is {other}; \
         a search pools devices of one kind only"
    )]
    Mixed { first_url: String, first: String, url: String, other: String },
    #[error("measuring arch {arch} on {url}")]
    Measure {
        arch: String,
        url: String,
        #[source]
        source: ClientError,
    },
    #[error(transparent)]
    Cache(#[from] CacheError),
}

/// An architecture to measure: its ONNX bytes (empty when the cache has
/// it) and the table's prediction of its fastest run (see `hygiene`).
pub struct ArchModel {
    pub arch: Arch,
    pub bytes: Vec<u8>,
    pub expected_min: Option<f64>,
}

pub struct DevicePool {
    agents: Vec<(AgentClient, DeviceInfo)>,
    device_ids: Vec<String>,
    /// The device's usual median/fastest spread (see `hygiene`).
    spread: f64,
    pub cache: MeasurementCache,
    /// Archs measured on a device by this process, and answered from the cache.
    pub measured: usize,
    pub cache_hits: usize,
}

/// What makes two devices interchangeable for measuring.
fn class(info: &DeviceInfo) -> String {
    format!("{} {} ({} cores)", info.arch, info.cpu_model, info.logical_cores)
}

impl DevicePool {
    /// Asks every agent what it is; refuses a mix of device classes.
    pub async fn connect(clients: Vec<AgentClient>, cache: MeasurementCache) -> Result<DevicePool, PoolError> {
        let mut agents: Vec<(AgentClient, DeviceInfo)> = Vec::new();
        for client in clients {
            let url = client.base_url().to_string();
            let info = client.info().await.map_err(|source| PoolError::Info { url: url.clone(), source })?;
            if let Some((first, first_info)) = agents.first()
                && class(first_info) != class(&info)
            {
                return Err(PoolError::Mixed {
                    first_url: first.base_url().to_string(),
                    first: class(first_info),
                    url,
                    other: class(&info),
                });
            }
            agents.push((client, info));
        }
        let device_ids = agents.iter().map(|(_, i)| i.device_id.clone()).collect();
        Ok(DevicePool { agents, device_ids, spread: 1.0, cache, measured: 0, cache_hits: 0 })
    }

    /// The first agent: the one final models and table builds go to.
    pub fn primary(&self) -> (&AgentClient, &DeviceInfo) {
        let (c, i) = &self.agents[0];
        (c, i)
    }

    pub fn device_ids(&self) -> &[String] {
        &self.device_ids
    }

    /// How far a median run may be above the fastest before a measurement
    /// is re-taken: from the device's table (`hygiene::typical_spread`).
    pub fn set_spread(&mut self, spread: f64) {
        self.spread = spread;
    }

    pub fn spread(&self) -> f64 {
        self.spread
    }

    /// Measures every candidate not in the cache, spread over the agents
    /// (one in flight each), and returns a measurement per arch in order.
    pub async fn measure_archs(
        &mut self,
        models: Vec<ArchModel>,
        template: &MeasureRequest,
    ) -> Result<Vec<CachedMeasurement>, PoolError> {
        let hashes: Vec<String> = models.iter().map(|m| m.arch.hash()).collect();
        let mut seen = std::collections::HashSet::new();
        let queue: VecDeque<ArchModel> = models
            .into_iter()
            .zip(&hashes)
            .filter(|(_, h)| {
                self.cache.get(&self.device_ids, h, template.energy).is_none() && seen.insert((*h).clone())
            })
            .map(|(m, _)| m)
            .collect();
        self.cache_hits += hashes.len() - queue.len();
        let queue = Mutex::new(queue);
        let results = Mutex::new(Vec::new());
        let spread = self.spread;
        let workers = self.agents.iter().map(|(client, info)| {
            let (queue, results) = (&queue, &results);
            async move {
                loop {
                    // The guard must be gone before the await: other agents' tasks take this lock.
                    let Some(model) = queue.lock().expect("queue lock").pop_front() else {
                        return Ok(());
                    };
                    let entry = measure_on(client, info, model, template, spread).await?;
                    results.lock().expect("results lock").push(entry);
                }
            }
        });
        let outcome: Result<Vec<()>, PoolError> = join_all(workers).await.into_iter().collect();
        // Keep what was measured even when another measurement failed.
        for m in results.into_inner().expect("results lock") {
            self.cache.insert(m)?;
            self.measured += 1;
        }
        outcome?;
        Ok(hashes
            .iter()
            .map(|h| self.cache.get(&self.device_ids, h, template.energy).expect("measured or cached").clone())
            .collect())
    }

    /// Measures `model` again on the primary agent, whatever the cache
    /// holds, and keeps the new measurement (the cache's later line wins):
    /// for a verdict that must not rest on a reading from a slow stretch.
    pub async fn remeasure(
        &mut self,
        model: ArchModel,
        template: &MeasureRequest,
    ) -> Result<CachedMeasurement, PoolError> {
        let (client, info) = &self.agents[0];
        let entry = measure_on(client, info, model, template, self.spread).await?;
        self.cache.insert(entry.clone())?;
        self.measured += 1;
        Ok(entry)
    }
}

/// One architecture measured on one agent (re-taken while contaminated,
/// see `hygiene`), as the cache keeps it.
async fn measure_on(
    client: &AgentClient,
    info: &DeviceInfo,
    ArchModel { arch, bytes, expected_min }: ArchModel,
    template: &MeasureRequest,
    spread: f64,
) -> Result<CachedMeasurement, PoolError> {
    let checked = hygiene::measure(client, &bytes, template, spread, expected_min)
        .await
        .and_then(|checked| client.require_energy(template, &checked.measurement).map(|()| checked))
        .map_err(|source| PoolError::Measure {
            arch: arch.hash()[..12].to_string(),
            url: client.base_url().to_string(),
            source,
        })?;
    let m = &checked.measurement;
    let ops = arch.ops.iter().map(ToString::to_string).collect();
    Ok(CachedMeasurement {
        device_id: info.device_id.clone(),
        remeasured: checked.remeasured,
        suspect: checked.suspect,
        ..CachedMeasurement::new(arch.hash(), ops, m)
    })
}
