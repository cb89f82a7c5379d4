#include "models/mhc.h"

#include "models/cnn.h"
#include "models/registry.h"
#include "ops/autocast.h"
#include "ops/mhc_mixing.h"
#include "ops/sinkhorn.h"
#include "ops/stream_mix.h"

#include <torch/csrc/jit/frontend/tracer.h>

#include <algorithm>
#include <cmath>
#include <numeric>
#include <vector>

namespace zoo::models {

namespace {

using torch::Tensor;

// The streams' features [B, n, C] in float32 (float64 stays float64): x [B, n, C, ...] averaged over space by
// ops::float32_mean (no float32 copy of bfloat16 streams; its broadcast gradient took 0.9 ms out of the float32
// training step, where LibTorch's mean writes and divides a gradient of the streams' size), or x itself.
Tensor spatial_mean(const Tensor& x) { return x.dim() == 3 ? ops::float32(x) : ops::float32_mean(x, 3); }

Tensor rms_norm(const Tensor& v, const Tensor& gain_minus_one, double eps) {
  return v * torch::rsqrt(v.pow(2).mean(-1, /*keepdim=*/true) + eps) * (1 + gain_minus_one);
}

int64_t factorial(int64_t n) { return n <= 1 ? 1 : n * factorial(n - 1); }

}  // namespace

Tensor permutation_matrices(int64_t n) {
  TORCH_CHECK(n >= 1 && n <= 8, "permutation_matrices: n must be in 1..8, got ", n);
  std::vector<int64_t> perm(static_cast<size_t>(n));
  std::iota(perm.begin(), perm.end(), 0);
  auto out = torch::zeros({factorial(n), n, n});
  auto a = out.accessor<float, 3>();
  int64_t k = 0;
  do {
    for (int64_t i = 0; i < n; ++i) a[k][i][perm[static_cast<size_t>(i)]] = 1;
    ++k;
  } while (std::next_permutation(perm.begin(), perm.end()));
  return out;
}

Tensor expand_streams(const Tensor& x, int64_t streams) { return ops::repeat_streams(x, streams); }

Tensor reduce_streams(const Tensor& x) { return x.sum(1); }

// ---------------------------------------------------------------------------------------------------------------

namespace {

/// mhc-lite mixes all n! permutation matrices: n <= 6 keeps that at 720.
std::string streams_problem(const std::string& variant, int64_t streams) {
  if (variant != "mhc-lite" || streams <= 6) return {};
  return fmt::format("must be <= 6 for mhc-lite (it mixes all n! permutation matrices, 720 for 6), got {}", streams);
}

}  // namespace

const Schema<MHCOptions>& mhc_schema() {
  static const auto schema = [] {
    using O = MHCOptions;
    Schema<O> s;
    s.add("streams", ZOO_FIELD(O, streams), "n: residual streams").at_least(1);
    s.require("streams", [](const O& o) { return streams_problem(o.variant(), o.streams()); });
    s.add("sinkhorn_iterations", ZOO_FIELD(O, sinkhorn_iterations), "mhc: Sinkhorn-Knopp iterations").at_least(0);
    s.add("alpha_init", ZOO_FIELD(O, alpha_init), "initial gain of the input-dependent mixing");
    s.add("eps", ZOO_FIELD(O, eps), "RMSNorm epsilon").above(0);
    return s;
  }();
  return schema;
}

MHCImpl::MHCImpl(MHCOptions options_, torch::nn::AnyModule branch_)
    : options(std::move(options_)), branch(std::move(branch_)) {
  reset();
}

void MHCImpl::reset() {
  const int64_t n = options.streams(), C = options.width(), favoured = options.layer_index() % std::max<int64_t>(n, 1);
  const auto& v = options.variant();
  TORCH_CHECK(v == "mhc" || v == "mhc-lite" || v == "hc", "MHC variant must be mhc, mhc-lite or hc, got '", v, "'");
  check_options(mhc_schema(), options, "MHC");
  TORCH_CHECK(C >= 1, "MHC needs width >= 1, got ", C);
  TORCH_CHECK(options.layer_index() >= 0, "MHC layer_index must be >= 0");
  TORCH_CHECK(!branch.is_empty(), "MHC needs a branch module (the sublayer F)");
  register_module("branch", branch.ptr());

  const bool hc = v == "hc";
  const int64_t res_size = v == "mhc-lite" ? factorial(n) : n * n;
  // Static logits (mHC-lite init; HC: lucidrains' one-hot pre, ones post, identity res).
  auto pre = hc ? torch::zeros({n}) : torch::full({n}, -1.0);
  pre[favoured] = 1.0;
  auto post = hc ? torch::ones({n}) : pre.clone();
  Tensor res;
  if (hc)
    res = torch::eye(n);
  else if (v == "mhc")
    res = torch::full({n, n}, -8.0).fill_diagonal_(0.0);
  else
    res = torch::full({res_size}, -8.0).index_fill_(0, torch::tensor({int64_t{0}}), 0.0);
  b_pre = register_parameter("b_pre", pre);
  b_post = register_parameter("b_post", post);
  b_res = register_parameter("b_res", res);
  if (options.dynamic()) {
    norm_weight = register_parameter("norm_weight", torch::zeros({hc ? C : n * C}));
    phi_pre = register_parameter("phi_pre", hc ? torch::zeros({C}) : torch::zeros({n * C, n}));
    phi_post = register_parameter("phi_post", hc ? torch::zeros({C}) : torch::zeros({n * C, n}));
    phi_res = register_parameter("phi_res", hc ? torch::zeros({n, C}) : torch::zeros({n * C, res_size}));
    alpha_pre = register_parameter("alpha_pre", torch::full({}, options.alpha_init()));
    alpha_post = register_parameter("alpha_post", torch::full({}, options.alpha_init()));
    alpha_res = register_parameter("alpha_res", torch::full({}, options.alpha_init()));
  }
  if (v == "mhc-lite") permutations = register_buffer("permutations", permutation_matrices(n));
}

void MHCImpl::check_streams(const Tensor& x) const {
  const int64_t n = options.streams(), C = options.width();
  TORCH_CHECK(x.dim() >= 3 && x.size(1) == n && x.size(2) == C, "MHC expects [B, streams=", n, ", width=", C,
              ", ...], got ", x.sizes());
}

MixingMatrices MHCImpl::mixing(const Tensor& x) {
  check_streams(x);
  return mixing_from(x, options.dynamic() ? spatial_mean(x) : Tensor());
}

MixingMatrices MHCImpl::mixing_from(const Tensor& x, const Tensor& features) {
  const int64_t n = options.streams(), C = options.width();
  // In float32 under autocast too: the matrices must stay (doubly) stochastic to float32's precision, Sinkhorn runs
  // in float32 anyway, and bfloat16 products of these shapes ([B, n C] x [n C, n^2]) cost more than float32's
  // (aten::mm 1.61 against 0.52 ms of the mHC ResNet's bf16-mixed step under `zoo bench --profile`).
  const ops::Float32Region float32_region;
  const auto& v = options.variant();
  // Zeros [B, n] made from x rather than from x.size(0), so that a LibTorch trace keeps the batch size free.
  const auto zero = torch::zeros_like(x.flatten(2).select(2, 0));
  MixingMatrices m;
  if (v == "hc") {
    // HC (mHC Eq. 5): per-stream RMSNorm, H = alpha * tanh(theta x~^T) + b, unconstrained.
    m.pre = b_pre + zero;
    m.post = b_post + zero;
    m.res = b_res + zero.unsqueeze(-1);
    if (options.dynamic()) {
      const auto xt = rms_norm(features, norm_weight, options.eps());  // features: [B, n, C]
      m.pre = m.pre + alpha_pre * torch::tanh(torch::matmul(xt, phi_pre));
      m.post = m.post + alpha_post * torch::tanh(torch::matmul(xt, phi_post));
      m.res = m.res + alpha_res * torch::tanh(torch::matmul(phi_res, xt.transpose(1, 2)));
    }
    return m;
  }
  // mHC Eqs. 7-8 on the flattened streams (ops/mhc_mixing.h: one autograd node where it takes the operands).
  Tensor res;
  if (options.dynamic()) {
    const auto mixed =
        ops::mhc_mixing(features.reshape({-1, n * C}), {norm_weight, phi_pre, phi_post, phi_res, b_pre, b_post, b_res,
                                                        alpha_pre, alpha_post, alpha_res, options.eps()});
    m.pre = mixed[0];
    m.post = mixed[1];
    res = mixed[2];
  } else {
    m.pre = torch::sigmoid(b_pre + zero);
    m.post = 2 * torch::sigmoid(b_post + zero);
    res = b_res.reshape({1, -1}) + zero.narrow(1, 0, 1);
  }
  if (v == "mhc") {
    m.res = ops::sinkhorn_knopp(res.reshape({-1, n, n}), options.sinkhorn_iterations(), options.fused_sinkhorn());
  } else {
    const int64_t k = permutations.size(0);
    m.res =
        torch::matmul(torch::softmax(res, -1), permutations.to(res.dtype()).reshape({k, n * n})).reshape({-1, n, n});
  }
  return m;
}

Tensor MHCImpl::combine(const Tensor& x, const MixingMatrices& m) { return combine_reads(x, x, m); }

Tensor MHCImpl::combine_reads(const Tensor& for_pre, const Tensor& for_res, const MixingMatrices& m) {
  // The streams as [B, n, L] for the mixing kernel (ops/stream_mix.h): one pass each way for H_pre x, and one for
  // H_res x + H_post^T F with its four gradients, where elementwise operations took several, each a stream-sized
  // temporary. H_pre x is a product: under autocast it is handed to the branch in bfloat16, as matmul would.
  const auto input = ops::mix_streams_map(m.pre, for_pre);  // H_pre x: [B, C, ...]
  const auto out = branch.forward(input);
  TORCH_CHECK(out.sizes() == input.sizes(), "MHC: the branch must keep its input's shape ", input.sizes(), ", got ",
              out.sizes());
  // stream t: sum_s H_res[t, s] x_s + H_post[t] F
  return ops::mix_streams_add(m.res, for_res.flatten(2), m.post, out).view_as(for_res);
}

Tensor MHCImpl::forward(const Tensor& x) {
  check_streams(x);
  if (!options.dynamic() || x.dim() < 4) return combine(x, mixing(x));
  // The streams' three readers (their means, which the mixing matrices read, H_pre x and H_res x) through one autograd
  // node, whose backward adds their three gradients in one pass (ops::read_streams).
  const auto reads = ops::read_streams(x);
  return combine_reads(reads.for_pre, reads.for_res, mixing_from(x, reads.means));
}

std::shared_ptr<torch::nn::Module> MHCImpl::clone(const torch::optional<torch::Device>& device) const {
  auto copy = std::make_shared<MHCImpl>(options, branch.clone(device));
  torch::NoGradGuard no_grad;
  auto params = copy->named_parameters(/*recurse=*/false);
  for (const auto& p : named_parameters(/*recurse=*/false)) params[p.key()].copy_(p.value());
  auto buffers = copy->named_buffers(/*recurse=*/false);
  for (const auto& b : named_buffers(/*recurse=*/false)) buffers[b.key()].copy_(b.value());
  if (device) copy->to(*device);
  copy->train(is_training());
  return copy;
}

void MHCImpl::pretty_print(std::ostream& stream) const {
  stream << "zoo::MHC(variant=" << options.variant() << ", streams=" << options.streams()
         << ", width=" << options.width();
  if (options.variant() == "mhc") stream << ", sinkhorn_iterations=" << options.sinkhorn_iterations();
  stream << ", dynamic=" << std::boolalpha << options.dynamic() << ")";
}

// ---------------------------------------------------------------------------------------------------------------

BasicBlockImpl::BasicBlockImpl(BasicBlockOptions options_) : options(options_) { reset(); }

void BasicBlockImpl::reset() {
  namespace nn = torch::nn;
  const int64_t c = options.channels();
  TORCH_CHECK(c > 0, "BasicBlock channels must be positive, got ", c);
  conv1 = register_module("conv1", nn::Conv2d(nn::Conv2dOptions(c, c, 3).padding(1).bias(false)));
  bn1 = register_module("bn1", BatchNorm2d(c));
  conv2 = register_module("conv2", nn::Conv2d(nn::Conv2dOptions(c, c, 3).padding(1).bias(false)));
  bn2 = register_module("bn2", BatchNorm2d(c));
}

Tensor BasicBlockImpl::forward(const Tensor& x) { return bn2(conv2(torch::relu(bn1(conv1(x))))); }

void BasicBlockImpl::pretty_print(std::ostream& stream) const {
  stream << "zoo::BasicBlock(channels=" << options.channels() << ")";
}

namespace {

const Schema<MHCResNetOptions>& mhc_resnet_schema() {
  static const auto schema = [] {
    using O = MHCResNetOptions;
    Schema<O> s;
    s.add("in_channels", ZOO_FIELD(O, in_channels), "channels of the input images").at_least(1);
    s.add("num_classes", ZOO_FIELD(O, num_classes), "number of classes (logits)").at_least(1);
    s.add("channels", ZOO_FIELD(O, channels), "C: width of the stem, every block and the head").at_least(1);
    s.add("blocks", ZOO_FIELD(O, blocks), "residual blocks (BasicBlock)").at_least(1);
    s.add("variant", ZOO_FIELD(O, variant), "mhc (Sinkhorn), mhc-lite, hc, or residual (one stream: the baseline)")
        .one_of({"mhc", "mhc-lite", "hc", "residual"}, "variant");
    s.nest("mhc", ZOO_FIELD(O, mhc), mhc_schema());
    s.require("mhc.streams", [](const O& o) { return streams_problem(o.variant(), o.mhc().streams()); });
    // The flat keys of zoo 0.1 (and the shorter spelling on the command line: --set streams=3).
    for (const auto& setting : mhc_schema().settings()) s.alias(setting.name, "mhc." + setting.name);
    return s;
  }();
  return schema;
}

}  // namespace

MHCResNetImpl::MHCResNetImpl(MHCResNetOptions options_) : options(std::move(options_)) { reset(); }

void MHCResNetImpl::reset() {
  namespace nn = torch::nn;
  check_options(mhc_resnet_schema(), options, "mhc-resnet");
  const int64_t c = options.channels();
  const auto& v = options.variant();
  stem = register_module(
      "stem",
      nn::Sequential(nn::Conv2d(nn::Conv2dOptions(options.in_channels(), c, 3).padding(1).bias(false)), BatchNorm2d(c),
                     nn::ReLU(), MaxPool2x2(), nn::Conv2d(nn::Conv2dOptions(c, c, 3).padding(1).bias(false)),
                     BatchNorm2d(c), nn::ReLU(), MaxPool2x2()));
  blocks = register_module("blocks", nn::ModuleList());
  for (int64_t i = 0; i < options.blocks(); ++i) {
    if (v == "residual") {
      blocks->push_back(BasicBlock(c));
    } else {
      blocks->push_back(MHC(MHCOptions(options.mhc()).width(c).variant(v).layer_index(i), BasicBlock(c)));
    }
  }
  head = register_module("head", nn::Sequential(nn::ReLU(), nn::AdaptiveAvgPool2d(1), nn::Flatten(),
                                                nn::Linear(c, options.num_classes())));
}

Tensor MHCResNetImpl::forward(const Tensor& x) {
  TORCH_CHECK(x.dim() == 4 && x.size(1) == options.in_channels() && x.size(2) >= 4 && x.size(3) >= 4,
              "mhc-resnet expects [N, ", options.in_channels(), ", H >= 4, W >= 4], got ", x.sizes());
  auto h = stem->forward(x);
  if (options.variant() == "residual") {
    for (const auto& block : *blocks) h = h + block->as<BasicBlockImpl>()->forward(h);
  } else {
    h = expand_streams(h, options.mhc().streams());
    for (const auto& block : *blocks) h = block->as<MHCImpl>()->forward(h);
    h = reduce_streams(h);
  }
  return head->forward(h);
}

void MHCResNetImpl::pretty_print(std::ostream& stream) const {
  stream << "zoo::MHCResNet(variant=" << options.variant() << ", channels=" << options.channels()
         << ", blocks=" << options.blocks();
  if (options.variant() != "residual") stream << ", streams=" << options.mhc().streams();
  stream << ", num_classes=" << options.num_classes() << ")";
}

ZOO_REGISTER_MODEL(mhc_resnet) {
  return ModelSpec<MHCResNet, MHCResNetOptions>(
             "mhc-resnet", "ResNet whose blocks mix 4 residual streams: mhc (Sinkhorn), mhc-lite, hc or residual")
      .task("classify")
      .dataset("fashion-mnist")
      .train_defaults({{"epochs", 3}, {"optimizer", "adam"}, {"lr", 2e-3}, {"schedule", "cosine"}, {"batch_size", 64}})
      .options(mhc_resnet_schema());
}

}  // namespace zoo::models
