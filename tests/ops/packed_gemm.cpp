// PackedWeight: x W^T (+ add) with the weight packed once, against torch::addmm.
#include "ops/packed_gemm.h"

#include <catch2/catch.hpp>

using zoo::ops::PackedWeight;

TEST_CASE("PackedWeight: add + x W^T equals torch::addmm for any rows, columns, depth and strides", "[kernels]") {
  const auto x0 = torch::randn({2, 3});
  if (!PackedWeight::usable(x0)) {
    WARN("this CPU has no AVX2 + FMA: PackedWeight is not used here, nothing to test");
    return;
  }
  CHECK_FALSE(PackedWeight::usable(x0.to(torch::kFloat64)));
  torch::manual_seed(0);
  struct Shape {
    int64_t m, n, k;
  };
  // Full and partial 16-column panels, 4-row blocks and the 1-row remainder, depth 1 to 300.
  for (const auto& s : {Shape{8, 1024, 128}, Shape{8, 128, 256}, Shape{1, 16, 1}, Shape{3, 17, 5}, Shape{5, 20, 3},
                        Shape{9, 33, 300}, Shape{4, 7, 64}}) {
    INFO(s.m << " x " << s.k << " times " << s.k << " x " << s.n);
    const auto weight = torch::randn({s.n, s.k});
    const PackedWeight packed(weight);
    REQUIRE(packed.defined());
    const auto x = torch::randn({s.m, s.k});
    const auto add = torch::randn({s.m, 2 * s.n}).slice(1, s.n);  // a strided view, as a time step of [N, T, 4C]
    const auto expected = torch::addmm(add, x, weight.t());
    const double tolerance = 1e-5 * std::max(1.0, expected.abs().max().item<double>());
    const auto out = packed.addmm(add, x);
    CHECK(out.sizes() == expected.sizes());
    CHECK(out.is_contiguous());
    CHECK((out - expected).abs().max().item<double>() < tolerance);
    CHECK((packed.addmm({}, x) - torch::mm(x, weight.t())).abs().max().item<double>() < tolerance);
    const auto xt = torch::randn({s.k, s.m}).t();  // x with a column stride: copied first
    CHECK((packed.addmm(add, xt) - torch::addmm(add, xt, weight.t())).abs().max().item<double>() < tolerance);
  }
  SECTION("the weight is packed once: later changes to it are not seen") {
    auto weight = torch::randn({16, 4});
    const PackedWeight packed(weight);
    const auto x = torch::randn({2, 4});
    const auto before = packed.addmm({}, x);
    weight.mul_(2);
    CHECK(torch::equal(packed.addmm({}, x), before));
  }
  SECTION("errors") {
    const PackedWeight packed(torch::randn({16, 4}));
    CHECK_THROWS_WITH(packed.addmm({}, torch::randn({2, 5})), Catch::Contains("expects x [M, 4]"));
    CHECK_THROWS_WITH(packed.addmm(torch::randn({2, 15}), torch::randn({2, 4})),
                      Catch::Contains("expects add [2, 16]"));
    CHECK_THROWS_WITH(PackedWeight(torch::randn({16, 4}, torch::kFloat64)), Catch::Contains("float32 CPU weight"));
    CHECK_THROWS_WITH(PackedWeight().addmm({}, torch::randn({2, 4})), Catch::Contains("empty PackedWeight"));
  }
}
