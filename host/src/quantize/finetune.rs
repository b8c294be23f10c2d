//! Short fine-tunes of the trained network under a policy's fake
//! quantization (straight-through gradients), and its accuracy: HAQ's
//! reward needs both for every episode, the final model once more.

use std::sync::Arc;

use edgeloop_data::Split;
use edgeloop_export::quant::{ActivationRanges, QuantError, QuantPolicy};
use edgeloop_space::{Arch, Space};
use edgeloop_train::Supernet;
use edgeloop_train::optim::{Sgd, cosine_lr};
use edgeloop_train::quant::FakeQuant;
use edgeloop_train::trainer::batch_tensors;
use tch::nn::VarStore;
use tch::{Device, Tensor};

use crate::dataset::Data;

/// A copy of the trained network that a fine-tune may change.
pub struct Network {
    pub vs: VarStore,
    pub net: Supernet,
}

impl Network {
    /// A copy of the weights in `source` (a network of `arch`).
    pub fn copy_of(source: &VarStore, space: &Space, arch: &Arch) -> anyhow::Result<Network> {
        let mut vs = VarStore::new(source.device());
        let net = Supernet::for_arch(&vs.root(), space, arch)?;
        vs.copy(source)?;
        Ok(Network { vs, net })
    }

    pub fn fake_quant(&self, policy: QuantPolicy, ranges: &ActivationRanges) -> Result<FakeQuant, QuantError> {
        fake_quant(&self.net, policy, ranges)
    }
}

/// `net` (a single-candidate network: index 0 in every block) under `policy`.
pub fn fake_quant(net: &Supernet, policy: QuantPolicy, ranges: &ActivationRanges) -> Result<FakeQuant, QuantError> {
    FakeQuant::new(net, &vec![0; net.candidate_counts().len()], policy, ranges.clone())
}

/// How fine-tunes train.
#[derive(Debug, Clone, Copy)]
pub struct FinetuneConfig {
    pub batch_size: usize,
    pub lr: f64,
    pub momentum: f64,
    pub weight_decay: f64,
    pub device: Device,
}

/// `steps` SGD steps (Nesterov, lr cosine-annealed to 0, as the network was
/// trained: a constant lr would move it off its minimum) of `network` under `fq` on
/// batches of `split` shuffled by `seed`, going round the split as often as
/// needed. Returns the mean loss.
pub fn finetune(
    network: &Network,
    fq: &FakeQuant,
    data: &Data,
    split: &Arc<Split>,
    steps: usize,
    seed: u64,
    config: FinetuneConfig,
) -> anyhow::Result<f64> {
    let mut sgd = Sgd::nesterov(config.momentum, config.weight_decay);
    let params = network.net.params(fq.selection());
    let tensors: Vec<&Tensor> = params.iter().map(|p| &p.tensor).collect();
    anyhow::ensure!(!split.is_empty(), "the training split is empty");
    let (mut done, mut total) = (0, 0.0);
    for pass in 0u64.. {
        for batch in data.loader(split, config.batch_size, Some(seed.wrapping_add(pass)), true) {
            if done == steps {
                break;
            }
            let (x, y) = batch_tensors(&batch, data.shape, config.device);
            let loss = fq.forward(&network.net, &x).cross_entropy_for_logits(&y);
            let grads = Tensor::run_backward(&[&loss], &tensors, false, false);
            sgd.step(&params, grads, cosine_lr(config.lr, done as u64, steps as u64));
            let loss = loss.double_value(&[]);
            anyhow::ensure!(loss.is_finite(), "fine-tuning under fake quantization diverged (loss {loss}); lower --lr");
            total += loss;
            done += 1;
        }
        if done == steps {
            break;
        }
    }
    Ok(if steps == 0 { 0.0 } else { total / steps as f64 })
}

/// Top-1 accuracy of `network` under `fq` on the first `limit` images of `split`.
pub fn accuracy(
    network: &Network,
    fq: &FakeQuant,
    data: &Data,
    split: &Arc<Split>,
    limit: usize,
    device: Device,
) -> f64 {
    let (mut correct, mut seen) = (0.0, 0usize);
    tch::no_grad(|| {
        for batch in data.eval_loader(split) {
            if seen >= limit {
                break;
            }
            let (x, y) = batch_tensors(&batch, data.shape, device);
            let n = batch.size.min(limit - seen) as i64;
            let logits = fq.forward(&network.net, &x.narrow(0, 0, n));
            correct += logits.accuracy_for_logits(&y.narrow(0, 0, n)).double_value(&[]) * n as f64;
            seen += n as usize;
        }
    });
    if seen == 0 { 0.0 } else { correct / seen as f64 }
}
