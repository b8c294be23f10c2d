//! Training-free proxies (SEEDS §3, as zero-cost-nas and NASWOT compute
//! them): scores of a network at initialisation, on one batch, meant to rank
//! architectures as their trained accuracy would. Higher is better for
//! each. They score any [`Scorable`] network: a path of a supernet, or a
//! hand-built one in the tests.

use std::fmt;
use std::str::FromStr;

use tch::nn::VarStore;
use tch::{Kind, Tensor};

use crate::Supernet;
use crate::layers::{BnMode, Taps};

/// One proxy.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Proxy {
    /// Σ |θ ⊙ ∂R/∂θ| over conv and linear weights, R = Σ outputs of an
    /// all-ones input at batch 1, every parameter and buffer |·|, f64,
    /// BatchNorm at its initial running statistics (≈ identity).
    Synflow,
    /// log|det K| with K_ij = units on in both or off in both of examples i
    /// and j, over the inputs of every ReLU (NASWOT's `hook_logdet`).
    Naswot,
    /// Σ over conv and linear layers of ‖∂L/∂W‖₂, L the cross-entropy.
    GradNorm,
    /// Σ |θ ⊙ ∂L/∂θ| over conv and linear weights (SNIP's saliency).
    Snip,
}

impl Proxy {
    pub const ALL: [Proxy; 4] = [Proxy::Synflow, Proxy::Naswot, Proxy::GradNorm, Proxy::Snip];

    pub fn name(self) -> &'static str {
        match self {
            Proxy::Synflow => "synflow",
            Proxy::Naswot => "naswot",
            Proxy::GradNorm => "grad_norm",
            Proxy::Snip => "snip",
        }
    }
}

impl fmt::Display for Proxy {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

#[derive(Debug, thiserror::Error)]
#[error("unknown proxy `{0}`: one of synflow, naswot, grad_norm, snip")]
pub struct UnknownProxy(String);

impl FromStr for Proxy {
    type Err = UnknownProxy;

    fn from_str(s: &str) -> Result<Proxy, UnknownProxy> {
        Proxy::ALL.into_iter().find(|p| p.name() == s).ok_or_else(|| UnknownProxy(s.to_string()))
    }
}

impl serde::Serialize for Proxy {
    fn serialize<S: serde::Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.serialize_str(self.name())
    }
}

impl<'de> serde::Deserialize<'de> for Proxy {
    fn deserialize<D: serde::Deserializer<'de>>(deserializer: D) -> Result<Proxy, D::Error> {
        String::deserialize(deserializer)?.parse().map_err(serde::de::Error::custom)
    }
}

/// A network the proxies can score.
pub trait Scorable {
    /// Logits of `x`, recording the input of every ReLU in `taps`.
    fn forward_tapped(&self, x: &Tensor, mode: BnMode, taps: Taps<'_>) -> Tensor;
    /// Its convolution and linear weights, which the per-weight proxies sum over.
    fn weights(&self) -> Vec<Tensor>;
}

/// The path `selection` of a supernet.
pub struct PathOf<'a> {
    pub net: &'a Supernet,
    pub selection: &'a [usize],
}

impl Scorable for PathOf<'_> {
    fn forward_tapped(&self, x: &Tensor, mode: BnMode, taps: Taps<'_>) -> Tensor {
        self.net.forward_tapped(x, self.selection, mode, taps)
    }

    fn weights(&self) -> Vec<Tensor> {
        // BatchNorm's scales and the biases are vectors; conv and linear weights are not.
        self.net.params(self.selection).into_iter().filter(|p| p.tensor.dim() >= 2).map(|p| p.tensor).collect()
    }
}

/// `proxy`'s score of `net`, whose weights `vs` holds, on the batch (x, y).
/// Synflow leaves the store in f64 with every value |·|: score it on a
/// network of its own (or last).
pub fn score(proxy: Proxy, vs: &mut VarStore, net: &impl Scorable, x: &Tensor, y: &Tensor) -> f64 {
    match proxy {
        Proxy::Synflow => synflow(vs, net, x),
        Proxy::Naswot => naswot(net, x),
        Proxy::GradNorm => loss_gradients(net, x, y).iter().map(|(_, g)| g.norm().double_value(&[])).sum(),
        Proxy::Snip => {
            loss_gradients(net, x, y).iter().map(|(w, g)| (w * g).abs().sum(Kind::Double).double_value(&[])).sum()
        }
    }
}

/// Each weight with ∂CE/∂weight on (x, y), batch statistics in BatchNorm.
fn loss_gradients(net: &impl Scorable, x: &Tensor, y: &Tensor) -> Vec<(Tensor, Tensor)> {
    let mut weights = net.weights();
    for w in &mut weights {
        w.zero_grad();
    }
    net.forward_tapped(x, BnMode::BatchStats, None).cross_entropy_for_logits(y).backward();
    weights
        .into_iter()
        .map(|w| {
            let g = w.grad();
            (w, g)
        })
        .collect()
}

fn synflow(vs: &mut VarStore, net: &impl Scorable, x: &Tensor) -> f64 {
    vs.double();
    tch::no_grad(|| {
        for (_, v) in vs.variables() {
            let _ = v.detach().abs_();
        }
    });
    let mut shape = x.size();
    shape[0] = 1;
    let ones = Tensor::ones(&shape, (Kind::Double, x.device()));
    let mut weights = net.weights();
    for w in &mut weights {
        w.zero_grad();
    }
    net.forward_tapped(&ones, BnMode::Eval, None).sum(Kind::Double).backward();
    weights.iter().map(|w| (w * w.grad()).abs().sum(Kind::Double).double_value(&[])).sum()
}

fn naswot(net: &impl Scorable, x: &Tensor) -> f64 {
    let n = x.size()[0];
    let mut taps = Vec::new();
    tch::no_grad(|| {
        let _logits = net.forward_tapped(x, BnMode::BatchStats, Some(&mut taps));
        let mut k = Tensor::zeros([n, n], (Kind::Double, x.device()));
        for t in &taps {
            let on = t.gt(0.0).to_kind(Kind::Double).view([n, -1]);
            let off = on.ones_like() - &on;
            k += on.mm(&on.tr()) + off.mm(&off.tr());
        }
        let (sign, logabsdet) = Tensor::linalg_slogdet(&k);
        // Two examples with the same pattern make K singular: no information.
        if sign.double_value(&[]) > 0.0 { logabsdet.double_value(&[]) } else { f64::NEG_INFINITY }
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use tch::Device;

    /// A bias-free chain of linear layers with ReLUs between them.
    struct Chain {
        layers: Vec<Tensor>,
    }

    impl Chain {
        /// Layers of the given [out, in] values (row-major).
        fn new(vs: &VarStore, layers: &[(usize, usize, &[f64])]) -> Chain {
            let root = vs.root();
            let layers = layers
                .iter()
                .enumerate()
                .map(|(i, &(o, n, values))| {
                    let t = Tensor::from_slice(values).to_kind(Kind::Float).view([o as i64, n as i64]);
                    root.var_copy(&format!("w{i}"), &t)
                })
                .collect();
            Chain { layers }
        }
    }

    impl Scorable for Chain {
        fn forward_tapped(&self, x: &Tensor, _mode: BnMode, mut taps: Taps<'_>) -> Tensor {
            let mut h = x.flatten(1, -1);
            for (i, w) in self.layers.iter().enumerate() {
                h = h.mm(&w.tr());
                if i + 1 < self.layers.len() {
                    if let Some(taps) = taps.as_deref_mut() {
                        taps.push(h.shallow_clone());
                    }
                    h = h.relu();
                }
            }
            h
        }

        fn weights(&self) -> Vec<Tensor> {
            self.layers.iter().map(Tensor::shallow_clone).collect()
        }
    }

    const W1: [f64; 6] = [0.5, -1.0, 0.25, 2.0, -0.75, 0.3];
    const W2: [f64; 6] = [1.5, -0.5, 0.2, -1.0, 0.4, 0.9];

    fn chain(vs: &VarStore) -> Chain {
        // 2 inputs → 3 hidden (ReLU) → 2 classes.
        Chain::new(vs, &[(3, 2, &W1), (2, 3, &W2)])
    }

    fn batch() -> (Tensor, Tensor) {
        let x = Tensor::from_slice(&[1.0f32, 2.0, -1.0, 0.5, 0.3, -2.0]).view([3, 2]);
        (x, Tensor::from_slice(&[0i64, 1, 1]))
    }

    /// ∂CE/∂W1 and ∂CE/∂W2 of the chain, by hand (row-major [out][in]).
    fn hand_gradients() -> (Vec<Vec<f64>>, Vec<Vec<f64>>) {
        let xs = [[1.0, 2.0], [-1.0, 0.5], [0.3, -2.0]];
        let labels = [0, 1, 1];
        let w1 = |o: usize, i: usize| W1[o * 2 + i];
        let w2 = |o: usize, i: usize| W2[o * 3 + i];
        let (mut g1, mut g2) = (vec![vec![0.0; 2]; 3], vec![vec![0.0; 3]; 2]);
        for (x, &label) in xs.iter().zip(&labels) {
            let pre: Vec<f64> = (0..3).map(|o| w1(o, 0) * x[0] + w1(o, 1) * x[1]).collect();
            let h: Vec<f64> = pre.iter().map(|&p| p.max(0.0)).collect();
            let logits: Vec<f64> = (0..2).map(|o| (0..3).map(|i| w2(o, i) * h[i]).sum()).collect();
            let z = logits.iter().map(|l| l.exp()).sum::<f64>();
            // Mean cross-entropy over the 3 examples.
            let dlogits: Vec<f64> =
                (0..2).map(|o| (logits[o].exp() / z - f64::from(u8::from(o == label))) / 3.0).collect();
            for o in 0..2 {
                for i in 0..3 {
                    g2[o][i] += dlogits[o] * h[i];
                }
            }
            for j in 0..3 {
                let dh = if pre[j] > 0.0 { (0..2).map(|o| dlogits[o] * w2(o, j)).sum() } else { 0.0 };
                for i in 0..2 {
                    g1[j][i] += dh * x[i];
                }
            }
        }
        (g1, g2)
    }

    fn close(a: f64, b: f64) -> bool {
        (a - b).abs() <= 1e-5 * b.abs().max(1.0)
    }

    #[test]
    fn grad_norm_and_snip_match_hand_computed_gradients() {
        let (g1, g2) = hand_gradients();
        let norm = |g: &[Vec<f64>]| g.iter().flatten().map(|v| v * v).sum::<f64>().sqrt();
        let saliency = |g: &[Vec<f64>], w: &[f64]| g.iter().flatten().zip(w).map(|(g, w)| (g * w).abs()).sum::<f64>();
        let (x, y) = batch();
        let mut vs = VarStore::new(Device::Cpu);
        let net = chain(&vs);
        let grad_norm = score(Proxy::GradNorm, &mut vs, &net, &x, &y);
        assert!(close(grad_norm, norm(&g1) + norm(&g2)), "{grad_norm} vs {}", norm(&g1) + norm(&g2));
        // Scoring again does not accumulate gradients.
        assert!(close(score(Proxy::GradNorm, &mut vs, &net, &x, &y), grad_norm));
        let snip = score(Proxy::Snip, &mut vs, &net, &x, &y);
        let expected = saliency(&g1, &W1) + saliency(&g2, &W2);
        assert!(close(snip, expected), "{snip} vs {expected}");
    }

    #[test]
    fn synflow_of_a_positive_chain_is_its_depth_times_its_output_whatever_the_signs() {
        // With |θ| and an all-ones input, Σ θ ∂R/∂θ = R for each layer (R is
        // homogeneous of degree 1 in each layer's weights): synflow = L·R.
        let abs = |w: &[f64]| w.iter().map(|v| v.abs()).collect::<Vec<_>>();
        let (a1, a2, a3) = (abs(&W1), abs(&W2), [0.7, 1.1, 0.2, 0.6]);
        let h1: Vec<f64> = (0..3).map(|o| a1[o * 2] + a1[o * 2 + 1]).collect();
        let h2: Vec<f64> = (0..2).map(|o| (0..3).map(|i| a2[o * 3 + i] * h1[i]).sum()).collect();
        let r: f64 = (0..2).map(|o| (0..2).map(|i| a3[o * 2 + i] * h2[i]).sum::<f64>()).sum();
        let (x, y) = batch();
        let w3 = [-0.7, 1.1, 0.2, -0.6];
        for signs in [false, true] {
            let w1: Vec<f64> = if signs { W1.iter().map(|v| -v).collect() } else { W1.to_vec() };
            let mut vs = VarStore::new(Device::Cpu);
            let net = Chain::new(&vs, &[(3, 2, &w1), (2, 3, &W2), (2, 2, &w3)]);
            let synflow = score(Proxy::Synflow, &mut vs, &net, &x, &y);
            assert!(close(synflow, 3.0 * r), "{synflow} vs 3·{r}");
        }
    }

    #[test]
    fn naswot_counts_shared_activation_patterns_and_ignores_batch_order() {
        let (x, y) = batch();
        let mut vs = VarStore::new(Device::Cpu);
        let net = chain(&vs);
        let forward = score(Proxy::Naswot, &mut vs, &net, &x, &y);
        // K by hand: the hidden units' on/off codes of the 3 examples.
        let codes: Vec<Vec<bool>> = [[1.0, 2.0], [-1.0, 0.5], [0.3, -2.0]]
            .iter()
            .map(|x| (0..3).map(|o| W1[o * 2] * x[0] + W1[o * 2 + 1] * x[1] > 0.0).collect())
            .collect();
        let k = |i: usize, j: usize| codes[i].iter().zip(&codes[j]).filter(|(a, b)| a == b).count() as f64;
        let det = k(0, 0) * (k(1, 1) * k(2, 2) - k(1, 2) * k(2, 1)) - k(0, 1) * (k(1, 0) * k(2, 2) - k(1, 2) * k(2, 0))
            + k(0, 2) * (k(1, 0) * k(2, 1) - k(1, 1) * k(2, 0));
        if det > 0.0 {
            assert!(close(forward, det.ln()), "{forward} vs ln {det}");
        } else {
            assert_eq!(forward, f64::NEG_INFINITY);
        }
        let order = Tensor::from_slice(&[2i64, 0, 1]);
        let shuffled = score(Proxy::Naswot, &mut vs, &net, &x.index_select(0, &order), &y.index_select(0, &order));
        // The same K with rows and columns permuted: the same determinant, to rounding.
        assert!((shuffled - forward).abs() < 1e-12, "{shuffled} vs {forward}");
    }

    #[test]
    fn names_round_trip() {
        for proxy in Proxy::ALL {
            assert_eq!(proxy.name().parse::<Proxy>().unwrap(), proxy);
        }
        assert!("zen".parse::<Proxy>().unwrap_err().to_string().contains("synflow, naswot"));
    }
}
