// zoo::models::BatchNorm2d/3d against torch::nn::BatchNorm2d/3d: the same names, options, training steps, running
// statistics (momentum and cumulative), evaluation, clones and errors.
#include "models/batch_norm.h"

#include <catch2/catch.hpp>

#include <sstream>

namespace {

/// Names and values of every parameter and buffer.
std::vector<std::pair<std::string, torch::Tensor>> state(const torch::nn::Module& m) {
  std::vector<std::pair<std::string, torch::Tensor>> out;
  for (const auto& p : m.named_parameters()) out.emplace_back(p.key(), p.value());
  for (const auto& b : m.named_buffers()) out.emplace_back(b.key(), b.value());
  return out;
}

template <typename Zoo, typename Torch>
void check_like_torch(Zoo zoo, Torch torch_bn, const std::vector<int64_t>& shape) {
  torch::manual_seed(0);
  {
    torch::NoGradGuard no_grad;
    if (zoo->weight.defined()) {
      zoo->weight.uniform_(0.5, 1.5);
      zoo->bias.normal_();
      torch_bn->weight.copy_(zoo->weight);
      torch_bn->bias.copy_(zoo->bias);
    }
  }
  for (int step = 0; step < 3; ++step) {
    const auto x = torch::randn(shape) * 2 + 1;
    auto a = x.clone().requires_grad_(), b = x.clone().requires_grad_();
    const torch::Tensor ya = zoo->forward(a), yb = torch_bn->forward(b);
    CHECK((ya - yb).abs().max().item<double>() < 1e-5);
    const auto go = torch::randn(shape);
    (ya * go).sum().backward();
    (yb * go).sum().backward();
    CHECK((a.grad() - b.grad()).abs().max().item<double>() < 1e-4);
  }
  const std::vector<std::pair<std::string, torch::Tensor>> s = state(*zoo), t = state(*torch_bn);
  REQUIRE(s.size() == t.size());
  for (size_t i = 0; i < s.size(); ++i) {
    INFO(s[i].first);
    CHECK(s[i].first == t[i].first);
    CHECK(s[i].second.defined() == t[i].second.defined());
    if (!s[i].second.defined()) continue;
    CHECK(s[i].second.sizes() == t[i].second.sizes());
    CHECK(s[i].second.scalar_type() == t[i].second.scalar_type());
    if (s[i].second.scalar_type() == torch::kLong) {
      CHECK(torch::equal(s[i].second, t[i].second));
    } else {
      CHECK((s[i].second - t[i].second).abs().max().item<double>() < 1e-5);
    }
    if (s[i].second.requires_grad() && s[i].second.grad().defined())
      CHECK((s[i].second.grad() - t[i].second.grad()).abs().max().item<double>() < 1e-3);
  }
  // Evaluation: the running statistics.
  zoo->eval();
  torch_bn->eval();
  const auto x = torch::randn(shape);
  const torch::Tensor za = zoo->forward(x), zb = torch_bn->forward(x);
  CHECK((za - zb).abs().max().item<double>() < 1e-5);
}

}  // namespace

TEST_CASE("BatchNorm2d/3d: as torch::nn's, names, steps, running statistics, evaluation", "[models]") {
  namespace nn = torch::nn;
  check_like_torch(zoo::models::BatchNorm2d(8), nn::BatchNorm2d(8), {16, 8, 7, 7});
  check_like_torch(zoo::models::BatchNorm3d(4), nn::BatchNorm3d(4), {2, 4, 3, 5, 6});
  // No momentum (the cumulative average), no affine parameters, no running statistics.
  check_like_torch(zoo::models::BatchNorm2d(nn::BatchNormOptions(3).momentum(c10::nullopt)),
                   nn::BatchNorm2d(nn::BatchNormOptions(3).momentum(c10::nullopt)), {8, 3, 5, 5});
  check_like_torch(zoo::models::BatchNorm2d(nn::BatchNormOptions(3).affine(false)),
                   nn::BatchNorm2d(nn::BatchNormOptions(3).affine(false)), {8, 3, 5, 5});
  check_like_torch(zoo::models::BatchNorm2d(nn::BatchNormOptions(3).track_running_stats(false)),
                   nn::BatchNorm2d(nn::BatchNormOptions(3).track_running_stats(false)), {8, 3, 5, 5});
}

TEST_CASE("BatchNorm2d: deep clones, what it prints, and the input it refuses", "[models]") {
  zoo::models::BatchNorm2d bn(4);
  bn->forward(torch::randn({8, 4, 3, 3}));
  auto copy = std::dynamic_pointer_cast<zoo::models::BatchNorm2dImpl>(bn->clone());
  REQUIRE(copy);
  CHECK(torch::equal(copy->running_mean, bn->running_mean));
  copy->forward(torch::randn({8, 4, 3, 3}) + 5);
  CHECK_FALSE(torch::equal(copy->running_mean, bn->running_mean));
  CHECK(copy->num_batches_tracked.item<int64_t>() == 2);
  CHECK(bn->num_batches_tracked.item<int64_t>() == 1);
  std::ostringstream text;
  text << *bn;
  CHECK(text.str() == "zoo::BatchNorm2d(4, eps=1e-05, momentum=0.1, affine=true, track_running_stats=true)");
  CHECK_THROWS_WITH(bn->forward(torch::randn({8, 4, 3})), Catch::Contains("expected 4D input (got 3D input)"));
  CHECK_THROWS_WITH(zoo::models::BatchNorm3d(4)->forward(torch::randn({8, 4, 3, 3})),
                    Catch::Contains("expected 5D input (got 4D input)"));
}
