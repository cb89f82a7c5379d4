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
