//! A host's side of the farm: a [`Fleet`] that publishes jobs and waits
//! for their results.

use std::cell::Cell;
use std::collections::VecDeque;
use std::time::{Duration, Instant};

use edgeloop_api::DeviceInfo;
use futures_util::future::LocalBoxFuture;
use futures_util::{FutureExt as _, StreamExt as _};

use super::{Farm, FarmError, FarmJob, FarmResult, FarmTarget, Written, broker, job_subject, jobkey};
use crate::client::sha256_hex;
use crate::measure::{ALL_DOWN_GRACE, Fleet, MeasureError, MeasureJob, Procedure, Taken, Taking};

/// Jobs a host keeps queued per live device of the class: enough to keep
/// every device busy, few enough that several searches interleave (FIFO).
const QUEUED_PER_DEVICE: usize = 2;

/// How often outstanding results are read when no worker said one is ready.
const RESULT_POLL: Duration = Duration::from_secs(1);

/// How often the class's live devices are counted.
const DEVICES_POLL: Duration = Duration::from_secs(5);

/// How often outstanding jobs are published again: harmless (the broker
/// drops duplicates) and it brings back a job a broker lost in a power cut.
const REPUBLISH: Duration = Duration::from_secs(30);

pub struct FarmFleet {
    farm: Farm,
    target: FarmTarget,
    device: DeviceInfo,
    device_ids: Vec<String>,
    grace: Duration,
    /// The class's live devices when last counted, and when that was
    /// (kept across calls: a search measures one model per call).
    live: Cell<Option<(Instant, usize)>>,
}

impl FarmFleet {
    /// Connects to the farm; refuses a class with no live device. The
    /// class's device is its first device's description under the class's
    /// name (`farm-<class>`): tables and results then name the class, not
    /// whichever of its devices is up.
    pub async fn connect(target: FarmTarget) -> Result<FarmFleet, FarmError> {
        super::class_name(&target.class)?;
        let farm = Farm::connect(&target.address, "edgeloop host").await?;
        let devices = farm.devices(Some(&target.class)).await?;
        let Some(first) = devices.first() else {
            return Err(FarmError::NoDevices { class: target.class.clone(), url: target.address.url.clone() });
        };
        let device = DeviceInfo { device_id: format!("farm-{}", target.class), ..first.info.clone() };
        let device_ids = devices.iter().map(|d| d.info.device_id.clone()).collect();
        Ok(FarmFleet { farm, target, device, device_ids, grace: ALL_DOWN_GRACE, live: Cell::new(None) })
    }

    /// Publishes `job` (idempotent: a job queued or running already, for
    /// this host or another, is left as it is).
    async fn publish(&self, job: &FarmJob, bytes: &[u8]) -> Result<(), FarmError> {
        if job.inline.is_none() {
            self.farm.put_model(&job.model, bytes).await?;
        }
        let subject = job_subject(&self.target.class, self.target.priority, &job.jobkey);
        let mut headers = async_nats::HeaderMap::new();
        headers.insert(async_nats::header::NATS_MESSAGE_ID, job.jobkey.as_str());
        let payload = serde_json::to_vec(job).expect("a job serializes");
        let what = || format!("publishing job {}", job.jobkey);
        let published = match self.farm.js.publish_with_headers(subject, headers, payload.into()).await {
            Ok(ack) => ack.await.map(drop).map_err(|e| e.to_string()),
            Err(e) => Err(e.to_string()),
        };
        match published {
            // Queued already (one message per job subject) or running.
            Err(e) if e.contains("maximum messages per subject") => Ok(()),
            Err(e) => Err(broker(what())(e)),
            Ok(()) => Ok(()),
        }
    }

    async fn run(&self, jobs: Vec<MeasureJob>, procedure: &Procedure, fresh: bool) -> Taking {
        let mut done = Vec::new();
        let outcome = self.run_into(jobs, procedure, fresh, &mut done).await;
        (done, outcome)
    }

    async fn run_into(
        &self,
        jobs: Vec<MeasureJob>,
        procedure: &Procedure,
        fresh: bool,
        done: &mut Vec<Taken>,
    ) -> Result<(), MeasureError> {
        let class = &self.target.class;
        // A fresh inbox is unique to this call: it also tells fresh jobs apart.
        let reply = self.farm.client.new_inbox();
        let nonce = fresh.then_some(reply.as_str());
        let mut pings =
            self.farm.client.subscribe(reply.clone()).await.map_err(broker(format!("subscribing to {reply}")))?;
        let waiting = jobs
            .into_iter()
            .map(|job| {
                let model = sha256_hex(&job.bytes);
                let farm_job = FarmJob {
                    v: 1,
                    jobkey: jobkey(class, &model, procedure, nonce),
                    class: class.clone(),
                    model,
                    inline: super::inline(&job.bytes),
                    label: job.label.clone(),
                    procedure: procedure.clone(),
                    expected_min: job.expected_min,
                    reply: reply.clone(),
                };
                (farm_job, job)
            })
            .collect();
        let mut t = Tracking {
            waiting,
            outstanding: Vec::new(),
            fresh,
            published_at: Instant::now(),
            bucket_read: Instant::now(),
            all_down_since: None,
        };
        let mut broker_down_since: Option<Instant> = None;
        // The results that workers sent with their word; `None`: read them all from the bucket.
        let mut heard = None;
        loop {
            match self.step(&mut t, done, heard.take()).await {
                Ok(true) => return Ok(()),
                Ok(false) => broker_down_since = None,
                // The broker restarting: jobs and results outlive it; wait for it.
                Err(MeasureError::Farm(e)) if matches!(*e, FarmError::Broker { .. }) => {
                    let since = *broker_down_since.get_or_insert_with(Instant::now);
                    if since.elapsed() >= self.grace {
                        return Err(MeasureError::Farm(e));
                    }
                    tracing::warn!("{}; trying again", crate::client::error_line(&e));
                }
                Err(e) => return Err(e),
            }
            if t.all_down_since.is_some_and(|since| since.elapsed() >= self.grace) {
                return Err(MeasureError::AllDown {
                    devices: format!("class '{class}' of the farm at {}", self.farm.url),
                    grace: self.grace,
                    left: t.outstanding.len() + t.waiting.len(),
                });
            }
            // A worker's word carries its result; the bucket is read when
            // none came for a while, or one came without its result.
            if let Ok(Some(first)) = tokio::time::timeout(RESULT_POLL, pings.next()).await {
                let mut words = vec![first];
                while let Some(Some(more)) = pings.next().now_or_never() {
                    words.push(more);
                }
                let written: Option<Vec<Written>> =
                    words.iter().map(|w| serde_json::from_slice(&w.payload).ok()).collect();
                heard = written;
            }
        }
    }

    /// The class's live devices, counted again when the count is old.
    async fn live(&self) -> Result<usize, FarmError> {
        if let Some((read, live)) = self.live.get()
            && read.elapsed() < DEVICES_POLL
        {
            return Ok(live);
        }
        let live = self.farm.devices(Some(&self.target.class)).await?.len();
        self.live.set(Some((Instant::now(), live)));
        Ok(live)
    }

    /// Counts the live devices now and then, collects results (those in
    /// `heard`, else all from the bucket), publishes what the cap allows
    /// (`Ok(true)` once every job has a result), republishes now and then.
    /// A broker failure leaves `t` consistent.
    async fn step(
        &self,
        t: &mut Tracking,
        done: &mut Vec<Taken>,
        heard: Option<Vec<Written>>,
    ) -> Result<bool, MeasureError> {
        let class = &self.target.class;
        let live = self.live().await?;
        t.all_down_since = if live > 0 { None } else { t.all_down_since.or(Some(Instant::now())) };
        // Results of the jobs published before this step (those published
        // now cannot have one yet: their worker's word wakes the next step).
        // The bucket is read too now and then, for words that got lost.
        let from_bucket = heard.is_none() || t.bucket_read.elapsed() >= RESULT_POLL;
        if from_bucket {
            t.bucket_read = Instant::now();
        }
        let mut heard: Vec<(String, FarmResult)> =
            heard.unwrap_or_default().into_iter().map(|w| (w.jobkey, w.result)).collect();
        let mut i = 0;
        while i < t.outstanding.len() {
            let jobkey = &t.outstanding[i].0.jobkey;
            let result = match heard.iter().position(|(key, _)| key == jobkey) {
                Some(at) => Some(heard.swap_remove(at).1),
                None if from_bucket => self.farm.result(class, jobkey).await?,
                None => None,
            };
            match result {
                Some(result) => {
                    if let Some(failed) = settle(result, t.outstanding.remove(i).1, done) {
                        return Err(failed);
                    }
                }
                None => i += 1,
            }
        }
        // Publish up to the cap; what another search measured is answered
        // from the farm's results (a fresh job is this call's own: none has one).
        while t.outstanding.len() < QUEUED_PER_DEVICE * live.max(1)
            && let Some((farm_job, job)) = t.waiting.pop_front()
        {
            let known = if t.fresh { None } else { self.farm.result(class, &farm_job.jobkey).await? };
            match known {
                Some(result) => {
                    if let Some(failed) = settle(result, job, done) {
                        return Err(failed);
                    }
                }
                None => {
                    if let Err(e) = self.publish(&farm_job, &job.bytes).await {
                        t.waiting.push_front((farm_job, job));
                        return Err(e.into());
                    }
                    t.published_at = Instant::now();
                    t.outstanding.push((farm_job, job));
                }
            }
        }
        if t.outstanding.is_empty() && t.waiting.is_empty() {
            return Ok(true);
        }
        if t.published_at.elapsed() >= REPUBLISH {
            for (farm_job, job) in &t.outstanding {
                self.publish(farm_job, &job.bytes).await?;
            }
            t.published_at = Instant::now();
        }
        Ok(false)
    }
}

/// Hands a job's result over: measured into `done`, a failure returned.
fn settle(result: FarmResult, job: MeasureJob, done: &mut Vec<Taken>) -> Option<MeasureError> {
    let reason = match result {
        FarmResult::Measured { checked, device_id, .. } => {
            done.push(Taken { job, checked: *checked, device_id });
            return None;
        }
        FarmResult::Refused { reason, worker } => format!("refused by the device ({reason}; worker {worker})"),
        FarmResult::GaveUp { reason, deliveries } => format!("given up after {deliveries} deliveries: {reason}"),
    };
    Some(MeasureError::FarmFailed { what: job.label, reason })
}

/// The jobs of one call on their way through the farm.
struct Tracking {
    waiting: VecDeque<(FarmJob, MeasureJob)>,
    outstanding: Vec<(FarmJob, MeasureJob)>,
    /// Whether the jobs are this call's own (their keys carry its nonce).
    fresh: bool,
    published_at: Instant,
    /// When the outstanding jobs' results were last read from the bucket.
    bucket_read: Instant,
    all_down_since: Option<Instant>,
}

impl Fleet for FarmFleet {
    fn device(&self) -> &DeviceInfo {
        &self.device
    }

    fn device_ids(&self) -> Vec<String> {
        self.device_ids.clone()
    }

    fn set_grace(&mut self, grace: Duration) {
        self.grace = grace;
    }

    fn take<'a>(&'a self, jobs: Vec<MeasureJob>, procedure: &'a Procedure, fresh: bool) -> LocalBoxFuture<'a, Taking> {
        self.run(jobs, procedure, fresh).boxed_local()
    }
}
