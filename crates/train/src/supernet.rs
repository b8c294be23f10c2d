//! A space's over-parameterised network: every candidate op of every choice
//! block holds its own weights, and a *selection* (one candidate index per
//! block) says which path a forward pass takes — binarized paths, one active
//! op per block (DESIGN §8). A derived architecture trained from scratch is
//! the same network with one candidate per block, so there is one forward,
//! one set of weight names and one exporter for both.

use edgeloop_space::{Arch, ArchError, Op, Space};
use tch::Tensor;
use tch::nn::Path;

use crate::layers::{BnMode, Classifier, ConvBn, MbConv, Param, Taps, relu6_tapped};

#[derive(Debug)]
struct ChoiceBlockNet {
    name: String,
    candidates: Vec<Op>,
    /// Per candidate: its residual branch; `None` for `zero`.
    branches: Vec<Option<MbConv>>,
    shortcut: bool,
}

impl ChoiceBlockNet {
    /// The branch output of candidate `index` (`None` for `zero`: adds nothing).
    fn branch(&self, x: &Tensor, index: usize, mode: BnMode, taps: Taps<'_>) -> Option<Tensor> {
        self.branches[index].as_ref().map(|b| b.forward(x, mode, taps))
    }

    fn forward(&self, x: &Tensor, index: usize, mode: BnMode, taps: Taps<'_>) -> Tensor {
        match (self.branch(x, index, mode, taps), self.shortcut) {
            (Some(y), true) => y + x,
            (Some(y), false) => y,
            (None, _) => x.shallow_clone(),
        }
    }
}

/// What an arch step needs of each choice block after a forward pass.
#[derive(Debug)]
pub struct BlockProbe {
    /// The block's input, detached: inactive branches are evaluated on it.
    pub input: Tensor,
    /// The block's output, in the autograd graph: ∂L/∂(output) is ∂L/∂y.
    pub output: Tensor,
}

/// One layer of a path, in the order of [`Arch::layers`] (`zero` ops have
/// no layer): what a forward pass with other arithmetic (fake quantization)
/// walks through.
#[derive(Debug, Clone, Copy)]
pub enum PathLayer<'a> {
    /// Stem or head: conv + BN + ReLU6.
    Conv(&'a ConvBn),
    /// An MBConv's residual branch; the shortcut, if any, is the layer's `idskip`.
    MbConv(&'a MbConv),
    Classifier(&'a Classifier),
}

#[derive(Debug)]
pub struct Supernet {
    space: Space,
    stem: ConvBn,
    first: MbConv,
    first_shortcut: bool,
    blocks: Vec<ChoiceBlockNet>,
    head: ConvBn,
    classifier: Classifier,
}

impl Supernet {
    /// Every candidate of every block of `space`.
    pub fn new(root: &Path, space: &Space) -> Supernet {
        Supernet::build(root, space, |b| space.blocks[b].candidates.clone())
    }

    /// Only the ops of `arch`: the standalone network of a derived architecture.
    pub fn for_arch(root: &Path, space: &Space, arch: &Arch) -> Result<Supernet, ArchError> {
        arch.validate(space)?;
        Ok(Supernet::build(root, space, |b| vec![arch.ops[b]]))
    }

    fn build(root: &Path, space: &Space, candidates_of: impl Fn(usize) -> Vec<Op>) -> Supernet {
        let spec = &space.spec;
        let [stem, first] = space.prefix_layers().try_into().expect("stem and first block");
        let [head, logits] = space.suffix_layers().try_into().expect("head and classifier");
        let c = |v: usize| v as i64;
        let stem_net = ConvBn::new(
            root,
            "stem",
            [c(stem.out_channels), c(stem.input.channels), c(stem.kernel), c(stem.kernel)],
            c(stem.stride),
            1,
        );
        let fb = &spec.first_block;
        let first_net =
            MbConv::new(root, "first_block", c(first.input.channels), c(fb.channels), c(fb.kernel), c(fb.expand), 1);
        let blocks = space
            .blocks
            .iter()
            .enumerate()
            .map(|(b, block)| {
                let candidates = candidates_of(b);
                let branches = candidates
                    .iter()
                    .map(|op| match *op {
                        Op::MbConv { kernel, expand } => Some(MbConv::new(
                            root,
                            &format!("{}.{op}", block.name),
                            c(block.input.channels),
                            c(block.out_channels),
                            c(kernel),
                            c(expand),
                            c(block.stride),
                        )),
                        Op::Zero => None,
                    })
                    .collect();
                ChoiceBlockNet { name: block.name.clone(), candidates, branches, shortcut: block.has_shortcut() }
            })
            .collect();
        Supernet {
            space: space.clone(),
            stem: stem_net,
            first: first_net,
            first_shortcut: first.idskip,
            blocks,
            head: ConvBn::new(root, "head", [c(head.out_channels), c(head.input.channels), 1, 1], 1, 1),
            classifier: Classifier::new(root, "classifier", c(logits.input.channels), c(logits.out_channels)),
        }
    }

    pub fn space(&self) -> &Space {
        &self.space
    }

    /// Candidates per choice block.
    pub fn candidate_counts(&self) -> Vec<usize> {
        self.blocks.iter().map(|b| b.candidates.len()).collect()
    }

    /// The candidate ops of block `b`.
    pub fn candidates(&self, b: usize) -> &[Op] {
        &self.blocks[b].candidates
    }

    /// The architecture a selection picks.
    pub fn arch(&self, selection: &[usize]) -> Arch {
        let ops = self.blocks.iter().zip(selection).map(|(b, &i)| b.candidates[i]).collect();
        Arch { space: self.space.name().to_string(), width: self.space.width, ops }
    }

    /// The selection that picks `arch` (which must be made of candidates of this net).
    pub fn selection(&self, arch: &Arch) -> Result<Vec<usize>, ArchError> {
        arch.validate(&self.space)?;
        self.blocks
            .iter()
            .zip(&arch.ops)
            .enumerate()
            .map(|(index, (b, op))| {
                b.candidates.iter().position(|c| c == op).ok_or_else(|| ArchError::NotACandidate {
                    index,
                    block: b.name.clone(),
                    op: *op,
                    candidates: b.candidates.iter().map(Op::to_string).collect::<Vec<_>>().join(", "),
                })
            })
            .collect()
    }

    fn prefix(&self, x: &Tensor, mode: BnMode, mut taps: Taps<'_>) -> Tensor {
        let x = relu6_tapped(&self.stem.forward(x, mode), taps.as_deref_mut());
        let y = self.first.forward(&x, mode, taps);
        if self.first_shortcut { y + x } else { y }
    }

    fn suffix(&self, x: &Tensor, mode: BnMode, taps: Taps<'_>) -> Tensor {
        self.classifier.forward(&relu6_tapped(&self.head.forward(x, mode), taps))
    }

    /// Logits of the path `selection` (NCHW float input).
    pub fn forward(&self, x: &Tensor, selection: &[usize], mode: BnMode) -> Tensor {
        self.forward_tapped(x, selection, mode, None)
    }

    /// [`Supernet::forward`], recording the input of every ReLU6 in `taps`.
    pub fn forward_tapped(&self, x: &Tensor, selection: &[usize], mode: BnMode, mut taps: Taps<'_>) -> Tensor {
        let mut x = self.prefix(x, mode, taps.as_deref_mut());
        for (b, &i) in self.blocks.iter().zip(selection) {
            x = b.forward(&x, i, mode, taps.as_deref_mut());
        }
        self.suffix(&x, mode, taps)
    }

    /// Logits of the soft mixture of every block's candidates, weighted by
    /// `weights` (a [K] tensor per block, on the simplex; any device and
    /// float kind): Σ_k w_k·block_k(x), every op computed (UNAS skips ops
    /// under 0.05, which makes the relaxed objective jump there and costs
    /// REBAR its unbiasedness). Differentiable in the weights.
    pub fn forward_mixed(&self, x: &Tensor, weights: &[Tensor], mode: BnMode) -> Tensor {
        let mut x = self.prefix(x, mode, None);
        for (b, w) in self.blocks.iter().zip(weights) {
            let w = w.to_kind(x.kind()).to_device(x.device());
            x = (0..b.candidates.len())
                .map(|k| b.forward(&x, k, mode, None) * w.get(k as i64))
                .reduce(|acc, y| acc + y)
                .expect("a block has candidates");
        }
        self.suffix(&x, mode, None)
    }

    /// Like [`Supernet::forward`], also keeping each block's input and output
    /// for the gate gradients of an arch step.
    pub fn forward_probed(&self, x: &Tensor, selection: &[usize], mode: BnMode) -> (Tensor, Vec<BlockProbe>) {
        let mut x = self.prefix(x, mode, None);
        let mut probes = Vec::with_capacity(self.blocks.len());
        for (b, &i) in self.blocks.iter().zip(selection) {
            let y = b.forward(&x, i, mode, None);
            probes.push(BlockProbe { input: x.detach(), output: y.shallow_clone() });
            x = y;
        }
        (self.suffix(&x, mode, None), probes)
    }

    /// ∂L/∂g_j = Σ o_j(x) ⊙ ∂L/∂y for each candidate j in `involved` of
    /// block `b`, where `dy` = ∂L/∂y at the block's output. Inactive
    /// branches are run without autograd state and with batch statistics.
    pub fn gate_grads(&self, b: usize, probe_input: &Tensor, dy: &Tensor, involved: &[usize]) -> Vec<f64> {
        let block = &self.blocks[b];
        tch::no_grad(|| {
            involved
                .iter()
                .map(|&j| match block.branch(probe_input, j, BnMode::BatchStats, None) {
                    Some(o) => (o * dy).sum(tch::Kind::Double).double_value(&[]),
                    None => 0.0,
                })
                .collect()
        })
    }

    /// The layers of the path `selection`, as [`Arch::layers`] lists them.
    pub fn path_layers(&self, selection: &[usize]) -> Vec<PathLayer<'_>> {
        let chosen = self.blocks.iter().zip(selection).filter_map(|(b, &i)| b.branches[i].as_ref());
        [PathLayer::Conv(&self.stem), PathLayer::MbConv(&self.first)]
            .into_iter()
            .chain(chosen.map(PathLayer::MbConv))
            .chain([PathLayer::Conv(&self.head), PathLayer::Classifier(&self.classifier)])
            .collect()
    }

    /// The trainable tensors the path `selection` uses.
    pub fn params(&self, selection: &[usize]) -> Vec<Param> {
        let mut out = Vec::new();
        self.stem.params(&mut out);
        self.first.params(&mut out);
        for (b, &i) in self.blocks.iter().zip(selection) {
            if let Some(branch) = &b.branches[i] {
                branch.params(&mut out);
            }
        }
        self.head.params(&mut out);
        self.classifier.params(&mut out);
        out
    }
}
