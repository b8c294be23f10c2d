//! DDPG (Lillicrap et al., 2016) with a scalar action in [0, 1], as HAQ
//! uses it (DESIGN §9): actor and critic MLPs, their soft-updated targets,
//! a replay buffer, truncated-normal exploration after random warm-up
//! episodes, and rewards centred on a moving average of episode rewards.
//! On the CPU: the networks are small and a step is one state.
//!
//! Every tensor (networks, targets, Adam moments) is named for a
//! checkpoint ([`Ddpg::tensors`]); the rest is a serde [`DdpgState`].

use std::collections::HashMap;

use rand::rngs::SmallRng;
use rand::{Rng, SeedableRng};
use serde::{Deserialize, Serialize};
use tch::{Kind, Tensor};

use crate::optim::Adam;

/// Bound of the uniform init of the output layers, small so that the first
/// actions are near sigmoid(0) = 0.5 and the first values near 0 (DDPG).
const OUTPUT_INIT: f64 = 3e-3;
/// Rejections after which [`truncated_normal`] gives up (see there).
const MAX_REJECTIONS: usize = 1000;

#[derive(Debug, thiserror::Error)]
pub enum DdpgError {
    #[error("DDPG state is for {found}-dimensional states, this agent's are {expected}-dimensional")]
    StateDim { expected: usize, found: usize },
    #[error("DDPG tensor {0} is missing")]
    MissingTensor(String),
    #[error("DDPG tensor {name} has shape {found:?}, expected {expected:?}")]
    TensorShape { name: String, expected: Vec<i64>, found: Vec<i64> },
}

/// Hyperparameters; the defaults are HAQ's (DESIGN §9).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct DdpgConfig {
    /// Width of both hidden layers of the actor and of the critic.
    pub hidden: usize,
    pub actor_lr: f64,
    pub critic_lr: f64,
    /// Soft target update: target ← (1 − τ)·target + τ·online.
    pub tau: f64,
    pub replay_capacity: usize,
    pub batch_size: usize,
    pub discount: f64,
    /// Episodes of uniformly random actions before the actor acts.
    pub warmup_episodes: usize,
    /// σ of the exploration noise in the first episode after the warm-up.
    pub initial_noise: f64,
    /// Factor on σ per episode after the warm-up.
    pub noise_decay: f64,
    /// Weight of a new episode reward in the moving average.
    pub reward_average_alpha: f64,
}

impl Default for DdpgConfig {
    fn default() -> Self {
        DdpgConfig {
            hidden: 300,
            actor_lr: 1e-4,
            critic_lr: 1e-3,
            tau: 0.01,
            replay_capacity: 2000,
            batch_size: 64,
            discount: 1.0,
            warmup_episodes: 20,
            initial_noise: 0.5,
            noise_decay: 0.99,
            reward_average_alpha: 0.5,
        }
    }
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Transition {
    pub state: Vec<f32>,
    pub action: f32,
    pub reward: f32,
    pub next_state: Vec<f32>,
    /// Last step of an episode: no value follows.
    pub done: bool,
}

/// Losses of one [`Ddpg::update`].
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct UpdateStats {
    pub critic_loss: f64,
    /// −Q(s, μ(s)) averaged over the batch.
    pub actor_loss: f64,
}

/// Everything of a [`Ddpg`] but its tensors, for a checkpoint's metadata.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct DdpgState {
    state_dim: usize,
    replay: ReplayBuffer,
    reward_average: Option<f64>,
    actor_adam_steps: u64,
    critic_adam_steps: u64,
    rng_seed: u64,
}

/// The last `capacity` transitions, sampled uniformly with replacement.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
struct ReplayBuffer {
    capacity: usize,
    transitions: Vec<Transition>,
    /// Where the next transition goes once the buffer is full.
    next: usize,
}

impl ReplayBuffer {
    fn new(capacity: usize) -> ReplayBuffer {
        ReplayBuffer { capacity, transitions: Vec::with_capacity(capacity), next: 0 }
    }

    fn push(&mut self, transition: Transition) {
        if self.transitions.len() < self.capacity {
            self.transitions.push(transition);
        } else {
            self.transitions[self.next] = transition;
            self.next = (self.next + 1) % self.capacity;
        }
    }
}

/// A sampled batch as tensors, one row per transition.
struct Batch {
    states: Tensor,
    actions: Tensor,
    rewards: Tensor,
    next_states: Tensor,
    /// 1 − done.
    not_done: Tensor,
}

impl Batch {
    fn new(transitions: &[&Transition], state_dim: usize) -> Batch {
        let rows = |f: fn(&Transition) -> &[f32]| {
            let values: Vec<f32> = transitions.iter().flat_map(|t| f(t).iter().copied()).collect();
            Tensor::from_slice(&values).reshape([-1, state_dim as i64])
        };
        let column = |f: fn(&Transition) -> f32| {
            Tensor::from_slice(&transitions.iter().map(|t| f(t)).collect::<Vec<f32>>()).unsqueeze(1)
        };
        Batch {
            states: rows(|t| &t.state),
            actions: column(|t| t.action),
            rewards: column(|t| t.reward),
            next_states: rows(|t| &t.next_state),
            not_done: column(|t| if t.done { 0.0 } else { 1.0 }),
        }
    }
}

/// Fully connected layers with ReLU between them: weight, bias, weight, ….
#[derive(Debug)]
struct Mlp {
    params: Vec<Tensor>,
}

impl Mlp {
    /// `sizes` = [inputs, hidden…, outputs]. PyTorch's default init
    /// (uniform ±1/√fan_in) but for the output layer ([`OUTPUT_INIT`]);
    /// drawn from `rng` rather than libtorch's global generator, so that
    /// agents built at once in several threads are each reproducible.
    fn new(sizes: &[usize], rng: &mut SmallRng) -> Mlp {
        let output_layer = sizes.len() - 2;
        let params = sizes
            .windows(2)
            .enumerate()
            .flat_map(|(layer, fans)| {
                let (fan_in, fan_out) = (fans[0], fans[1]);
                let bound = if layer == output_layer { OUTPUT_INIT } else { 1.0 / (fan_in as f64).sqrt() };
                let mut uniform = |shape: &[usize]| {
                    let values: Vec<f32> =
                        (0..shape.iter().product()).map(|_| rng.random_range(-bound..bound) as f32).collect();
                    let shape: Vec<i64> = shape.iter().map(|&d| d as i64).collect();
                    Tensor::from_slice(&values).reshape(&shape).set_requires_grad(true)
                };
                [uniform(&[fan_out, fan_in]), uniform(&[fan_out])]
            })
            .collect();
        Mlp { params }
    }

    fn forward(&self, input: &Tensor) -> Tensor {
        let layers = self.params.len() / 2;
        self.params.chunks(2).enumerate().fold(input.shallow_clone(), |x, (layer, weight_bias)| {
            let y = x.linear(&weight_bias[0], Some(&weight_bias[1]));
            if layer + 1 < layers { y.relu() } else { y }
        })
    }

    /// A copy outside autograd: a target network.
    fn detached_copy(&self) -> Mlp {
        Mlp { params: self.params.iter().map(|p| p.detach().copy()).collect() }
    }

    /// self ← self + τ·(source − self).
    fn soft_update(&mut self, source: &Mlp, tau: f64) {
        tch::no_grad(|| {
            for (target, online) in self.params.iter_mut().zip(&source.params) {
                let _ = target.lerp_(online, tau);
            }
        })
    }

    /// `prefix.fc<layer>.weight`, `prefix.fc<layer>.bias`, in parameter order.
    fn named<'a>(&'a self, prefix: &'a str) -> impl Iterator<Item = (String, &'a Tensor)> + 'a {
        self.params.iter().enumerate().map(move |(i, p)| {
            let what = if i % 2 == 0 { "weight" } else { "bias" };
            (format!("{prefix}.fc{}.{what}", i / 2), p)
        })
    }
}

/// μ(s): the actor's action in [0, 1] per row of `states`.
fn policy(actor: &Mlp, states: &Tensor) -> Tensor {
    actor.forward(states).sigmoid()
}

/// Q(s, a) per row.
fn value(critic: &Mlp, states: &Tensor, actions: &Tensor) -> Tensor {
    critic.forward(&Tensor::cat(&[states, actions], 1))
}

/// The agent. Not `Sync` (libtorch tensors); one per search.
#[derive(Debug)]
pub struct Ddpg {
    config: DdpgConfig,
    state_dim: usize,
    actor: Mlp,
    actor_target: Mlp,
    critic: Mlp,
    critic_target: Mlp,
    actor_adam: Adam,
    critic_adam: Adam,
    replay: ReplayBuffer,
    /// Moving average of episode rewards, subtracted from rewards in the
    /// critic's target so that values stay centred whatever the reward scale.
    reward_average: Option<f64>,
    rng: SmallRng,
}

impl Ddpg {
    pub fn new(state_dim: usize, config: DdpgConfig, seed: u64) -> Ddpg {
        let mut rng = SmallRng::seed_from_u64(seed);
        let actor = Mlp::new(&[state_dim, config.hidden, config.hidden, 1], &mut rng);
        let critic = Mlp::new(&[state_dim + 1, config.hidden, config.hidden, 1], &mut rng);
        let adam = |net: &Mlp, lr| Adam::new(&net.params, lr, (0.9, 0.999), 1e-8);
        Ddpg {
            actor_target: actor.detached_copy(),
            critic_target: critic.detached_copy(),
            actor_adam: adam(&actor, config.actor_lr),
            critic_adam: adam(&critic, config.critic_lr),
            actor,
            critic,
            replay: ReplayBuffer::new(config.replay_capacity),
            reward_average: None,
            rng,
            state_dim,
            config,
        }
    }

    pub fn config(&self) -> &DdpgConfig {
        &self.config
    }

    /// The action to explore with in `episode` (0-based): uniform in [0, 1]
    /// during the warm-up, then μ(state) plus truncated-normal noise whose σ
    /// decays per episode.
    pub fn act(&mut self, state: &[f32], episode: usize) -> f32 {
        let Some(after_warmup) = episode.checked_sub(self.config.warmup_episodes) else {
            return self.rng.random::<f32>();
        };
        let sigma = self.config.initial_noise * self.config.noise_decay.powf(after_warmup as f64);
        let mean = f64::from(self.greedy_action(state));
        truncated_normal(&mut self.rng, mean, sigma) as f32
    }

    /// μ(state), without noise.
    ///
    /// # Panics
    /// If `state` is not `state_dim` long.
    pub fn greedy_action(&self, state: &[f32]) -> f32 {
        assert_eq!(state.len(), self.state_dim, "state length");
        tch::no_grad(|| policy(&self.actor, &Tensor::from_slice(state).unsqueeze(0)).double_value(&[0, 0]) as f32)
    }

    /// # Panics
    /// If a state of `transition` is not `state_dim` long.
    pub fn remember(&mut self, transition: Transition) {
        assert!(
            transition.state.len() == self.state_dim && transition.next_state.len() == self.state_dim,
            "state length"
        );
        self.replay.push(transition);
    }

    /// Folds an episode's reward into the moving average the critic's
    /// targets are centred on.
    pub fn observe_episode_reward(&mut self, reward: f64) {
        let alpha = self.config.reward_average_alpha;
        self.reward_average = Some(match self.reward_average {
            None => reward,
            Some(average) => average + alpha * (reward - average),
        });
    }

    /// One step of the critic towards r − r̄ + γ·(1 − done)·Q'(s', μ'(s')),
    /// then of the actor along Q(s, μ(s)), then the soft target updates, on
    /// a batch drawn from the replay buffer. `None` (nothing done) while the
    /// buffer holds less than a batch.
    pub fn update(&mut self) -> Option<UpdateStats> {
        let (stored, batch_size) = (self.replay.transitions.len(), self.config.batch_size);
        if stored < batch_size {
            return None;
        }
        let sampled: Vec<&Transition> =
            (0..batch_size).map(|_| &self.replay.transitions[self.rng.random_range(0..stored)]).collect();
        let batch = Batch::new(&sampled, self.state_dim);

        let next_values = tch::no_grad(|| {
            value(&self.critic_target, &batch.next_states, &policy(&self.actor_target, &batch.next_states))
        });
        let centred_rewards = &batch.rewards - self.reward_average.unwrap_or(0.0);
        let targets = centred_rewards + next_values * &batch.not_done * self.config.discount;
        let critic_loss = (value(&self.critic, &batch.states, &batch.actions) - targets).square().mean(Kind::Float);
        let grads = Tensor::run_backward(&[&critic_loss], &self.critic.params, false, false);
        self.critic_adam.step(&self.critic.params, &grads);

        let actor_loss = -value(&self.critic, &batch.states, &policy(&self.actor, &batch.states)).mean(Kind::Float);
        let grads = Tensor::run_backward(&[&actor_loss], &self.actor.params, false, false);
        self.actor_adam.step(&self.actor.params, &grads);

        self.actor_target.soft_update(&self.actor, self.config.tau);
        self.critic_target.soft_update(&self.critic, self.config.tau);
        Some(UpdateStats { critic_loss: critic_loss.double_value(&[]), actor_loss: actor_loss.double_value(&[]) })
    }

    /// Every tensor of the agent by name, for a checkpoint.
    /// Copies: later updates do not change them.
    pub fn tensors(&self) -> Vec<(String, Tensor)> {
        self.named_tensors().into_iter().map(|(name, t)| (name, t.detach().copy())).collect()
    }

    /// The scalars and the replay buffer, for a checkpoint's metadata.
    /// Reseeds the agent's generator from itself and records the seed, so
    /// that an agent restored from this state draws what this one will.
    pub fn checkpoint_state(&mut self) -> DdpgState {
        let rng_seed = self.rng.random();
        self.rng = SmallRng::seed_from_u64(rng_seed);
        DdpgState {
            state_dim: self.state_dim,
            replay: self.replay.clone(),
            reward_average: self.reward_average,
            actor_adam_steps: self.actor_adam.steps,
            critic_adam_steps: self.critic_adam.steps,
            rng_seed,
        }
    }

    /// Takes over `tensors` (as [`Ddpg::tensors`] named them) and `state`.
    /// Everything is checked first: on an error the agent is unchanged.
    pub fn restore(&mut self, tensors: &HashMap<String, Tensor>, state: DdpgState) -> Result<(), DdpgError> {
        if state.state_dim != self.state_dim {
            return Err(DdpgError::StateDim { expected: self.state_dim, found: state.state_dim });
        }
        let slots = self.named_tensors();
        let sources = slots
            .iter()
            .map(|(name, slot)| {
                let source = tensors.get(name).ok_or_else(|| DdpgError::MissingTensor(name.clone()))?;
                if source.size() != slot.size() {
                    return Err(DdpgError::TensorShape {
                        name: name.clone(),
                        expected: slot.size(),
                        found: source.size(),
                    });
                }
                Ok(source)
            })
            .collect::<Result<Vec<_>, _>>()?;
        tch::no_grad(|| {
            for ((_, slot), source) in slots.iter().zip(sources) {
                // The detached handle shares the slot's storage.
                slot.detach().copy_(source);
            }
        });
        self.replay = state.replay;
        self.reward_average = state.reward_average;
        self.actor_adam.steps = state.actor_adam_steps;
        self.critic_adam.steps = state.critic_adam_steps;
        self.rng = SmallRng::seed_from_u64(state.rng_seed);
        Ok(())
    }

    /// The networks, the targets, then the Adam moments of the online networks.
    fn named_tensors(&self) -> Vec<(String, &Tensor)> {
        let mut named: Vec<(String, &Tensor)> = [
            ("actor", &self.actor),
            ("actor_target", &self.actor_target),
            ("critic", &self.critic),
            ("critic_target", &self.critic_target),
        ]
        .into_iter()
        .flat_map(|(prefix, net)| net.named(prefix))
        .collect();
        for (prefix, net, adam) in
            [("actor", &self.actor, &self.actor_adam), ("critic", &self.critic, &self.critic_adam)]
        {
            for ((name, _), (m, v)) in net.named(prefix).zip(adam.m.iter().zip(&adam.v)) {
                named.push((format!("{name}.adam_m"), m));
                named.push((format!("{name}.adam_v"), v));
            }
        }
        named
    }
}

/// A draw from N(mean, σ²) truncated to [0, 1], by rejection. With `mean`
/// in [0, 1] (an actor's output) a draw is accepted with probability ≳ 0.3
/// for σ ≤ 0.5; only for a huge σ may all [`MAX_REJECTIONS`] draws miss,
/// and then the clamped mean is returned.
fn truncated_normal(rng: &mut SmallRng, mean: f64, sigma: f64) -> f64 {
    (0..MAX_REJECTIONS)
        .map(|_| mean + sigma * standard_normal(rng))
        .find(|x| (0.0..=1.0).contains(x))
        .unwrap_or(mean.clamp(0.0, 1.0))
}

/// Box–Muller.
fn standard_normal(rng: &mut SmallRng) -> f64 {
    // 1 − U is in (0, 1], so the log is finite.
    let radius = (-2.0 * (1.0 - rng.random::<f64>()).ln()).sqrt();
    radius * (std::f64::consts::TAU * rng.random::<f64>()).cos()
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A small agent for the tests that do not learn.
    fn small_config() -> DdpgConfig {
        DdpgConfig { hidden: 16, batch_size: 4, warmup_episodes: 2, ..DdpgConfig::default() }
    }

    /// Episodes of one step from `state` with reward −(a − 0.3)²; an update
    /// after each once the buffer holds a batch. The actions taken.
    fn run_bandit(agent: &mut Ddpg, state: &[f32], episodes: std::ops::Range<usize>) -> Vec<f32> {
        episodes
            .map(|episode| {
                let action = agent.act(state, episode);
                let reward = -(action - 0.3).powi(2);
                let (state, next_state) = (state.to_vec(), state.to_vec());
                agent.remember(Transition { state, action, reward, next_state, done: true });
                agent.observe_episode_reward(f64::from(reward));
                agent.update();
                action
            })
            .collect()
    }

    #[test]
    fn learns_the_best_action_of_a_bandit() {
        let config = DdpgConfig { warmup_episodes: 100, ..DdpgConfig::default() };
        let mut agent = Ddpg::new(1, config, 3);
        let state = [0.5f32];
        run_bandit(&mut agent, &state, 0..400);
        let action = agent.greedy_action(&state);
        assert!((action - 0.3).abs() < 0.1, "greedy action {action}");
    }

    #[test]
    fn soft_update_moves_targets_by_tau() {
        let mut rng = SmallRng::seed_from_u64(0);
        let online = Mlp::new(&[3, 5, 1], &mut rng);
        let mut target = Mlp::new(&[3, 5, 1], &mut rng).detached_copy();
        let before = target.detached_copy();
        target.soft_update(&online, 0.01);
        for ((t, b), o) in target.params.iter().zip(&before.params).zip(&online.params) {
            let step = (t - b) - (o - b) * 0.01;
            assert!(step.abs().max().double_value(&[]) < 1e-7);
        }
        assert!(!target.params[0].requires_grad());
    }

    #[test]
    fn truncated_normal_stays_in_the_unit_interval() {
        let mut rng = SmallRng::seed_from_u64(1);
        for (mean, sigma) in [(0.0, 0.5), (1.0, 0.5), (0.3, 0.05), (0.5, 3.0), (1.0, 1e-4)] {
            let draws: Vec<f64> = (0..5000).map(|_| truncated_normal(&mut rng, mean, sigma)).collect();
            assert!(draws.iter().all(|x| (0.0..=1.0).contains(x)), "mean {mean} σ {sigma}");
            let spread = draws.iter().fold(f64::INFINITY, |lo, &x| lo.min(x))
                ..=draws.iter().fold(f64::NEG_INFINITY, |hi, &x| hi.max(x));
            assert!(spread.end() > spread.start(), "mean {mean} σ {sigma}: no noise");
        }
        let draws: Vec<f64> = (0..5000).map(|_| truncated_normal(&mut rng, 0.3, 0.05)).collect();
        let average = draws.iter().sum::<f64>() / draws.len() as f64;
        assert!((average - 0.3).abs() < 0.005, "{average}");
    }

    #[test]
    fn same_seed_same_actions() {
        let state = [0.2f32, 0.9];
        let actions = |seed| run_bandit(&mut Ddpg::new(2, small_config(), seed), &state, 0..12);
        assert_eq!(actions(5), actions(5));
        assert_ne!(actions(5), actions(6));
    }

    #[test]
    fn update_waits_for_a_batch() {
        let mut agent = Ddpg::new(1, small_config(), 0);
        run_bandit(&mut agent, &[0.0], 0..3);
        assert_eq!(agent.update(), None);
        run_bandit(&mut agent, &[0.0], 3..4);
        assert!(agent.update().is_some());
    }

    #[test]
    fn checkpoint_round_trips() {
        let state = [0.2f32, 0.9];
        let mut agent = Ddpg::new(2, small_config(), 8);
        run_bandit(&mut agent, &state, 0..10);
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("ddpg.safetensors");
        let metadata = serde_json::to_string(&agent.checkpoint_state()).unwrap();
        crate::checkpoint::save(&path, &agent.tensors(), &metadata).unwrap();

        let (tensors, metadata) = crate::checkpoint::load(&path).unwrap();
        let mut restored = Ddpg::new(2, small_config(), 99);
        restored.restore(&tensors, serde_json::from_str(&metadata).unwrap()).unwrap();
        assert_eq!(restored.greedy_action(&state), agent.greedy_action(&state));
        // Exploration, sampling and Adam carry on alike.
        assert_eq!(run_bandit(&mut restored, &state, 10..20), run_bandit(&mut agent, &state, 10..20));
        assert_eq!(restored.greedy_action(&[0.7, 0.1]), agent.greedy_action(&[0.7, 0.1]));

        let mut other = Ddpg::new(3, small_config(), 0);
        let err = other.restore(&tensors, agent.checkpoint_state()).unwrap_err();
        assert!(matches!(err, DdpgError::StateDim { expected: 3, found: 2 }), "{err}");
        let mut partial = tensors;
        partial.remove("critic.fc1.weight.adam_v");
        let err = restored.restore(&partial, agent.checkpoint_state()).unwrap_err();
        assert!(matches!(&err, DdpgError::MissingTensor(name) if name == "critic.fc1.weight.adam_v"), "{err}");
    }
}
