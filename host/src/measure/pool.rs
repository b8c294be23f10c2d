//! The devices a search measures on: agents of one device class sharing the
//! work, one measurement in flight per agent, every result cached.

use std::collections::VecDeque;
use std::sync::Mutex;

use edgeloop_api::{DeviceInfo, MeasureRequest};
use futures_util::FutureExt as _;
use futures_util::future::{LocalBoxFuture, join_all};

use super::hygiene::{self, Checked};
use super::{MeasureCounts, MeasureJob, Measurements};
use crate::cache::{CacheError, CachedMeasurement, MeasurementCache};
use crate::client::{AgentClient, ClientError};

#[derive(Debug, thiserror::Error)]
pub enum MeasureError {
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
    #[error("measuring {what} on {url}")]
    Measure {
        what: String,
        url: String,
        #[source]
        source: ClientError,
    },
    #[error(transparent)]
    Cache(#[from] CacheError),
}

pub struct DevicePool {
    agents: Vec<(AgentClient, DeviceInfo)>,
    device_ids: Vec<String>,
    /// The device's usual median/fastest spread (see `hygiene`).
    spread: f64,
    cache: MeasurementCache,
    counts: MeasureCounts,
}

/// What makes two devices interchangeable for measuring.
fn class(info: &DeviceInfo) -> String {
    format!("{} {} ({} cores)", info.arch, info.cpu_model, info.logical_cores)
}

impl DevicePool {
    /// Asks every agent what it is; refuses a mix of device classes.
    pub async fn connect(clients: Vec<AgentClient>, cache: MeasurementCache) -> Result<DevicePool, MeasureError> {
        let mut agents: Vec<(AgentClient, DeviceInfo)> = Vec::new();
        for client in clients {
            let url = client.base_url().to_string();
            let info = client.info().await.map_err(|source| MeasureError::Info { url: url.clone(), source })?;
            if let Some((first, first_info)) = agents.first()
                && class(first_info) != class(&info)
            {
                return Err(MeasureError::Mixed {
                    first_url: first.base_url().to_string(),
                    first: class(first_info),
                    url,
                    other: class(&info),
                });
            }
            agents.push((client, info));
        }
        let device_ids = agents.iter().map(|(_, i)| i.device_id.clone()).collect();
        Ok(DevicePool { agents, device_ids, spread: 1.0, cache, counts: MeasureCounts::default() })
    }

    /// The first agent: the one final models and table builds go to.
    pub fn primary(&self) -> (&AgentClient, &DeviceInfo) {
        let (c, i) = &self.agents[0];
        (c, i)
    }

    /// How far a median run may be above the fastest before a measurement
    /// is re-taken: from the device's table (`hygiene::typical_spread`).
    pub fn set_spread(&mut self, spread: f64) {
        self.spread = spread;
    }

    pub fn spread(&self) -> f64 {
        self.spread
    }

    /// Measures every job not in the cache, spread over the agents (one in
    /// flight each), and returns a measurement per job in order.
    async fn measure_jobs(
        &mut self,
        jobs: Vec<MeasureJob>,
        template: &MeasureRequest,
    ) -> Result<Vec<CachedMeasurement>, MeasureError> {
        let keys: Vec<String> = jobs.iter().map(|j| j.key.clone()).collect();
        let mut seen = std::collections::HashSet::new();
        let queue: VecDeque<MeasureJob> = jobs
            .into_iter()
            .filter(|j| self.cached(&j.key, template.energy).is_none() && seen.insert(j.key.clone()))
            .collect();
        self.counts.cache_hits += keys.len() - queue.len();
        let queue = Mutex::new(queue);
        let results = Mutex::new(Vec::new());
        let spread = self.spread;
        let workers = self.agents.iter().map(|(client, info)| {
            let (queue, results) = (&queue, &results);
            async move {
                loop {
                    // The guard must be gone before the await: other agents' tasks take this lock.
                    let Some(job) = queue.lock().expect("queue lock").pop_front() else {
                        return Ok(());
                    };
                    let (job, checked) = measure_on(client, job, template, spread).await?;
                    results.lock().expect("results lock").push(entry(info, job, &checked));
                }
            }
        });
        let outcome: Result<Vec<()>, MeasureError> = join_all(workers).await.into_iter().collect();
        // Keep what was measured even when another measurement failed.
        for m in results.into_inner().expect("results lock") {
            self.cache.insert(m)?;
            self.counts.measured += 1;
        }
        outcome?;
        Ok(keys.iter().map(|k| self.cached(k, template.energy).expect("measured or cached").clone()).collect())
    }
}

impl Measurements for DevicePool {
    fn device(&self) -> &DeviceInfo {
        &self.agents[0].1
    }

    fn cached(&self, key: &str, energy: bool) -> Option<&CachedMeasurement> {
        self.cache.get(&self.device_ids, key, energy)
    }

    fn all_cached(&self) -> Vec<&CachedMeasurement> {
        self.cache.on_devices(&self.device_ids).collect()
    }

    fn measure<'a>(
        &'a mut self,
        jobs: Vec<MeasureJob>,
        request: &'a MeasureRequest,
    ) -> LocalBoxFuture<'a, Result<Vec<CachedMeasurement>, MeasureError>> {
        self.measure_jobs(jobs, request).boxed_local()
    }

    fn remeasure<'a>(
        &'a mut self,
        job: MeasureJob,
        request: &'a MeasureRequest,
    ) -> LocalBoxFuture<'a, Result<CachedMeasurement, MeasureError>> {
        async move {
            let (client, info) = &self.agents[0];
            let (job, checked) = measure_on(client, job, request, self.spread).await?;
            let entry = entry(info, job, &checked);
            self.cache.insert(entry.clone())?;
            self.counts.measured += 1;
            Ok(entry)
        }
        .boxed_local()
    }

    fn measure_uncached<'a>(
        &'a mut self,
        job: MeasureJob,
        request: &'a MeasureRequest,
    ) -> LocalBoxFuture<'a, Result<Checked, MeasureError>> {
        async move {
            let (client, _) = &self.agents[0];
            let (_, checked) = measure_on(client, job, request, self.spread).await?;
            Ok(checked)
        }
        .boxed_local()
    }

    fn counts(&self) -> MeasureCounts {
        self.counts
    }
}

/// One job measured on one agent: re-taken while contaminated (see
/// `hygiene`), refused when energy was asked for and the agent has none.
async fn measure_on(
    client: &AgentClient,
    job: MeasureJob,
    template: &MeasureRequest,
    spread: f64,
) -> Result<(MeasureJob, Checked), MeasureError> {
    let checked = hygiene::measure(client, &job.bytes, template, spread, job.expected_min)
        .await
        .and_then(|checked| client.require_energy(template, &checked.measurement).map(|()| checked))
        .map_err(|source| MeasureError::Measure {
            what: job.label.clone(),
            url: client.base_url().to_string(),
            source,
        })?;
    Ok((job, checked))
}

/// A measurement as the cache keeps it.
fn entry(info: &DeviceInfo, job: MeasureJob, checked: &Checked) -> CachedMeasurement {
    CachedMeasurement {
        device_id: info.device_id.clone(),
        remeasured: checked.remeasured,
        suspect: checked.suspect.clone(),
        ..CachedMeasurement::new(job.key, job.ops, &checked.measurement)
    }
}
