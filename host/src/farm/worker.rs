//! `edgeloop farm worker`: one task per agent pulls its class's jobs, one
//! at a time, measures them on the agent and writes the results.

use std::time::Duration;

use async_nats::jetstream::consumer::pull::{Batch, BatchError};
use async_nats::jetstream::consumer::{self, PullConsumer};
use async_nats::jetstream::{AckKind, Message};
use futures_util::StreamExt as _;

use super::{DeviceRecord, Farm, FarmError, FarmJob, FarmResult, Priority, Written, broker, consumer_name, now_ms};
use crate::client::{AgentClient, error_line};
use crate::measure::{MAX_ATTEMPTS, agents_fault, class_fingerprint, take_on};

/// How long an idle worker's request for a high-priority job stays open
/// (such a job reaches it the moment it is published) before it looks for
/// low-priority ones again: the most a batch job waits for an idle device.
const IDLE_PULL: Duration = Duration::from_millis(500);

/// How often a down agent is asked whether it is back.
const HEALTH_POLL: Duration = Duration::from_millis(500);

/// How long a worker waits after a broker failure before pulling again.
const BROKER_PAUSE: Duration = Duration::from_secs(1);

#[derive(Debug, Clone)]
pub struct WorkerSettings {
    pub class: String,
    /// How long a job may go without word from its worker before the
    /// broker gives it to another (set when the class's consumers are made).
    pub ack_wait: Duration,
    /// How long a job that failed for a reason not the model's waits before another device may take it.
    pub retry_delay: Duration,
    /// How this worker names itself in results (host name and process id by default).
    pub name: String,
}

/// Serves `agents` for the farm until a task fails for good (an agent of another class).
pub async fn run(farm: Farm, mut settings: WorkerSettings, agents: Vec<AgentClient>) -> Result<(), FarmError> {
    super::class_name(&settings.class)?;
    let jobs = farm.jobs().await?;
    let mut consumers = Vec::new();
    for priority in Priority::ALL {
        let name = consumer_name(&settings.class, priority);
        let config = consumer::pull::Config {
            durable_name: Some(name.clone()),
            filter_subject: format!("farm.job.{}.{}.>", settings.class, priority.name()),
            ack_policy: consumer::AckPolicy::Explicit,
            deliver_policy: consumer::DeliverPolicy::All,
            ack_wait: settings.ack_wait,
            max_deliver: -1,
            max_waiting: 512,
            ..Default::default()
        };
        let consumer: PullConsumer =
            jobs.get_or_create_consumer(&name, config).await.map_err(broker(format!("opening consumer {name}")))?;
        consumers.push(consumer);
    }
    // The consumers may be older than this worker's setting: theirs rules.
    settings.ack_wait = consumers[0].cached_info().config.ack_wait;
    let tasks = agents.into_iter().map(|client| {
        AgentTask { farm: farm.clone(), settings: settings.clone(), consumers: consumers.clone(), client }.serve()
    });
    futures_util::future::try_join_all(tasks).await.map(drop)
}

struct AgentTask {
    farm: Farm,
    settings: WorkerSettings,
    consumers: Vec<PullConsumer>,
    client: AgentClient,
}

/// What one job left the agent as.
enum After {
    Up,
    Down,
}

impl AgentTask {
    fn url(&self) -> String {
        self.client.base_url().to_string()
    }

    async fn serve(self) -> Result<(), FarmError> {
        let probe = crate::measure::probe(&self.client).expect("a client that was built builds again");
        loop {
            while !probe.health().await.is_ok_and(|h| h.status == "ok") {
                tokio::time::sleep(HEALTH_POLL).await;
            }
            let Ok(info) = self.client.info().await else {
                tokio::time::sleep(HEALTH_POLL).await;
                continue;
            };
            let record = DeviceRecord {
                class: self.settings.class.clone(),
                fingerprint: class_fingerprint(&info),
                info,
                agent_url: self.url(),
                worker: self.settings.name.clone(),
            };
            let class = &self.settings.class;
            if let Some(other) =
                self.farm.devices(Some(class)).await?.into_iter().find(|d| d.fingerprint != record.fingerprint)
            {
                return Err(FarmError::Mixed {
                    url: self.url(),
                    class: class.clone(),
                    found: record.fingerprint,
                    registered: other.fingerprint,
                });
            }
            tracing::info!("{}: serving class {class} with {}", self.url(), record.info.device_id);
            self.beat(&record).await;
            let mut last_beat = tokio::time::Instant::now();
            loop {
                if last_beat.elapsed() >= super::HEARTBEAT {
                    self.beat(&record).await;
                    last_beat = tokio::time::Instant::now();
                }
                let Some(message) = self.next_job().await else { continue };
                match self.handle(message, &record).await {
                    Ok(After::Up) => {}
                    Ok(After::Down) => break,
                    Err(e) => {
                        tracing::warn!("{}: {}", self.url(), error_line(&e));
                        tokio::time::sleep(BROKER_PAUSE).await;
                    }
                }
            }
            tracing::warn!("{}: agent down; no jobs taken until its /v1/health answers", self.url());
            if let Err(e) = self.farm.deregister(class, &record.info.device_id).await {
                tracing::warn!("{}: {}", self.url(), error_line(&e));
            }
        }
    }

    /// Says that the device is alive (a broker failure is only logged: the next beat retries).
    async fn beat(&self, record: &DeviceRecord) {
        if let Err(e) = self.farm.register(&self.settings.class, record).await {
            tracing::warn!("{}: {}", self.url(), error_line(&e));
        }
    }

    /// The next job: a high-priority one, else a low-priority one, else
    /// a high-priority one published within [`IDLE_PULL`].
    async fn next_job(&self) -> Option<Message> {
        let [hi, lo] = [&self.consumers[0], &self.consumers[1]];
        for asking in [hi.fetch().max_messages(1), lo.fetch().max_messages(1)] {
            if let Some(message) = self.first(asking.messages().await).await {
                return Some(message);
            }
        }
        // Awaited to its end: a request left open would take a job to nobody.
        self.first(hi.batch().max_messages(1).expires(IDLE_PULL).messages().await).await
    }

    /// The first message of a batch being delivered.
    async fn first(&self, batch: Result<Batch, BatchError>) -> Option<Message> {
        match batch {
            Ok(mut messages) => messages.next().await.and_then(Result::ok),
            Err(e) => {
                tracing::warn!("{}: asking for jobs: {e}", self.url());
                tokio::time::sleep(BROKER_PAUSE).await;
                None
            }
        }
    }

    async fn handle(&self, message: Message, record: &DeviceRecord) -> Result<After, FarmError> {
        let class = &self.settings.class;
        let delivery = message.info().map_or(1, |i| i.delivered);
        let job: FarmJob = match serde_json::from_slice(&message.payload) {
            Ok(job) => job,
            Err(e) => {
                tracing::warn!("{}: dropping a job that is not one ({e}): {}", self.url(), message.subject);
                ack(&message, AckKind::Term).await?;
                return Ok(After::Up);
            }
        };
        // A job delivered again may have been measured by a worker that died
        // before acknowledging it; a first delivery rarely has (only when a
        // duplicate was published after the job had left the queue).
        if delivery > 1 && self.farm.result(class, &job.jobkey).await?.is_some() {
            // Measured meanwhile (a worker died between writing and acknowledging).
            message.double_ack().await.map_err(broker("acknowledging a job"))?;
            return Ok(After::Up);
        }
        if delivery > MAX_ATTEMPTS as i64 {
            let reason = "no worker reported a result (workers stopped or lost their agents mid-measurement)".into();
            return self.finish(&message, &job, FarmResult::GaveUp { reason, deliveries: delivery }).await;
        }
        let model = match self.farm.job_model(&job).await? {
            Ok(model) => model,
            Err(reason) => {
                let refused = FarmResult::Refused { reason, worker: self.settings.name.clone() };
                return self.finish(&message, &job, refused).await;
            }
        };
        tracing::info!("{}: measuring {} (delivery {delivery})", self.url(), job.label);
        let measuring = take_on(&self.client, &model, &job.procedure, job.expected_min);
        let outcome = keep_leased(&message, self.settings.ack_wait, measuring).await?;
        let result = match outcome {
            Ok(checked) => FarmResult::Measured {
                checked: Box::new(checked),
                device_id: record.info.device_id.clone(),
                worker: self.settings.name.clone(),
                delivery,
                measured_at: now_ms(),
            },
            Err(e) if agents_fault(&e) && delivery < MAX_ATTEMPTS as i64 => {
                tracing::warn!(
                    "{}: failed measuring {} ({}); another device may take it",
                    self.url(),
                    job.label,
                    error_line(&e)
                );
                ack(&message, AckKind::Nak(Some(self.settings.retry_delay))).await?;
                return Ok(After::Down);
            }
            Err(e) if agents_fault(&e) => {
                let reason = format!("the last attempt, on {}: {}", self.url(), error_line(&e));
                self.finish(&message, &job, FarmResult::GaveUp { reason, deliveries: delivery }).await?;
                return Ok(After::Down);
            }
            Err(e) => FarmResult::Refused { reason: error_line(&e), worker: self.settings.name.clone() },
        };
        self.finish(&message, &job, result).await
    }

    /// Writes `result` (unless another worker did), tells the host and
    /// takes the job off the queue: acknowledged when measured, terminated
    /// (never delivered again) when it failed for good.
    async fn finish(&self, message: &Message, job: &FarmJob, result: FarmResult) -> Result<After, FarmError> {
        let measured = matches!(result, FarmResult::Measured { .. });
        if !measured {
            tracing::warn!("{}: {} failed for good: {result:?}", self.url(), job.label);
        }
        let kept = self.farm.keep_result(&self.settings.class, &job.jobkey, &result).await?;
        // Best effort: the host also reads the results now and then. A
        // result that lost to another worker's is not the one to send.
        let word = if kept {
            serde_json::to_vec(&Written { jobkey: job.jobkey.clone(), result }).expect("a result serializes")
        } else {
            Vec::new()
        };
        let _ = self.farm.client.publish(job.reply.clone(), word.into()).await;
        if measured {
            message.double_ack().await.map_err(broker("acknowledging a job"))?;
        } else {
            ack(message, AckKind::Term).await?;
        }
        Ok(After::Up)
    }
}

async fn ack(message: &Message, kind: AckKind) -> Result<(), FarmError> {
    message.ack_with(kind).await.map_err(broker("answering the broker about a job"))
}

/// `work`'s outcome, telling the broker every quarter of `ack_wait` that
/// the job is still being worked on (a cool-down may take minutes).
async fn keep_leased<T>(message: &Message, ack_wait: Duration, work: impl Future<Output = T>) -> Result<T, FarmError> {
    let mut work = std::pin::pin!(work);
    // The first tick a period from now: awaiting an interval's immediate
    // first tick costs a turn of the timer wheel (about 1 ms) per job.
    let period = ack_wait / 4;
    let mut ticks = tokio::time::interval_at(tokio::time::Instant::now() + period, period);
    loop {
        tokio::select! {
            outcome = &mut work => return Ok(outcome),
            _ = ticks.tick() => ack(message, AckKind::Progress).await?,
        }
    }
}
