#include "models/dropout.h"

#include "ops/dropout.h"

namespace zoo::models {

torch::Tensor DropoutImpl::forward(torch::Tensor x) {
  if (options.inplace()) return torch::dropout_(x, options.p(), is_training());
  return ops::dropout(x, options.p(), is_training());
}

void DropoutImpl::pretty_print(std::ostream& stream) const {
  stream << std::boolalpha << "zoo::Dropout(p=" << options.p() << ", inplace=" << options.inplace() << ")";
}

}  // namespace zoo::models
