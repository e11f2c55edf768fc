// MultiTensorSgd: torch::optim::SGD (momentum, dampening, Nesterov, weight
// decay per parameter group) whose step() updates all parameters of a group
// with a handful of multi-tensor (_foreach_) kernels instead of ~5 kernels
// per parameter. On a GPU a ResNet's optimizer step is launch-bound, so this
// is most of the difference to PyTorch's foreach SGD. Same arithmetic, same
// state (SGDParamState momentum buffers) and the same save()/load() format as
// torch::optim::SGD, so checkpoints move between the two.
#ifndef TERN_WORKER_TRAINER_MULTI_TENSOR_SGD_H_
#define TERN_WORKER_TRAINER_MULTI_TENSOR_SGD_H_

#include <torch/optim/sgd.h>

#include <vector>

namespace tern::trainer {

class MultiTensorSgd : public torch::optim::SGD {
 public:
  using torch::optim::SGD::SGD;
  torch::Tensor step(LossClosure closure = nullptr) override;
};

}  // namespace tern::trainer

#endif  // TERN_WORKER_TRAINER_MULTI_TENSOR_SGD_H_
