//! The host's measurement pool over several agents of one class: agents
//! that die are parked and their jobs go to the others; an agent back on
//! its `/v1/health` takes jobs again; a model's own fault is not retried;
//! with every agent down the pool gives up after its grace period.

use std::time::Duration;

use edgeloop::cache::MeasurementCache;
use edgeloop::measure::{DevicePool, MeasureError, MeasureJob, Measurements};
use edgeloop_e2e::{TestAgent, quick_request};
use edgeloop_export::export::{RandomWeights, arch_model};
use edgeloop_space::{Arch, Space};

/// `n` distinct architectures of `tiny` from `seed` on, as jobs.
fn jobs(seed: u64, n: u64) -> Vec<MeasureJob> {
    let space = Space::load("tiny", 1.0).unwrap();
    (seed..seed + n)
        .map(|s| {
            let arch = Arch::random(&space, s);
            let model = edgeloop_onnx::encode(&arch_model(&space, &arch, &mut RandomWeights::new(0)).unwrap());
            MeasureJob::arch(&arch, model, None)
        })
        .collect()
}

async fn pool(agents: &[&TestAgent]) -> DevicePool {
    let clients = agents.iter().map(|a| a.client()).collect();
    DevicePool::connect(clients, MeasurementCache::in_memory()).await.unwrap()
}

/// Whether `agent` holds the model of `job` (it was uploaded there to be measured).
async fn holds(agent: &TestAgent, job: &MeasureJob) -> bool {
    agent.client().has_model(&edgeloop::client::sha256_hex(&job.bytes)).await.unwrap()
}

#[tokio::test(flavor = "current_thread")]
async fn a_dead_agent_is_parked_and_its_jobs_measured_by_the_other_until_it_answers_again() {
    let _machine = edgeloop_e2e::shared().await;
    let (a, b) = (TestAgent::start(), TestAgent::start());
    let mut pool = pool(&[&a, &b]).await;
    let request = quick_request("");
    let killed = a.kill();

    let first = jobs(0, 4);
    let measured = pool.measure(first.clone(), &request).await.unwrap();
    assert_eq!(measured.len(), 4);
    assert_eq!(pool.counts().measured, 4, "each job measured once, none lost with the dead agent");
    for job in &first {
        assert!(holds(&b, job).await, "{} not measured on the live agent", job.label);
    }

    // Back at its address: its health answers, it takes jobs again.
    let a = TestAgent::restart(killed);
    let second = jobs(10, 4);
    pool.measure(second.clone(), &request).await.unwrap();
    assert_eq!(pool.counts().measured, 8);
    let mut on_a = 0;
    for job in &second {
        on_a += usize::from(holds(&a, job).await);
    }
    assert!(on_a >= 1, "the agent back took no job");
}

#[tokio::test(flavor = "current_thread")]
async fn a_models_own_fault_is_not_retried_on_another_agent() {
    let _machine = edgeloop_e2e::shared().await;
    let (a, b) = (TestAgent::start(), TestAgent::start());
    let mut pool = pool(&[&a, &b]).await;
    let broken = MeasureJob::model("broken model".into(), edgeloop_e2e::bad_models::truncated());
    let error = pool.measure_once(broken, &quick_request("")).await.unwrap_err();
    assert!(matches!(error, MeasureError::Measure { .. }), "{error:?}");
    assert!(format!("{error:#}").contains("broken model"), "{error:#}");
    // Both agents stay in the pool: the next job is measured at once.
    pool.measure(jobs(20, 2), &quick_request("")).await.unwrap();
}

#[tokio::test(flavor = "current_thread")]
async fn with_every_agent_down_the_pool_gives_up_after_its_grace_naming_them() {
    let _machine = edgeloop_e2e::shared().await;
    let a = TestAgent::start();
    let url = a.url();
    let mut pool = pool(&[&a]).await.with_grace(Duration::from_millis(300));
    let _killed = a.kill();
    let error = pool.measure(jobs(30, 2), &quick_request("")).await.unwrap_err();
    assert!(matches!(error, MeasureError::AllDown { left: 2, .. }), "{error:?}");
    assert!(error.to_string().contains(&url), "{error}");
    assert_eq!(pool.counts().measured, 0);
}
