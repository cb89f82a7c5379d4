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

namespace {

using torch::autograd::AutogradContext;
using torch::autograd::variable_list;

/// The input frames each tap reads, from the time-major input xt [N, T, C, D, H, W]: tap j's frames first[j],
/// first[j] + s, ..., (count[j] of them) as [N * count[j], C, D, H, W], one batch for conv3d. The backward adds
/// the taps' gradients into one zero-filled [N, T, C, D, H, W]; autograd's own, through slices, would fill a
/// full-size zero tensor per tap and add them up.
struct GatherFrames : public torch::autograd::Function<GatherFrames> {
  static variable_list forward(AutogradContext* ctx, const torch::Tensor& xt, std::vector<int64_t> first,
                               std::vector<int64_t> count, int64_t stride) {
    variable_list frames;
    for (size_t j = 0; j < first.size(); ++j) {
      auto f = xt.slice(1, first[j], first[j] + (count[j] - 1) * stride + 1, stride);
      frames.push_back(f.reshape({xt.size(0) * count[j], xt.size(2), xt.size(3), xt.size(4), xt.size(5)}));
    }
    ctx->saved_data["sizes"] = xt.sizes().vec();
    ctx->saved_data["first"] = std::move(first);
    ctx->saved_data["count"] = std::move(count);
    ctx->saved_data["stride"] = stride;
    return frames;
  }

  static variable_list backward(AutogradContext* ctx, variable_list grads) {
    const auto sizes = ctx->saved_data["sizes"].toIntVector();
    const auto first = ctx->saved_data["first"].toIntVector(), count = ctx->saved_data["count"].toIntVector();
    const int64_t stride = ctx->saved_data["stride"].toInt();
    torch::Tensor gx;
    for (size_t j = 0; j < grads.size(); ++j) {
      if (!grads[j].defined()) continue;
      if (!gx.defined()) gx = torch::zeros(sizes, grads[j].options());
      gx.slice(1, first[j], first[j] + (count[j] - 1) * stride + 1, stride)
          .add_(grads[j].view({sizes[0], count[j], sizes[2], sizes[3], sizes[4], sizes[5]}));
    }
    return {gx, {}, {}, {}};
  }
};

/// The time-major output [N, T', O, D', H', W']: bias[o] plus, for each tap j, its conv3d output ys[j]
/// [N, count[j], O, D', H', W'] added into the output frames [t_lo[j], t_lo[j] + count[j]). The bias is taken in
/// the taps' type (as autocast's convolution casts it: a bfloat16 output stays bfloat16). The backward hands each
/// tap a view of the output's gradient and the bias the gradient's sum (in the gradient's type, as a convolution's
/// bias gradient, then converted); autograd's own, through in-place additions into slices, would copy the whole
/// output's gradient once per tap.
struct SumTaps : public torch::autograd::Function<SumTaps> {
  static torch::Tensor forward(AutogradContext* ctx, torch::TensorList ys, const c10::optional<torch::Tensor>& bias,
                               std::vector<int64_t> t_lo, int64_t t_out) {
    const auto& y0 = ys[0];
    std::vector<int64_t> sizes{y0.size(0), t_out, y0.size(2), y0.size(3), y0.size(4), y0.size(5)};
    torch::Tensor out;
    if (bias && bias->defined())
      out = bias->to(y0.scalar_type()).view({1, 1, -1, 1, 1, 1}).expand(sizes).contiguous();
    else
      out = torch::zeros(sizes, y0.options());
    std::vector<int64_t> count;
    for (size_t j = 0; j < ys.size(); ++j) {
      out.narrow(1, t_lo[j], ys[j].size(1)).add_(ys[j]);
      count.push_back(ys[j].size(1));
    }
    ctx->saved_data["t_lo"] = std::move(t_lo);
    ctx->saved_data["count"] = std::move(count);
    ctx->saved_data["bias"] = bias && bias->defined();
    if (bias && bias->defined()) ctx->saved_data["bias_type"] = bias->scalar_type();
    return out;
  }

  static variable_list backward(AutogradContext* ctx, variable_list grads) {
    const auto& g = grads[0];
    const auto t_lo = ctx->saved_data["t_lo"].toIntVector(), count = ctx->saved_data["count"].toIntVector();
    variable_list result;
    for (size_t j = 0; j < t_lo.size(); ++j) result.push_back(g.narrow(1, t_lo[j], count[j]));
    if (ctx->saved_data["bias"].toBool())
      result.push_back(g.sum({0, 1, 3, 4, 5}).to(ctx->saved_data["bias_type"].toScalarType()));
    else
      result.emplace_back();
    result.emplace_back();  // t_lo
    result.emplace_back();  // t_out
    return result;
  }
};

}  // namespace

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
  // Tap i reads the frames t * s - p + i * d, an arithmetic run, for a run of output frames t: each tap is one
  // strided run of frames in (time-major view [N, T, C, D, H, W]), one conv3d over all of them, and one addition
  // into a run of the time-major output [N, T', O, D', H', W']; no index tensors.
  std::vector<int64_t> taps, first, count, t_lo;
  for (int64_t i = 0; i < k[0]; ++i) {
    int64_t lo = t_out, hi = -1;  // output frames whose input frame of this tap exists
    for (int64_t t = 0; t < t_out; ++t) {
      const int64_t frame = t * s[0] - p[0] + i * d[0];
      if (frame >= 0 && frame < t_in) {
        lo = std::min(lo, t);
        hi = t;
      }
    }
    if (hi < 0) continue;
    taps.push_back(i);
    t_lo.push_back(lo);
    count.push_back(hi - lo + 1);
    first.push_back(lo * s[0] - p[0] + i * d[0]);
  }
  TORCH_CHECK(!taps.empty(), "Conv4d: no output frame reads an input frame (padding larger than the input?)");
  const auto frames = GatherFrames::apply(x.transpose(1, 2), first, count, s[0]);
  std::vector<torch::Tensor> ys;
  for (size_t j = 0; j < taps.size(); ++j) {
    auto y = ops::conv3d(frames[j], weight.select(2, taps[j]), {}, {s[1], s[2], s[3]}, {p[1], p[2], p[3]},
                         {d[1], d[2], d[3]});  // [N * count, O, D', H', W']
    ys.push_back(y.view({n, count[j], y.size(1), y.size(2), y.size(3), y.size(4)}));
  }
  const c10::optional<torch::Tensor> b = bias.defined() ? c10::optional<torch::Tensor>(bias) : c10::nullopt;
  return SumTaps::apply(torch::TensorList(ys), b, t_lo, t_out)
      .transpose(1, 2);  // [N, O, T', D', H', W'], time-major in memory
}

void Conv4dImpl::pretty_print(std::ostream& stream) const {
  stream << "zoo::Conv4d(" << options.in_channels() << ", " << options.out_channels()
         << ", kernel_size=" << options.kernel_size() << ", stride=" << options.stride()
         << ", padding=" << options.padding() << ", dilation=" << options.dilation()
         << ", bias=" << (options.bias() ? "true" : "false") << ")";
}

}  // namespace zoo::models
