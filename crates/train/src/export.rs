//! Trained weights into the ONNX exporter: the var store's tensors are
//! named as the exporter asks for them, so this is a lookup.

use std::collections::HashMap;

use edgeloop_export::export::{BatchNorm, ConvBn, Linear, Weights, arch_model};
use edgeloop_space::{Arch, ArchError, Space};
use tch::nn::VarStore;
use tch::{Device, Kind, Tensor};

use crate::layers::BN_EPS;

/// A var store's tensors, read (to the CPU, as f32) only when the exporter
/// asks for them: exporting one path of a supernet copies just that path.
pub struct TrainedWeights {
    vars: HashMap<String, Tensor>,
}

impl TrainedWeights {
    pub fn new(vs: &VarStore) -> TrainedWeights {
        TrainedWeights { vars: vs.variables() }
    }

    /// The tensor `name` with `len` elements. A missing or mis-sized tensor
    /// means the network and the exporter disagree on the architecture: a bug.
    fn get(&self, name: &str, len: usize) -> Vec<f32> {
        let t = self.vars.get(name).unwrap_or_else(|| panic!("trained weights have no tensor `{name}`"));
        let t = tch::no_grad(|| t.detach().to_device(Device::Cpu).to_kind(Kind::Float).flatten(0, -1));
        let v = Vec::<f32>::try_from(&t).expect("f32 tensor");
        assert_eq!(v.len(), len, "tensor `{name}` has {} elements, the exporter expects {len}", v.len());
        v
    }
}

impl Weights for TrainedWeights {
    fn conv_bn(&mut self, name: &str, shape: [usize; 4]) -> ConvBn {
        let c = shape[0];
        let bn = BatchNorm {
            gamma: self.get(&format!("{name}.bn.weight"), c),
            beta: self.get(&format!("{name}.bn.bias"), c),
            mean: self.get(&format!("{name}.bn.running_mean"), c),
            var: self.get(&format!("{name}.bn.running_var"), c),
            eps: BN_EPS as f32,
        };
        ConvBn { weight: self.get(&format!("{name}.weight"), shape.iter().product()), shape, bn }
    }

    fn linear(&mut self, name: &str, out: usize, inp: usize) -> Linear {
        Linear { weight: self.get(&format!("{name}.weight"), out * inp), bias: self.get(&format!("{name}.bias"), out) }
    }
}

/// ONNX bytes of `arch` with the weights in `vs` (a supernet's or a
/// standalone network's: both name their tensors alike).
pub fn export_arch(vs: &VarStore, space: &Space, arch: &Arch) -> Result<Vec<u8>, ArchError> {
    let model = arch_model(space, arch, &mut TrainedWeights::new(vs))?;
    Ok(edgeloop_onnx::encode(&model))
}
