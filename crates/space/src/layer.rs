use serde::{Deserialize, Serialize};

use crate::space::{InputSpec, StemSpec};

/// A feature map: height × width × channels.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
pub struct Shape {
    pub height: usize,
    pub width: usize,
    pub channels: usize,
}

impl Shape {
    pub fn input(spec: &InputSpec) -> Shape {
        Shape { height: spec.height, width: spec.width, channels: spec.channels }
    }

    /// After a "same"-padded op of this stride: ceil(input / stride).
    pub fn strided(self, stride: usize, channels: usize) -> Shape {
        Shape { height: self.height.div_ceil(stride), width: self.width.div_ceil(stride), channels }
    }

    fn hwc(&self) -> String {
        format!("{}x{}x{}", self.height, self.width, self.channels)
    }
}

/// What a latency-table row measures, named as in ProxylessNAS's tables.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
pub enum LayerKind {
    /// Stem: k×k conv + BN + ReLU6.
    #[serde(rename = "Conv")]
    Stem,
    /// MBConv: 1×1 expand (unless expand = 1), k×k depthwise, 1×1 project, optional shortcut.
    #[serde(rename = "expanded_conv")]
    MbConv,
    /// Head: 1×1 conv + BN + ReLU6.
    #[serde(rename = "Conv_1")]
    HeadConv,
    /// Global average pool + fully connected classifier.
    #[serde(rename = "Logits")]
    Logits,
}

impl LayerKind {
    pub fn key_name(self) -> &'static str {
        match self {
            LayerKind::Stem => "Conv",
            LayerKind::MbConv => "expanded_conv",
            LayerKind::HeadConv => "Conv_1",
            LayerKind::Logits => "Logits",
        }
    }

    pub fn from_key_name(name: &str) -> Option<LayerKind> {
        [LayerKind::Stem, LayerKind::MbConv, LayerKind::HeadConv, LayerKind::Logits]
            .into_iter()
            .find(|k| k.key_name() == name)
    }
}

/// One layer in its context: everything its latency depends on.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
pub struct Layer {
    pub kind: LayerKind,
    pub input: Shape,
    pub out_channels: usize,
    /// Expansion ratio (MBConv); 1 elsewhere.
    pub expand: usize,
    pub kernel: usize,
    pub stride: usize,
    /// Identity shortcut present (MBConv with stride 1 and in = out).
    pub idskip: bool,
}

impl Layer {
    pub fn stem(input: Shape, stem: &StemSpec) -> Layer {
        Layer {
            kind: LayerKind::Stem,
            input,
            out_channels: stem.channels,
            expand: 1,
            kernel: stem.kernel,
            stride: stem.stride,
            idskip: false,
        }
    }

    pub fn mbconv(input: Shape, out_channels: usize, kernel: usize, expand: usize, stride: usize) -> Layer {
        let idskip = stride == 1 && input.channels == out_channels;
        Layer { kind: LayerKind::MbConv, input, out_channels, expand, kernel, stride, idskip }
    }

    pub fn head_conv(input: Shape, out_channels: usize) -> Layer {
        Layer { kind: LayerKind::HeadConv, input, out_channels, expand: 1, kernel: 1, stride: 1, idskip: false }
    }

    pub fn logits(input: Shape, classes: usize) -> Layer {
        Layer { kind: LayerKind::Logits, input, out_channels: classes, expand: 1, kernel: 1, stride: 1, idskip: false }
    }

    pub fn output(&self) -> Shape {
        match self.kind {
            LayerKind::Logits => Shape { height: 1, width: 1, channels: self.out_channels },
            _ => self.input.strided(self.stride, self.out_channels),
        }
    }

    /// Multiply-accumulates of one inference at batch 1 (convolutions and
    /// the classifier; BatchNorm, activations and pooling not counted).
    pub fn macs(&self) -> u64 {
        let out = self.output();
        let (hw_in, hw_out) = ((self.input.height * self.input.width) as u64, (out.height * out.width) as u64);
        let (c_in, c_out, k2) =
            (self.input.channels as u64, self.out_channels as u64, (self.kernel * self.kernel) as u64);
        match self.kind {
            LayerKind::Stem | LayerKind::HeadConv => hw_out * c_out * c_in * k2,
            LayerKind::MbConv => {
                let mid = c_in * self.expand as u64;
                let expand = if self.expand == 1 { 0 } else { hw_in * mid * c_in };
                expand + hw_out * mid * k2 + hw_out * c_out * mid
            }
            LayerKind::Logits => c_in * c_out,
        }
    }

    /// The ProxylessNAS-style table key (DESIGN §3).
    pub fn key(&self) -> String {
        let (name, input, output) = (self.kind.key_name(), self.input.hwc(), self.output().hwc());
        match self.kind {
            LayerKind::Stem | LayerKind::HeadConv => format!("{name}-input:{input}-output:{output}"),
            LayerKind::MbConv => format!(
                "{name}-input:{input}-output:{output}-expand:{}-kernel:{}-stride:{}-idskip:{}",
                self.expand, self.kernel, self.stride, self.idskip as u8
            ),
            LayerKind::Logits => format!("{name}-input:{input}-output:{}", self.out_channels),
        }
    }
}
