//! The measurement service over a [`Fleet`]: what is cached is answered
//! from the cache, the rest goes to the fleet and is cached.

use std::time::Duration;

use edgeloop_api::{DeviceInfo, MeasureRequest, Measurement};
use futures_util::FutureExt as _;
use futures_util::future::LocalBoxFuture;

use super::direct::DirectFleet;
use super::hygiene::Checked;
use super::{Fleet, MeasureCounts, MeasureError, MeasureJob, Measurements, Procedure, Taken};
use crate::cache::{CacheError, CachedMeasurement, MeasurementCache};
use crate::client::AgentClient;

pub struct DevicePool {
    fleet: Box<dyn Fleet>,
    /// The devices whose cached measurements count: the fleet's, and any
    /// other device of the class that measured for this pool.
    device_ids: Vec<String>,
    /// The device's usual median/fastest spread (see `hygiene`).
    spread: f64,
    cache: MeasurementCache,
    counts: MeasureCounts,
}

impl DevicePool {
    /// The agents at `clients`, called directly; refuses a mix of device classes.
    pub async fn connect(clients: Vec<AgentClient>, cache: MeasurementCache) -> Result<DevicePool, MeasureError> {
        Ok(DevicePool::over(Box::new(DirectFleet::connect(clients).await?), cache))
    }

    /// The devices `fleet` reaches.
    pub fn over(fleet: Box<dyn Fleet>, cache: MeasurementCache) -> DevicePool {
        let device_ids = fleet.device_ids();
        DevicePool { fleet, device_ids, spread: 1.0, cache, counts: MeasureCounts::default() }
    }

    /// How far a median run may be above the fastest before a measurement
    /// is re-taken: from the device's table (`hygiene::typical_spread`).
    pub fn set_spread(&mut self, spread: f64) {
        self.spread = spread;
    }

    pub fn spread(&self) -> f64 {
        self.spread
    }

    /// How long jobs wait with every device down before the work is given
    /// up (default [`super::ALL_DOWN_GRACE`]).
    pub fn with_grace(mut self, grace: Duration) -> DevicePool {
        self.fleet.set_grace(grace);
        self
    }

    fn clean(&self, request: &MeasureRequest) -> Procedure {
        Procedure { request: request.clone(), clean: Some(self.spread) }
    }

    /// `taken` as the cache keeps it (its device then counts as the class's).
    fn keep(&mut self, taken: Taken) -> Result<CachedMeasurement, CacheError> {
        if !self.device_ids.contains(&taken.device_id) {
            self.device_ids.push(taken.device_id.clone());
        }
        let Taken { job, checked, device_id } = taken;
        let entry = CachedMeasurement {
            device_id,
            remeasured: checked.remeasured,
            suspect: checked.suspect.clone(),
            ..CachedMeasurement::new(job.key, job.ops, &checked.measurement)
        };
        self.cache.insert(entry.clone())?;
        self.counts.measured += 1;
        Ok(entry)
    }

    /// `job` alone, measured now.
    async fn take_one(&self, job: MeasureJob, procedure: &Procedure) -> Result<Taken, MeasureError> {
        let (done, outcome) = self.fleet.take(vec![job], procedure, true).await;
        outcome?;
        Ok(done.into_iter().next().expect("the one job measured"))
    }

    /// Measures every job not in the cache and returns a measurement per job in order.
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
        let (done, outcome) = self.fleet.take(todo, &self.clean(template), false).await;
        // Keep what was measured even when another measurement failed.
        for taken in done {
            self.keep(taken)?;
        }
        outcome?;
        Ok(keys.iter().map(|k| self.cached(k, template.energy).expect("measured or cached").clone()).collect())
    }
}

impl Measurements for DevicePool {
    fn device(&self) -> &DeviceInfo {
        self.fleet.device()
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
            let taken = self.take_one(job, &self.clean(request)).await?;
            Ok(self.keep(taken)?)
        }
        .boxed_local()
    }

    fn measure_uncached<'a>(
        &'a mut self,
        job: MeasureJob,
        request: &'a MeasureRequest,
    ) -> LocalBoxFuture<'a, Result<Checked, MeasureError>> {
        async move { Ok(self.take_one(job, &self.clean(request)).await?.checked) }.boxed_local()
    }

    fn measure_once<'a>(
        &'a mut self,
        job: MeasureJob,
        request: &'a MeasureRequest,
    ) -> LocalBoxFuture<'a, Result<Measurement, MeasureError>> {
        async move {
            let procedure = Procedure { request: request.clone(), clean: None };
            Ok(self.take_one(job, &procedure).await?.checked.measurement)
        }
        .boxed_local()
    }

    fn counts(&self) -> MeasureCounts {
        self.counts
    }
}
