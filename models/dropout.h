// Dropout as torch::nn::Dropout (Srivastava et al., JMLR 2014): y = x * m / (1 - p), m_i ~ Bernoulli(1 - p), in
// training only; through ops::dropout, which draws LibTorch's very masks from the default generator several times
// faster (ops/dropout.h). The same options; no parameters or buffers, so a state dict is the same as with
// torch::nn::Dropout. In place (inplace = true) runs LibTorch's torch::dropout_.
#pragma once

#include <torch/torch.h>

namespace zoo::models {

class DropoutImpl : public torch::nn::detail::_DropoutNd<DropoutImpl> {
 public:
  using torch::nn::detail::_DropoutNd<DropoutImpl>::_DropoutNd;
  torch::Tensor forward(torch::Tensor x);
  void pretty_print(std::ostream& stream) const override;
};
TORCH_MODULE(Dropout);

}  // namespace zoo::models
