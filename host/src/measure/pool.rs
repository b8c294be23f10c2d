//! The devices a search measures on: agents of one device class sharing the
//! work, one measurement in flight per agent, every result cached. An
//! agent that fails a job for a reason that is not the model's (no
//! connection, no answer in time, 5xx) is parked until its `/v1/health`
//! answers again, and the job goes to another agent of the class; a job
//! is given up after [`MAX_ATTEMPTS`] such failures, and the work only
//! when every agent has been down for [`ALL_DOWN_GRACE`].

use std::cell::{Cell, RefCell};
use std::collections::VecDeque;
use std::time::{Duration, Instant};

use edgeloop_api::{DeviceInfo, MeasureRequest, Measurement};
use futures_util::FutureExt as _;
use futures_util::future::{LocalBoxFuture, join_all};

use super::hygiene::{self, Checked};
use super::{MeasureCounts, MeasureJob, Measurements};
use crate::cache::{CacheError, CachedMeasurement, MeasurementCache};
use crate::client::{AgentClient, ClientError, RetryPolicy};

/// Failures of one job that were not the model's fault (each on an agent
/// then parked) before the pool gives the job up.
pub const MAX_ATTEMPTS: usize = 4;

/// How long jobs wait with every agent of the pool down before the pool gives up.
pub const ALL_DOWN_GRACE: Duration = Duration::from_secs(60);

/// How often a parked agent is asked whether it is back.
const HEALTH_POLL: Duration = Duration::from_millis(500);

/// How long that question may take: a hung agent must not hold up the
/// work the others finish.
const PROBE_TIMEOUT: Duration = Duration::from_secs(2);

/// How often an idle agent looks for a job another agent handed back.
const IDLE_POLL: Duration = Duration::from_millis(20);

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
    #[error("gave up measuring {what} after {attempts} failed attempts on the pool's agents; the last, on {url}")]
    GaveUp {
        what: String,
        attempts: usize,
        url: String,
        #[source]
        source: ClientError,
    },
    #[error("every agent of the pool has been down for {:.1} s ({agents}); {left} measurements not taken", grace.as_secs_f64())]
    AllDown { agents: String, grace: Duration, left: usize },
    #[error(transparent)]
    Cache(#[from] CacheError),
}

/// One agent of the pool, and whether it is parked after a failure.
struct Agent {
    client: AgentClient,
    /// The same agent, asked once and briefly whether it is back.
    probe: AgentClient,
    info: DeviceInfo,
    parked: Cell<bool>,
}

pub struct DevicePool {
    agents: Vec<Agent>,
    device_ids: Vec<String>,
    /// The device's usual median/fastest spread (see `hygiene`).
    spread: f64,
    grace: Duration,
    cache: MeasurementCache,
    counts: MeasureCounts,
}

/// What makes two devices interchangeable for measuring: the same CPU,
/// cores and runtimes (each at its version).
fn class(info: &DeviceInfo) -> String {
    let runtimes: Vec<String> = info.runtimes.iter().map(|r| format!("{} {}", r.name, r.version)).collect();
    format!("{} {} ({} cores; {})", info.arch, info.cpu_model, info.logical_cores, runtimes.join(", "))
}

/// Whether a failure is the agent's (or the network's) rather than the
/// model's: another agent of the class may well succeed.
fn agents_fault(error: &ClientError) -> bool {
    match error {
        ClientError::Connect { .. } | ClientError::Timeout { .. } | ClientError::Http(_) => true,
        ClientError::Api { status, .. } | ClientError::UnexpectedStatus { status, .. } => {
            *status >= 500 || *status == 408
        }
        ClientError::InvalidUrl { .. } | ClientError::Decode { .. } | ClientError::NoEnergy { .. } => false,
    }
}

/// The jobs of one call, shared by the agents' tasks.
struct Work {
    /// Each job with the failures it has had.
    queue: RefCell<VecDeque<(MeasureJob, usize)>>,
    in_flight: Cell<usize>,
    live: Cell<usize>,
    /// Since when no agent has been live.
    all_down_since: Cell<Option<Instant>>,
}

impl Work {
    fn finished(&self) -> bool {
        self.queue.borrow().is_empty() && self.in_flight.get() == 0
    }

    fn park(&self, agent: &Agent) {
        agent.parked.set(true);
        self.live.set(self.live.get() - 1);
        if self.live.get() == 0 {
            self.all_down_since.set(Some(Instant::now()));
        }
    }

    fn unpark(&self, agent: &Agent) {
        agent.parked.set(false);
        self.live.set(self.live.get() + 1);
        self.all_down_since.set(None);
    }
}

impl DevicePool {
    /// Asks every agent what it is; refuses a mix of device classes.
    pub async fn connect(clients: Vec<AgentClient>, cache: MeasurementCache) -> Result<DevicePool, MeasureError> {
        let mut agents: Vec<Agent> = Vec::new();
        for client in clients {
            let url = client.base_url().to_string();
            let info = client.info().await.map_err(|source| MeasureError::Info { url: url.clone(), source })?;
            if let Some(first) = agents.first()
                && class(&first.info) != class(&info)
            {
                return Err(MeasureError::Mixed {
                    first_url: first.client.base_url().to_string(),
                    first: class(&first.info),
                    url,
                    other: class(&info),
                });
            }
            let probe = client
                .clone()
                .with_connect_timeout(PROBE_TIMEOUT)
                .map_err(|source| MeasureError::Info { url: url.clone(), source })?
                .with_request_timeout(PROBE_TIMEOUT)
                .with_retry(RetryPolicy { attempts: 1, initial_delay: Duration::ZERO });
            agents.push(Agent { client, probe, info, parked: Cell::new(false) });
        }
        let device_ids = agents.iter().map(|a| a.info.device_id.clone()).collect();
        Ok(DevicePool {
            agents,
            device_ids,
            spread: 1.0,
            grace: ALL_DOWN_GRACE,
            cache,
            counts: MeasureCounts::default(),
        })
    }

    /// How far a median run may be above the fastest before a measurement
    /// is re-taken: from the device's table (`hygiene::typical_spread`).
    pub fn set_spread(&mut self, spread: f64) {
        self.spread = spread;
    }

    pub fn spread(&self) -> f64 {
        self.spread
    }

    /// How long jobs wait with every agent down before the pool gives up
    /// (default [`ALL_DOWN_GRACE`]).
    pub fn with_grace(mut self, grace: Duration) -> DevicePool {
        self.grace = grace;
        self
    }

    /// `jobs` measured by `measure` on the agents, one in flight each (the
    /// first jobs on the first agents), with failover. Returns what was
    /// measured — also when a job failed — with the device of each.
    async fn run<T>(
        &self,
        jobs: Vec<MeasureJob>,
        measure: impl AsyncFn(&AgentClient, &MeasureJob) -> Result<T, ClientError>,
    ) -> (Vec<(MeasureJob, T, &DeviceInfo)>, Result<(), MeasureError>) {
        let work = Work {
            queue: RefCell::new(jobs.into_iter().map(|j| (j, 0)).collect()),
            in_flight: Cell::new(0),
            live: Cell::new(self.agents.iter().filter(|a| !a.parked.get()).count()),
            all_down_since: Cell::new(None),
        };
        if work.live.get() == 0 {
            work.all_down_since.set(Some(Instant::now()));
        }
        let done = RefCell::new(Vec::new());
        let tasks = self.agents.iter().map(|agent| {
            let (work, done, measure) = (&work, &done, &measure);
            async move {
                loop {
                    if agent.parked.get() {
                        self.wait_until_back(agent, work).await?;
                        if !agent.parked.get() {
                            continue;
                        }
                        return Ok(());
                    }
                    // The borrow must end before the await: the other agents' tasks take it.
                    let next = work.queue.borrow_mut().pop_front();
                    let Some((job, failures)) = next else {
                        if work.in_flight.get() == 0 {
                            return Ok(());
                        }
                        // A job in flight elsewhere may come back.
                        tokio::time::sleep(IDLE_POLL).await;
                        continue;
                    };
                    work.in_flight.set(work.in_flight.get() + 1);
                    let outcome = measure(&agent.client, &job).await;
                    work.in_flight.set(work.in_flight.get() - 1);
                    match outcome {
                        Ok(value) => done.borrow_mut().push((job, value, &agent.info)),
                        Err(source) if agents_fault(&source) => {
                            let url = agent.client.base_url().to_string();
                            tracing::warn!(
                                "the agent at {url} failed measuring {} ({}); parked until its /v1/health answers",
                                job.label,
                                crate::client::error_line(&source)
                            );
                            work.park(agent);
                            let attempts = failures + 1;
                            if attempts >= MAX_ATTEMPTS {
                                return Err(MeasureError::GaveUp { what: job.label, attempts, url, source });
                            }
                            work.queue.borrow_mut().push_front((job, attempts));
                        }
                        Err(source) => return Err(measure_error(&agent.client, &job, source)),
                    }
                }
            }
        });
        let outcome: Result<Vec<()>, MeasureError> = join_all(tasks).await.into_iter().collect();
        (done.into_inner(), outcome.map(drop))
    }

    /// Waits while `agent` is parked: until its `/v1/health` answers `ok`
    /// (it is live again), the work is finished, or every agent has been
    /// down for the grace period.
    async fn wait_until_back(&self, agent: &Agent, work: &Work) -> Result<(), MeasureError> {
        loop {
            if work.finished() {
                return Ok(());
            }
            if agent.probe.health().await.is_ok_and(|h| h.status == "ok") {
                tracing::info!("the agent at {} is back", agent.client.base_url());
                work.unpark(agent);
                return Ok(());
            }
            if work.all_down_since.get().is_some_and(|since| since.elapsed() >= self.grace) {
                let agents: Vec<String> = self.agents.iter().map(|a| a.client.base_url().to_string()).collect();
                let left = work.queue.borrow().len();
                return Err(MeasureError::AllDown { agents: agents.join(", "), grace: self.grace, left });
            }
            tokio::time::sleep(HEALTH_POLL).await;
        }
    }

    /// `job` alone, with failover (the first live agent takes it).
    async fn run_one<T>(
        &self,
        job: MeasureJob,
        measure: impl AsyncFn(&AgentClient, &MeasureJob) -> Result<T, ClientError>,
    ) -> Result<(MeasureJob, T, &DeviceInfo), MeasureError> {
        let (done, outcome) = self.run(vec![job], measure).await;
        outcome?;
        Ok(done.into_iter().next().expect("the one job measured"))
    }

    /// Measures every job not in the cache, spread over the agents, and
    /// returns a measurement per job in order.
    async fn measure_jobs(
        &mut self,
        jobs: Vec<MeasureJob>,
        template: &MeasureRequest,
    ) -> Result<Vec<CachedMeasurement>, MeasureError> {
        let keys: Vec<String> = jobs.iter().map(|j| j.key.clone()).collect();
        let mut seen = std::collections::HashSet::new();
        let todo: Vec<MeasureJob> = jobs
            .into_iter()
            .filter(|j| self.cached(&j.key, template.energy).is_none() && seen.insert(j.key.clone()))
            .collect();
        self.counts.cache_hits += keys.len() - todo.len();
        let spread = self.spread;
        let (done, outcome) = self.run(todo, async |client, job| checked(client, job, template, spread).await).await;
        let entries: Vec<CachedMeasurement> = done.into_iter().map(|(job, c, info)| entry(info, job, &c)).collect();
        // Keep what was measured even when another measurement failed.
        for m in entries {
            self.cache.insert(m)?;
            self.counts.measured += 1;
        }
        outcome?;
        Ok(keys.iter().map(|k| self.cached(k, template.energy).expect("measured or cached").clone()).collect())
    }
}

impl Measurements for DevicePool {
    fn device(&self) -> &DeviceInfo {
        &self.agents[0].info
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
            let spread = self.spread;
            let (job, c, info) =
                self.run_one(job, async |client, job| checked(client, job, request, spread).await).await?;
            let entry = entry(info, job, &c);
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
            let spread = self.spread;
            let (_, c, _) = self.run_one(job, async |client, job| checked(client, job, request, spread).await).await?;
            Ok(c)
        }
        .boxed_local()
    }

    fn measure_once<'a>(
        &'a mut self,
        job: MeasureJob,
        request: &'a MeasureRequest,
    ) -> LocalBoxFuture<'a, Result<Measurement, MeasureError>> {
        async move {
            let once = async |client: &AgentClient, job: &MeasureJob| {
                let (_, m) = client.upload_and_measure(&job.bytes, request).await?;
                client.require_energy(request, &m).map(|()| m)
            };
            let (_, m, _) = self.run_one(job, once).await?;
            Ok(m)
        }
        .boxed_local()
    }

    fn counts(&self) -> MeasureCounts {
        self.counts
    }
}

/// One job measured on one agent: re-taken while contaminated (see
/// `hygiene`), refused when energy was asked for and the agent has none.
async fn checked(
    client: &AgentClient,
    job: &MeasureJob,
    template: &MeasureRequest,
    spread: f64,
) -> Result<Checked, ClientError> {
    let checked = hygiene::measure(client, &job.bytes, template, spread, job.expected_min).await?;
    client.require_energy(template, &checked.measurement)?;
    Ok(checked)
}

fn measure_error(client: &AgentClient, job: &MeasureJob, source: ClientError) -> MeasureError {
    MeasureError::Measure { what: job.label.clone(), url: client.base_url().to_string(), source }
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
