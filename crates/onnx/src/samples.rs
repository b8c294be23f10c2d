//! Sample MBConv networks for tests and benchmarks that need a realistic
//! model without a search. Built here without a search space, they are the
//! one architecture of a one-candidate space (`sample`) as `edgeloop-export`'s
//! `arch_model` writes it, byte for byte: `edgeloop-export`'s tests check it.

use sha2::{Digest, Sha256};

use crate::weights::{RandomWeights, Weights};
use crate::{ElemType, GraphBuilder, pb};

/// A stage of identical blocks, as the search spaces' `StageSpec`: the first
/// block has the stride, the others stride 1.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Stage {
    pub channels: usize,
    pub blocks: usize,
    pub stride: usize,
}

/// A plain MBConv network: conv3×3 stem, a fixed MBConv1 block, stages of
/// identical MBConv blocks, 1×1 conv head, global average pool, classifier.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MbconvNet {
    pub input_hw: usize,
    pub stem_channels: usize,
    pub stem_stride: usize,
    pub stages: Vec<Stage>,
    pub kernel: usize,
    pub expand: usize,
    pub head_channels: usize,
    pub classes: usize,
    pub seed: u64,
}

fn stage(channels: usize, blocks: usize, stride: usize) -> Stage {
    Stage { channels, blocks, stride }
}

impl MbconvNet {
    /// About a tenth of a millisecond per inference on one desktop core.
    pub fn small() -> Self {
        MbconvNet {
            input_hw: 32,
            stem_channels: 8,
            stem_stride: 2,
            stages: vec![stage(16, 2, 2), stage(24, 2, 2)],
            kernel: 3,
            expand: 3,
            head_channels: 64,
            classes: 10,
            seed: 1,
        }
    }

    /// About ten milliseconds per inference on one desktop core.
    pub fn large() -> Self {
        MbconvNet {
            input_hw: 112,
            stem_channels: 32,
            stem_stride: 2,
            stages: vec![stage(24, 2, 2), stage(40, 3, 2), stage(80, 3, 2), stage(160, 2, 1)],
            kernel: 5,
            expand: 6,
            head_channels: 640,
            classes: 100,
            seed: 2,
        }
    }

    /// The model: batch 1, NCHW float32 input `input`, logits out; layers
    /// scoped `stem`, `first_block`, `stage<i>.block<j>.<op>`, `head`,
    /// `classifier`, with [`RandomWeights`] of `seed`.
    ///
    /// Panics on an invalid network (stem stride 0, no stages, a stage
    /// without blocks or with stride 0, an even kernel, expand 0), as the
    /// space would reject it.
    pub fn to_model(&self) -> pb::ModelProto {
        let valid = self.stem_stride > 0
            && !self.stages.is_empty()
            && self.stages.iter().all(|s| s.blocks > 0 && s.stride > 0)
            && self.kernel % 2 == 1
            && self.expand > 0;
        assert!(valid, "sample networks are valid spaces");
        let op = format!("{k}x{k}_MBConv{e}", k = self.kernel, e = self.expand);
        // The graph name arch_model gives: the space's name and the arch's
        // hash (space | width | ops).
        let blocks = self.stages.iter().map(|s| s.blocks).sum();
        let arch = format!("sample|1|{}", vec![op.as_str(); blocks].join(","));
        let hash = hex::encode(Sha256::digest(arch.as_bytes()));
        let mut g = GraphBuilder::new(format!("sample-{}", &hash[..12]));
        let weights = &mut RandomWeights::new(self.seed);
        let hw = self.input_hw;
        let input = g.input("input", ElemType::F32, &[1.into(), 3.into(), hw.into(), hw.into()]);

        g.set_scope("stem");
        let stem = [self.stem_channels, 3, 3, 3];
        let mut x = conv_bn(&mut g, weights, "stem", &input, stem, self.stem_stride, 1, true);
        let mut channels = self.stem_channels;
        g.set_scope("first_block");
        x = mbconv(&mut g, weights, "first_block", &x, [channels, channels], 3, 1, 1);
        for (si, stage) in self.stages.iter().enumerate() {
            for b in 0..stage.blocks {
                let name = format!("stage{}.block{}.{op}", si + 1, b + 1);
                let stride = if b == 0 { stage.stride } else { 1 };
                g.set_scope(&name);
                x = mbconv(&mut g, weights, &name, &x, [channels, stage.channels], self.kernel, self.expand, stride);
                channels = stage.channels;
            }
        }
        g.set_scope("head");
        x = conv_bn(&mut g, weights, "head", &x, [self.head_channels, channels, 1, 1], 1, 1, true);
        g.set_scope("classifier");
        let pooled = g.global_average_pool(&x);
        let features = g.flatten(&pooled);
        let fc = weights.linear("classifier", self.classes, self.head_channels);
        let logits = g.gemm(&features, (&[self.classes, self.head_channels], fc.weight), fc.bias);
        g.output(&logits, ElemType::F32, &[1.into(), self.classes.into()]);
        g.finish()
    }
}

/// A conv with BatchNorm folded in, ReLU6 after it when `relu6`.
#[allow(clippy::too_many_arguments)]
fn conv_bn(
    g: &mut GraphBuilder,
    weights: &mut dyn Weights,
    name: &str,
    x: &str,
    shape: [usize; 4],
    stride: usize,
    group: usize,
    relu6: bool,
) -> String {
    let (weight, bias) = weights.conv_bn(name, shape).folded();
    let y = g.conv(x, (&shape, weight), bias, stride, group);
    if relu6 { g.relu6(&y) } else { y }
}

/// An MBConv block from `c_in` to `out` channels: 1×1 expansion (none when
/// `expand` is 1), k×k depthwise, 1×1 projection, and the shortcut when the
/// shape allows one.
#[allow(clippy::too_many_arguments)]
fn mbconv(
    g: &mut GraphBuilder,
    weights: &mut dyn Weights,
    name: &str,
    x: &str,
    [c_in, out]: [usize; 2],
    kernel: usize,
    expand: usize,
    stride: usize,
) -> String {
    let mid = c_in * expand;
    let expanded = if expand == 1 {
        x.to_string()
    } else {
        conv_bn(g, weights, &format!("{name}.expand"), x, [mid, c_in, 1, 1], 1, 1, true)
    };
    let dw = conv_bn(g, weights, &format!("{name}.depthwise"), &expanded, [mid, 1, kernel, kernel], stride, mid, true);
    let projected = conv_bn(g, weights, &format!("{name}.project"), &dw, [out, mid, 1, 1], 1, 1, false);
    if stride == 1 && c_in == out { g.add(&projected, x) } else { projected }
}

/// Sets the first input's declared dims to `dims` as they are — negative,
/// zero or overflowing values included: the hostile models of the agent's
/// tests and fuzz seeds.
pub fn set_input_dims(model: &mut pb::ModelProto, dims: &[i64]) {
    use pb::tensor_shape_proto::{Dimension, dimension};
    let graph = model.graph.as_mut().expect("a model with a graph");
    let Some(pb::type_proto::Value::TensorType(t)) = graph.input[0].r#type.as_mut().and_then(|t| t.value.as_mut())
    else {
        panic!("the first input is not a tensor")
    };
    t.shape.get_or_insert_with(Default::default).dim =
        dims.iter().map(|&d| Dimension { value: Some(dimension::Value::DimValue(d)), ..Default::default() }).collect();
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sample_nets_are_deterministic() {
        let a = crate::encode(&MbconvNet::small().to_model());
        let b = crate::encode(&MbconvNet::small().to_model());
        assert_eq!(a, b);
        let other = MbconvNet { seed: 9, ..MbconvNet::small() };
        assert_ne!(a, crate::encode(&other.to_model()));
    }
}
