//! The two optimisers of the search, written out so that their state
//! (momentum, moments) is plain named tensors a checkpoint can hold: SGD with
//! Nesterov momentum for weights (ATen's fused kernel), Adam for α. Updates are applied to the
//! tensors given with their gradients, so a step touches only the paths that
//! were active (an inactive candidate keeps its weights and its momentum,
//! as PyTorch does for parameters without a gradient).

use std::collections::BTreeMap;

use std::ffi::{c_char, c_int};

use tch::Tensor;
use torch_sys::C_tensor;

use crate::layers::Param;

/// lr at `step` of `total` under a cosine schedule from `base` to 0.
pub fn cosine_lr(base: f64, step: u64, total: u64) -> f64 {
    if total == 0 {
        return base;
    }
    0.5 * base * (1.0 + (std::f64::consts::PI * step.min(total) as f64 / total as f64).cos())
}

#[derive(Debug)]
pub struct Sgd {
    pub momentum: f64,
    pub weight_decay: f64,
    pub nesterov: bool,
    /// Momentum buffers by parameter name.
    pub buffers: BTreeMap<String, Tensor>,
}

impl Sgd {
    pub fn nesterov(momentum: f64, weight_decay: f64) -> Sgd {
        Sgd { momentum, weight_decay, nesterov: true, buffers: BTreeMap::new() }
    }

    /// One step on `params` with `grads` (same order); undefined gradients
    /// (unused parameters) are skipped. The update of `torch.optim.SGD`
    /// (d = g + wd·p; buf = μ·buf + d; p −= lr·(d + μ·buf) with Nesterov),
    /// run by ATen's fused multi-tensor kernel: a few launches per step
    /// instead of several per tensor, which is what a small network's step
    /// costs on a GPU. One call per (weight decay or not, new buffer or not).
    pub fn step(&mut self, params: &[Param], grads: Vec<Tensor>, lr: f64) {
        let mut groups: [FusedGroup; 4] = Default::default();
        for (param, grad) in params.iter().zip(grads) {
            if !grad.defined() {
                continue;
            }
            let decay = param.decay && self.weight_decay != 0.0;
            let first = !self.buffers.contains_key(&param.name);
            let group = &mut groups[usize::from(decay) * 2 + usize::from(first)];
            if self.momentum != 0.0 {
                let buffer = self.buffers.entry(param.name.clone()).or_insert_with(|| grad.zeros_like());
                group.buffers.push(buffer.shallow_clone());
            }
            // Detached handles share the storage and may be updated in place.
            group.params.push(param.tensor.detach());
            group.grads.push(grad);
        }
        for (i, group) in groups.iter_mut().enumerate() {
            if group.params.is_empty() {
                continue;
            }
            let weight_decay = if i >= 2 { self.weight_decay } else { 0.0 };
            let nesterov = self.nesterov && self.momentum != 0.0;
            fused_sgd(group, weight_decay, self.momentum, lr, nesterov, i % 2 == 1);
        }
    }
}

/// Tensors of one fused call.
#[derive(Default)]
struct FusedGroup {
    params: Vec<Tensor>,
    grads: Vec<Tensor>,
    buffers: Vec<Tensor>,
}

unsafe extern "C" {
    fn edgeloop_fused_sgd(
        params: *const *mut C_tensor,
        grads: *const *mut C_tensor,
        buffers: *const *mut C_tensor,
        n: usize,
        n_buffers: usize,
        weight_decay: f64,
        momentum: f64,
        lr: f64,
        nesterov: c_int,
        first_step: c_int,
        error: *mut c_char,
        error_len: usize,
    ) -> c_int;
}

/// ATen's `_fused_sgd_` on `group` (csrc/fused_sgd.cpp). It fails only on
/// tensors of mixed devices or types: a bug, hence the panic.
fn fused_sgd(group: &mut FusedGroup, weight_decay: f64, momentum: f64, lr: f64, nesterov: bool, first_step: bool) {
    let handles = |ts: &mut [Tensor]| ts.iter_mut().map(Tensor::as_mut_ptr).collect::<Vec<_>>();
    let (params, grads, buffers) = (handles(&mut group.params), handles(&mut group.grads), handles(&mut group.buffers));
    let mut error = [0 as c_char; 512];
    // SAFETY: the handles point to live tensors owned by `group` for the
    // whole call; the shim copies them into an at::TensorList and catches
    // every C++ exception.
    let status = unsafe {
        edgeloop_fused_sgd(
            params.as_ptr(),
            grads.as_ptr(),
            buffers.as_ptr(),
            params.len(),
            buffers.len(),
            weight_decay,
            momentum,
            lr,
            c_int::from(nesterov),
            c_int::from(first_step),
            error.as_mut_ptr(),
            error.len(),
        )
    };
    if status != 0 {
        // SAFETY: the shim wrote a NUL-terminated message into `error`.
        let message = unsafe { std::ffi::CStr::from_ptr(error.as_ptr()) };
        panic!("fused SGD step failed: {}", message.to_string_lossy());
    }
}

/// Adam over a fixed list of tensors (the α of every block).
#[derive(Debug)]
pub struct Adam {
    pub lr: f64,
    pub beta1: f64,
    pub beta2: f64,
    pub eps: f64,
    pub steps: u64,
    pub m: Vec<Tensor>,
    pub v: Vec<Tensor>,
}

impl Adam {
    /// State shaped like `params`.
    pub fn new(params: &[Tensor], lr: f64, betas: (f64, f64), eps: f64) -> Adam {
        let zeros = || params.iter().map(|p| p.detach().zeros_like()).collect();
        Adam { lr, beta1: betas.0, beta2: betas.1, eps, steps: 0, m: zeros(), v: zeros() }
    }

    /// Descends along `grads` (same order as the tensors the state was made for).
    pub fn step(&mut self, params: &[Tensor], grads: &[Tensor]) {
        self.steps += 1;
        let (c1, c2) = (1.0 - self.beta1.powi(self.steps as i32), 1.0 - self.beta2.powi(self.steps as i32));
        tch::no_grad(|| {
            for (((p, g), m), v) in params.iter().zip(grads).zip(&mut self.m).zip(&mut self.v) {
                let _ = m.g_mul_scalar_(self.beta1).g_add_(&(g * (1.0 - self.beta1)));
                let _ = v.g_mul_scalar_(self.beta2).g_add_(&(g * g * (1.0 - self.beta2)));
                let denom = (&*v / c2).sqrt() + self.eps;
                let _ = p.detach().g_add_(&(&*m / denom * (-self.lr / c1)));
            }
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tch::Kind;

    #[test]
    fn cosine_schedule_ends_at_zero() {
        assert_eq!(cosine_lr(0.1, 0, 10), 0.1);
        assert!((cosine_lr(0.1, 5, 10) - 0.05).abs() < 1e-12);
        assert!(cosine_lr(0.1, 10, 10).abs() < 1e-12);
    }

    #[test]
    fn sgd_nesterov_matches_the_formula() {
        let p = Tensor::from_slice(&[1.0f32]).set_requires_grad(true);
        let param = Param { name: "w".into(), tensor: p.shallow_clone(), decay: true };
        let mut sgd = Sgd::nesterov(0.9, 0.1);
        let g = || vec![Tensor::from_slice(&[0.5f32])];
        sgd.step(std::slice::from_ref(&param), g(), 0.1);
        // d = 0.5 + 0.1·1 = 0.6; buf = 0.6; d' = 0.6 + 0.9·0.6 = 1.14; p = 1 − 0.114.
        assert!((p.double_value(&[0]) - 0.886).abs() < 1e-6);
        sgd.step(std::slice::from_ref(&param), g(), 0.1);
        // d = 0.5 + 0.0886 = 0.5886; buf = 0.54 + 0.5886 = 1.1286; d' = 0.5886 + 1.01574 = 1.60434.
        assert!((p.double_value(&[0]) - (0.886 - 0.160434)).abs() < 1e-5);
        assert!(sgd.buffers.contains_key("w"));
    }

    #[test]
    fn adam_first_step_moves_by_lr() {
        let p = Tensor::from_slice(&[0.0f64, 0.0]).set_requires_grad(true);
        let mut adam = Adam::new(std::slice::from_ref(&p), 1e-3, (0.0, 0.999), 1e-8);
        adam.step(std::slice::from_ref(&p), &[Tensor::from_slice(&[2.0f64, -0.5])]);
        let v = Vec::<f64>::try_from(&p.detach().to_kind(Kind::Double)).unwrap();
        assert!((v[0] + 1e-3).abs() < 1e-9 && (v[1] - 1e-3).abs() < 1e-9, "{v:?}");
    }
}
