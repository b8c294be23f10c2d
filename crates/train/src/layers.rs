//! The building blocks of every network of a space, as tch tensors held in a
//! `VarStore`. Variable names follow the exporter's weight names
//! (`stage1.block2.5x5_MBConv6.expand.weight`, `….bn.running_var`), so a
//! trained store exports through [`crate::export::TrainedWeights`] as is.

use tch::nn::{Init, Path};
use tch::{Kind, Tensor};

/// How BatchNorm normalises.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BnMode {
    /// Batch statistics, running statistics updated (training).
    Train,
    /// Batch statistics, running statistics left alone: evaluating a path
    /// that is not being trained (a gate's gradient, a sampled arch's reward).
    BatchStats,
    /// Running statistics (inference, what the ONNX export computes).
    Eval,
}

const BN_MOMENTUM: f64 = 0.1;
pub const BN_EPS: f64 = 1e-5;

/// A trainable tensor and whether weight decay applies to it (not to
/// BatchNorm's affine parameters or biases, as in ProxylessNAS).
#[derive(Debug)]
pub struct Param {
    pub name: String,
    pub tensor: Tensor,
    pub decay: bool,
}

/// `a.b.c` → the var-store path `a / b / c` (tch path components may not hold dots).
pub fn sub_path<'a>(root: &Path<'a>, dotted: &str) -> Path<'a> {
    dotted.split('.').fold(root.clone(), |p, part| p / part)
}

/// Bias-free convolution followed by BatchNorm ("same" padding).
#[derive(Debug)]
pub struct ConvBn {
    name: String,
    weight: Tensor,
    stride: i64,
    groups: i64,
    padding: i64,
    gamma: Tensor,
    beta: Tensor,
    running_mean: Tensor,
    running_var: Tensor,
}

impl ConvBn {
    /// `shape` = [out, in / groups, k, k]. He initialisation on fan-out, as ProxylessNAS.
    pub fn new(root: &Path, name: &str, shape: [i64; 4], stride: i64, groups: i64) -> ConvBn {
        let p = sub_path(root, name);
        let fan_out = (shape[0] * shape[2] * shape[3]) as f64;
        let weight = p.var("weight", &shape, Init::Randn { mean: 0.0, stdev: (2.0 / fan_out).sqrt() });
        let bn = &p / "bn";
        let c = shape[0];
        ConvBn {
            name: name.to_string(),
            weight,
            stride,
            groups,
            padding: shape[2] / 2,
            gamma: bn.ones("weight", &[c]),
            beta: bn.zeros("bias", &[c]),
            running_mean: bn.zeros_no_train("running_mean", &[c]),
            running_var: bn.ones_no_train("running_var", &[c]),
        }
    }

    /// The weight tensor's name (the exporter's and the activation ranges' key).
    pub fn name(&self) -> &str {
        &self.name
    }

    /// The conv's weights with inference BN folded in, and the bias that
    /// folding gives: w·γ/√(σ²+ε) and β − μ·γ/√(σ²+ε), per output channel,
    /// as the exporter folds them. Differentiable in w, γ and β.
    pub fn folded(&self) -> (Tensor, Tensor) {
        let scale = &self.gamma / (&self.running_var + BN_EPS).sqrt();
        let weight = &self.weight * scale.view([-1, 1, 1, 1]);
        let bias = &self.beta - &self.running_mean * &scale;
        (weight, bias)
    }

    /// This layer's convolution (stride, padding, groups) with other weights.
    pub fn conv_with(&self, x: &Tensor, weight: &Tensor, bias: &Tensor) -> Tensor {
        x.conv2d(weight, Some(bias), self.stride, self.padding, 1, self.groups)
    }

    pub fn forward(&self, x: &Tensor, mode: BnMode) -> Tensor {
        let y = x.conv2d::<Tensor>(&self.weight, None, self.stride, self.padding, 1, self.groups);
        let (mean, var) = match mode {
            BnMode::Train | BnMode::Eval => (Some(&self.running_mean), Some(&self.running_var)),
            BnMode::BatchStats => (None, None),
        };
        y.batch_norm(Some(&self.gamma), Some(&self.beta), mean, var, mode != BnMode::Eval, BN_MOMENTUM, BN_EPS, true)
    }

    pub fn params(&self, out: &mut Vec<Param>) {
        out.push(Param { name: format!("{}.weight", self.name), tensor: self.weight.shallow_clone(), decay: true });
        out.push(Param { name: format!("{}.bn.weight", self.name), tensor: self.gamma.shallow_clone(), decay: false });
        out.push(Param { name: format!("{}.bn.bias", self.name), tensor: self.beta.shallow_clone(), decay: false });
    }
}

/// ReLU6 as PyTorch's `F.relu6` computes it (hardtanh(0, 6)).
pub fn relu6(x: &Tensor) -> Tensor {
    x.relu6()
}

/// Where a forward pass records the input of every ReLU6 it applies (the
/// units whose on/off pattern NASWOT scores); `None` records nothing.
pub type Taps<'a> = Option<&'a mut Vec<Tensor>>;

/// [`relu6`], recording its input in `taps`.
pub fn relu6_tapped(x: &Tensor, taps: Taps<'_>) -> Tensor {
    if let Some(taps) = taps {
        taps.push(x.shallow_clone());
    }
    relu6(x)
}

/// The residual branch of an MBConv block: 1×1 expand (unless the ratio is
/// 1), k×k depthwise, 1×1 project. The identity shortcut is the caller's.
#[derive(Debug)]
pub struct MbConv {
    pub expand: Option<ConvBn>,
    pub depthwise: ConvBn,
    pub project: ConvBn,
}

impl MbConv {
    pub fn new(root: &Path, name: &str, c_in: i64, c_out: i64, kernel: i64, expand: i64, stride: i64) -> MbConv {
        let mid = c_in * expand;
        MbConv {
            expand: (expand != 1).then(|| ConvBn::new(root, &format!("{name}.expand"), [mid, c_in, 1, 1], 1, 1)),
            depthwise: ConvBn::new(root, &format!("{name}.depthwise"), [mid, 1, kernel, kernel], stride, mid),
            project: ConvBn::new(root, &format!("{name}.project"), [c_out, mid, 1, 1], 1, 1),
        }
    }

    pub fn forward(&self, x: &Tensor, mode: BnMode, mut taps: Taps<'_>) -> Tensor {
        let expanded = match &self.expand {
            Some(e) => relu6_tapped(&e.forward(x, mode), taps.as_deref_mut()),
            None => x.shallow_clone(),
        };
        self.project.forward(&relu6_tapped(&self.depthwise.forward(&expanded, mode), taps), mode)
    }

    pub fn params(&self, out: &mut Vec<Param>) {
        if let Some(e) = &self.expand {
            e.params(out);
        }
        self.depthwise.params(out);
        self.project.params(out);
    }
}

/// Global average pool: [N, C, H, W] → [N, C].
pub fn pool(x: &Tensor) -> Tensor {
    x.mean_dim(&[2i64, 3][..], false, None::<Kind>)
}

/// Global average pool + fully connected layer.
#[derive(Debug)]
pub struct Classifier {
    name: String,
    weight: Tensor,
    bias: Tensor,
}

impl Classifier {
    pub fn new(root: &Path, name: &str, c_in: i64, classes: i64) -> Classifier {
        let p = sub_path(root, name);
        let bound = 1.0 / (c_in as f64).sqrt();
        Classifier {
            name: name.to_string(),
            weight: p.var("weight", &[classes, c_in], Init::Uniform { lo: -bound, up: bound }),
            bias: p.var("bias", &[classes], Init::Const(0.0)),
        }
    }

    pub fn forward(&self, x: &Tensor) -> Tensor {
        pool(x).linear(&self.weight, Some(&self.bias))
    }

    pub fn name(&self) -> &str {
        &self.name
    }

    pub fn weight(&self) -> &Tensor {
        &self.weight
    }

    pub fn bias(&self) -> &Tensor {
        &self.bias
    }

    pub fn params(&self, out: &mut Vec<Param>) {
        let name = &self.name;
        out.push(Param { name: format!("{name}.weight"), tensor: self.weight.shallow_clone(), decay: true });
        out.push(Param { name: format!("{name}.bias"), tensor: self.bias.shallow_clone(), decay: false });
    }
}
