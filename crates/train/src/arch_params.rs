//! Architecture parameters α (one logit per candidate per choice block),
//! the binary gates drawn from them, and the gradient estimates of
//! ProxylessNAS (DESIGN §8). α lives on the CPU: it is tiny, and sampling
//! reads it every step.

use std::str::FromStr;

use rand::Rng;
use serde::{Deserialize, Serialize};
use tch::{Device, Kind, Tensor};

/// How many paths an arch step involves per block (stored in settings as `two`, `full`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum GateMode {
    /// Two sampled paths, probabilities renormalised over them; afterwards
    /// the two α are shifted so the unsampled paths' probabilities stay put.
    Two,
    /// Every path's gate gradient (inactive outputs computed without autograd state).
    Full,
}

impl FromStr for GateMode {
    type Err = String;
    fn from_str(s: &str) -> Result<GateMode, String> {
        match s {
            "two" => Ok(GateMode::Two),
            "full" => Ok(GateMode::Full),
            _ => Err(format!("`{s}` is not a gate mode (two, full)")),
        }
    }
}

impl std::fmt::Display for GateMode {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            GateMode::Two => "two",
            GateMode::Full => "full",
        })
    }
}

/// Binary gates of one arch step: the active candidate of each block and
/// the candidates whose gate gradients count.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Gates {
    pub active: Vec<usize>,
    pub involved: Vec<Vec<usize>>,
}

/// The cost (latency in ms or energy in mJ) of every candidate of every
/// block, and of the parts every architecture has.
#[derive(Debug, Clone, PartialEq)]
pub struct CostModel {
    pub fixed: f64,
    pub per_block: Vec<Vec<f64>>,
}

#[derive(Debug)]
pub struct ArchParams {
    alpha: Vec<Tensor>,
}

fn softmax(values: &[f64]) -> Vec<f64> {
    let max = values.iter().copied().fold(f64::NEG_INFINITY, f64::max);
    let exp: Vec<f64> = values.iter().map(|v| (v - max).exp()).collect();
    let sum: f64 = exp.iter().sum();
    exp.into_iter().map(|e| e / sum).collect()
}

fn log_sum_exp(values: &[f64]) -> f64 {
    let max = values.iter().copied().fold(f64::NEG_INFINITY, f64::max);
    max + values.iter().map(|v| (v - max).exp()).sum::<f64>().ln()
}

/// Index drawn with probability proportional to `weights`.
fn draw(weights: &[f64], rng: &mut impl Rng) -> usize {
    let total: f64 = weights.iter().sum();
    let mut u = rng.random::<f64>() * total;
    for (i, w) in weights.iter().enumerate() {
        if u < *w {
            return i;
        }
        u -= w;
    }
    weights.iter().rposition(|w| *w > 0.0).unwrap_or(0)
}

impl ArchParams {
    /// α ~ N(0, 1e-3) per candidate (`counts[b]` candidates in block b).
    pub fn new(counts: &[usize], rng: &mut impl Rng) -> ArchParams {
        // Box–Muller: one standard normal draw per candidate.
        let mut normal = || {
            let (u, v): (f64, f64) = (1.0 - rng.random::<f64>(), rng.random());
            (-2.0 * u.ln()).sqrt() * (std::f64::consts::TAU * v).cos()
        };
        ArchParams::from_values(counts.iter().map(|&n| (0..n).map(|_| 1e-3 * normal()).collect()).collect())
    }

    pub fn from_values(values: Vec<Vec<f64>>) -> ArchParams {
        let alpha = values
            .iter()
            .map(|v| Tensor::from_slice(v).to_kind(Kind::Double).to_device(Device::Cpu).set_requires_grad(true))
            .collect();
        ArchParams { alpha }
    }

    /// The α tensors (leaves that require grad), one per block.
    pub fn tensors(&self) -> &[Tensor] {
        &self.alpha
    }

    pub fn values(&self) -> Vec<Vec<f64>> {
        self.alpha.iter().map(|a| Vec::<f64>::try_from(&a.detach()).expect("α is f64")).collect()
    }

    pub fn probs(&self) -> Vec<Vec<f64>> {
        self.values().iter().map(|v| softmax(v)).collect()
    }

    /// One candidate per block drawn from p = softmax(α).
    pub fn sample(&self, rng: &mut impl Rng) -> Vec<usize> {
        self.probs().iter().map(|p| draw(p, rng)).collect()
    }

    /// The most likely candidate of each block.
    pub fn argmax(&self) -> Vec<usize> {
        self.values()
            .iter()
            .map(|v| v.iter().enumerate().max_by(|a, b| a.1.total_cmp(b.1)).map_or(0, |(i, _)| i))
            .collect()
    }

    /// Mean entropy of p over blocks, in nats.
    pub fn entropy(&self) -> f64 {
        let probs = self.probs();
        let total: f64 = probs.iter().map(|p| -p.iter().filter(|v| **v > 0.0).map(|v| v * v.ln()).sum::<f64>()).sum();
        total / probs.len().max(1) as f64
    }

    /// Gates for an arch step: "full" involves every candidate and draws the
    /// active one from p; "two" draws two distinct candidates from p, then
    /// the active one from p renormalised over them.
    pub fn gates(&self, mode: GateMode, rng: &mut impl Rng) -> Gates {
        let mut gates = Gates { active: Vec::new(), involved: Vec::new() };
        for p in self.probs() {
            let (active, involved) = match mode {
                GateMode::Full => (draw(&p, rng), (0..p.len()).collect()),
                GateMode::Two if p.len() == 1 => (0, vec![0]),
                GateMode::Two => {
                    let first = draw(&p, rng);
                    let mut rest = p.clone();
                    rest[first] = 0.0;
                    let second = draw(&rest, rng);
                    let pair = [first, second];
                    (pair[draw(&[p[first], p[second]], rng)], pair.to_vec())
                }
            };
            gates.active.push(active);
            gates.involved.push(involved);
        }
        gates
    }

    /// E[cost] = fixed + Σ_blocks Σ_i p_i · cost_i, differentiable in α.
    pub fn expected_cost(&self, costs: &CostModel) -> Tensor {
        self.alpha.iter().zip(&costs.per_block).fold(Tensor::from(costs.fixed).to_kind(Kind::Double), |acc, (a, c)| {
            acc + (a.softmax(0, Kind::Double) * Tensor::from_slice(c)).sum(Kind::Double)
        })
    }

    /// ∂L/∂α of block `b` from its gate gradients over `involved`, with p
    /// renormalised over `involved`: ∂L/∂α_i = Σ_j ∂L/∂g_j p_j (δ_ij − p_i)
    /// = p_i (∂L/∂g_i − Σ_j p_j ∂L/∂g_j). Zero for candidates not involved.
    pub fn gate_alpha_grad(&self, b: usize, involved: &[usize], gate_grads: &[f64]) -> Vec<f64> {
        let values = self.values_of(b);
        let p = softmax(&involved.iter().map(|&i| values[i]).collect::<Vec<_>>());
        let mean: f64 = p.iter().zip(gate_grads).map(|(p, g)| p * g).sum();
        let mut grad = vec![0.0; values.len()];
        for ((&i, p), g) in involved.iter().zip(&p).zip(gate_grads) {
            grad[i] = p * (g - mean);
        }
        grad
    }

    /// ∇_α log p(selection) per block: one_hot(selection) − p (REINFORCE).
    pub fn log_prob_grad(&self, selection: &[usize]) -> Vec<Vec<f64>> {
        self.probs()
            .into_iter()
            .zip(selection)
            .map(|(p, &s)| p.iter().enumerate().map(|(i, p)| f64::from(u8::from(i == s)) - p).collect())
            .collect()
    }

    /// After an update in "two" mode: shift the involved α of each block by a
    /// common offset so that their total probability mass — and so every
    /// other candidate's probability — is what it was in `before`.
    pub fn rescale_involved(&self, before: &[Vec<f64>], involved: &[Vec<usize>]) {
        for ((a, old), inv) in self.alpha.iter().zip(before).zip(involved) {
            let mut new = Vec::<f64>::try_from(&a.detach()).expect("α is f64");
            let pick = |v: &[f64]| inv.iter().map(|&i| v[i]).collect::<Vec<_>>();
            let offset = log_sum_exp(&pick(&new)) - log_sum_exp(&pick(old));
            for &i in inv {
                new[i] -= offset;
            }
            tch::no_grad(|| a.detach().copy_(&Tensor::from_slice(&new)));
        }
    }

    fn values_of(&self, b: usize) -> Vec<f64> {
        Vec::<f64>::try_from(&self.alpha[b].detach()).expect("α is f64")
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use rand::SeedableRng;
    use rand::rngs::SmallRng;

    #[test]
    fn rescale_keeps_unsampled_probabilities() {
        let params = ArchParams::from_values(vec![vec![0.1, -0.3, 0.7, 0.2]]);
        let before = params.values();
        let p_before = params.probs()[0].clone();
        tch::no_grad(|| params.tensors()[0].detach().copy_(&Tensor::from_slice(&[0.9, -0.3, 0.1, 0.2])));
        params.rescale_involved(&before, &[vec![0, 2]]);
        let p_after = params.probs()[0].clone();
        for i in [1, 3] {
            assert!((p_before[i] - p_after[i]).abs() < 1e-12, "{p_before:?} {p_after:?}");
        }
        assert!(p_after[0] > p_before[0] && p_after[2] < p_before[2]);
    }

    #[test]
    fn two_mode_involves_two_distinct_candidates() {
        let params = ArchParams::from_values(vec![vec![0.0; 7], vec![0.0; 1]]);
        let mut rng = SmallRng::seed_from_u64(3);
        for _ in 0..50 {
            let g = params.gates(GateMode::Two, &mut rng);
            assert_eq!(g.involved[0].len(), 2);
            assert_ne!(g.involved[0][0], g.involved[0][1]);
            assert!(g.involved[0].contains(&g.active[0]));
            assert_eq!((g.active[1], g.involved[1].clone()), (0, vec![0]));
        }
    }

    #[test]
    fn expected_cost_gradient_is_p_times_cost_minus_mean() {
        let params = ArchParams::from_values(vec![vec![0.5, -0.5, 0.0]]);
        let costs = CostModel { fixed: 2.0, per_block: vec![vec![1.0, 3.0, 0.0]] };
        let e = params.expected_cost(&costs);
        let p = params.probs()[0].clone();
        let mean: f64 = p.iter().zip(&costs.per_block[0]).map(|(p, c)| p * c).sum();
        assert!((e.double_value(&[]) - (2.0 + mean)).abs() < 1e-12);
        let grad = Tensor::run_backward(&[&e], &[&params.tensors()[0]], false, false);
        let grad = Vec::<f64>::try_from(&grad[0]).unwrap();
        for i in 0..3 {
            assert!((grad[i] - p[i] * (costs.per_block[0][i] - mean)).abs() < 1e-12);
        }
    }
}
