//! `edgeloop farm status`: per device class, the live devices and the jobs queue.

use async_nats::jetstream::consumer::pull;
use futures_util::TryStreamExt as _;
use serde::Serialize;

use super::{DeviceRecord, Farm, FarmError, Priority, broker, consumer_name};

/// One priority's queue of a class.
#[derive(Debug, Clone, Serialize)]
pub struct QueueStatus {
    pub priority: Priority,
    /// Jobs no worker has taken yet.
    pub pending: u64,
    /// Jobs a worker is measuring.
    pub in_flight: usize,
    /// Workers waiting for a job.
    pub waiting: usize,
    /// Jobs delivered more than once (a worker died, or its agent failed).
    pub redelivered: usize,
}

#[derive(Debug, Clone, Serialize)]
pub struct ClassStatus {
    pub class: String,
    pub devices: Vec<DeviceRecord>,
    pub queues: Vec<QueueStatus>,
}

/// Every class with a worker's consumer or a live device.
pub async fn status(farm: &Farm) -> Result<Vec<ClassStatus>, FarmError> {
    let jobs = farm.jobs().await?;
    let names: Vec<String> =
        jobs.consumer_names().try_collect().await.map_err(broker("listing the workers' consumers"))?;
    let devices = farm.devices(None).await?;
    let mut classes: Vec<String> = names
        .iter()
        .filter_map(|n| n.strip_prefix("W_")?.rsplit_once('_').map(|(class, _)| class.to_string()))
        .chain(devices.iter().map(|d| d.class.clone()))
        .collect();
    classes.sort();
    classes.dedup();
    let mut out = Vec::new();
    for class in classes {
        let mut queues = Vec::new();
        for priority in Priority::ALL {
            let name = consumer_name(&class, priority);
            let Ok(mut consumer) = jobs.get_consumer::<pull::Config>(&name).await else { continue };
            let info = consumer.info().await.map_err(broker(format!("reading consumer {name}")))?;
            queues.push(QueueStatus {
                priority,
                pending: info.num_pending,
                in_flight: info.num_ack_pending,
                waiting: info.num_waiting,
                redelivered: info.num_redelivered,
            });
        }
        let devices = devices.iter().filter(|d| d.class == class).cloned().collect();
        out.push(ClassStatus { class, devices, queues });
    }
    Ok(out)
}
