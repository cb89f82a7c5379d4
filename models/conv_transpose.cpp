#include "models/conv_transpose.h"

#include "ops/conv_transpose.h"

#include <variant>

namespace zoo::models {

namespace {

/// ops::conv_transpose with a module's options; torch::nn's own forward for an output size (which sets the output
/// padding) and for a padding mode other than zeros or padding given as a word (which it rejects with its message).
template <int64_t D, typename Impl, typename Base>
torch::Tensor forward_of(Impl& m, const torch::Tensor& input, const c10::optional<at::IntArrayRef>& output_size) {
  // LibTorch 1.x keeps the options' alternatives in a c10::variant, 2.x in a std::variant: the std names make the
  // calls templates, and argument-dependent lookup adds c10's.
  using std::get_if;
  using std::holds_alternative;
  const auto* padding = get_if<torch::ExpandingArray<D>>(&m.options.padding());
  if (output_size || padding == nullptr || !holds_alternative<torch::enumtype::kZeros>(m.options.padding_mode()))
    return m.Base::forward(input, output_size);
  return ops::conv_transpose(input, m.weight, m.bias, m.options.stride(), *padding, m.options.output_padding(),
                             m.options.groups(), m.options.dilation());
}

}  // namespace

torch::Tensor ConvTranspose2dImpl::forward(const torch::Tensor& input,
                                           const c10::optional<at::IntArrayRef>& output_size) {
  return forward_of<2, ConvTranspose2dImpl, torch::nn::ConvTranspose2dImpl>(*this, input, output_size);
}

torch::Tensor ConvTranspose3dImpl::forward(const torch::Tensor& input,
                                           const c10::optional<at::IntArrayRef>& output_size) {
  return forward_of<3, ConvTranspose3dImpl, torch::nn::ConvTranspose3dImpl>(*this, input, output_size);
}

}  // namespace zoo::models
