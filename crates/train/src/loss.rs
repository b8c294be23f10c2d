//! The search loss with a cost term (DESIGN §8): cross-entropy combined with
//! the expected latency (or energy) E against the target T. The budget as a
//! constraint (DESIGN §8.1) is `AddLinear` with a λ the caller moves by dual
//! ascent (`CostLossKind::Lagrange`).

use std::str::FromStr;

use serde::{Deserialize, Serialize};
use tch::{Kind, Tensor};

#[derive(Debug, Clone, Copy, PartialEq)]
pub enum CostLoss {
    /// L = a · CE · (log E / log T)^b. Logs are taken of costs in µs (or µJ),
    /// so that sub-millisecond budgets still have log T > 0.
    MulLog { a: f64, b: f64 },
    /// L = CE + λ (E − T) / T: a fixed penalty, or the Lagrangian of the
    /// constraint E ≤ T with the current multiplier λ.
    AddLinear { lambda: f64 },
    /// L = CE: no cost term.
    Off,
}

/// Which loss, without its parameters (the `--latency-loss` flag; stored
/// in settings by the same names).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum CostLossKind {
    /// The constraint E ≤ T with a multiplier λ ≥ 0 moved by dual ascent.
    #[serde(rename = "lagrange")]
    Lagrange,
    #[serde(rename = "mul#log")]
    MulLog,
    #[serde(rename = "add#linear")]
    AddLinear,
    #[serde(rename = "off", alias = "none")]
    Off,
}

impl FromStr for CostLossKind {
    type Err = String;
    fn from_str(s: &str) -> Result<CostLossKind, String> {
        match s {
            "lagrange" => Ok(CostLossKind::Lagrange),
            "mul#log" => Ok(CostLossKind::MulLog),
            "add#linear" => Ok(CostLossKind::AddLinear),
            "off" | "none" => Ok(CostLossKind::Off),
            _ => Err(format!("`{s}` is not a latency loss (lagrange, mul#log, add#linear, off)")),
        }
    }
}

impl CostLoss {
    /// The loss from `ce` (a scalar on the training device) and `expected`
    /// (a scalar f64 on the CPU, in ms or mJ, differentiable in α).
    pub fn apply(&self, ce: &Tensor, expected: &Tensor, target: f64) -> Tensor {
        let factor = match *self {
            CostLoss::Off => return ce.shallow_clone(),
            CostLoss::MulLog { a, b } => ((expected * 1000.0).log() / (target * 1000.0).ln()).pow_tensor_scalar(b) * a,
            CostLoss::AddLinear { lambda } => {
                let term = (expected - target) / target * lambda;
                return ce + term.to_device(ce.device()).to_kind(Kind::Float);
            }
        };
        ce * factor.to_device(ce.device()).to_kind(Kind::Float)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::GateMode;

    #[test]
    fn settings_store_the_flag_names_and_read_old_ones() {
        for (kind, name) in [
            (CostLossKind::Lagrange, "lagrange"),
            (CostLossKind::MulLog, "mul#log"),
            (CostLossKind::AddLinear, "add#linear"),
            (CostLossKind::Off, "off"),
        ] {
            assert_eq!(serde_json::to_string(&kind).unwrap(), format!("\"{name}\""));
            assert_eq!(name.parse::<CostLossKind>().unwrap(), kind);
        }
        // Checkpoints wrote the flag as given, and `none` was accepted.
        assert_eq!(serde_json::from_str::<CostLossKind>("\"none\"").unwrap(), CostLossKind::Off);
        assert!(serde_json::from_str::<CostLossKind>("\"mul\"").is_err());
        assert_eq!(serde_json::to_string(&GateMode::Two).unwrap(), "\"two\"");
        assert_eq!(serde_json::from_str::<GateMode>("\"full\"").unwrap(), GateMode::Full);
    }
}
