// Sinkhorn-Knopp: fixed points, row and column sums, and the fused kernel against the plain path and finite
// differences.
#include "ops/sinkhorn.h"
#include "helpers.h"

#include <catch2/catch.hpp>

using zoo::ops::sinkhorn_knopp;
using zoo::test::column_error;
using zoo::test::max_abs;
using zoo::test::row_error;

TEST_CASE("Sinkhorn-Knopp: rows exact, columns within 1e-3 after 20 iterations, known fixed points", "[mhc]") {
  const auto zeros = sinkhorn_knopp(torch::zeros({4, 4}));
  CHECK(max_abs(zeros - 0.25) < 1e-7);  // exp(0) = J -> J / n
  const auto diagonal = sinkhorn_knopp(torch::eye(4) * 20);
  CHECK(max_abs(diagonal - torch::eye(4)) < 1e-6);
  torch::manual_seed(0);
  const auto logits = torch::randn({64, 4, 4});
  const auto h = sinkhorn_knopp(logits);
  CHECK(row_error(h) < 1e-6);
  CHECK(column_error(h) < 1e-3);
  CHECK(h.min().item<double>() >= 0);
  CHECK(column_error(sinkhorn_knopp(logits, 1)) > column_error(h));  // converges with iterations
  // Convergence slows as the logits spread: at scale 8, 20 iterations leave columns off by more than 1e-2 (the
  // mHC-lite argument); more iterations shrink it.
  const auto wide = torch::randn({64, 4, 4}) * 8;
  const double after20 = column_error(sinkhorn_knopp(wide));
  CHECK(after20 > 1e-2);
  CHECK(column_error(sinkhorn_knopp(wide, 500)) < after20 / 4);
  // The fused CPU kernel and the tensor-operation reference agree in value and gradient.
  const auto reference = sinkhorn_knopp(logits, 20, /*fused=*/false);
  CHECK(max_abs(h - reference) < 1e-6);
  auto x64 = logits.to(torch::kFloat64).requires_grad_(true);
  auto y64 = logits.to(torch::kFloat64).requires_grad_(true);
  const auto w = torch::randn({64, 4, 4}, torch::kFloat64);
  (sinkhorn_knopp(x64, 20, true) * w).sum().backward();
  (sinkhorn_knopp(y64, 20, false) * w).sum().backward();
  CHECK(max_abs(x64.grad() - y64.grad()) < 1e-10);
  CHECK(max_abs(x64.grad()) > 1e-3);
  // and against central finite differences
  const auto base = logits[0].to(torch::kFloat64);
  for (int64_t k : {0, 5, 10, 15}) {
    auto plus = base.clone(), minus = base.clone();
    plus.view(-1)[k] += 1e-6;
    minus.view(-1)[k] -= 1e-6;
    const double numeric = ((sinkhorn_knopp(plus) - sinkhorn_knopp(minus)) * w[0]).sum().item<double>() / 2e-6;
    CHECK(x64.grad()[0].view(-1)[k].item<double>() == Approx(numeric).margin(1e-6));
  }
  CHECK_THROWS_WITH(sinkhorn_knopp(torch::zeros({3, 4})), Catch::Contains("[..., n, n]"));
}

TEST_CASE("Sinkhorn-Knopp: the linear-space iterations equal log space's, and wide or infinite logits keep log space",
          "[mhc]") {
  using zoo::ops::SinkhornLogSpaceOnly;
  torch::manual_seed(0);
  // Both paths in double, forward and backward: scales up to a spread of 64 (the linear path's limit), 1 to 200
  // iterations.
  auto both = [](const torch::Tensor& logits, int64_t iterations) {
    const auto w = torch::randn(logits.sizes(), torch::kFloat64);
    auto x = logits.to(torch::kFloat64).detach().clone().requires_grad_(true);
    auto y = logits.to(torch::kFloat64).detach().clone().requires_grad_(true);
    const auto linear = zoo::ops::sinkhorn_knopp(x, iterations);
    (linear * w).sum().backward();
    torch::Tensor log;
    {
      SinkhornLogSpaceOnly log_space;
      log = zoo::ops::sinkhorn_knopp(y, iterations);
      (log * w).sum().backward();
    }
    return std::make_tuple(linear.detach(), log.detach(), x.grad(), y.grad());
  };
  for (const double scale : {0.1, 1.0, 4.0}) {
    for (const int64_t iterations : {1, 20, 200}) {
      const auto [linear, log, linear_grad, log_grad] = both(torch::randn({64, 4, 4}) * scale, iterations);
      CHECK(max_abs(linear - log) < 1e-13);
      CHECK(max_abs(linear_grad - log_grad) < 1e-12);
      CHECK(!torch::equal(linear, log));  // the two paths ran: they round differently
    }
  }
  // Entries spread over exactly 64 (0 down to -64, shuffled): entries down to ~e^-64 stay accurate.
  auto spread = torch::linspace(-64, 0, 16, torch::kFloat64).index_select(0, torch::randperm(16)).view({1, 4, 4});
  {
    const auto [linear, log, linear_grad, log_grad] = both(spread, 20);
    CHECK(max_abs(linear - log) < 1e-13);
    CHECK(((linear - log).abs() <= 1e-12 * log.abs()).all().item<bool>());
    CHECK(max_abs(linear_grad - log_grad) < 1e-12);
    CHECK(!torch::equal(linear, log));
  }
  // Spread beyond 64, -inf entries (a zero in the matrix, a row of them) and NaN: log space, the same bits.
  auto wide = spread * 1.01;
  auto infinite = torch::randn({1, 4, 4}, torch::kFloat64);
  infinite[0][1][2] = -INFINITY;
  auto empty_row = torch::randn({1, 4, 4}, torch::kFloat64);
  empty_row[0][3] = -INFINITY;
  auto nan = torch::randn({1, 4, 4}, torch::kFloat64);
  nan[0][0][0] = NAN;
  for (const auto& logits : {wide, infinite, empty_row}) {
    const auto [linear, log, linear_grad, log_grad] = both(logits, 20);
    CHECK(torch::equal(linear, log));
    CHECK(torch::equal(linear_grad, log_grad));
  }
  CHECK(zoo::ops::sinkhorn_knopp(infinite)[0][1][2].item<double>() == 0);
  CHECK(row_error(zoo::ops::sinkhorn_knopp(infinite)) < 1e-12);
  CHECK(torch::equal(zoo::ops::sinkhorn_knopp(empty_row)[0][3], torch::zeros({4}, torch::kFloat64)));
  const auto [nan_linear, nan_log, nan_linear_grad, nan_log_grad] = both(nan, 20);
  CHECK(torch::isnan(nan_linear).any().item<bool>());
  CHECK(torch::equal(nan_linear.isnan(), nan_log.isnan()));
  // A batch mixing both kinds: each matrix as it would be alone.
  const auto mixed = torch::cat({torch::randn({3, 4, 4}, torch::kFloat64), wide});
  const auto together = zoo::ops::sinkhorn_knopp(mixed);
  CHECK(torch::equal(together.narrow(0, 0, 3), zoo::ops::sinkhorn_knopp(mixed.narrow(0, 0, 3))));
  CHECK(torch::equal(together.narrow(0, 3, 1), zoo::ops::sinkhorn_knopp(wide)));
  // float32 logits (the mHC's): within float32's rounding of the log-space result.
  const auto logits32 = torch::randn({64, 4, 4});
  const auto linear32 = zoo::ops::sinkhorn_knopp(logits32);
  SinkhornLogSpaceOnly log_space;
  CHECK(max_abs(linear32 - zoo::ops::sinkhorn_knopp(logits32)) < 1e-7);
}
