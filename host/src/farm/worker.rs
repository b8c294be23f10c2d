//! `edgeloop farm worker`: one task per agent pulls its class's jobs, one
//! at a time, measures them on the agent and writes the results.

use std::time::Duration;

use async_nats::jetstream::consumer::{self, PullConsumer};
use async_nats::jetstream::{AckKind, Message};
use futures_util::{FutureExt as _, StreamExt as _};

use super::{
    DeviceRecord, Farm, FarmError, FarmJob, FarmResult, Priority, broker, consumer_name, now_ms, ring_subject,
};
use crate::client::{AgentClient, error_line};
use crate::measure::{MAX_ATTEMPTS, agents_fault, class_fingerprint, take_on};

/// How often an idle worker asks for jobs without hearing of a new one:
/// jobs also come back unannounced (after a NAK's delay, an ack timeout).
const IDLE_POLL: Duration = Duration::from_secs(1);

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
            // Hosts ring when they publish jobs: an idle task asks at once,
            // high priority first, instead of sitting in a long pull of one
            // priority while a job of the other waits.
            let ring = ring_subject(class);
            let mut doorbell =
                self.farm.client.subscribe(ring.clone()).await.map_err(broker(format!("subscribing to {ring}")))?;
            tracing::info!("{}: serving class {class} with {}", self.url(), record.info.device_id);
            self.beat(&record).await;
            let mut last_beat = tokio::time::Instant::now();
            loop {
                if last_beat.elapsed() >= super::HEARTBEAT {
                    self.beat(&record).await;
                    last_beat = tokio::time::Instant::now();
                }
                let Some(message) = self.next_job(&mut doorbell).await else { continue };
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
    /// none after waiting for the doorbell (at most [`IDLE_POLL`]).
    async fn next_job(&self, doorbell: &mut async_nats::Subscriber) -> Option<Message> {
        // Rings before the asking are answered by it; a job published from
        // here on rings again.
        while let Some(Some(_)) = doorbell.next().now_or_never() {}
        for consumer in &self.consumers {
            match consumer.fetch().max_messages(1).messages().await {
                Ok(mut messages) => {
                    if let Some(Ok(message)) = messages.next().await {
                        return Some(message);
                    }
                }
                Err(e) => {
                    tracing::warn!("{}: asking for jobs: {e}", self.url());
                    tokio::time::sleep(BROKER_PAUSE).await;
                }
            }
        }
        if let Ok(None) = tokio::time::timeout(IDLE_POLL, doorbell.next()).await {
            // The subscription ended (the connection closed for good): poll.
            tokio::time::sleep(IDLE_POLL).await;
        }
        None
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
        let (known, model) = tokio::try_join!(self.farm.result(class, &job.jobkey), self.farm.job_model(&job))?;
        if known.is_some() {
            // Measured meanwhile (a worker died between writing and acknowledging).
            message.double_ack().await.map_err(broker("acknowledging a job"))?;
            return Ok(After::Up);
        }
        if delivery > MAX_ATTEMPTS as i64 {
            let reason = "no worker reported a result (workers stopped or lost their agents mid-measurement)".into();
            return self.finish(&message, &job, FarmResult::GaveUp { reason, deliveries: delivery }).await;
        }
        let model = match model {
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
        self.farm.keep_result(&self.settings.class, &job.jobkey, &result).await?;
        // Best effort: the host also reads the results now and then.
        let _ = self.farm.client.publish(job.reply.clone(), Default::default()).await;
        if measured {
            message.double_ack().await.map_err(broker("acknowledging a job"))?;
        } else {
            tracing::warn!("{}: {} failed for good: {result:?}", self.url(), job.label);
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
    let mut ticks = tokio::time::interval(ack_wait / 4);
    ticks.tick().await;
    loop {
        tokio::select! {
            outcome = &mut work => return Ok(outcome),
            _ = ticks.tick() => ack(message, AckKind::Progress).await?,
        }
    }
}
