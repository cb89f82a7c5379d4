#include "models/conv4d.h"

#include "ops/conv3d.h"

#include <algorithm>
#include <cmath>

namespace zoo::models {

Conv4dImpl::Conv4dImpl(Conv4dOptions options_) : options(std::move(options_)) { reset(); }

void Conv4dImpl::reset() {
  const auto& o = options;
  TORCH_CHECK(o.in_channels() > 0 && o.out_channels() > 0, "Conv4d needs positive channel counts");
  for (int i = 0; i < 4; ++i) {
    TORCH_CHECK((*o.kernel_size())[i] > 0, "Conv4d kernel_size must be positive");
    TORCH_CHECK((*o.stride())[i] > 0, "Conv4d stride must be positive");
    TORCH_CHECK((*o.padding())[i] >= 0, "Conv4d padding must be >= 0");
    TORCH_CHECK((*o.dilation())[i] > 0, "Conv4d dilation must be positive");
  }
  const auto& k = *o.kernel_size();
  weight = register_parameter("weight", torch::empty({o.out_channels(), o.in_channels(), k[0], k[1], k[2], k[3]}));
  if (o.bias())
    bias = register_parameter("bias", torch::empty({o.out_channels()}));
  else
    bias = register_parameter("bias", torch::Tensor(), /*requires_grad=*/false);
  reset_parameters();
}

void Conv4dImpl::reset_parameters() {
  torch::NoGradGuard no_grad;
  torch::nn::init::kaiming_uniform_(weight, std::sqrt(5.0));
  if (bias.defined()) {
    const auto fan_in = static_cast<double>(weight.numel() / weight.size(0));
    const double bound = 1.0 / std::sqrt(fan_in);
    bias.uniform_(-bound, bound);
  }
}

torch::Tensor Conv4dImpl::forward(const torch::Tensor& x) {
  const auto& o = options;
  TORCH_CHECK(x.dim() == 6 && x.size(1) == o.in_channels(), "Conv4d expects [N, ", o.in_channels(),
              ", T, D, H, W], got ", x.sizes());
  const auto& k = *o.kernel_size();
  const auto& s = *o.stride();
  const auto& p = *o.padding();
  const auto& d = *o.dilation();
  const int64_t n = x.size(0), t_in = x.size(2);
  // PyTorch's rule, floor((T + 2p - d(k-1) - 1) / s) + 1: the span a kernel needs must fit in the padded input
  // (C++'s division truncates towards zero and would give one frame for a span that does not fit).
  const int64_t span = t_in + 2 * p[0] - d[0] * (k[0] - 1) - 1;
  TORCH_CHECK(span >= 0, "Conv4d: time axis of length ", t_in, " is too short for kernel ", k[0], " (dilation ", d[0],
              ", padding ", p[0], ")");
  const int64_t t_out = span / s[0] + 1;
  const auto conv3d = [&](const torch::Tensor& frames, const torch::Tensor& w) {
    return ops::conv3d(frames, w, {}, {s[1], s[2], s[3]}, {p[1], p[2], p[3]}, {d[1], d[2], d[3]});
  };
  // Time-major view [N, T, C, D, H, W]: tap i reads the frames t * s - p + i * d, an arithmetic run, for a run of
  // output frames t, so each tap is one strided slice in, one conv3d over all of its frames, and one in-place
  // add into a run of the time-major output; no index tensors, no copies of the output.
  const auto xt = x.transpose(1, 2);
  torch::Tensor acc;  // [N, T_out, O, D', H', W']
  for (int64_t i = 0; i < k[0]; ++i) {
    int64_t t_lo = t_out, t_hi = -1;  // output frames whose input frame of this tap exists
    for (int64_t t = 0; t < t_out; ++t) {
      const int64_t frame = t * s[0] - p[0] + i * d[0];
      if (frame >= 0 && frame < t_in) {
        t_lo = std::min(t_lo, t);
        t_hi = t;
      }
    }
    if (t_hi < 0) continue;
    const int64_t v = t_hi - t_lo + 1, first = t_lo * s[0] - p[0] + i * d[0];
    const auto frames = xt.slice(1, first, first + (v - 1) * s[0] + 1, s[0])
                            .reshape({n * v, x.size(1), x.size(3), x.size(4), x.size(5)});
    auto y = conv3d(frames, weight.select(2, i));  // [N*V, O, D', H', W']
    y = y.view({n, v, y.size(1), y.size(2), y.size(3), y.size(4)});
    if (!acc.defined()) acc = torch::zeros({n, t_out, y.size(2), y.size(3), y.size(4), y.size(5)}, y.options());
    acc.narrow(1, t_lo, v).add_(y);
  }
  TORCH_CHECK(acc.defined(), "Conv4d: no output frame reads an input frame (padding larger than the input?)");
  auto out = acc.transpose(1, 2);  // [N, O, T_out, D', H', W'], time-major in memory
  if (bias.defined()) out = out + bias.view({1, -1, 1, 1, 1, 1});
  return out;
}

void Conv4dImpl::pretty_print(std::ostream& stream) const {
  stream << "zoo::Conv4d(" << options.in_channels() << ", " << options.out_channels()
         << ", kernel_size=" << options.kernel_size() << ", stride=" << options.stride()
         << ", padding=" << options.padding() << ", dilation=" << options.dilation()
         << ", bias=" << (options.bias() ? "true" : "false") << ")";
}

}  // namespace zoo::models
