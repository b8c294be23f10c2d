//! Agents called directly: one class, one measurement in flight per
//! agent. An agent that fails a job for a reason that is not the model's
//! (no connection, no answer in time, 5xx) is parked until its
//! `/v1/health` answers again, and the job goes to another agent of the
//! class; a job is given up after [`MAX_ATTEMPTS`] such failures, and the
//! work only when every agent has been down for the grace period.

use std::cell::{Cell, RefCell};
use std::collections::VecDeque;
use std::time::{Duration, Instant};

use edgeloop_api::DeviceInfo;
use futures_util::FutureExt as _;
use futures_util::future::{LocalBoxFuture, join_all};

use super::{
    ALL_DOWN_GRACE, Fleet, MAX_ATTEMPTS, MeasureError, MeasureJob, Procedure, Taken, Taking, agents_fault,
    class_fingerprint, take_on,
};
use crate::client::{AgentClient, RetryPolicy};

/// How often a parked agent is asked whether it is back.
const HEALTH_POLL: Duration = Duration::from_millis(500);

/// How long that question may take: a hung agent must not hold up the
/// work the others finish.
const PROBE_TIMEOUT: Duration = Duration::from_secs(2);

/// How often an idle agent looks for a job another agent handed back.
const IDLE_POLL: Duration = Duration::from_millis(20);

/// One agent, and whether it is parked after a failure.
struct Agent {
    client: AgentClient,
    /// The same agent, asked once and briefly whether it is back.
    probe: AgentClient,
    info: DeviceInfo,
    parked: Cell<bool>,
}

impl Agent {
    fn live(agents: &[Agent]) -> usize {
        agents.iter().filter(|a| !a.parked.get()).count()
    }
}

pub struct DirectFleet {
    agents: Vec<Agent>,
    grace: Duration,
}

/// The jobs of one call, shared by the agents' tasks.
struct Work {
    /// Each job with the failures it has had.
    queue: RefCell<VecDeque<(MeasureJob, usize)>>,
    in_flight: Cell<usize>,
    /// Since when no agent has been live.
    all_down_since: Cell<Option<Instant>>,
}

impl DirectFleet {
    /// Asks every agent what it is; refuses a mix of device classes.
    pub async fn connect(clients: Vec<AgentClient>) -> Result<DirectFleet, MeasureError> {
        let mut agents: Vec<Agent> = Vec::new();
        for client in clients {
            let url = client.base_url().to_string();
            let info = client.info().await.map_err(|source| MeasureError::Info { url: url.clone(), source })?;
            if let Some(first) = agents.first()
                && class_fingerprint(&first.info) != class_fingerprint(&info)
            {
                return Err(MeasureError::Mixed {
                    first_url: first.client.base_url().to_string(),
                    first: class_fingerprint(&first.info),
                    url,
                    other: class_fingerprint(&info),
                });
            }
            let probe = probe(&client).map_err(|source| MeasureError::Info { url: url.clone(), source })?;
            agents.push(Agent { client, probe, info, parked: Cell::new(false) });
        }
        Ok(DirectFleet { agents, grace: ALL_DOWN_GRACE })
    }

    /// `jobs` measured on the agents, one in flight each (the first jobs
    /// on the first agents), with failover.
    async fn run(&self, jobs: Vec<MeasureJob>, procedure: &Procedure) -> Taking {
        let work = Work {
            queue: RefCell::new(jobs.into_iter().map(|j| (j, 0)).collect()),
            in_flight: Cell::new(0),
            all_down_since: Cell::new((Agent::live(&self.agents) == 0).then(Instant::now)),
        };
        let done = RefCell::new(Vec::new());
        let tasks = self.agents.iter().map(|agent| {
            let (work, done) = (&work, &done);
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
                    let outcome = take_on(&agent.client, &job.bytes, procedure, job.expected_min).await;
                    work.in_flight.set(work.in_flight.get() - 1);
                    let url = agent.client.base_url().to_string();
                    match outcome {
                        Ok(checked) => {
                            done.borrow_mut().push(Taken { job, checked, device_id: agent.info.device_id.clone() })
                        }
                        Err(source) if agents_fault(&source) => {
                            tracing::warn!(
                                "the agent at {url} failed measuring {} ({}); parked until its /v1/health answers",
                                job.label,
                                crate::client::error_line(&source)
                            );
                            agent.parked.set(true);
                            if Agent::live(&self.agents) == 0 {
                                work.all_down_since.set(Some(Instant::now()));
                            }
                            let attempts = failures + 1;
                            if attempts >= MAX_ATTEMPTS {
                                return Err(MeasureError::GaveUp { what: job.label, attempts, url, source });
                            }
                            work.queue.borrow_mut().push_front((job, attempts));
                        }
                        Err(source) => return Err(MeasureError::Measure { what: job.label, url, source }),
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
            if work.queue.borrow().is_empty() && work.in_flight.get() == 0 {
                return Ok(());
            }
            if agent.probe.health().await.is_ok_and(|h| h.status == "ok") {
                tracing::info!("the agent at {} is back", agent.client.base_url());
                agent.parked.set(false);
                work.all_down_since.set(None);
                return Ok(());
            }
            if work.all_down_since.get().is_some_and(|since| since.elapsed() >= self.grace) {
                let devices: Vec<String> = self.agents.iter().map(|a| a.client.base_url().to_string()).collect();
                let left = work.queue.borrow().len();
                return Err(MeasureError::AllDown { devices: devices.join(", "), grace: self.grace, left });
            }
            tokio::time::sleep(HEALTH_POLL).await;
        }
    }
}

/// `client`, asked once and briefly (whether an agent is back).
pub fn probe(client: &AgentClient) -> Result<AgentClient, crate::client::ClientError> {
    Ok(client
        .clone()
        .with_connect_timeout(PROBE_TIMEOUT)?
        .with_request_timeout(PROBE_TIMEOUT)
        .with_retry(RetryPolicy { attempts: 1, initial_delay: Duration::ZERO }))
}

impl Fleet for DirectFleet {
    fn device(&self) -> &DeviceInfo {
        &self.agents[0].info
    }

    fn device_ids(&self) -> Vec<String> {
        self.agents.iter().map(|a| a.info.device_id.clone()).collect()
    }

    fn set_grace(&mut self, grace: Duration) {
        self.grace = grace;
    }

    /// There is no cache beside the caller's here, so `fresh` changes nothing.
    fn take<'a>(&'a self, jobs: Vec<MeasureJob>, procedure: &'a Procedure, _fresh: bool) -> LocalBoxFuture<'a, Taking> {
        self.run(jobs, procedure).boxed_local()
    }
}
