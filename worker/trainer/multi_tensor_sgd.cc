#include "worker/trainer/multi_tensor_sgd.h"

#include <ATen/ATen.h>

#include <sstream>
#include <string>
#include <type_traits>

namespace tern::trainer {
namespace {

// LibTorch 1.x keys optimizer state by the TensorImpl address printed to a
// string (c10::guts::to_string: an ostream <<), 2.x by the address itself.
template <typename Key>
Key StateKey(const at::Tensor& p) {
  return static_cast<Key>(p.unsafeGetTensorImpl());
}
template <>
std::string StateKey<std::string>(const at::Tensor& p) {
  std::ostringstream key;
  key << p.unsafeGetTensorImpl();
  return key.str();
}

}  // namespace

torch::Tensor MultiTensorSgd::step(LossClosure closure) {
  at::NoGradGuard no_grad;
  torch::Tensor loss = {};
  if (closure != nullptr) {
    at::AutoGradMode enable_grad(true);
    loss = closure();
  }
  using Key = typename std::decay_t<decltype(state_)>::key_type;
  for (auto& group : param_groups_) {
    const auto& o = static_cast<const torch::optim::SGDOptions&>(group.options());
    std::vector<at::Tensor> params, grads, buffers;
    for (const at::Tensor& p : group.params()) {
      if (!p.grad().defined()) continue;
      params.push_back(p);
      grads.push_back(p.grad());
    }
    if (params.empty()) continue;
    // d_p = g + wd·p
    std::vector<at::Tensor> d_p =
        o.weight_decay() != 0 ? at::_foreach_add(grads, params, o.weight_decay()) : grads;
    if (o.momentum() != 0) {
      std::vector<at::Tensor> old_buffers, old_d_p;
      for (size_t i = 0; i < params.size(); ++i) {
        const Key key = StateKey<Key>(params[i]);
        auto it = state_.find(key);
        if (it == state_.end()) {
          // First step: buf = d_p, as torch::optim::SGD.
          auto state = std::make_unique<torch::optim::SGDParamState>();
          state->momentum_buffer(d_p[i].clone().detach());
          buffers.push_back(state->momentum_buffer());
          state_[key] = std::move(state);
        } else {
          at::Tensor buf =
              static_cast<torch::optim::SGDParamState&>(*it->second).momentum_buffer();
          buffers.push_back(buf);
          old_buffers.push_back(buf);
          old_d_p.push_back(d_p[i]);
        }
      }
      if (!old_buffers.empty()) {  // buf = momentum·buf + (1 − dampening)·d_p
        at::_foreach_mul_(old_buffers, o.momentum());
        at::_foreach_add_(old_buffers, old_d_p, 1 - o.dampening());
      }
      d_p = o.nesterov() ? at::_foreach_add(d_p, buffers, o.momentum()) : buffers;
    }
    at::_foreach_add_(params, d_p, -o.lr());
  }
  return loss;
}

}  // namespace tern::trainer
