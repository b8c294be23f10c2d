//! NAO's encoder–predictor–decoder (SEEDS §1, NAO-WS and SemiNAS as their
//! official code runs them) over a space's architectures: one token per
//! choice block, an LSTM encoder whose L2-normalised outputs average into
//! the architecture's embedding, two heads on the embedding (accuracy, and
//! the latency the device measured), and an attention LSTM decoder whose
//! every step is masked to the block's legal ops. New architectures come
//! from a gradient step in embedding space on the predicted score, decoded
//! greedily.

use edgeloop_space::{Op, Space};
use tch::nn::{self, Module, OptimizerConfig, RNN};
use tch::{Device, Kind, Tensor};

/// Token 0 starts a sequence; op `i` of the space's op list is token `i + 1`.
const SOS: i64 = 0;

/// The space's ops as tokens, and which tokens each block may take.
#[derive(Debug, Clone)]
pub struct Vocabulary {
    ops: Vec<Op>,
    /// Per block: the token of each of its candidates, in candidate order.
    tokens: Vec<Vec<i64>>,
}

impl Vocabulary {
    pub fn of(space: &Space) -> Vocabulary {
        let mut ops: Vec<Op> = Vec::new();
        for op in space.blocks.iter().flat_map(|b| &b.candidates) {
            if !ops.contains(op) {
                ops.push(*op);
            }
        }
        let tokens = space
            .blocks
            .iter()
            .map(|b| b.candidates.iter().map(|op| ops.iter().position(|o| o == op).unwrap() as i64 + 1).collect())
            .collect();
        Vocabulary { ops, tokens }
    }

    /// Tokens the decoder chooses among, SOS included.
    pub fn size(&self) -> i64 {
        self.ops.len() as i64 + 1
    }

    pub fn len(&self) -> usize {
        self.tokens.len()
    }

    pub fn is_empty(&self) -> bool {
        self.tokens.is_empty()
    }

    /// The sequence of a selection (a candidate index per block).
    pub fn encode(&self, selection: &[usize]) -> Vec<i64> {
        selection.iter().zip(&self.tokens).map(|(&i, t)| t[i]).collect()
    }

    /// The selection of a sequence; None when a token is not one of its block's.
    pub fn decode(&self, tokens: &[i64]) -> Option<Vec<usize>> {
        (tokens.len() == self.tokens.len())
            .then(|| tokens.iter().zip(&self.tokens).map(|(t, legal)| legal.iter().position(|l| l == t)).collect())
            .flatten()
    }

    /// [blocks, size]: 0 where a block may take a token, −∞ elsewhere.
    fn mask(&self, device: Device) -> Tensor {
        let v = self.size() as usize;
        let values: Vec<f32> = self
            .tokens
            .iter()
            .flat_map(|legal| (0..v).map(move |t| if legal.contains(&(t as i64)) { 0.0 } else { f32::NEG_INFINITY }))
            .collect();
        Tensor::from_slice(&values).view([self.tokens.len() as i64, v as i64]).to_device(device)
    }
}

/// Sizes and training of the encoder–predictor–decoder (defaults: SEEDS
/// §1.9's CPU scale of NAO-WS; λ = 0.8 as in every NAO version).
#[derive(Debug, Clone, PartialEq)]
pub struct EpdConfig {
    pub hidden: i64,
    pub mlp: i64,
    pub dropout: f64,
    /// Weight of the predictors' loss; the reconstruction gets 1 − λ.
    pub trade_off: f64,
    pub lr: f64,
    pub weight_decay: f64,
    pub epochs: usize,
    pub batch: usize,
    pub grad_clip: f64,
}

impl Default for EpdConfig {
    fn default() -> Self {
        EpdConfig {
            hidden: 32,
            mlp: 64,
            dropout: 0.1,
            trade_off: 0.8,
            lr: 1e-3,
            weight_decay: 1e-4,
            epochs: 300,
            batch: 100,
            grad_clip: 5.0,
        }
    }
}

/// One architecture the EPD learns from: its tokens and both targets,
/// scaled to [0, 1] over the pool (higher accuracy, higher latency).
#[derive(Debug, Clone, PartialEq)]
pub struct Example {
    pub tokens: Vec<i64>,
    pub accuracy: f64,
    pub latency: f64,
}

/// A two-layer MLP head: embedding → score in (0, 1).
#[derive(Debug)]
struct Head {
    hidden: Vec<nn::Linear>,
    out: nn::Linear,
}

impl Head {
    fn new(p: &nn::Path, width: i64, mlp: i64) -> Head {
        let hidden = vec![
            nn::linear(p / "0", width, mlp, Default::default()),
            nn::linear(p / "1", mlp, mlp, Default::default()),
        ];
        Head { hidden, out: nn::linear(p / "out", mlp, 1, Default::default()) }
    }

    fn forward(&self, e: &Tensor, dropout: f64, train: bool) -> Tensor {
        let h = self.hidden.iter().fold(e.shallow_clone(), |h, l| l.forward(&h).relu().dropout(dropout, train));
        self.out.forward(&h).sigmoid().squeeze_dim(-1)
    }
}

/// What the encoder makes of a batch of sequences.
struct Encoded {
    /// Per position, L2-normalised: [B, L, H].
    outputs: Tensor,
    /// The normalised mean of the outputs: [B, H].
    embedding: Tensor,
}

fn embedding_of(outputs: &Tensor) -> Tensor {
    normalize(&outputs.mean_dim(&[1i64][..], false, Kind::Float))
}

fn normalize(t: &Tensor) -> Tensor {
    t / t.norm_scalaropt_dim(2.0, &[-1i64][..], true).clamp_min(1e-12)
}

/// NAO's encoder, predictors and decoder, with their weights.
pub struct Epd {
    vs: nn::VarStore,
    vocab: Vocabulary,
    mask: Tensor,
    config: EpdConfig,
    embed: nn::Embedding,
    encoder: nn::LSTM,
    accuracy: Head,
    latency: Head,
    dec_embed: nn::Embedding,
    decoder: nn::LSTM,
    attn_in: nn::Linear,
    attn_out: nn::Linear,
    out: nn::Linear,
}

impl Epd {
    /// Fresh weights, uniform in ±0.1 as NAO initialises them (seeded).
    pub fn new(vocab: Vocabulary, config: EpdConfig, seed: u64, device: Device) -> Epd {
        tch::manual_seed(seed as i64);
        let vs = nn::VarStore::new(device);
        let root = vs.root();
        let h = config.hidden;
        let v = vocab.size();
        let uniform = nn::Init::Uniform { lo: -0.1, up: 0.1 };
        let emb = nn::EmbeddingConfig { ws_init: uniform, ..Default::default() };
        let rnn = nn::RNNConfig { w_ih_init: uniform, w_hh_init: uniform, ..Default::default() };
        Epd {
            mask: vocab.mask(device),
            embed: nn::embedding(&root / "embed", v, h, emb),
            encoder: nn::lstm(&root / "encoder", h, h, rnn),
            accuracy: Head::new(&(&root / "accuracy"), h, config.mlp),
            latency: Head::new(&(&root / "latency"), h, config.mlp),
            dec_embed: nn::embedding(&root / "dec_embed", v, h, emb),
            decoder: nn::lstm(&root / "decoder", h, h, rnn),
            attn_in: nn::linear(&root / "attn_in", h, h, Default::default()),
            attn_out: nn::linear(&root / "attn_out", 2 * h, h, Default::default()),
            out: nn::linear(&root / "out", h, v, Default::default()),
            vs,
            vocab,
            config,
        }
    }

    pub fn vocabulary(&self) -> &Vocabulary {
        &self.vocab
    }

    fn device(&self) -> Device {
        self.vs.device()
    }

    fn batch(&self, sequences: &[&[i64]]) -> Tensor {
        let flat: Vec<i64> = sequences.iter().flat_map(|s| s.iter().copied()).collect();
        Tensor::from_slice(&flat).view([sequences.len() as i64, self.vocab.len() as i64]).to_device(self.device())
    }

    fn encode(&self, tokens: &Tensor, train: bool) -> Encoded {
        let x = self.embed.forward(tokens).dropout(self.config.dropout, train);
        let (outputs, _) = self.encoder.seq(&x);
        let outputs = normalize(&outputs);
        Encoded { embedding: embedding_of(&outputs), outputs }
    }

    fn predict(&self, embedding: &Tensor, train: bool) -> (Tensor, Tensor) {
        let d = self.config.dropout;
        (self.accuracy.forward(embedding, d, train), self.latency.forward(embedding, d, train))
    }

    /// The decoder's state from an embedding: (h0, c0) = (e, e).
    fn initial_state(embedding: &Tensor) -> nn::LSTMState {
        let e = embedding.unsqueeze(0);
        nn::LSTMState((e.shallow_clone(), e))
    }

    /// Masked log-probabilities of the next token at each of the steps
    /// whose decoder outputs are `states` [B, S, H] (step `first` onwards).
    fn next_token(&self, states: &Tensor, enc: &Encoded, first: i64) -> Tensor {
        let scores = self.attn_in.forward(states).bmm(&enc.outputs.transpose(1, 2));
        let context = scores.softmax(-1, Kind::Float).bmm(&enc.outputs);
        let mixed = self.attn_out.forward(&Tensor::cat(&[&context, states], -1)).tanh();
        let steps = states.size()[1];
        (self.out.forward(&mixed) + self.mask.narrow(0, first, steps)).log_softmax(-1, Kind::Float)
    }

    /// Teacher-forced log-probabilities of `tokens` [B, L] given their encoding.
    fn reconstruct(&self, tokens: &Tensor, enc: &Encoded, train: bool) -> Tensor {
        let n = tokens.size()[0];
        let sos = Tensor::full([n, 1], SOS, (Kind::Int64, self.device()));
        let inputs = Tensor::cat(&[&sos, &tokens.narrow(1, 0, self.vocab.len() as i64 - 1)], 1);
        let x = self.dec_embed.forward(&inputs).dropout(self.config.dropout, train);
        let (states, _) = self.decoder.seq_init(&x, &Self::initial_state(&enc.embedding));
        self.next_token(&states, enc, 0)
    }

    /// Trains on `examples` for the configured epochs (shuffled, seeded);
    /// returns the last epoch's mean loss.
    pub fn train(&mut self, examples: &[Example], seed: u64) -> f64 {
        let mut opt = nn::Adam { wd: self.config.weight_decay, ..Default::default() }
            .build(&self.vs, self.config.lr)
            .expect("an optimiser over the EPD's variables");
        let n = examples.len();
        let mut last = f64::NAN;
        tch::manual_seed(seed as i64);
        for _ in 0..self.config.epochs {
            let order = Tensor::randperm(n as i64, (Kind::Int64, Device::Cpu));
            let order = Vec::<i64>::try_from(&order).expect("a permutation");
            let (mut sum, mut batches) = (0.0, 0);
            for chunk in order.chunks(self.config.batch) {
                let batch: Vec<&Example> = chunk.iter().map(|&i| &examples[i as usize]).collect();
                let loss = self.loss(&batch, true);
                opt.backward_step_clip_norm(&loss, self.config.grad_clip);
                sum += loss.double_value(&[]);
                batches += 1;
            }
            last = sum / batches as f64;
        }
        last
    }

    /// λ·(MSE of both heads) + (1 − λ)·NLL of the reconstruction.
    fn loss(&self, batch: &[&Example], train: bool) -> Tensor {
        let tokens = self.batch(&batch.iter().map(|e| e.tokens.as_slice()).collect::<Vec<_>>());
        let target = |f: fn(&Example) -> f64| {
            Tensor::from_slice(&batch.iter().map(|e| f(e) as f32).collect::<Vec<_>>()).to_device(self.device())
        };
        let enc = self.encode(&tokens, train);
        let (acc, lat) = self.predict(&enc.embedding, train);
        let mse = acc.mse_loss(&target(|e| e.accuracy), tch::Reduction::Mean)
            + lat.mse_loss(&target(|e| e.latency), tch::Reduction::Mean);
        let logp = self.reconstruct(&tokens, &enc, train);
        let nll = -logp.gather(-1, &tokens.unsqueeze(-1), false).mean(Kind::Float);
        mse * self.config.trade_off + nll * (1.0 - self.config.trade_off)
    }

    /// Both heads' predictions (accuracy, latency) of each sequence.
    pub fn predictions(&self, sequences: &[Vec<i64>]) -> Vec<(f64, f64)> {
        tch::no_grad(|| {
            let enc = self.encode(&self.batch(&sequences.iter().map(Vec::as_slice).collect::<Vec<_>>()), false);
            let (acc, lat) = self.predict(&enc.embedding, false);
            let acc = Vec::<f64>::try_from(&acc.to_kind(Kind::Double)).expect("f64");
            let lat = Vec::<f64>::try_from(&lat.to_kind(Kind::Double)).expect("f64");
            acc.into_iter().zip(lat).collect()
        })
    }

    /// Greedy masked decoding from an encoding: a legal sequence per row.
    fn greedy(&self, enc: &Encoded) -> Vec<Vec<i64>> {
        let n = enc.embedding.size()[0];
        let mut state = Self::initial_state(&enc.embedding);
        let mut input = Tensor::full([n], SOS, (Kind::Int64, self.device()));
        let mut steps = Vec::new();
        for t in 0..self.vocab.len() as i64 {
            state = self.decoder.step(&self.dec_embed.forward(&input), &state);
            let logp = self.next_token(&state.h().squeeze_dim(0).unsqueeze(1), enc, t);
            input = logp.squeeze_dim(1).argmax(-1, false);
            steps.push(input.shallow_clone());
        }
        let tokens = Tensor::stack(&steps, 1);
        (0..n).map(|i| Vec::<i64>::try_from(&tokens.get(i)).expect("tokens")).collect()
    }

    /// Each sequence encoded and decoded back (η = 0).
    pub fn reconstructions(&self, sequences: &[Vec<i64>]) -> Vec<Vec<i64>> {
        tch::no_grad(|| {
            let enc = self.encode(&self.batch(&sequences.iter().map(Vec::as_slice).collect::<Vec<_>>()), false);
            self.greedy(&enc)
        })
    }

    /// NAO's move: each sequence's encoder outputs h_t take a step of size
    /// `eta` up the gradient of the score J = acc − `beta`·relu(lat − `tau`)
    /// (both heads on the embedding), h′_t = normalize(h_t + η ∂J/∂h_t);
    /// then decoded from the new embedding. Returns each decoded sequence
    /// with J before and after the step.
    pub fn improve(&self, sequences: &[Vec<i64>], eta: f64, tau: f64, beta: f64) -> Vec<(Vec<i64>, f64, f64)> {
        let tokens = self.batch(&sequences.iter().map(Vec::as_slice).collect::<Vec<_>>());
        let outputs = tch::no_grad(|| self.encode(&tokens, false).outputs).detach().set_requires_grad(true);
        let score = |embedding: &Tensor| {
            let (acc, lat) = self.predict(embedding, false);
            acc - (lat - tau).relu() * beta
        };
        let before = score(&embedding_of(&outputs));
        let grad = Tensor::run_backward(&[before.sum(Kind::Float)], &[&outputs], false, false).remove(0);
        tch::no_grad(|| {
            let moved = normalize(&(&outputs + grad * eta));
            let enc = Encoded { embedding: embedding_of(&moved), outputs: moved };
            let after = score(&enc.embedding);
            let decoded = self.greedy(&enc);
            let values = |t: &Tensor| Vec::<f64>::try_from(&t.to_kind(Kind::Double)).expect("f64");
            decoded.into_iter().zip(values(&before.detach())).zip(values(&after)).map(|((d, b), a)| (d, b, a)).collect()
        })
    }
}

/// Share of pairs two scorings order alike; pairs tied in `truth` are left
/// out (NAO counts ties as agreements; here they say nothing either way).
pub fn pairwise_accuracy(predicted: &[f64], truth: &[f64]) -> f64 {
    let (mut agree, mut pairs) = (0usize, 0usize);
    for i in 0..truth.len() {
        for j in i + 1..truth.len() {
            if truth[i] == truth[j] {
                continue;
            }
            pairs += 1;
            agree += usize::from((predicted[i] - predicted[j]) * (truth[i] - truth[j]) > 0.0);
        }
    }
    if pairs == 0 { f64::NAN } else { agree as f64 / pairs as f64 }
}

#[cfg(test)]
mod tests {
    use super::*;
    use rand::rngs::SmallRng;
    use rand::{Rng, SeedableRng};

    fn tiny() -> Space {
        Space::load("tiny", 1.0).unwrap()
    }

    /// Every selection of `tiny`.
    fn all(space: &Space) -> Vec<Vec<usize>> {
        space.blocks.iter().fold(vec![Vec::new()], |acc, b| {
            acc.into_iter().flat_map(|s| (0..b.candidates.len()).map(move |i| [s.clone(), vec![i]].concat())).collect()
        })
    }

    /// A made-up cost per op (the table's stand-in): additive over blocks.
    fn cost(space: &Space, selection: &[usize]) -> f64 {
        selection
            .iter()
            .zip(&space.blocks)
            .enumerate()
            .map(|(b, (&i, block))| match block.candidates[i] {
                Op::Zero => 0.0,
                Op::MbConv { kernel, expand } => (kernel * kernel * expand) as f64 * (1.0 + 0.3 * b as f64),
            })
            .sum()
    }

    #[test]
    fn tokens_round_trip_for_every_arch_and_blocks_keep_their_ops() {
        let space = tiny();
        let vocab = Vocabulary::of(&space);
        assert_eq!(all(&space).len(), 1764);
        for selection in all(&space) {
            assert_eq!(vocab.decode(&vocab.encode(&selection)), Some(selection));
        }
        // A block without `zero` refuses its token.
        let zero = vocab.ops.iter().position(|o| *o == Op::Zero).unwrap() as i64 + 1;
        let strided = space.blocks.iter().position(|b| !b.candidates.contains(&Op::Zero)).unwrap();
        let mut tokens = vocab.encode(&vec![0; space.blocks.len()]);
        tokens[strided] = zero;
        assert_eq!(vocab.decode(&tokens), None);
    }

    /// An EPD trained on `n` random archs of tiny with the made-up cost
    /// as latency target and a noisy function of it as accuracy.
    fn trained(n: usize) -> (Space, Epd, Vec<Vec<usize>>, Vec<Vec<usize>>) {
        let space = tiny();
        let vocab = Vocabulary::of(&space);
        let mut rng = SmallRng::seed_from_u64(1);
        let mut everything = all(&space);
        for i in (1..everything.len()).rev() {
            everything.swap(i, rng.random_range(0..=i));
        }
        let (train, held) = (everything[..n].to_vec(), everything[n..n + 200].to_vec());
        let max = everything.iter().map(|s| cost(&space, s)).fold(0.0, f64::max);
        let examples: Vec<Example> = train
            .iter()
            .map(|s| {
                let latency = cost(&space, s) / max;
                Example { tokens: vocab.encode(s), accuracy: (0.3 + 0.5 * latency).min(1.0), latency }
            })
            .collect();
        let mut epd = Epd::new(vocab, EpdConfig { epochs: 400, ..EpdConfig::default() }, 7, Device::Cpu);
        epd.train(&examples, 3);
        (space, epd, train, held)
    }

    #[test]
    fn trained_epd_reconstructs_ranks_latency_and_steps_to_valid_better_new_archs() {
        let (space, epd, train, held) = trained(150);
        let vocab = epd.vocabulary().clone();
        let sequences: Vec<Vec<i64>> = train.iter().map(|s| vocab.encode(s)).collect();
        // Reconstruction at η = 0: nearly all training archs come back. Not
        // all: libtorch's CPU kernels round differently on different CPUs, so
        // the same seed trains a slightly different EPD (one CI run got 148
        // of 150); chance would give about none.
        let back = epd.reconstructions(&sequences);
        let exact = back.iter().zip(&sequences).filter(|(a, b)| a == b).count();
        assert!(exact as f64 >= 0.95 * sequences.len() as f64, "{exact} of {}", sequences.len());
        // The latency head orders held-out archs like the cost it learnt.
        let held_sequences: Vec<Vec<i64>> = held.iter().map(|s| vocab.encode(s)).collect();
        let predicted: Vec<f64> = epd.predictions(&held_sequences).iter().map(|p| p.1).collect();
        let truth: Vec<f64> = held.iter().map(|s| cost(&space, s)).collect();
        let accuracy = pairwise_accuracy(&predicted, &truth);
        assert!(accuracy >= 0.9, "pairwise accuracy of the latency head {accuracy}");
        // A small step raises the predicted score; decoded archs are legal,
        // and some are new.
        let moved = epd.improve(&sequences, 0.5, 1.0, 0.0);
        let raised = moved.iter().filter(|(_, before, after)| after > before).count();
        assert!(raised as f64 >= 0.95 * moved.len() as f64, "{raised} of {} raised", moved.len());
        assert!(moved.iter().all(|(tokens, _, _)| vocab.decode(tokens).is_some()));
        let known: std::collections::HashSet<&Vec<i64>> = sequences.iter().collect();
        let larger = epd.improve(&sequences, 5.0, 1.0, 0.0);
        assert!(larger.iter().any(|(tokens, _, _)| !known.contains(tokens)), "no new arch at η = 5");
    }

    #[test]
    fn masked_decoding_never_emits_an_illegal_op() {
        let space = tiny();
        let vocab = Vocabulary::of(&space);
        let epd = Epd::new(vocab.clone(), EpdConfig::default(), 11, Device::Cpu);
        // Untrained, so its outputs are arbitrary: random embeddings decoded.
        tch::manual_seed(5);
        let outputs = normalize(&Tensor::randn([2000, vocab.len() as i64, 32], (Kind::Float, Device::Cpu)));
        let enc = Encoded { embedding: embedding_of(&outputs), outputs };
        let decoded = tch::no_grad(|| epd.greedy(&enc));
        assert!(decoded.iter().all(|tokens| vocab.decode(tokens).is_some()));
    }

    #[test]
    fn pairwise_accuracy_leaves_ties_out() {
        assert_eq!(pairwise_accuracy(&[1.0, 2.0, 3.0], &[10.0, 20.0, 30.0]), 1.0);
        assert_eq!(pairwise_accuracy(&[3.0, 2.0, 1.0], &[10.0, 20.0, 30.0]), 0.0);
        // (0,1) tied in truth: left out; (0,2) and (1,2) agree.
        assert_eq!(pairwise_accuracy(&[1.0, 5.0, 9.0], &[1.0, 1.0, 2.0]), 1.0);
        assert!(pairwise_accuracy(&[1.0], &[1.0]).is_nan());
    }
}
