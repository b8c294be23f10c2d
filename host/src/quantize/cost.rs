//! What a quantization policy costs: model size (computed), or latency /
//! energy on the device — predicted from its per-precision tables with a
//! correction fitted on whole-policy measurements, and measured through its
//! agent (cached, so a resumed search never measures a policy twice).

use edgeloop_api::MeasureRequest;
use edgeloop_export::quant::{Precision, QuantPolicy};
use edgeloop_space::{Arch, Layer, Space};
use edgeloop_train::haq::layer_params;
use serde::{Deserialize, Serialize};

use crate::cache::CachedMeasurement;
use crate::client::sha256_hex;
use crate::measure::{MeasureJob, Measurements};
use crate::predict::{Metric, Predictor, Stat};
use crate::search::Budget;
use crate::table::LatencyTable;
use crate::table::build::TablePrecision;

/// The budget of a quantization search.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Constraint {
    /// p50 latency on the device, ms.
    LatencyMs(f64),
    /// Energy per inference above idle on the device, mJ.
    EnergyMj(f64),
    /// Weights' storage Σ bits·params, kB (1000 bytes).
    SizeKb(f64),
}

impl Constraint {
    pub fn limit(self) -> f64 {
        match self {
            Constraint::LatencyMs(v) | Constraint::EnergyMj(v) | Constraint::SizeKb(v) => v,
        }
    }

    pub fn unit(self) -> &'static str {
        match self {
            Constraint::LatencyMs(_) => "ms",
            Constraint::EnergyMj(_) => "mJ",
            Constraint::SizeKb(_) => "kB",
        }
    }

    /// `latency`, `energy` or `size`.
    pub fn metric(self) -> &'static str {
        match self {
            Constraint::LatencyMs(_) => "latency",
            Constraint::EnergyMj(_) => "energy",
            Constraint::SizeKb(_) => "size",
        }
    }

    /// The budget a device measurement is judged against (p50 latency, or
    /// energy); none for a size budget, which is computed from the policy.
    pub fn device_budget(self) -> Option<Budget> {
        let budget = |metric, limit| Budget { metric, limit, stat: Stat::P50 };
        match self {
            Constraint::LatencyMs(limit) => Some(budget(Metric::Latency, limit)),
            Constraint::EnergyMj(limit) => Some(budget(Metric::Energy, limit)),
            Constraint::SizeKb(_) => None,
        }
    }

    /// Judged on a device measurement (not computed from the policy).
    pub fn on_device(self) -> bool {
        self.device_budget().is_some()
    }

    /// The figure of a device measurement this constraint judges.
    pub fn measured(self, m: &CachedMeasurement) -> f64 {
        self.device_budget().map_or(f64::NAN, |b| b.measured(m))
    }
}

/// Storage of the weights of `layers` under `policy`, kB: Σ bits·params / 8
/// / 1000, fp32 layers at 32 bits (DESIGN §9's model-size cost; scales and
/// zero points, one per channel, are left out as HAQ leaves them out).
pub fn size_kb(layers: &[Layer], policy: &QuantPolicy) -> f64 {
    let bits = |p: Precision| match p {
        Precision::Fp32 => 32.0,
        Precision::Int { weight_bits, .. } => f64::from(weight_bits),
    };
    layers.iter().zip(&policy.layers).map(|(l, &p)| bits(p) * layer_params(l) as f64).sum::<f64>() / 8.0 / 1000.0
}

/// One policy measured as a whole on the device, against the tables' sum.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct TableCheck {
    pub policy: String,
    /// Overhead + Σ layer rows, uncorrected.
    pub table_sum: f64,
    pub measured: f64,
}

/// Latency or energy of a policy predicted from the device's fp32 and int8
/// tables: overhead + k·Σ (row of the layer's precision − overhead), k fitted
/// on whole policies measured on the device (as `table calibrate` fits it
/// for architectures: single-layer models run a little differently from
/// the same layers inside a network).
#[derive(Debug, Clone, PartialEq)]
pub struct PolicyCosts {
    overhead: f64,
    /// Per layer: its row net of the overhead, per table precision.
    fp32: Vec<f64>,
    int8: Vec<f64>,
    scale: f64,
}

impl PolicyCosts {
    /// From the tables (`energy`: their energy columns instead of latency).
    pub fn from_tables(
        space: &Space,
        arch: &Arch,
        fp32: &LatencyTable,
        int8: &LatencyTable,
        energy: bool,
    ) -> anyhow::Result<PolicyCosts> {
        let predictor = |t| if energy { Predictor::energy(t) } else { Ok(Predictor::new(t)) };
        let (p32, p8) = (predictor(fp32)?, predictor(int8)?);
        let overhead = p32.overhead_ms(space)?;
        let layers = arch.layers(space)?;
        let rows = |p: &Predictor| layers.iter().map(|l| p.layer_ms(l, overhead)).collect::<Result<Vec<_>, _>>();
        Ok(PolicyCosts { overhead, fp32: rows(&p32)?, int8: rows(&p8)?, scale: 1.0 })
    }

    fn layer_sum(&self, policy: &QuantPolicy) -> f64 {
        let row = |(i, &p): (usize, &Precision)| match TablePrecision::of(p) {
            TablePrecision::Fp32 => self.fp32[i],
            TablePrecision::Int8 => self.int8[i],
        };
        policy.layers.iter().enumerate().map(row).sum()
    }

    /// The uncorrected prediction: overhead + Σ rows.
    pub fn table_sum(&self, policy: &QuantPolicy) -> f64 {
        self.overhead + self.layer_sum(policy)
    }

    pub fn predict(&self, policy: &QuantPolicy) -> f64 {
        self.overhead + self.scale * self.layer_sum(policy)
    }

    pub fn scale(&self) -> f64 {
        self.scale
    }

    /// Fits k by least squares through the origin on `checks` (layer sum
    /// against measured − overhead); unchanged without usable checks.
    pub fn fit(&mut self, checks: &[TableCheck]) {
        let points = checks.iter().map(|c| (c.table_sum - self.overhead, c.measured - self.overhead));
        if let Some(k) = crate::calibrate::fit_through_origin(points).filter(|k| *k > 0.0) {
            self.scale = k;
        }
    }
}

/// A policy as one short line: `fp32` or `w4a8` per layer.
pub fn describe(policy: &QuantPolicy) -> String {
    let layer = |p: &Precision| match p {
        Precision::Fp32 => "fp32".to_string(),
        Precision::Int { weight_bits, activation_bits } => format!("w{weight_bits}a{activation_bits}"),
    };
    policy.layers.iter().map(layer).collect::<Vec<_>>().join(" ")
}

/// Measures quantized models of one arch through the measurement service,
/// cached by (device, arch, policy): what a policy costs does not depend on
/// the weights' values.
pub struct PolicyMeter {
    pub service: Box<dyn Measurements>,
    pub request: MeasureRequest,
    arch_hash: String,
}

impl PolicyMeter {
    pub fn new(service: Box<dyn Measurements>, request: MeasureRequest, arch: &Arch) -> PolicyMeter {
        PolicyMeter { service, request, arch_hash: arch.hash() }
    }

    fn key(&self, policy: &QuantPolicy) -> String {
        let policy = serde_json::to_string(policy).expect("a policy serialises");
        sha256_hex(format!("{}{policy}", self.arch_hash).as_bytes())
    }

    /// The measurement of `policy`, whose model `model` gives when it has
    /// not been measured on this device yet.
    pub async fn measure(
        &mut self,
        policy: &QuantPolicy,
        model: impl FnOnce() -> anyhow::Result<Vec<u8>>,
    ) -> anyhow::Result<CachedMeasurement> {
        let key = self.key(policy);
        let bytes = if self.service.cached(&key, self.request.energy).is_some() { Vec::new() } else { model()? };
        let job = MeasureJob {
            key,
            ops: vec![describe(policy)],
            label: format!("policy [{}]", describe(policy)),
            bytes,
            expected_min: None,
        };
        Ok(self.service.measure(vec![job], &self.request).await?.remove(0))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn size_by_hand() {
        let space = Space::load("tiny", 1.0).unwrap();
        let layers = &space.prefix_layers()[..1];
        // The stem: 3×3 conv 3 → out channels.
        let params = (layers[0].out_channels * 3 * 9) as f64;
        let at = |p| size_kb(layers, &QuantPolicy { layers: vec![p] });
        assert_eq!(at(Precision::Fp32), params * 4.0 / 1000.0);
        assert_eq!(at(Precision::Int { weight_bits: 4, activation_bits: 8 }), params * 0.5 / 1000.0);
    }

    #[test]
    fn policy_costs_pick_each_layers_table_and_fit_a_factor() {
        let costs = PolicyCosts { overhead: 0.1, fp32: vec![1.0, 2.0], int8: vec![5.0, 7.0], scale: 1.0 };
        let policy =
            QuantPolicy { layers: vec![Precision::Fp32, Precision::Int { weight_bits: 3, activation_bits: 5 }] };
        assert!((costs.predict(&policy) - 8.1).abs() < 1e-12);
        assert_eq!(describe(&policy), "fp32 w3a5");
        let mut fitted = costs.clone();
        // Whole policies ran 1.5× the layer sum.
        fitted.fit(&[TableCheck { policy: String::new(), table_sum: 8.1, measured: 0.1 + 1.5 * 8.0 }]);
        assert!((fitted.scale() - 1.5).abs() < 1e-12);
        assert!((fitted.table_sum(&policy) - 8.1).abs() < 1e-12);
    }
}
