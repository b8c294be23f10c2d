//! Small MBConv networks with seeded random weights, for tests and
//! benchmarks that need a realistic model before any search has run.

use rand::rngs::SmallRng;
use rand::{Rng, SeedableRng};

use crate::{ElemType, GraphBuilder, pb};

/// One stage: `blocks` MBConv blocks of `channels` outputs, the first with `stride`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Stage {
    pub channels: usize,
    pub blocks: usize,
    pub stride: usize,
}

/// A plain MBConv network: conv3×3 stem, stages of identical MBConv blocks,
/// 1×1 conv head, global average pool, fully connected classifier.
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

impl MbconvNet {
    /// A few hundred microseconds per inference on one desktop core.
    pub fn small() -> Self {
        MbconvNet {
            input_hw: 32,
            stem_channels: 8,
            stem_stride: 2,
            stages: vec![Stage { channels: 16, blocks: 2, stride: 2 }, Stage { channels: 24, blocks: 2, stride: 2 }],
            kernel: 3,
            expand: 3,
            head_channels: 64,
            classes: 10,
            seed: 1,
        }
    }

    /// Tens of milliseconds per inference on one desktop core.
    pub fn large() -> Self {
        MbconvNet {
            input_hw: 112,
            stem_channels: 32,
            stem_stride: 2,
            stages: vec![
                Stage { channels: 24, blocks: 2, stride: 2 },
                Stage { channels: 40, blocks: 3, stride: 2 },
                Stage { channels: 80, blocks: 3, stride: 2 },
                Stage { channels: 160, blocks: 2, stride: 1 },
            ],
            kernel: 5,
            expand: 6,
            head_channels: 640,
            classes: 100,
            seed: 2,
        }
    }

    pub fn to_model(&self) -> pb::ModelProto {
        let mut rng = SmallRng::seed_from_u64(self.seed);
        let mut g = GraphBuilder::new("mbconv_net");
        let x = g.input("input", ElemType::F32, &[1.into(), 3.into(), self.input_hw.into(), self.input_hw.into()]);
        let stem = conv(&mut g, &mut rng, &x, 3, self.stem_channels, 3, self.stem_stride, 1);
        let mut y = g.relu6(&stem);
        let mut c_in = self.stem_channels;
        for stage in &self.stages {
            for b in 0..stage.blocks {
                let stride = if b == 0 { stage.stride } else { 1 };
                y = self.mbconv(&mut g, &mut rng, &y, c_in, stage.channels, stride);
                c_in = stage.channels;
            }
        }
        let head = conv(&mut g, &mut rng, &y, c_in, self.head_channels, 1, 1, 1);
        let head = g.relu6(&head);
        let pooled = g.global_average_pool(&head);
        let flat = g.flatten(&pooled);
        let logits = g.gemm(
            &flat,
            (
                &[self.classes, self.head_channels],
                weights(&mut rng, self.classes * self.head_channels, self.head_channels),
            ),
            vec![0.0; self.classes],
        );
        g.output(&logits, ElemType::F32, &[1.into(), self.classes.into()]);
        g.finish()
    }

    fn mbconv(
        &self,
        g: &mut GraphBuilder,
        rng: &mut SmallRng,
        x: &str,
        c_in: usize,
        c_out: usize,
        stride: usize,
    ) -> String {
        let mid = c_in * self.expand;
        let expanded = conv(g, rng, x, c_in, mid, 1, 1, 1);
        let expanded = g.relu6(&expanded);
        let dw = conv(g, rng, &expanded, mid, mid, self.kernel, stride, mid);
        let dw = g.relu6(&dw);
        let projected = conv(g, rng, &dw, mid, c_out, 1, 1, 1);
        if stride == 1 && c_in == c_out { g.add(&projected, x) } else { projected }
    }
}

/// He-uniform weights, so activations stay in range through deep stacks.
fn weights(rng: &mut SmallRng, count: usize, fan_in: usize) -> Vec<f32> {
    let bound = (6.0 / fan_in as f32).sqrt();
    (0..count).map(|_| rng.random_range(-bound..bound)).collect()
}

#[allow(clippy::too_many_arguments)]
fn conv(
    g: &mut GraphBuilder,
    rng: &mut SmallRng,
    x: &str,
    c_in: usize,
    c_out: usize,
    k: usize,
    stride: usize,
    group: usize,
) -> String {
    let per_group = c_in / group;
    let dims = [c_out, per_group, k, k];
    let w = weights(rng, dims.iter().product(), per_group * k * k);
    let b = (0..c_out).map(|_| rng.random_range(-0.1..0.1)).collect();
    g.conv(x, (&dims, w), b, stride, group)
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
