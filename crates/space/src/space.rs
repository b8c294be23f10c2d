use std::path::Path;

use serde::{Deserialize, Serialize};

use crate::arch::Op;
use crate::layer::{Layer, Shape};

#[derive(Debug, thiserror::Error)]
pub enum SpaceError {
    #[error("no preset named `{name}` and no file at that path (presets: {presets})")]
    Unknown { name: String, presets: String },
    #[error("reading space file {path}: {source}")]
    Read { path: String, source: std::io::Error },
    #[error("space {origin}: {message}")]
    Parse { origin: String, message: String },
    #[error("space `{space}`: {message}")]
    Invalid { space: String, message: String },
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct InputSpec {
    pub height: usize,
    pub width: usize,
    pub channels: usize,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct StemSpec {
    pub channels: usize,
    pub kernel: usize,
    pub stride: usize,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FirstBlockSpec {
    pub channels: usize,
    pub kernel: usize,
    pub expand: usize,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct StageSpec {
    pub channels: usize,
    pub blocks: usize,
    pub stride: usize,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct HeadSpec {
    pub channels: usize,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ChoiceSpec {
    pub kernels: Vec<usize>,
    pub expands: Vec<usize>,
    /// Offer `zero` (skip the block) wherever the identity shortcut exists.
    pub zero: bool,
}

/// The TOML form of a space (see `presets/`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SpaceSpec {
    pub name: String,
    pub input: InputSpec,
    pub classes: usize,
    pub stem: StemSpec,
    pub first_block: FirstBlockSpec,
    pub stages: Vec<StageSpec>,
    pub head: HeadSpec,
    pub choices: ChoiceSpec,
}

/// One searchable block: where it sits and what it may be.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ChoiceBlock {
    /// `stage<i>.block<j>`, 1-based stages as in the papers.
    pub name: String,
    pub input: Shape,
    pub out_channels: usize,
    pub stride: usize,
    pub candidates: Vec<Op>,
}

impl ChoiceBlock {
    /// The identity shortcut exists (and so `zero` is possible).
    pub fn has_shortcut(&self) -> bool {
        self.stride == 1 && self.input.channels == self.out_channels
    }

    pub fn output(&self) -> Shape {
        self.input.strided(self.stride, self.out_channels)
    }
}

/// A space with its width multiplier applied and its blocks laid out.
#[derive(Debug, Clone, PartialEq)]
pub struct Space {
    pub spec: SpaceSpec,
    pub width: f64,
    pub blocks: Vec<ChoiceBlock>,
}

const PRESETS: [(&str, &str); 3] = [
    ("proxyless-mobile", include_str!("../presets/proxyless-mobile.toml")),
    ("proxyless-cifar", include_str!("../presets/proxyless-cifar.toml")),
    ("tiny", include_str!("../presets/tiny.toml")),
];

pub fn preset_names() -> Vec<&'static str> {
    PRESETS.iter().map(|(n, _)| *n).collect()
}

/// Rounds to a multiple of 8 without losing more than 10%, as MobileNetV2 does.
fn make_divisible(v: f64) -> usize {
    let rounded = (((v + 4.0) / 8.0).floor() as usize * 8).max(8);
    if (rounded as f64) < 0.9 * v { rounded + 8 } else { rounded }
}

impl Space {
    /// A preset by name, or a TOML file by path.
    pub fn load(name_or_path: &str, width: f64) -> Result<Space, SpaceError> {
        if let Some((_, text)) = PRESETS.iter().find(|(n, _)| *n == name_or_path) {
            return Space::from_toml(text, &format!("preset `{name_or_path}`"), width);
        }
        let path = Path::new(name_or_path);
        if !path.exists() {
            return Err(SpaceError::Unknown { name: name_or_path.into(), presets: preset_names().join(", ") });
        }
        let text =
            std::fs::read_to_string(path).map_err(|source| SpaceError::Read { path: name_or_path.into(), source })?;
        Space::from_toml(&text, name_or_path, width)
    }

    pub fn from_toml(text: &str, origin: &str, width: f64) -> Result<Space, SpaceError> {
        let spec: SpaceSpec =
            toml::from_str(text).map_err(|e| SpaceError::Parse { origin: origin.into(), message: e.to_string() })?;
        Space::new(spec, width)
    }

    pub fn new(spec: SpaceSpec, width: f64) -> Result<Space, SpaceError> {
        let invalid = |message: String| SpaceError::Invalid { space: spec.name.clone(), message };
        if !(width > 0.0 && width.is_finite()) {
            return Err(invalid(format!("width multiplier must be positive, got {width}")));
        }
        if spec.stages.is_empty() || spec.stages.iter().any(|s| s.blocks == 0 || s.stride == 0) {
            return Err(invalid("every stage needs blocks ≥ 1 and stride ≥ 1".into()));
        }
        if spec.choices.kernels.iter().chain(&spec.choices.expands).any(|&v| v == 0)
            || spec.choices.kernels.is_empty()
            || spec.choices.expands.is_empty()
            || spec.choices.kernels.iter().any(|k| k % 2 == 0)
        {
            return Err(invalid("choices need odd kernels and expands ≥ 1, at least one of each".into()));
        }
        let mut spec = spec;
        if width != 1.0 {
            let scale = |c: usize| make_divisible(c as f64 * width);
            spec.stem.channels = scale(spec.stem.channels);
            spec.first_block.channels = scale(spec.first_block.channels);
            for s in &mut spec.stages {
                s.channels = scale(s.channels);
            }
            // ProxylessNAS keeps the head at full width when narrowing.
            if width > 1.0 {
                spec.head.channels = scale(spec.head.channels);
            }
        }
        let mbconvs: Vec<Op> = spec
            .choices
            .kernels
            .iter()
            .flat_map(|&kernel| spec.choices.expands.iter().map(move |&expand| Op::MbConv { kernel, expand }))
            .collect();
        let mut shape = Shape::input(&spec.input).strided(spec.stem.stride, spec.stem.channels);
        shape = shape.strided(1, spec.first_block.channels);
        let mut blocks = Vec::new();
        for (si, stage) in spec.stages.iter().enumerate() {
            for b in 0..stage.blocks {
                let stride = if b == 0 { stage.stride } else { 1 };
                let mut block = ChoiceBlock {
                    name: format!("stage{}.block{}", si + 1, b + 1),
                    input: shape,
                    out_channels: stage.channels,
                    stride,
                    candidates: mbconvs.clone(),
                };
                // The first block of a stage never skips.
                if spec.choices.zero && b > 0 && block.has_shortcut() {
                    block.candidates.push(Op::Zero);
                }
                shape = block.output();
                blocks.push(block);
            }
        }
        Ok(Space { spec, width, blocks })
    }

    pub fn name(&self) -> &str {
        &self.spec.name
    }

    /// Number of distinct architectures: the product of the candidate counts.
    pub fn num_archs(&self) -> u128 {
        self.blocks.iter().map(|b| b.candidates.len() as u128).product()
    }

    /// The layers before the first choice block (stem conv, fixed first block).
    pub fn prefix_layers(&self) -> Vec<Layer> {
        let input = Shape::input(&self.spec.input);
        let stem = Layer::stem(input, &self.spec.stem);
        let fb = &self.spec.first_block;
        let first = Layer::mbconv(stem.output(), fb.channels, fb.kernel, fb.expand, 1);
        vec![stem, first]
    }

    /// The layers after the last choice block (1×1 head conv, pool + classifier).
    pub fn suffix_layers(&self) -> Vec<Layer> {
        let last = self.blocks.last().map_or_else(|| self.prefix_layers()[1].output(), ChoiceBlock::output);
        let head = Layer::head_conv(last, self.spec.head.channels);
        let logits = Layer::logits(head.output(), self.spec.classes);
        vec![head, logits]
    }

    /// Every distinct layer any arch of this space can contain, in a stable order.
    pub fn all_layers(&self) -> Vec<Layer> {
        let mut seen = std::collections::BTreeSet::new();
        let block_layers = self.blocks.iter().flat_map(|b| b.candidates.iter().filter_map(|op| op.layer(b)));
        self.prefix_layers()
            .into_iter()
            .chain(block_layers)
            .chain(self.suffix_layers())
            .filter(|l| seen.insert(l.key()))
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_preset_parses() {
        for name in preset_names() {
            let space = Space::load(name, 1.0).unwrap();
            assert_eq!(space.name(), name);
            assert!(space.num_archs() > 1);
        }
    }

    #[test]
    fn proxyless_mobile_is_faithful() {
        let space = Space::load("proxyless-mobile", 1.0).unwrap();
        assert_eq!(space.blocks.len(), 21);
        assert_eq!(space.blocks.iter().filter(|b| b.candidates.contains(&Op::Zero)).count(), 15);
        assert_eq!(space.num_archs(), 6u128.pow(6) * 7u128.pow(15));
        let last = space.blocks.last().unwrap().output();
        assert_eq!((last.height, last.width, last.channels), (7, 7, 320));
        let keys: Vec<String> = space.all_layers().iter().map(Layer::key).collect();
        assert_eq!(keys[0], "Conv-input:224x224x3-output:112x112x32");
        assert!(keys.contains(&"Conv_1-input:7x7x320-output:7x7x1280".to_string()));
        assert!(keys.contains(&"Logits-input:7x7x1280-output:1000".to_string()));
        assert!(
            keys.contains(
                &"expanded_conv-input:56x56x24-output:56x56x24-expand:6-kernel:5-stride:1-idskip:1".to_string()
            )
        );
    }

    #[test]
    fn width_multiplier_scales_channels() {
        let half = Space::load("proxyless-cifar", 0.5).unwrap();
        assert_eq!(half.spec.stem.channels, 16);
        assert_eq!(half.spec.stages[0].channels, 16);
        assert_eq!(half.spec.stages[5].channels, 160);
        assert_eq!(half.spec.head.channels, 1280);
        assert!(Space::load("tiny", 0.0).is_err());
    }

    #[test]
    fn unknown_space_and_bad_toml_are_named() {
        let err = Space::load("nope", 1.0).unwrap_err().to_string();
        assert!(err.contains("nope") && err.contains("proxyless-mobile"), "{err}");
        let err = Space::from_toml("name = 3", "my.toml", 1.0).unwrap_err().to_string();
        assert!(err.contains("my.toml"), "{err}");
    }
}
