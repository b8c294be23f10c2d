//! The binarized gradient estimate for α (DESIGN §8) against finite
//! differences, on a real choice block of the `tiny` supernet. With a loss
//! linear in the block's output, L = ⟨c, y⟩, the gate gradient
//! ∂L/∂g_j = ⟨c, o_j(x)⟩ does not depend on the gates, so the estimate from
//! one binarized forward must equal the exact gradient of
//! L(α) = ⟨c, x + Σ_j p_j(α) o_j(x)⟩, p renormalised over the involved paths.

use edgeloop_space::Space;
use edgeloop_train::{ArchParams, BnMode, Supernet};
use tch::nn::VarStore;
use tch::{Device, Kind, Tensor};

/// `stage1.block2` of tiny: stride 1, 16 → 16 channels, so it has the
/// shortcut and `zero` among its 7 candidates.
const BLOCK: usize = 1;

fn check(involved: &[usize], active: usize) {
    tch::manual_seed(0);
    let space = Space::load("tiny", 1.0).unwrap();
    let vs = VarStore::new(Device::Cpu);
    let net = Supernet::new(&vs.root(), &space);
    let alpha = ArchParams::from_values(
        net.candidate_counts().iter().map(|&n| (0..n).map(|i| 0.3 * (i as f64) - 0.5).collect()).collect(),
    );
    let x = Tensor::randn([4, 3, 32, 32], (Kind::Float, Device::Cpu));
    let c = Tensor::randn([4, 16, 8, 8], (Kind::Float, Device::Cpu));

    // Every candidate's branch output o_j(x), independently of the gate code:
    // the block output with j selected, minus the block input.
    let mut selection = vec![0; space.blocks.len()];
    let branch = |j: usize, selection: &mut Vec<usize>| {
        selection[BLOCK] = j;
        let (_, probes) = tch::no_grad(|| net.forward_probed(&x, selection, BnMode::BatchStats));
        (&probes[BLOCK].output - &probes[BLOCK].input).to_kind(Kind::Double)
    };
    let outputs: Vec<Tensor> = involved.iter().map(|&j| branch(j, &mut selection)).collect();
    let c64 = c.to_kind(Kind::Double);
    let loss = |a: &[f64]| {
        let logits: Vec<f64> = involved.iter().map(|&j| a[j]).collect();
        let p = Tensor::from_slice(&logits).softmax(0, Kind::Double);
        let mix =
            outputs.iter().enumerate().fold(c64.zeros_like(), |acc, (k, o)| acc + o * p.double_value(&[k as i64]));
        (mix * &c64).sum(Kind::Double).double_value(&[])
    };

    // The estimate: one forward with `active` on, ∂L/∂y by autograd, gate gradients.
    selection[BLOCK] = active;
    let (_, probes) = net.forward_probed(&x, &selection, BnMode::BatchStats);
    let l = (&probes[BLOCK].output * &c).sum(Kind::Float);
    let dy = Tensor::run_backward(&[&l], &[&probes[BLOCK].output], false, false).remove(0);
    let gate_grads = net.gate_grads(BLOCK, &probes[BLOCK].input, &dy, involved);
    let estimate = alpha.gate_alpha_grad(BLOCK, involved, &gate_grads);

    let values = alpha.values()[BLOCK].clone();
    let h = 1e-4;
    for i in 0..values.len() {
        let (mut up, mut down) = (values.clone(), values.clone());
        up[i] += h;
        down[i] -= h;
        let fd = (loss(&up) - loss(&down)) / (2.0 * h);
        let tol = 1e-3 * fd.abs().max(1.0);
        assert!(
            (estimate[i] - fd).abs() < tol,
            "α_{i}: estimate {} vs finite difference {fd} ({involved:?})",
            estimate[i]
        );
    }
    assert!(estimate.iter().any(|g| g.abs() > 1e-3), "a degenerate check: {estimate:?}");
}

#[test]
fn full_mode_estimate_matches_finite_differences() {
    let all: Vec<usize> = (0..7).collect();
    check(&all, 2);
    check(&all, 6); // `zero` active
}

#[test]
fn two_mode_estimate_matches_finite_differences_over_the_pair() {
    check(&[1, 4], 4);
    check(&[6, 0], 0);
}
