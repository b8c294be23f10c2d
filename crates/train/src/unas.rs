//! UNAS's architecture sampler and gradient estimator (SEEDS §2, as
//! NVlabs/unas runs it with `meta_loss = rebar`): α softened to
//! α′ = log(softmax(α) + ε), a Gumbel draw z = log q + g per block, the
//! discrete architecture d = argmax z and the relaxed ζ = softmax(z/τ), and
//! REBAR's conditional relaxed sample ζ̃ ~ p(ζ | d) built from the *same*
//! noise, so that it equals ζ in value. Differentiating
//!
//!   log q(d) · stopgrad[f(d) − f(ζ̂)] + f(ζ̂),   ζ̂ = ζ − ζ̃ + stopgrad(ζ̃)
//!
//! gives [f(d) − f(ζ)]∇log q(d) + ∇f(ζ) − ∇f(ζ̃): unbiased for ∇E_d[f(d)]
//! whatever the relaxed f is — a non-differentiable f(d) (a latency measured
//! on the device) pays for the relaxed one's error in variance, not bias.

use tch::{Kind, Tensor};

/// How UNAS relaxes a categorical choice.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Relaxation {
    /// Gumbel-softmax temperature (UNAS: 0.4, constant).
    pub tau: f64,
    /// Softening: every op keeps probability ≥ ε/(1 + Kε) (UNAS: 0.08).
    pub eps: f64,
}

impl Default for Relaxation {
    fn default() -> Self {
        Relaxation { tau: 0.4, eps: 0.08 }
    }
}

/// The draws of one block, N architectures at once.
#[derive(Debug)]
pub struct BlockDraw {
    /// The op drawn, [N].
    pub choice: Tensor,
    /// It one-hot, [N, K].
    pub onehot: Tensor,
    /// ζ̂, [N, K]: ζ in value, REBAR's gradient.
    pub relaxed: Tensor,
    /// log q(choice), [N], differentiable in α.
    pub log_q: Tensor,
}

impl Relaxation {
    /// log q: the softened probabilities' logs, [K] (normalised).
    pub fn log_q(&self, alpha: &Tensor) -> Tensor {
        (alpha.softmax(-1, Kind::Double) + self.eps).log().log_softmax(-1, Kind::Double)
    }

    /// N draws of the block whose logits are `alpha` [K], from the
    /// uniform noise `u` [N, K] (clamped to [1e-3, 1 − 1e-3], as UNAS does).
    pub fn draw(&self, alpha: &Tensor, u: &Tensor) -> BlockDraw {
        let log_q = self.log_q(alpha);
        let k = log_q.size()[0];
        let log_u = u.to_kind(Kind::Double).clamp(1e-3, 1.0 - 1e-3).log();
        let z = &log_q - (-&log_u).log();
        let choice = z.argmax(-1, false);
        let onehot = choice.one_hot(k).to_kind(Kind::Double);
        let zeta = (&z / self.tau).softmax(-1, Kind::Double);
        // REBAR's noise v, recovered from u so that the conditional sample
        // equals z: log v_d = log u_d / q_d, log v_i = log u_i − q_i·log v_d.
        let q = log_q.exp();
        let q_d = q.index_select(0, &choice);
        let log_v_d = (log_u.gather(1, &choice.unsqueeze(1), false).squeeze_dim(1) / &q_d).detach();
        let log_v = (&log_u - q.unsqueeze(0) * log_v_d.unsqueeze(1)).detach();
        // z̃_d = −log(−log v_d); z̃_i = −log(−log v_i / q_i − log v_d): p(z | d), through q.
        let others = -(-(&log_v / q.unsqueeze(0)) - log_v_d.unsqueeze(1)).log();
        let top = -(-&log_v_d).log();
        let z_tilde = &onehot * top.unsqueeze(1) + (onehot.ones_like() - &onehot) * others;
        let zeta_tilde = (z_tilde / self.tau).softmax(-1, Kind::Double);
        let relaxed = zeta - &zeta_tilde + zeta_tilde.detach();
        BlockDraw { log_q: log_q.index_select(0, &choice), choice, onehot, relaxed }
    }
}

/// UNAS's surrogate loss for a batch of draws: its gradient is the REBAR
/// estimate of ∇E[f(d)]. `discrete` is f of each drawn architecture [N]
/// (any values, no gradient needed), `relaxed` f of each ζ̂ [N],
/// differentiable; `log_q` Σ over blocks of log q(d), [N].
pub fn rebar_loss(log_q: &Tensor, discrete: &Tensor, relaxed: &Tensor) -> Tensor {
    (log_q * (discrete - relaxed).detach() + relaxed).mean(Kind::Double)
}

#[cfg(test)]
mod tests {
    use super::*;
    use rand::rngs::SmallRng;
    use rand::{Rng, SeedableRng};
    use tch::Device;

    const K: i64 = 7;

    /// Uniform noise [n, K] from a test's own generator (tests run in
    /// parallel, and libtorch's generator is shared).
    fn uniform(rng: &mut SmallRng, n: i64) -> Tensor {
        let values: Vec<f64> = (0..n * K).map(|_| rng.random::<f64>()).collect();
        Tensor::from_slice(&values).view([n, K])
    }

    fn normal(rng: &mut SmallRng, shape: &[i64], scale: f64) -> Tensor {
        // Box–Muller, enough for test data.
        let n: i64 = shape.iter().product();
        let values: Vec<f64> = (0..n)
            .map(|_| {
                let (u, v): (f64, f64) = (rng.random::<f64>().max(1e-12), rng.random());
                scale * (-2.0 * u.ln()).sqrt() * (std::f64::consts::TAU * v).cos()
            })
            .collect();
        Tensor::from_slice(&values).view(shape)
    }

    /// α of 3 blocks, seeded, away from uniform.
    fn alphas(rng: &mut SmallRng) -> Vec<Tensor> {
        (0..3).map(|_| normal(rng, &[K], 0.8).set_requires_grad(true)).collect()
    }

    fn grads(loss: &Tensor, alphas: &[Tensor]) -> Vec<f64> {
        let g = Tensor::run_backward(&[loss], alphas, false, false);
        g.iter().flat_map(|g| Vec::<f64>::try_from(g).unwrap()).collect()
    }

    /// f over the 343 architectures, and its multilinear extension (equal
    /// to it at the vertices, smooth inside), scaled and shifted by `bias`.
    struct Toy {
        table: Tensor,
    }

    impl Toy {
        fn discrete(&self, draws: &[BlockDraw]) -> Tensor {
            let [a, b, c] = [0, 1, 2].map(|i| draws[i].choice.shallow_clone());
            self.table.index(&[Some(a), Some(b), Some(c)])
        }

        fn relaxed(&self, points: [&Tensor; 3], bias: (f64, f64)) -> Tensor {
            Tensor::einsum("ni,nj,nk,ijk->n", &[points[0], points[1], points[2], &self.table], None::<i64>) * bias.0
                + bias.1
        }
    }

    /// Batches of 500 draws whose means give an estimator's mean and standard error.
    const GROUPS: usize = 100;

    /// Mean and standard error (over [`GROUPS`] batch means) of the
    /// estimator per component of ∇α.
    fn estimate(
        rng: &mut SmallRng,
        alphas: &[Tensor],
        mut loss_of: impl FnMut(&[BlockDraw]) -> Tensor,
    ) -> (Vec<f64>, Vec<f64>) {
        let (groups, n) = (GROUPS, 500);
        let relax = Relaxation::default();
        let means: Vec<Vec<f64>> = (0..groups)
            .map(|_| {
                let draws: Vec<BlockDraw> = alphas.iter().map(|a| relax.draw(a, &uniform(rng, n))).collect();
                grads(&loss_of(&draws), alphas)
            })
            .collect();
        let dims = means[0].len();
        let mean: Vec<f64> = (0..dims).map(|i| means.iter().map(|m| m[i]).sum::<f64>() / groups as f64).collect();
        let se = (0..dims)
            .map(|i| {
                let var = means.iter().map(|m| (m[i] - mean[i]).powi(2)).sum::<f64>() / (groups - 1) as f64;
                (var / groups as f64).sqrt()
            })
            .collect();
        (mean, se)
    }

    /// ∇α of E_d[f(d)] exactly, over the 343 architectures.
    fn exact(alphas: &[Tensor], table: &Tensor) -> Vec<f64> {
        let relax = Relaxation::default();
        let q: Vec<Tensor> = alphas.iter().map(|a| relax.log_q(a).exp()).collect();
        let expectation = Tensor::einsum("i,j,k,ijk->", &[&q[0], &q[1], &q[2], table], None::<i64>);
        grads(&expectation, alphas)
    }

    fn within_3_se(mean: &[f64], se: &[f64], exact: &[f64]) -> Result<(), String> {
        for i in 0..exact.len() {
            if (mean[i] - exact[i]).abs() > 3.0 * se[i] + 1e-12 {
                return Err(format!("component {i}: {} vs exact {} (se {})", mean[i], exact[i], se[i]));
            }
        }
        Ok(())
    }

    #[test]
    fn the_sampler_draws_the_softened_distribution_and_relaxes_to_a_point_of_the_simplex() {
        let relax = Relaxation::default();
        let alpha = Tensor::from_slice(&[2.0f64, 0.0, -1.0, 0.5, -3.0, 1.0, 0.0]);
        let q = Vec::<f64>::try_from(&relax.log_q(&alpha).exp()).unwrap();
        // Every op keeps at least ε/(1 + Kε).
        assert!(q.iter().all(|&p| p >= 0.08 / (1.0 + 7.0 * 0.08) - 1e-12));
        let mut rng = SmallRng::seed_from_u64(3);
        let n = 100_000;
        let draw = relax.draw(&alpha, &uniform(&mut rng, n));
        let counts = Vec::<f64>::try_from(&draw.onehot.sum_dim_intlist(0, false, Kind::Double)).unwrap();
        // χ² with 6 degrees of freedom: under 22.5 with probability 0.999. The
        // clamping of u to [1e-3, 1 − 1e-3] shifts the frequencies a little.
        let chi2: f64 = counts.iter().zip(&q).map(|(c, p)| (c - n as f64 * p).powi(2) / (n as f64 * p)).sum();
        assert!(chi2 < 22.5, "χ² {chi2}: {counts:?} vs {q:?}");
        let sums = draw.relaxed.sum_dim_intlist(1, false, Kind::Double);
        assert!(sums.allclose(&sums.ones_like(), 1e-9, 1e-12, false));
        // As τ → 0 the relaxation reaches the drawn vertex (but for the
        // rare draws whose two largest z are closer than a few τ).
        let cold = Relaxation { tau: 0.001, ..relax }.draw(&alpha, &uniform(&mut rng, 1000));
        let weight_on_choice = (&cold.relaxed * &cold.onehot).sum_dim_intlist(1, false, Kind::Double);
        let near = weight_on_choice.gt(0.99).to_kind(Kind::Double).mean(Kind::Double).double_value(&[]);
        assert!(near > 0.98, "{near} of the draws within 0.01 of their vertex");
    }

    #[test]
    fn rebar_is_unbiased_whatever_the_relaxation_and_beats_reinforce() {
        let mut rng = SmallRng::seed_from_u64(2);
        let alphas = alphas(&mut rng);
        let toy = Toy { table: normal(&mut rng, &[K, K, K], 1.0) };
        let exact = exact(&alphas, &toy.table);
        let log_q = |draws: &[BlockDraw]| &draws[0].log_q + &draws[1].log_q + &draws[2].log_q;
        let points =
            |draws: &[BlockDraw]| [&draws[0].relaxed, &draws[1].relaxed, &draws[2].relaxed].map(Tensor::shallow_clone);
        // The faithful relaxation, and one twice as large and shifted.
        for bias in [(1.0, 0.0), (2.0, 0.7)] {
            let (mean, se) = estimate(&mut rng, &alphas, |draws| {
                let p = points(draws);
                rebar_loss(&log_q(draws), &toy.discrete(draws), &toy.relaxed([&p[0], &p[1], &p[2]], bias))
            });
            within_3_se(&mean, &se, &exact).unwrap_or_else(|e| panic!("relaxation ×{} + {}: {e}", bias.0, bias.1));
        }
        // Plain REINFORCE with the exact mean as its baseline: unbiased too, noisier.
        let mean_f = toy.table.mean(Kind::Double).double_value(&[]);
        let (_, se_rebar) = estimate(&mut rng, &alphas, |draws| {
            let p = points(draws);
            rebar_loss(&log_q(draws), &toy.discrete(draws), &toy.relaxed([&p[0], &p[1], &p[2]], (1.0, 0.0)))
        });
        let (mean, se_reinforce) =
            estimate(&mut rng, &alphas, |draws| (log_q(draws) * (toy.discrete(draws) - mean_f)).mean(Kind::Double));
        within_3_se(&mean, &se_reinforce, &exact).unwrap();
        let total = |se: &[f64]| se.iter().map(|s| s * s).sum::<f64>();
        assert!(total(&se_rebar) < total(&se_reinforce), "{} vs {}", total(&se_rebar), total(&se_reinforce));
    }

    #[test]
    fn a_latency_hinge_stays_unbiased_with_any_linear_surrogate_and_the_table_cuts_its_variance() {
        let mut rng = SmallRng::seed_from_u64(4);
        let alphas = alphas(&mut rng);
        // The table: a cost per op and block; the measured latency adds
        // noise-free interactions the table misses.
        let lut: &Vec<Tensor> = &(0..3).map(|_| uniform(&mut rng, 1).view([K])).collect();
        let target = 1.2;
        let latency = |draws: &[BlockDraw]| {
            let additive: Tensor =
                (0..3).map(|b| lut[b].index_select(0, &draws[b].choice)).reduce(|a, b| a + b).unwrap();
            let interaction = (draws[0].choice.eq_tensor(&draws[2].choice)).to_kind(Kind::Double) * 0.3;
            additive + interaction
        };
        // E[relu(lat(d) − T)] exactly, through the same latency table plus interaction.
        let relax = Relaxation::default();
        let q: Vec<Tensor> = alphas.iter().map(|a| relax.log_q(a).exp()).collect();
        let table = {
            let grid = lut[0].view([K, 1, 1]) + lut[1].view([1, K, 1]) + lut[2].view([1, 1, K]);
            let same = Tensor::eye(K, (Kind::Double, Device::Cpu)).view([K, 1, K]) * 0.3;
            (grid + same - target).relu()
        };
        let exact = Tensor::einsum("i,j,k,ijk->", &[&q[0], &q[1], &q[2], &table], None::<i64>);
        let exact = grads(&exact, &alphas);
        let log_q = |draws: &[BlockDraw]| &draws[0].log_q + &draws[1].log_q + &draws[2].log_q;
        let with_surrogate = |scale: f64| {
            move |draws: &[BlockDraw]| {
                let surrogate: Tensor =
                    (0..3).map(|b| draws[b].relaxed.mv(&lut[b]) * scale).reduce(|a, b| a + b).unwrap();
                let discrete = (latency(draws) - target).relu();
                rebar_loss(&log_q(draws), &discrete, &(surrogate - target).relu())
            }
        };
        // The table itself, a poor fit of it, and none (plain REINFORCE).
        let mut spread = Vec::new();
        for scale in [1.0, 0.6, 0.0] {
            let (mean, se) = estimate(&mut rng, &alphas, with_surrogate(scale));
            within_3_se(&mean, &se, &exact).unwrap_or_else(|e| panic!("surrogate ×{scale}: {e}"));
            spread.push(se.iter().map(|s| s * s).sum::<f64>());
        }
        assert!(spread[0] < spread[2], "the table did not cut the variance: {spread:?}");
    }
}
