//! Energy, thermal, affinity and per-op telemetry through the agent's API
//! (DESIGN §6, §10): a real agent on loopback reading a fixture sysfs tree
//! (this VM has no RAPL, thermal zones or cpufreq) with the real readers.

use std::path::{Path, PathBuf};

use edgeloop::client::ClientError;
use edgeloop_agent::thermal::COOLDOWN_POLL;
use edgeloop_api::{ErrorCode, MeasureRequest};
use edgeloop_e2e::{FileReads, SimulatedRapl, TestAgent, quick_request, small_model};

/// Watts the simulated package draws per busy core.
const W_PER_CORE: f64 = 10.0;

fn write(root: &Path, rel: &str, body: &str) {
    let path = root.join(rel);
    std::fs::create_dir_all(path.parent().unwrap()).unwrap();
    let tmp = path.with_extension("tmp");
    std::fs::write(&tmp, body).unwrap();
    std::fs::rename(&tmp, &path).unwrap();
}

/// RAPL plus one thermal zone at `temp_c` (passive trip at 95 °C) and every CPU at 2 GHz.
fn device(temp_c: f64) -> (SimulatedRapl, TestAgent) {
    let rapl = SimulatedRapl::start(2.0, W_PER_CORE);
    let sys = rapl.sysfs();
    write(sys, "class/thermal/thermal_zone0/type", "cpu-thermal\n");
    set_temp(sys, temp_c);
    write(sys, "class/thermal/thermal_zone0/trip_point_0_type", "passive\n");
    write(sys, "class/thermal/thermal_zone0/trip_point_0_temp", "95000\n");
    set_freq_khz(sys, 2_000_000);
    let sys = sys.to_path_buf();
    let agent = TestAgent::start_with(move |config| config.roots.sys = sys);
    (rapl, agent)
}

const ZONE_TEMP: &str = "class/thermal/thermal_zone0/temp";

fn set_temp(sys: &Path, temp_c: f64) {
    write(sys, ZONE_TEMP, &format!("{}\n", (temp_c * 1000.0) as i64));
}

fn freq_file(sys: &Path, cpu: usize) -> PathBuf {
    sys.join(format!("devices/system/cpu/cpu{cpu}/cpufreq/scaling_cur_freq"))
}

fn set_freq_khz(sys: &Path, khz: u64) {
    for cpu in edgeloop_agent::affinity::current().unwrap() {
        let path = freq_file(sys, cpu);
        write(path.parent().unwrap(), "scaling_cur_freq", &format!("{khz}\n"));
    }
}

fn api_error(err: ClientError) -> (u16, ErrorCode, String) {
    match err {
        ClientError::Api { status, code, message } => (status, code, message),
        other => panic!("expected an API error, got {other:?}"),
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn energy_thermal_profile_and_affinity_in_one_measurement() {
    let _device = edgeloop_e2e::exclusive().await;
    let (_rapl, agent) = device(45.0);
    let client = agent.client();
    let info = client.info().await.unwrap();
    assert_eq!(info.energy_sensors, vec!["rapl:package-0".to_string()]);
    assert_eq!(info.energy_unavailable_reason, None);

    let sha = client.upload(&small_model()).await.unwrap().sha256;
    // The last CPU this process may use: not what an unpinned thread reports.
    let cpu = *edgeloop_agent::affinity::current().unwrap().last().unwrap();
    let request = MeasureRequest { energy: true, profile_ops: true, cpus: Some(vec![cpu]), ..quick_request(&sha) };
    let m = client.measure(&request).await.unwrap();

    assert_eq!(m.cpus, Some(vec![cpu]), "the measuring thread's sched_getaffinity");

    let e = m.energy.as_ref().expect("energy measured");
    assert_eq!(e.sensor, "rapl:package-0");
    assert!(e.window_ms >= 1000.0, "energy needs a window of at least 1 s: {e:?}");
    assert_eq!(e.inferences, m.latency_ms.n);
    assert!(e.readings >= 100, "sampled at 200 Hz: {e:?}");
    // Idle is the simulated 2 W plus whatever this process's other threads
    // (the counter's writer, the sampler) burn meanwhile: a real package's
    // idle has its background too. The work must draw more.
    assert!(e.idle_power_w > 1.5 && e.idle_power_w < e.avg_power_w, "idle: {e:?}");
    // One busy core for one inference's time costs W_PER_CORE × latency.
    let expected_mj = W_PER_CORE * m.latency_ms.mean;
    assert!(
        e.mj_per_inference > 0.5 * expected_mj && e.mj_per_inference < 2.0 * expected_mj,
        "{} mJ per inference, expected about {expected_mj} mJ: {e:?}",
        e.mj_per_inference
    );

    let t = m.thermal.as_ref().expect("thermal readings");
    assert_eq!((t.start_c, t.end_c), (Some(45.0), Some(45.0)));
    assert_eq!(t.cpu_freq_start_mhz, Some(2000.0));
    assert!(!t.throttled, "{t:?}");

    let ops = m.ops.as_ref().expect("per-op profile");
    assert!(ops.len() >= 5, "{ops:?}");
    assert!(ops.windows(2).all(|w| w[0].ms >= w[1].ms), "slowest first");
    assert!((ops.iter().map(|o| o.share).sum::<f64>() - 1.0).abs() < 1e-6);
    // Node names carry their layer: `stage1.block2.3x3_MBConv3/Conv_40`.
    assert!(ops.iter().any(|o| edgeloop_onnx::node_scope(&o.node).is_some() && o.node.contains("/Conv")), "{ops:?}");
}

#[tokio::test(flavor = "multi_thread")]
async fn a_frequency_drop_mid_measurement_is_flagged() {
    let _device = edgeloop_e2e::exclusive().await;
    let (rapl, agent) = device(45.0);
    let client = agent.client();
    let sha = client.upload(&small_model()).await.unwrap().sha256;
    let sys = rapl.sysfs().to_path_buf();
    let mut reads = FileReads::watch(&freq_file(&sys, edgeloop_agent::affinity::current().unwrap()[0]));
    // Drop to 1.2 GHz inside the timed window (after the monitor's first
    // reading and one poll at 2 GHz), and back two polls later, well before
    // the window ends.
    let dip = std::thread::spawn(move || {
        reads.wait(2);
        set_freq_khz(&sys, 1_200_000);
        reads.wait(2);
        set_freq_khz(&sys, 2_000_000);
    });
    let m = client.measure(&MeasureRequest { min_duration_ms: 1200, ..quick_request(&sha) }).await.unwrap();
    dip.join().unwrap();
    let t = m.thermal.unwrap();
    assert!(t.throttled, "{t:?}");
    assert_eq!(t.cpu_freq_min_mhz, Some(1200.0));
    assert!(t.throttle_reason.unwrap().contains("1200 MHz"));
}

#[tokio::test(flavor = "multi_thread")]
async fn cooldown_waits_for_the_device_or_says_it_is_too_hot() {
    let _device = edgeloop_e2e::exclusive().await;
    let (rapl, agent) = device(80.0);
    let client = agent.client();
    let sha = client.upload(&small_model()).await.unwrap().sha256;
    let hot = MeasureRequest { cooldown_c: Some(50.0), cooldown_timeout_ms: 300, ..quick_request(&sha) };
    let (status, code, message) = api_error(client.measure(&hot).await.unwrap_err());
    assert_eq!((status, code), (503, ErrorCode::TooHot), "{message}");
    assert!(message.contains("thermal_zone0") && message.contains("80.0"), "{message}");

    let sys = rapl.sysfs().to_path_buf();
    let mut reads = FileReads::watch(&sys.join(ZONE_TEMP));
    // The device cools after the agent has read the zone three times: at
    // least once while waiting for it.
    let cooling = std::thread::spawn(move || {
        reads.wait(3);
        set_temp(&sys, 40.0);
    });
    let m = client.measure(&MeasureRequest { cooldown_timeout_ms: 10_000, ..hot }).await.unwrap();
    cooling.join().unwrap();
    let t = m.thermal.unwrap();
    assert!(t.cooldown_wait_ms >= COOLDOWN_POLL.as_secs_f64() * 1000.0, "{t:?}");
    assert_eq!(t.start_c, Some(40.0));
}

#[tokio::test(flavor = "multi_thread")]
async fn unusable_cpus_and_missing_sensors_are_explained() {
    let _device = edgeloop_e2e::exclusive().await;
    let empty = tempfile::tempdir().unwrap();
    let sys = empty.path().to_path_buf();
    let agent = TestAgent::start_with(move |config| config.roots.sys = sys);
    let client = agent.client();
    let info = client.info().await.unwrap();
    assert!(info.energy_sensors.is_empty());
    assert!(info.energy_unavailable_reason.as_deref().unwrap_or("").contains("no RAPL"), "{info:?}");

    let sha = client.upload(&small_model()).await.unwrap().sha256;
    let m = client.measure(&MeasureRequest { energy: true, ..quick_request(&sha) }).await.unwrap();
    assert!(m.energy.is_none());
    assert!(m.energy_unavailable_reason.unwrap().contains("no RAPL"));
    assert!(m.thermal.unwrap().start_c.is_none(), "no zones, no temperature");

    let far = MeasureRequest { cpus: Some(vec![4000]), ..quick_request(&sha) };
    let (status, code, message) = api_error(client.measure(&far).await.unwrap_err());
    assert_eq!((status, code), (400, ErrorCode::BadRequest));
    assert!(message.contains("cpu 4000 is not available"), "{message}");
    // And the agent carries on.
    assert!(client.measure(&quick_request(&sha)).await.is_ok());
}
