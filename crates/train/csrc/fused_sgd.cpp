// One multi-tensor SGD step with ATen's fused kernel (what
// torch.optim.SGD(fused=True) runs): a few launches for all tensors instead
// of several per tensor. tch does not bind it, so this shim does; tensors
// arrive as tch's handles (pointers to at::Tensor).
#include <ATen/core/Tensor.h>
#include <ATen/ops/_fused_sgd.h>

#include <cstring>
#include <exception>
#include <vector>

namespace {
std::vector<at::Tensor> list(at::Tensor **tensors, size_t n) {
  std::vector<at::Tensor> out;
  out.reserve(n);
  for (size_t i = 0; i < n; ++i) out.push_back(*tensors[i]);
  return out;
}
}  // namespace

// Returns 0, or 1 with the exception's message in `error`.
// `n_buffers` is `n`, or 0 without momentum.
extern "C" int edgeloop_fused_sgd(at::Tensor **params, at::Tensor **grads, at::Tensor **buffers, size_t n,
                                  size_t n_buffers, double weight_decay, double momentum, double lr, int nesterov,
                                  int first_step, char *error, size_t error_len) {
  try {
    at::_fused_sgd_(list(params, n), list(grads, n), list(buffers, n_buffers), weight_decay, momentum, lr, 0.0,
                    nesterov != 0, false, first_step != 0);
    return 0;
  } catch (const std::exception &e) {
    std::strncpy(error, e.what(), error_len - 1);
    error[error_len - 1] = '\0';
    return 1;
  }
}
