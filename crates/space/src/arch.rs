use std::fmt;
use std::str::FromStr;

use rand::rngs::SmallRng;
use rand::{Rng, SeedableRng};
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

use crate::layer::Layer;
use crate::space::{ChoiceBlock, Space};

/// A candidate op of a choice block.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Op {
    MbConv {
        kernel: usize,
        expand: usize,
    },
    /// Skip the block (identity shortcut only).
    Zero,
}

impl fmt::Display for Op {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Op::MbConv { kernel, expand } => write!(f, "{kernel}x{kernel}_MBConv{expand}"),
            Op::Zero => f.write_str("zero"),
        }
    }
}

impl FromStr for Op {
    type Err = String;
    /// `5x5_MBConv6` or `zero`.
    fn from_str(s: &str) -> Result<Op, String> {
        if s == "zero" {
            return Ok(Op::Zero);
        }
        let bad = || format!("`{s}` is not an op name (like `3x3_MBConv6` or `zero`)");
        let (kk, expand) = s.split_once("_MBConv").ok_or_else(bad)?;
        let (k1, k2) = kk.split_once('x').ok_or_else(bad)?;
        let (kernel, k2, expand): (usize, usize, usize) =
            (k1.parse().map_err(|_| bad())?, k2.parse().map_err(|_| bad())?, expand.parse().map_err(|_| bad())?);
        if kernel != k2 {
            return Err(bad());
        }
        Ok(Op::MbConv { kernel, expand })
    }
}

impl Serialize for Op {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_str(self)
    }
}

impl<'de> Deserialize<'de> for Op {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Op, D::Error> {
        String::deserialize(d)?.parse().map_err(serde::de::Error::custom)
    }
}

impl Op {
    /// The layer this op is at `block`; `None` for `zero`, which costs nothing.
    pub fn layer(&self, block: &ChoiceBlock) -> Option<Layer> {
        match *self {
            Op::MbConv { kernel, expand } => {
                Some(Layer::mbconv(block.input, block.out_channels, kernel, expand, block.stride))
            }
            Op::Zero => None,
        }
    }
}

#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum ArchError {
    #[error("arch is for space `{arch}` but the space is `{space}`")]
    WrongSpace { arch: String, space: String },
    #[error("arch has width {arch} but the space was built with width {space}")]
    WrongWidth { arch: f64, space: f64 },
    #[error("arch has {arch} ops but space `{space}` has {blocks} choice blocks")]
    WrongLength { arch: usize, blocks: usize, space: String },
    #[error("block {index} ({block}): `{op}` is not a candidate there (candidates: {candidates})")]
    NotACandidate { index: usize, block: String, op: Op, candidates: String },
    #[error("arch JSON: {0}")]
    Json(String),
}

/// One op per choice block of a space. JSON: `{"space", "width", "ops": [...]}`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Arch {
    pub space: String,
    pub width: f64,
    pub ops: Vec<Op>,
}

impl Arch {
    /// Uniformly random over each block's candidates.
    pub fn random(space: &Space, seed: u64) -> Arch {
        Arch::sample(space, &mut SmallRng::seed_from_u64(seed))
    }

    /// MobileNetV2's block (`3x3_MBConv6`) in every choice block, none
    /// skipped: the hand-designed baseline a search must beat in this
    /// space's layout (scale it with the space's width multiplier).
    pub fn mobilenet_v2(space: &Space) -> Result<Arch, ArchError> {
        let op = Op::MbConv { kernel: 3, expand: 6 };
        let arch = Arch { space: space.name().into(), width: space.width, ops: vec![op; space.blocks.len()] };
        arch.validate(space)?;
        Ok(arch)
    }

    pub fn sample(space: &Space, rng: &mut impl Rng) -> Arch {
        let ops = space.blocks.iter().map(|b| b.candidates[rng.random_range(0..b.candidates.len())]).collect();
        Arch { space: space.name().into(), width: space.width, ops }
    }

    pub fn from_json(text: &str) -> Result<Arch, ArchError> {
        serde_json::from_str(text).map_err(|e| ArchError::Json(e.to_string()))
    }

    pub fn to_json(&self) -> String {
        serde_json::to_string_pretty(self).expect("arch serialises")
    }

    /// Content hash (sha256 hex) of the space, width and ops: stable across
    /// runs and machines, independent of JSON formatting.
    pub fn hash(&self) -> String {
        let ops: Vec<String> = self.ops.iter().map(Op::to_string).collect();
        let canonical = format!("{}|{}|{}", self.space, self.width, ops.join(","));
        hex::encode(Sha256::digest(canonical.as_bytes()))
    }

    pub fn validate(&self, space: &Space) -> Result<(), ArchError> {
        if self.space != space.name() {
            return Err(ArchError::WrongSpace { arch: self.space.clone(), space: space.name().into() });
        }
        if self.width != space.width {
            return Err(ArchError::WrongWidth { arch: self.width, space: space.width });
        }
        if self.ops.len() != space.blocks.len() {
            return Err(ArchError::WrongLength {
                arch: self.ops.len(),
                blocks: space.blocks.len(),
                space: space.name().into(),
            });
        }
        for (index, (op, block)) in self.ops.iter().zip(&space.blocks).enumerate() {
            if !block.candidates.contains(op) {
                let candidates = block.candidates.iter().map(Op::to_string).collect::<Vec<_>>().join(", ");
                return Err(ArchError::NotACandidate { index, block: block.name.clone(), op: *op, candidates });
            }
        }
        Ok(())
    }

    /// Every layer of the network in order (validated first).
    pub fn layers(&self, space: &Space) -> Result<Vec<Layer>, ArchError> {
        self.validate(space)?;
        let chosen = self.ops.iter().zip(&space.blocks).filter_map(|(op, b)| op.layer(b));
        Ok(space.prefix_layers().into_iter().chain(chosen).chain(space.suffix_layers()).collect())
    }

    /// Multiply-accumulates of one inference (see [`Layer::macs`]).
    pub fn macs(&self, space: &Space) -> Result<u64, ArchError> {
        Ok(self.layers(space)?.iter().map(Layer::macs).sum())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::layer::Shape;

    #[test]
    fn macs_of_each_layer_kind_by_hand() {
        let input = Shape { height: 8, width: 8, channels: 4 };
        // expand 4→24 on 8×8, 3×3 depthwise stride 2 → 4×4, project 24→8.
        let mb = Layer::mbconv(input, 8, 3, 6, 2);
        assert_eq!(mb.macs(), 64 * 24 * 4 + 16 * 24 * 9 + 16 * 8 * 24);
        // Expand ratio 1: no expansion conv.
        assert_eq!(Layer::mbconv(input, 4, 5, 1, 1).macs(), 64 * 4 * 25 + 64 * 4 * 4);
        assert_eq!(Layer::head_conv(input, 16).macs(), 64 * 16 * 4);
        assert_eq!(Layer::logits(input, 10).macs(), 40);
        // zero blocks add nothing; wider ops add more.
        let space = Space::load("tiny", 1.0).unwrap();
        let mut arch = Arch::mobilenet_v2(&space).unwrap();
        let full = arch.macs(&space).unwrap();
        arch.ops[1] = Op::Zero;
        assert!(arch.macs(&space).unwrap() < full);
    }

    #[test]
    fn op_names_round_trip() {
        for name in ["3x3_MBConv3", "7x7_MBConv6", "zero"] {
            assert_eq!(name.parse::<Op>().unwrap().to_string(), name);
        }
        assert!("3x5_MBConv3".parse::<Op>().is_err());
        assert!("conv".parse::<Op>().is_err());
    }

    #[test]
    fn json_round_trips_and_hash_is_stable() {
        let space = Space::load("proxyless-mobile", 1.0).unwrap();
        let arch = Arch::random(&space, 42);
        let back = Arch::from_json(&arch.to_json()).unwrap();
        assert_eq!(back, arch);
        assert_eq!(back.hash(), arch.hash());
        assert_eq!(Arch::random(&space, 42).hash(), arch.hash());
        assert_ne!(Arch::random(&space, 43).hash(), arch.hash());
        // Pinned: the hash must not change between versions.
        let fixed = Arch { space: "tiny".into(), width: 1.0, ops: vec![Op::MbConv { kernel: 3, expand: 3 }; 4] };
        assert_eq!(
            fixed.hash(),
            hex::encode(Sha256::digest(b"tiny|1|3x3_MBConv3,3x3_MBConv3,3x3_MBConv3,3x3_MBConv3"))
        );
    }

    #[test]
    fn mobilenet_v2_is_3x3_mbconv6_everywhere_at_the_spaces_width() {
        let space = Space::load("tiny", 0.5).unwrap();
        let arch = Arch::mobilenet_v2(&space).unwrap();
        assert_eq!(arch.width, 0.5);
        assert!(arch.ops.iter().all(|op| op.to_string() == "3x3_MBConv6"));
        assert_eq!(arch.ops.len(), space.blocks.len());
        let no_3x3 = Space::from_toml(
            &include_str!("../presets/tiny.toml").replace("kernels = [3, 5, 7]", "kernels = [5, 7]"),
            "no-3x3",
            1.0,
        )
        .unwrap();
        assert!(matches!(Arch::mobilenet_v2(&no_3x3), Err(ArchError::NotACandidate { .. })));
    }

    #[test]
    fn invalid_arch_names_the_block() {
        let space = Space::load("tiny", 1.0).unwrap();
        let mut arch = Arch::random(&space, 1);
        arch.ops[0] = Op::Zero; // first block of a stage: no shortcut
        let err = arch.validate(&space).unwrap_err().to_string();
        assert!(err.contains("block 0 (stage1.block1)") && err.contains("`zero`"), "{err}");
        arch.ops.pop();
        assert!(matches!(arch.validate(&space), Err(ArchError::WrongLength { .. })));
        let json_err = Arch::from_json(r#"{"space":"tiny","width":1.0,"ops":["9x9_MBConv"]}"#).unwrap_err();
        assert!(json_err.to_string().contains("9x9_MBConv"), "{json_err}");
    }

    #[test]
    fn zero_blocks_contribute_no_layer() {
        let space = Space::load("tiny", 1.0).unwrap();
        let mut arch = Arch::random(&space, 3);
        arch.ops = space.blocks.iter().map(|b| *b.candidates.last().unwrap()).collect();
        let zeros = arch.ops.iter().filter(|o| **o == Op::Zero).count();
        assert_eq!(zeros, 2);
        assert_eq!(arch.layers(&space).unwrap().len(), 2 + 4 - zeros + 2);
    }
}
