// ops::dropout and its mask generator against LibTorch's own: bernoulli_'s draws bit for bit (every type, block
// boundaries, an element split across blocks, the plain and the AVX2 path) and the generator's state after them;
// torch::dropout's outputs, gradients and generator state; models::Dropout against torch::nn::Dropout.
#include "ops/dropout.h"
#include "helpers.h"
#include "models/dropout.h"
#include "ops/simd.h"

#include <ATen/CPUGeneratorImpl.h>
#include <torch/csrc/jit/frontend/tracer.h>
#include <catch2/catch.hpp>

#include <optional>

namespace ops = zoo::ops;

namespace {

/// This LibTorch's bernoulli_ is what zoo reproduces (Debian's 1.13: bernoulli_distribution<double> on mt19937); on a
/// build that draws otherwise ops::dropout is torch::dropout itself, and the bit-for-bit checks do not apply.
bool reproducible() {
  if (ops::detail::bernoulli_matches_libtorch()) return true;
  WARN("this LibTorch's bernoulli_ draws otherwise than zoo's generator: ops::dropout runs torch::dropout here");
  return false;
}

}  // namespace

TEST_CASE("Dropout masks: bernoulli_fill draws what bernoulli_ draws, and leaves the generator where it would",
          "[ops][dropout]") {
  REQUIRE(reproducible());
  for (const bool plain : {false, true}) {
    std::optional<ops::ScalarOnly> scalar;
    if (plain) scalar.emplace();
    for (const auto type : {torch::kFloat32, torch::kFloat64, torch::kBFloat16}) {
      // Counts around the 312 elements of a block of 624 words, odd counts whose last element spans two blocks.
      for (const int64_t n : {1, 2, 3, 5, 311, 312, 313, 623, 624, 625, 1001, 4099}) {
        // Starting positions: a fresh generator, and 1 or 7 words drawn before (an element split across blocks).
        for (const int64_t before : {0, 1, 7}) {
          for (const double p : {0.75, 0.5, 0.1, 1.0 / 3, 0.0, 1.0}) {
            INFO((plain ? "plain" : "vector") << " " << type << " n=" << n << " before=" << before << " p=" << p);
            auto a = at::detail::createCPUGenerator(17 + n), b = at::detail::createCPUGenerator(17 + n);
            if (before > 0) {
              torch::randint(1 << 30, {before}, a, torch::kLong);  // one word each (a range below 2^32)
              torch::randint(1 << 30, {before}, b, torch::kLong);
            }
            auto theirs = torch::empty({n}, type);
            theirs.bernoulli_(p, a);
            auto ours = torch::full({n}, 7.0, type);
            ops::detail::bernoulli_fill(ours, p, b);
            CHECK(torch::equal(theirs, ours));
            // The generators stand at the same word: their next draws agree.
            CHECK(torch::equal(torch::randint(1 << 30, {700}, a, torch::kLong),
                               torch::randint(1 << 30, {700}, b, torch::kLong)));
          }
        }
      }
    }
  }
  // The share of ones follows p (an independent check of the comparison's direction).
  auto g = at::detail::createCPUGenerator(3);
  auto big = torch::empty({200000});
  ops::detail::bernoulli_fill(big, 0.3, g);
  CHECK(big.mean().item<double>() == Approx(0.3).margin(0.005));
  // A value other than 1 for the draws of 1 (dropout's 1 / (1 - p)): the same mask times it.
  auto c = at::detail::createCPUGenerator(8), d = at::detail::createCPUGenerator(8);
  auto plain = torch::empty({1001}, torch::kBFloat16), scaled = torch::empty({1001}, torch::kBFloat16);
  ops::detail::bernoulli_fill(plain, 0.6, c);
  ops::detail::bernoulli_fill(scaled, 0.6, d, torch::full({}, 2.5, torch::kBFloat16));
  CHECK(torch::equal(scaled, plain * 2.5));
  CHECK_THROWS_WITH(ops::detail::bernoulli_fill(scaled, 0.6, d, torch::ones({2}, torch::kBFloat16)),
                    Catch::Contains("one element of out's type"));
  auto bad = torch::empty({4}, torch::kInt32);
  CHECK_THROWS_WITH(ops::detail::bernoulli_fill(bad, 0.5, g), Catch::Contains("float32, float64 or bfloat16"));
  CHECK_THROWS_WITH(ops::detail::bernoulli_fill(big, 1.5, g), Catch::Contains("p in [0, 1]"));
}

TEST_CASE("Dropout: ops::dropout gives torch::dropout's outputs, gradients and generator state", "[ops][dropout]") {
  const bool exact = reproducible();
  const auto base = torch::randn({64, 3136});
  for (const auto type : {torch::kFloat32, torch::kBFloat16, torch::kFloat64}) {
    for (const double p : {0.25, 0.5, 0.9}) {
      INFO(type << " p=" << p);
      const auto x = base.to(type);
      auto a = x.clone().requires_grad_(true), b = x.clone().requires_grad_(true);
      torch::manual_seed(5);
      const auto theirs = torch::dropout(a, p, true);
      const auto next_theirs = torch::rand({8});
      torch::manual_seed(5);
      const auto ours = ops::dropout(b, p, true);
      const auto next_ours = torch::rand({8});
      CHECK(torch::equal(theirs, ours));
      CHECK(torch::equal(next_theirs, next_ours));
      const auto g = torch::randn_like(theirs);
      theirs.backward(g);
      ours.backward(g);
      CHECK(torch::equal(a.grad(), b.grad()));
      // About p of the elements dropped, the others scaled by 1 / (1 - p).
      const double kept = (ours != 0).to(torch::kFloat64).mean().item<double>();
      CHECK(kept == Approx(1 - p).margin(0.01));
    }
  }
  if (exact) {
    // Non-contiguous input: the mask in memory order of a contiguous tensor, as LibTorch's.
    const auto t = torch::randn({40, 30}).t();
    torch::manual_seed(9);
    const auto theirs = torch::dropout(t, 0.5, true);
    torch::manual_seed(9);
    CHECK(torch::equal(theirs, ops::dropout(t, 0.5, true)));
  }
  // Evaluation, p = 0 and empty tensors return x itself; p = 1 zeros; p outside [0, 1] LibTorch's error.
  const auto x = torch::randn({3, 4});
  CHECK(ops::dropout(x, 0.5, false).is_same(x));
  CHECK(ops::dropout(x, 0.0, true).is_same(x));
  CHECK(ops::dropout(torch::empty({0, 4}), 0.5, true).numel() == 0);
  CHECK(torch::equal(ops::dropout(x, 1.0, true), torch::zeros_like(x)));
  CHECK_THROWS_WITH(ops::dropout(x, 1.5, true), Catch::Contains("between 0 and 1"));
  // Types it does not take: torch::dropout itself, with its error for float16 on the CPU in LibTorch 1.13.
  const auto h = torch::randn({100}).to(torch::kHalf);
  try {
    torch::manual_seed(2);
    const auto theirs_h = torch::dropout(h, 0.5, true);
    torch::manual_seed(2);
    CHECK(torch::equal(theirs_h, ops::dropout(h, 0.5, true)));
  } catch (const c10::Error& e) {
    CHECK_THROWS_WITH(ops::dropout(h, 0.5, true), Catch::Contains(e.what_without_backtrace()));
  }
  // A trace records aten::dropout, as torch::dropout's.
  auto traced = torch::jit::tracer::trace(
      {x}, [](const torch::jit::Stack& in) -> torch::jit::Stack { return {ops::dropout(in[0].toTensor(), 0.5, true)}; },
      [](const torch::Tensor&) { return std::string(); });
  CHECK(traced.first->graph->toString().find("aten::dropout") != std::string::npos);
}

TEST_CASE("Dropout: models::Dropout is torch::nn::Dropout with zoo's masks", "[ops][dropout][models]") {
  zoo::models::Dropout ours(0.4);
  torch::nn::Dropout theirs(0.4);
  CHECK(ours->parameters().empty());
  CHECK(ours->buffers().empty());
  const auto x = torch::randn({16, 50});
  torch::manual_seed(1);
  const auto y_theirs = theirs->forward(x);
  torch::manual_seed(1);
  CHECK(torch::equal(ours->forward(x), y_theirs));
  ours->eval();
  CHECK(torch::equal(ours->forward(x), x));
  std::ostringstream printed;
  ours->pretty_print(printed);
  CHECK(printed.str() == "zoo::Dropout(p=0.4, inplace=false)");
  // In place: LibTorch's dropout_ on x.
  zoo::models::Dropout in_place(torch::nn::DropoutOptions(0.5).inplace(true));
  auto z = torch::ones({1000});
  in_place->forward(z);
  CHECK((z == 0).sum().item<int64_t>() > 400);
  CHECK_THROWS_WITH(zoo::models::Dropout(1.5), Catch::Contains("between 0 and 1"));
}
