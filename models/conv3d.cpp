#include "models/conv3d.h"

#include "ops/conv3d.h"

#include <variant>

namespace zoo::models {

torch::Tensor Conv3dImpl::forward(const torch::Tensor& input) {
  // LibTorch 1.x keeps the options' alternatives in a c10::variant, 2.x in a std::variant: the std names make the
  // calls templates, and argument-dependent lookup adds c10's.
  using std::get_if;
  using std::holds_alternative;
  const auto* padding = get_if<torch::ExpandingArray<3>>(&options.padding());
  if (padding == nullptr || !holds_alternative<torch::enumtype::kZeros>(options.padding_mode()))
    return torch::nn::Conv3dImpl::forward(input);  // "same" or "valid" padding, or padding other than zeros
  return ops::conv3d(input, weight, bias, options.stride(), *padding, options.dilation(), options.groups());
}

}  // namespace zoo::models
