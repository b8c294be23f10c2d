//! Sample MBConv networks for tests and benchmarks that need a realistic
//! model without a search: a one-candidate space exported by [`crate::export`].

use edgeloop_space::{
    Arch, ChoiceSpec, FirstBlockSpec, HeadSpec, InputSpec, Op, Space, SpaceSpec, StageSpec, StemSpec,
};

use crate::export::{RandomWeights, arch_model};
use crate::pb;

/// A plain MBConv network: conv3×3 stem, a fixed MBConv1 block, stages of
/// identical MBConv blocks, 1×1 conv head, global average pool, classifier.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MbconvNet {
    pub input_hw: usize,
    pub stem_channels: usize,
    pub stem_stride: usize,
    pub stages: Vec<StageSpec>,
    pub kernel: usize,
    pub expand: usize,
    pub head_channels: usize,
    pub classes: usize,
    pub seed: u64,
}

fn stage(channels: usize, blocks: usize, stride: usize) -> StageSpec {
    StageSpec { channels, blocks, stride }
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

    pub fn to_model(&self) -> pb::ModelProto {
        let spec = SpaceSpec {
            name: "sample".into(),
            input: InputSpec { height: self.input_hw, width: self.input_hw, channels: 3 },
            classes: self.classes,
            stem: StemSpec { channels: self.stem_channels, kernel: 3, stride: self.stem_stride },
            first_block: FirstBlockSpec { channels: self.stem_channels, kernel: 3, expand: 1 },
            stages: self.stages.clone(),
            head: HeadSpec { channels: self.head_channels },
            choices: ChoiceSpec { kernels: vec![self.kernel], expands: vec![self.expand], zero: false },
        };
        let space = Space::new(spec, 1.0).expect("sample networks are valid spaces");
        let op = Op::MbConv { kernel: self.kernel, expand: self.expand };
        let arch = Arch { space: space.name().into(), width: 1.0, ops: vec![op; space.blocks.len()] };
        arch_model(&space, &arch, &mut RandomWeights::new(self.seed)).expect("the arch fits its own space")
    }
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
