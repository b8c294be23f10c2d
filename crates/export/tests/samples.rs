//! The sample networks of `edgeloop-onnx`, built without a search space, are
//! the one architecture of a one-candidate space as [`arch_model`] exports it:
//! same bytes.

use edgeloop_export::export::{RandomWeights, arch_model};
use edgeloop_onnx::encode;
use edgeloop_onnx::samples::{MbconvNet, Stage};
use edgeloop_space::{
    Arch, ChoiceSpec, FirstBlockSpec, HeadSpec, InputSpec, Op, Space, SpaceSpec, StageSpec, StemSpec,
};

/// What `MbconvNet::to_model` was before the split: the net as a space.
fn via_space(net: &MbconvNet) -> Vec<u8> {
    let spec = SpaceSpec {
        name: "sample".into(),
        input: InputSpec { height: net.input_hw, width: net.input_hw, channels: 3 },
        classes: net.classes,
        stem: StemSpec { channels: net.stem_channels, kernel: 3, stride: net.stem_stride },
        first_block: FirstBlockSpec { channels: net.stem_channels, kernel: 3, expand: 1 },
        stages: net
            .stages
            .iter()
            .map(|s| StageSpec { channels: s.channels, blocks: s.blocks, stride: s.stride })
            .collect(),
        head: HeadSpec { channels: net.head_channels },
        choices: ChoiceSpec { kernels: vec![net.kernel], expands: vec![net.expand], zero: false },
    };
    let space = Space::new(spec, 1.0).expect("sample networks are valid spaces");
    let op = Op::MbConv { kernel: net.kernel, expand: net.expand };
    let arch = Arch { space: space.name().into(), width: 1.0, ops: vec![op; space.blocks.len()] };
    encode(&arch_model(&space, &arch, &mut RandomWeights::new(net.seed)).expect("the arch fits its own space"))
}

#[test]
fn sample_nets_are_their_space_export() {
    let small = MbconvNet::small();
    let nets = [
        small.clone(),
        MbconvNet::large(),
        MbconvNet { seed: 9, ..small.clone() },
        // Expand 1 (no expansion conv), shortcuts in every stage, odd widths.
        MbconvNet {
            stages: vec![
                Stage { channels: 8, blocks: 2, stride: 1 },
                Stage { channels: 12, blocks: 3, stride: 1 },
                Stage { channels: 20, blocks: 1, stride: 3 },
            ],
            kernel: 5,
            expand: 1,
            stem_stride: 1,
            input_hw: 17,
            ..small.clone()
        },
        MbconvNet { kernel: 7, expand: 6, head_channels: 100, classes: 3, ..small },
    ];
    for net in nets {
        assert_eq!(net.to_model(), edgeloop_onnx::decode(&via_space(&net)).unwrap(), "{net:?}");
        assert_eq!(encode(&net.to_model()), via_space(&net), "{net:?}");
    }
}
