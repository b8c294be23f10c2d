//! Shared pieces of the end-to-end tests and benchmarks: a real agent on a
//! loopback port, a real client, and models built with the ONNX writer.

use edgeloop::client::AgentClient;
use edgeloop_agent::runtime::Runtimes;
use edgeloop_agent::{AgentConfig, LocalAgent};
use edgeloop_api::MeasureRequest;
use edgeloop_onnx::samples::MbconvNet;
use edgeloop_onnx::{Attr, Dim, ElemType, GraphBuilder, encode};
use tempfile::TempDir;

pub const TOKEN: &str = "test-token-0123456789";

/// A real agent serving on 127.0.0.1 from a temp cache dir.
pub struct TestAgent {
    pub agent: LocalAgent,
    pub cache: TempDir,
}

impl TestAgent {
    pub fn start() -> Self {
        Self::start_with(|_| {})
    }

    /// Starts with the test token; `tweak` adjusts the rest of the config.
    pub fn start_with(tweak: impl FnOnce(&mut AgentConfig)) -> Self {
        let cache = tempfile::tempdir().expect("temp cache dir");
        let agent = Self::start_in(&cache, tweak);
        TestAgent { agent, cache }
    }

    /// Starts an agent on an existing cache dir (e.g. after a restart).
    pub fn start_in(cache: &TempDir, tweak: impl FnOnce(&mut AgentConfig)) -> LocalAgent {
        let mut config = AgentConfig::new(cache.path().to_path_buf());
        config.token = Some(TOKEN.into());
        tweak(&mut config);
        LocalAgent::start(config, Runtimes::detect()).expect("agent starts")
    }

    pub fn url(&self) -> String {
        self.agent.url()
    }

    pub fn client(&self) -> AgentClient {
        AgentClient::new(&self.url(), Some(TOKEN.into())).expect("client")
    }
}

/// A raw HTTP client, for requests the typed client never sends.
pub fn raw_http() -> reqwest::Client {
    let _ = rustls::crypto::ring::default_provider().install_default();
    reqwest::Client::new()
}

/// A request that measures briefly: tests assert behaviour, not speed.
pub fn quick_request(model: &str) -> MeasureRequest {
    MeasureRequest {
        model: model.to_string(),
        warmup_runs: 2,
        min_runs: 5,
        min_duration_ms: 20,
        max_duration_ms: 10_000,
        ..Default::default()
    }
}

pub fn small_model() -> Vec<u8> {
    encode(&MbconvNet::small().to_model())
}

/// Models that must be refused without harming the agent.
pub mod bad_models {
    use super::*;

    pub fn random_bytes() -> Vec<u8> {
        // Not a protobuf: 0xff starts a field with an invalid wire type.
        (0..4096u32).map(|i| (i.wrapping_mul(2_654_435_761) >> 13) as u8 | 0x07).collect()
    }

    pub fn truncated() -> Vec<u8> {
        let good = small_model();
        good[..good.len() / 2].to_vec()
    }

    /// Well-formed protobuf whose node reads a value nothing produces.
    pub fn missing_input() -> Vec<u8> {
        let mut g = GraphBuilder::new("missing_input");
        let x = g.input("x", ElemType::F32, &[1.into(), 4.into()]);
        let y = g.node("Add", &[&x, "nowhere"], vec![]);
        g.output(&y, ElemType::F32, &[1.into(), 4.into()]);
        encode(&g.finish())
    }

    /// A Conv whose `pads` has the wrong length: tract 0.23 panics on it.
    pub fn bad_conv_pads() -> Vec<u8> {
        let mut g = GraphBuilder::new("bad_pads");
        let x = g.input("x", ElemType::F32, &[1.into(), 2.into(), 8.into(), 8.into()]);
        let w = g.constant_f32("W", &[2, 2, 3, 3], vec![0.1; 36]);
        let y =
            g.node("Conv", &[&x, &w], vec![Attr::Ints("kernel_shape", vec![3, 3]), Attr::Ints("pads", vec![1, 1, 1])]);
        g.output(&y, ElemType::F32, &[1.into(), 2.into(), 8.into(), 8.into()]);
        encode(&g.finish())
    }
}

/// `y = x + 1` with a symbolic batch dimension.
pub fn dynamic_batch_model() -> Vec<u8> {
    let mut g = GraphBuilder::new("dynamic");
    let dims = [Dim::Dynamic("batch".into()), 16.into()];
    let x = g.input("x", ElemType::F32, &dims);
    let one = g.constant_f32("one", &[1], vec![1.0]);
    let y = g.add(&x, &one);
    g.output(&y, ElemType::F32, &dims);
    encode(&g.finish())
}
