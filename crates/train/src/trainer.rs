//! The steps of the search and of training a network: a weight step on one
//! path, a gradient arch step with binary gates, and accuracy of a path.

use edgeloop_data::{Batch, BatchLoader, ImageShape};
use tch::{Device, Tensor};

use crate::arch_params::{ArchParams, CostModel, GateMode, Gates};
use crate::layers::BnMode;
use crate::loss::CostLoss;
use crate::optim::{Adam, Sgd};
use crate::supernet::Supernet;

/// A batch as tensors on `device`: images [N, C, H, W] f32, labels [N] i64.
pub fn batch_tensors(batch: &Batch, shape: ImageShape, device: Device) -> (Tensor, Tensor) {
    let dims = [batch.size as i64, shape.channels as i64, shape.height as i64, shape.width as i64];
    let images = Tensor::from_slice(&batch.images).reshape(dims).to_device(device);
    let labels = Tensor::from_slice(&batch.labels).to_device(device);
    (images, labels)
}

/// One SGD step on the path `selection`; returns the cross-entropy.
pub fn weight_step(net: &Supernet, sgd: &mut Sgd, x: &Tensor, y: &Tensor, selection: &[usize], lr: f64) -> f64 {
    let params = net.params(selection);
    let loss = net.forward(x, selection, BnMode::Train).cross_entropy_for_logits(y);
    let tensors: Vec<&Tensor> = params.iter().map(|p| &p.tensor).collect();
    let grads = Tensor::run_backward(&[&loss], &tensors, false, false);
    sgd.step(&params, grads, lr);
    loss.double_value(&[])
}

/// The cost term of an arch step: the cost of every candidate, the loss
/// that combines it with the cross-entropy, and the target.
#[derive(Debug, Clone)]
pub struct CostObjective {
    pub costs: CostModel,
    pub loss: CostLoss,
    pub target: f64,
}

/// What an arch step saw.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct ArchStep {
    pub ce: f64,
    pub loss: f64,
    /// E[cost] before the step (ms or mJ); NaN without a cost objective.
    pub expected_cost: f64,
}

/// ∂L/∂α of one arch step on the batch (x, y) with `gates`, without
/// updating anything: the binarized estimate from the gate gradients plus
/// the exact gradient of the cost term.
pub fn arch_gradient(
    net: &Supernet,
    alpha: &ArchParams,
    gates: &Gates,
    x: &Tensor,
    y: &Tensor,
    objective: Option<&CostObjective>,
) -> (Vec<Vec<f64>>, ArchStep) {
    let (logits, probes) = net.forward_probed(x, &gates.active, BnMode::Train);
    let ce = logits.cross_entropy_for_logits(y);
    let (loss, expected) = match objective {
        Some(o) => {
            let e = alpha.expected_cost(&o.costs);
            (o.loss.apply(&ce, &e, o.target), e.double_value(&[]))
        }
        None => (ce.shallow_clone(), f64::NAN),
    };
    let mut inputs: Vec<&Tensor> = probes.iter().map(|p| &p.output).collect();
    inputs.extend(alpha.tensors());
    let grads = Tensor::run_backward(&[&loss], &inputs, false, false);
    let blocks = probes.len();
    let alpha_grads = probes
        .iter()
        .enumerate()
        .map(|(b, probe)| {
            let gate_grads = net.gate_grads(b, &probe.input, &grads[b], &gates.involved[b]);
            let mut grad = alpha.gate_alpha_grad(b, &gates.involved[b], &gate_grads);
            let cost_grad = &grads[blocks + b];
            if cost_grad.defined() {
                let cost_grad = Vec::<f64>::try_from(cost_grad).expect("α grads are f64");
                grad.iter_mut().zip(cost_grad).for_each(|(g, c)| *g += c);
            }
            grad
        })
        .collect();
    (alpha_grads, ArchStep { ce: ce.double_value(&[]), loss: loss.double_value(&[]), expected_cost: expected })
}

/// Applies α gradients with Adam; in "two" mode, then shifts the involved
/// α so the other candidates keep their probabilities.
pub fn update_alpha(alpha: &ArchParams, adam: &mut Adam, grads: &[Vec<f64>], gates: Option<(&Gates, GateMode)>) {
    let before = alpha.values();
    let grads: Vec<Tensor> = grads.iter().map(|g| Tensor::from_slice(g)).collect();
    adam.step(alpha.tensors(), &grads);
    if let Some((gates, GateMode::Two)) = gates {
        alpha.rescale_involved(&before, &gates.involved);
    }
}

/// Top-1 accuracy of the path `selection` over every batch of `loader`.
pub fn accuracy(
    net: &Supernet,
    selection: &[usize],
    loader: BatchLoader,
    shape: ImageShape,
    device: Device,
    mode: BnMode,
) -> f64 {
    let (mut correct, mut total) = (0.0, 0usize);
    tch::no_grad(|| {
        for batch in loader {
            let (x, y) = batch_tensors(&batch, shape, device);
            correct += net.forward(&x, selection, mode).accuracy_for_logits(&y).double_value(&[]) * batch.size as f64;
            total += batch.size;
        }
    });
    if total == 0 { 0.0 } else { correct / total as f64 }
}

/// Top-1 accuracy of the path `selection` on one batch (REINFORCE rewards).
pub fn batch_accuracy(net: &Supernet, selection: &[usize], x: &Tensor, y: &Tensor, mode: BnMode) -> f64 {
    tch::no_grad(|| net.forward(x, selection, mode).accuracy_for_logits(y).double_value(&[]))
}
