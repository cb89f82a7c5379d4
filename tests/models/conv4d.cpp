// Conv4d against a brute-force nested-loop sum, and its gradients against finite differences (float64).
#include "models/conv4d.h"
#include "ops/autocast.h"

#include <catch2/catch.hpp>

using namespace zoo::models;

namespace {

/// out[n,o,t,z,y,x] = b[o] + sum_{c,i,j,k,l} w[o,c,i,j,k,l] * x[n,c, t*s0-p0+i*d0, z*s1-p1+j*d1, ...] (in range)
torch::Tensor brute_force(const torch::Tensor& x, const torch::Tensor& w, const torch::Tensor& b,
                          std::array<int64_t, 4> s, std::array<int64_t, 4> p, std::array<int64_t, 4> d) {
  const int64_t N = x.size(0), C = x.size(1), O = w.size(0);
  std::array<int64_t, 4> in{x.size(2), x.size(3), x.size(4), x.size(5)}, k{w.size(2), w.size(3), w.size(4), w.size(5)},
      out{};
  // Output positions by counting the windows that fit in the padded input (not from the size formula).
  for (int a = 0; a < 4; ++a)
    while (out[a] * s[a] + d[a] * (k[a] - 1) <= in[a] + 2 * p[a] - 1) ++out[a];
  auto y = torch::zeros({N, O, out[0], out[1], out[2], out[3]}, torch::kFloat64);
  auto X = x.accessor<double, 6>();
  auto W = w.accessor<double, 6>();
  auto Y = y.accessor<double, 6>();
  for (int64_t n = 0; n < N; ++n)
    for (int64_t o = 0; o < O; ++o)
      for (int64_t t = 0; t < out[0]; ++t)
        for (int64_t z = 0; z < out[1]; ++z)
          for (int64_t r = 0; r < out[2]; ++r)
            for (int64_t q = 0; q < out[3]; ++q) {
              double acc = b.defined() ? b[o].item<double>() : 0.0;
              for (int64_t c = 0; c < C; ++c)
                for (int64_t i = 0; i < k[0]; ++i)
                  for (int64_t j = 0; j < k[1]; ++j)
                    for (int64_t l = 0; l < k[2]; ++l)
                      for (int64_t m = 0; m < k[3]; ++m) {
                        const int64_t a0 = t * s[0] - p[0] + i * d[0], a1 = z * s[1] - p[1] + j * d[1];
                        const int64_t a2 = r * s[2] - p[2] + l * d[2], a3 = q * s[3] - p[3] + m * d[3];
                        if (a0 < 0 || a0 >= in[0] || a1 < 0 || a1 >= in[1] || a2 < 0 || a2 >= in[2] || a3 < 0 ||
                            a3 >= in[3])
                          continue;
                        acc += W[o][c][i][j][l][m] * X[n][c][a0][a1][a2][a3];
                      }
              Y[n][o][t][z][r][q] = acc;
            }
  return y;
}

}  // namespace

TEST_CASE("Conv4d equals the brute-force nested-loop sum (stride, padding, dilation)", "[conv4d]") {
  torch::manual_seed(0);
  struct Case {
    std::array<int64_t, 4> k, s, p, d;
    bool bias;
  };
  for (const auto& c : std::vector<Case>{{{2, 2, 2, 2}, {1, 1, 1, 1}, {0, 0, 0, 0}, {1, 1, 1, 1}, true},
                                         {{3, 2, 3, 2}, {2, 1, 2, 1}, {1, 1, 0, 1}, {1, 2, 1, 1}, true},
                                         {{2, 3, 2, 2}, {1, 2, 1, 2}, {2, 0, 1, 0}, {2, 1, 1, 1}, false}}) {
    Conv4d conv(Conv4dOptions(2, 3, {c.k[0], c.k[1], c.k[2], c.k[3]})
                    .stride({c.s[0], c.s[1], c.s[2], c.s[3]})
                    .padding({c.p[0], c.p[1], c.p[2], c.p[3]})
                    .dilation({c.d[0], c.d[1], c.d[2], c.d[3]})
                    .bias(c.bias));
    conv->to(torch::kFloat64);
    auto x = torch::randn({2, 2, 5, 4, 5, 4}, torch::kFloat64);
    auto expected =
        brute_force(x, conv->weight.detach(), c.bias ? conv->bias.detach() : torch::Tensor(), c.s, c.p, c.d);
    auto y = conv->forward(x);
    REQUIRE(y.sizes() == expected.sizes());
    CHECK(torch::allclose(y, expected, 1e-10, 1e-10));
  }
}

TEST_CASE("Conv4d: a time axis too short for the kernel is refused, as Conv3d refuses its depth", "[conv4d]") {
  // T = 2, kernel 3, stride 2: floor((2 - 2 - 1) / 2) + 1 = 0 frames (truncating division would make 1).
  Conv4d conv(Conv4dOptions(1, 1, {3, 1, 1, 1}).stride({2, 1, 1, 1}));
  CHECK_THROWS_WITH(conv->forward(torch::randn({1, 1, 2, 3, 3, 3})), Catch::Contains("too short for kernel 3"));
  torch::nn::Conv3d conv3d(torch::nn::Conv3dOptions(1, 1, {3, 1, 1}).stride({2, 1, 1}));
  CHECK_THROWS(conv3d->forward(torch::randn({1, 1, 2, 3, 3})));
  // Padding 1 makes the window fit: one frame, as Conv3d gives one depth slice.
  Conv4d padded(Conv4dOptions(1, 1, {3, 1, 1, 1}).stride({2, 1, 1, 1}).padding({1, 0, 0, 0}));
  CHECK(padded->forward(torch::randn({1, 1, 2, 3, 3, 3})).size(2) == 1);
  for (int64_t t = 1; t <= 9; ++t) {
    torch::nn::Conv3d reference(torch::nn::Conv3dOptions(1, 1, {3, 1, 1}).stride({2, 1, 1}).padding({1, 0, 0}));
    CHECK(padded->forward(torch::randn({1, 1, t, 2, 2, 2})).size(2) ==
          reference->forward(torch::randn({1, 1, t, 2, 2})).size(2));
  }
}

TEST_CASE("Conv4d: gradients match central finite differences in float64", "[conv4d]") {
  torch::manual_seed(1);
  Conv4d conv(Conv4dOptions(2, 2, {2, 3, 2, 2}).stride({2, 1, 1, 1}).padding({1, 1, 0, 1}));
  conv->to(torch::kFloat64);
  auto x = torch::randn({1, 2, 4, 3, 3, 3}, torch::kFloat64).requires_grad_(true);
  const auto r = torch::randn_like(conv->forward(x)).detach();  // loss = sum(out * r)
  auto loss = [&] { return (conv->forward(x) * r).sum(); };
  loss().backward();
  const double h = 1e-6;
  auto check = [&](torch::Tensor t, const torch::Tensor& grad, int64_t flat) {
    torch::NoGradGuard g;
    auto view = t.view(-1);
    const double old = view[flat].item<double>();
    view[flat] = old + h;
    const double up = loss().item<double>();
    view[flat] = old - h;
    const double down = loss().item<double>();
    view[flat] = old;
    const double numeric = (up - down) / (2 * h), analytic = grad.reshape(-1)[flat].item<double>();
    INFO("numeric " << numeric << " analytic " << analytic);
    CHECK(numeric == Approx(analytic).epsilon(1e-6).margin(1e-8));
  };
  for (int64_t i : {0L, 17L, 55L, 100L, x.numel() - 1}) check(x.detach(), x.grad(), i);
  for (int64_t i : {0L, 9L, 40L, conv->weight.numel() - 1}) check(conv->weight, conv->weight.grad(), i);
  for (int64_t i : {0L, 1L}) check(conv->bias, conv->bias.grad(), i);
}

TEST_CASE("Conv4d: shapes, parameter names, and errors", "[conv4d]") {
  Conv4d conv(Conv4dOptions(3, 8, 3).padding(1));
  CHECK(conv->forward(torch::rand({2, 3, 6, 5, 7, 4})).sizes() == torch::IntArrayRef({2, 8, 6, 5, 7, 4}));
  auto names = conv->named_parameters().keys();
  CHECK(names == std::vector<std::string>{"weight", "bias"});
  CHECK(conv->weight.sizes() == torch::IntArrayRef({8, 3, 3, 3, 3, 3}));
  CHECK_THROWS_WITH(conv->forward(torch::rand({2, 3, 6, 5, 7})), Catch::Contains("expects [N, 3, T, D, H, W]"));
  CHECK_THROWS_WITH(Conv4d(Conv4dOptions(3, 8, 3))->forward(torch::rand({1, 3, 2, 5, 5, 5})),
                    Catch::Contains("too short"));
}

TEST_CASE("Conv4d under bf16 autocast: a bfloat16 output, float32 gradients close to float32's", "[conv4d]") {
  torch::manual_seed(4);
  for (int64_t in : {1, 3}) {  // one input channel: the direct first-layer kernel; three: LibTorch's conv3d
    Conv4d conv(Conv4dOptions(in, 5, 3).stride({2, 1, 1, 1}).padding(1));
    auto x = torch::randn({2, in, 5, 6, 5, 7}).requires_grad_(in == 3);
    const auto r = torch::randn({2, 5, 3, 6, 5, 7});
    auto run = [&](bool mixed) {
      conv->zero_grad();
      if (x.grad().defined()) x.mutable_grad().zero_();
      torch::Tensor y;
      {
        zoo::ops::AutocastScope scope(torch::kCPU, torch::kBFloat16, mixed);
        y = conv->forward(x);
      }
      CHECK(y.scalar_type() == (mixed ? torch::kBFloat16 : torch::kFloat32));
      (y.to(torch::kFloat32) * r).sum().backward();
      return std::vector<torch::Tensor>{y.to(torch::kFloat32).detach(), conv->weight.grad().clone(),
                                        conv->bias.grad().clone(),
                                        x.requires_grad() ? x.grad().clone() : torch::Tensor()};
    };
    const auto full = run(false), mixed = run(true);
    CHECK(mixed[1].scalar_type() == torch::kFloat32);
    CHECK(mixed[2].scalar_type() == torch::kFloat32);
    for (size_t i = 0; i < full.size(); ++i) {
      if (!full[i].defined()) continue;
      // bfloat16 keeps 8 bits: relative errors of a few 1e-3 per product, summed over up to 81 taps.
      const double scale = full[i].abs().max().item<double>();
      INFO("tensor " << i << " in_channels " << in);
      CHECK((mixed[i] - full[i]).abs().max().item<double>() < 0.03 * scale);
    }
  }
}
