// The VAE and the sheet's ELBO derivation, checked numerically: closed-form KL, reparameterisation gradients,
// the loss by hand, Jensen (ELBO <= IWAE_k, increasing in k), learning, and the CLI.
#include "models/vae.h"
#include "datasets/images.h"
#include "datasets/registry.h"
#include "models/registry.h"
#include "tests/helpers.h"
#include "training/checkpoint.h"
#include "training/run.h"
#include "training/vae_objective.h"

#include <catch2/catch.hpp>

using namespace zoo;
using nlohmann::json;
using zoo::test::TempDir;

TEST_CASE("VAE: the closed-form KL equals a Monte-Carlo estimate with 200,000 samples (within 1%)", "[vae]") {
  torch::manual_seed(0);
  const auto mu = torch::randn({4, 6}, torch::kFloat64);
  const auto logvar = 0.8 * torch::randn({4, 6}, torch::kFloat64);
  const auto closed = models::gaussian_kl(mu, logvar);
  // KL(q || p) = E_q[log q(z) - log p(z)]
  const int64_t samples = 200000;
  auto z = mu.unsqueeze(0) + torch::exp(0.5 * logvar).unsqueeze(0) * torch::randn({samples, 4, 6}, torch::kFloat64);
  auto log_q = models::gaussian_log_density(z, mu.unsqueeze(0), logvar.unsqueeze(0));
  auto log_p = models::gaussian_log_density(z, torch::zeros_like(z), torch::zeros_like(z));
  auto mc = (log_q - log_p).mean(0);
  for (int i = 0; i < 4; ++i) {
    INFO("item " << i << ": closed " << closed[i].item<double>() << ", Monte Carlo " << mc[i].item<double>());
    CHECK(std::abs(mc[i].item<double>() - closed[i].item<double>()) < 0.01 * closed[i].item<double>());
  }
}

TEST_CASE("VAE: KL is exactly 0 at mu = 0, logvar = 0 and positive otherwise", "[vae]") {
  CHECK(models::gaussian_kl(torch::zeros({3, 5}), torch::zeros({3, 5})).abs().max().item<float>() == 0.0f);
  torch::manual_seed(1);
  for (int t = 0; t < 20; ++t) {
    auto kl = models::gaussian_kl(0.3 * torch::randn({8, 5}), 0.3 * torch::randn({8, 5}));
    CHECK(kl.min().item<float>() > 0.0f);
  }
  // only the mean off: KL = mu^2 / 2; only the variance off: KL = (exp(lv) - 1 - lv) / 2
  CHECK(models::gaussian_kl(torch::tensor({{2.0}}), torch::tensor({{0.0}})).item<double>() == Approx(2.0));
  CHECK(models::gaussian_kl(torch::tensor({{0.0}}), torch::tensor({{1.0}})).item<double>() ==
        Approx((std::exp(1.0) - 2.0) / 2));
}

TEST_CASE("VAE: gradients flow through the reparameterised sample to mu and logvar, not to eps", "[vae]") {
  auto mu = torch::tensor({0.5, -1.0, 2.0}, torch::requires_grad());
  auto logvar = torch::tensor({0.0, 0.4, -0.6}, torch::requires_grad());
  torch::manual_seed(42);
  auto z = models::reparameterize(mu, logvar);
  torch::manual_seed(42);
  const auto eps = torch::randn_like(mu);  // the same draw
  CHECK(!eps.requires_grad());
  z.sum().backward();
  CHECK(torch::allclose(mu.grad(), torch::ones({3})));                                   // dz/dmu = 1
  CHECK(torch::allclose(logvar.grad(), 0.5 * torch::exp(0.5 * logvar.detach()) * eps));  // dz/dlogvar
  CHECK(torch::allclose(z.detach(), mu.detach() + torch::exp(0.5 * logvar.detach()) * eps));
}

TEST_CASE("VAE: the loss of a tiny example matches the hand computation", "[vae]") {
  // Two items of 2 pixels, latent 1.
  //  item 0: x = (1, 0), logits (0, 0)       -> BCE = 2 log 2 = 1.3862944
  //          mu 1, logvar 0                  -> KL = 1/2 (mu^2 + e^0 - 1 - 0) = 0.5
  //  item 1: x = (1, 1), logits (ln 3, 0)    -> BCE = log(4/3) + log 2 = 0.9808293
  //          mu 0, logvar ln 2               -> KL = 1/2 (2 - 1 - ln 2) = 0.1534264
  auto x = torch::tensor({1.0, 0.0, 1.0, 1.0}, torch::kFloat64).view({2, 1, 1, 2});
  auto logits = torch::tensor({0.0, 0.0, std::log(3.0), 0.0}, torch::kFloat64).view({2, 1, 1, 2});
  auto mu = torch::tensor({{1.0}, {0.0}}, torch::kFloat64);
  auto logvar = torch::tensor({{0.0}, {std::log(2.0)}}, torch::kFloat64);
  const double recon = (2 * std::log(2.0) + std::log(4.0 / 3.0) + std::log(2.0)) / 2;
  const double kl = (0.5 + 0.5 * (1 - std::log(2.0))) / 2;
  auto terms = models::negative_elbo(logits, x, mu, logvar, 1.0);
  CHECK(terms.recon.item<double>() == Approx(recon).epsilon(1e-12));
  CHECK(terms.kl.item<double>() == Approx(kl).epsilon(1e-12));
  CHECK(terms.loss.item<double>() == Approx(recon + kl).epsilon(1e-12));
  CHECK(models::negative_elbo(logits, x, mu, logvar, 4.0).loss.item<double>() == Approx(recon + 4 * kl));
}

TEST_CASE("VAE: shapes, names and both architectures", "[vae]") {
  for (const std::string arch : {"mlp", "conv"}) {
    models::VAE vae(models::VAEOptions().arch(arch).latent(7).hidden(64));
    auto [logits, mu, logvar] = vae->forward(torch::rand({5, 1, 28, 28}));
    CHECK(logits.sizes() == torch::IntArrayRef({5, 1, 28, 28}));
    CHECK(mu.sizes() == torch::IntArrayRef({5, 7}));
    CHECK(logvar.sizes() == torch::IntArrayRef({5, 7}));
    auto names = vae->named_parameters().keys();
    CHECK(names.front() == "encoder.0.weight");
    CHECK(std::find(names.begin(), names.end(), "fc_mu.weight") != names.end());
    CHECK(std::find(names.begin(), names.end(), "decoder.0.weight") != names.end());
  }
  CHECK_THROWS_WITH(models::build_model("vae", {{"arch", "resnet"}}), Catch::Contains("\"mlp\" or \"conv\""));
  CHECK_THROWS_WITH(models::build_model("vae", {{"arch", "conv"}, {"image_size", 30}}),
                    Catch::Contains("divisible by 4"));
}

namespace {
/// A VAE trained for a few hundred steps on 3000 Fashion-MNIST images (shared by the tests below).
std::shared_ptr<models::VAEImpl> trained_vae(std::vector<double>* elbo_per_epoch = nullptr) {
  torch::manual_seed(0);
  datasets::DataConfig data;
  data.limit = 3000;
  auto splits = datasets::load_splits(data);
  models::VAE vae(models::VAEOptions().hidden(200).latent(10));
  training::Trainer trainer(torch::nn::AnyModule(vae), std::make_shared<training::VAEObjective>(false, 10), splits,
                            training::TrainOptions().epochs(4).batch_size(64).lr(2e-3).progress(false));
  if (elbo_per_epoch)
    trainer.add_epoch_hook([&](const json& r) { elbo_per_epoch->push_back(r["val"]["elbo"].get<double>()); });
  trainer.fit();
  vae->eval();
  return vae.ptr();
}
}  // namespace

TEST_CASE("VAE: the test ELBO improves within a few hundred steps (learning test)", "[vae][learning]") {
  REQUIRE(zoo::test::have_fashion_mnist());
  std::vector<double> elbo;
  trained_vae(&elbo);
  REQUIRE(elbo.size() == 4);
  INFO("test ELBO per epoch: " << elbo[0] << " " << elbo[1] << " " << elbo[2] << " " << elbo[3]);
  CHECK(elbo[3] > elbo[0] + 10.0);  // nats per image
  CHECK(elbo[3] > -300.0);          // an untrained decoder (logits 0) scores -784 log 2 = -543
}

TEST_CASE("VAE: Jensen on a trained model - ELBO = E[IWAE_1] <= E[IWAE_10] <= E[IWAE_100]", "[vae][learning]") {
  REQUIRE(zoo::test::have_fashion_mnist());
  auto vae = trained_vae();
  datasets::DataConfig data;
  data.limit = 400;
  auto x = std::dynamic_pointer_cast<datasets::TensorDataset>(datasets::load_splits(data).test)->inputs();
  torch::NoGradGuard no_grad;
  torch::manual_seed(5);
  auto [mu, logvar] = vae->encode(x);
  // ELBO with the closed-form KL, its reconstruction term averaged over 50 samples: close to its expectation.
  auto recon = torch::zeros({x.size(0)});
  for (int s = 0; s < 50; ++s) recon += models::bernoulli_nll(vae->decode(models::reparameterize(mu, logvar)), x) / 50;
  const auto elbo = -(recon + models::gaussian_kl(mu, logvar));
  auto mean_se = [](const torch::Tensor& v) {
    return std::pair<double, double>{v.mean().item<double>(), v.std().item<double>() / std::sqrt(double(v.size(0)))};
  };
  // Average each IWAE_k over 8 independent estimates per image to shrink the noise, then compare means with
  // the standard error of the paired differences (3 sigma).
  auto iwae = [&](int64_t k) {
    auto sum = torch::zeros({x.size(0)});
    for (int r = 0; r < 8; ++r) sum += models::iwae_log_likelihood(*vae, x, k) / 8;
    return sum;
  };
  const auto i1 = iwae(1), i10 = iwae(10), i100 = iwae(100);
  auto [d0, s0] = mean_se(i1 - elbo);
  auto [d1, s1] = mean_se(i10 - i1);
  auto [d2, s2] = mean_se(i100 - i10);
  INFO("ELBO " << elbo.mean().item<double>() << "  IWAE1 " << i1.mean().item<double>() << "  IWAE10 "
               << i10.mean().item<double>() << "  IWAE100 " << i100.mean().item<double>());
  CHECK(std::abs(d0) < 3 * s0 + 0.05);  // E[IWAE_1] = ELBO
  CHECK(d1 > -3 * s1);                  // does not decrease with k ...
  CHECK(d2 > -3 * s2);
  CHECK(d1 + d2 > 0.5);  // ... and here it really rises: the KL gap of the sheet closes
  CHECK((i100 - elbo).mean().item<double>() > 0);
}

TEST_CASE("load_image refuses a header that claims more pixels than it reads, before decoding", "[images]") {
  // An 18-byte TGA header (uncompressed grey) claiming 30000 x 10000 pixels and no pixel data: stb_image would
  // decode 300 million pixels from nothing (a fuzz finding).
  TempDir tmp;
  const unsigned char header[18] = {0, 0, 3, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0x30, 0x75, 0x10, 0x27, 8, 0};
  std::ofstream(tmp.path() / "huge.tga", std::ios::binary).write(reinterpret_cast<const char*>(header), 18);
  try {
    datasets::load_image(tmp.str("huge.tga"), 1);
    FAIL("a 300-megapixel header was decoded");
  } catch (const std::runtime_error& e) {
    CHECK(std::string(e.what()).find("claims 30000x10000 pixels, more than zoo reads (16777216)") != std::string::npos);
  }
  // The same header, honest about a 2 x 1 image with its two pixels, is read.
  const unsigned char small[18] = {0, 0, 3, 0, 0, 0, 0, 0, 0, 0, 0, 0, 2, 0, 1, 0, 8, 0};
  {
    std::ofstream out(tmp.path() / "small.tga", std::ios::binary);
    out.write(reinterpret_cast<const char*>(small), 18);
    out.write("\x10\xf0", 2);
  }
  const auto img = datasets::load_image(tmp.str("small.tga"), 1);
  REQUIRE(img.sizes() == torch::IntArrayRef({1, 1, 2}));
  CHECK(img[0][0][1].item<double>() > img[0][0][0].item<double>());  // 0xf0 brighter than 0x10
}

TEST_CASE("Image grid: torchvision's make_grid layout, and PNG round trip", "[images]") {
  auto images = torch::zeros({5, 1, 4, 3});
  for (int i = 0; i < 5; ++i) images[i].fill_(0.1 * (i + 1));
  auto grid = datasets::make_grid(images, datasets::GridOptions().nrow(3).padding(2).pad_value(1.0));
  CHECK(grid.sizes() == torch::IntArrayRef({1, 2 * (4 + 2) + 2, 3 * (3 + 2) + 2}));
  CHECK(grid[0][0][0].item<float>() == 1.0f);                  // padding
  CHECK(grid[0][2][2].item<float>() == Approx(0.1f));          // image 0 at (row 0, col 0)
  CHECK(grid[0][2][2 + 2 * 5].item<float>() == Approx(0.3f));  // image 2 at (row 0, col 2)
  CHECK(grid[0][2 + 6][2 + 5].item<float>() == Approx(0.5f));  // image 4 at (row 1, col 1)
  CHECK(grid[0][2 + 6][2 + 2 * 5].item<float>() == 1.0f);      // empty slot keeps the padding value
  TempDir tmp;
  datasets::save_png(grid, tmp.str("g.png"));
  auto back = datasets::load_image(tmp.str("g.png"));
  CHECK(back.sizes() == grid.sizes());
  CHECK(torch::equal(back, grid.mul(255).round().to(torch::kUInt8)));
  CHECK_THROWS_WITH(datasets::load_image(tmp.str("none.png")), Catch::Contains("no such file"));
  std::ofstream(tmp.str("bad.png")) << "garbage";
  CHECK_THROWS_WITH(datasets::load_image(tmp.str("bad.png")), Catch::Contains("cannot read image"));
}

TEST_CASE("CLI: train vae, eval --json with the IWAE estimate, sample, reconstruct, manifold", "[vae][cli]") {
  REQUIRE(zoo::test::have_fashion_mnist());
  TempDir tmp;
  const auto run = tmp.str("run");
  auto r = zoo::test::run_zoo("train vae --epochs 1 --limit 1000 --set hidden=100 --no-progress --out " + run);
  INFO(r.out << r.err);
  REQUIRE(r.code == 0);
  auto e = zoo::test::run_zoo("eval " + run + " --json");
  REQUIRE(e.code == 0);
  auto m = json::parse(zoo::test::last_line(e.out));
  for (const char* key : {"elbo", "recon", "kl", "iwae", "iwae_k"}) CHECK(m.contains(key));
  CHECK(m["iwae_k"] == 100);
  CHECK(m["elbo"].get<double>() == Approx(-(m["recon"].get<double>() + m["kl"].get<double>())));
  CHECK(m["iwae"].get<double>() > m["elbo"].get<double>());
  auto state = training::read_json_file(tmp.str("run/state.json"));
  CHECK(m["elbo"].get<double>() == Approx(state["final"]["test"]["elbo"].get<double>()).epsilon(1e-9));

  REQUIRE(zoo::test::run_zoo("sample " + run + " --n 64 --out " + tmp.str("s.png")).code == 0);
  CHECK(datasets::load_image(tmp.str("s.png")).sizes() == torch::IntArrayRef({1, 8 * 30 + 2, 8 * 30 + 2}));
  REQUIRE(zoo::test::run_zoo("reconstruct " + run + " --n 16 --out " + tmp.str("r.png")).code == 0);
  auto rec = datasets::load_image(tmp.str("r.png"));
  CHECK(rec.sizes() == torch::IntArrayRef({1, 2 * 30 + 2, 16 * 30 + 2}));
  // top row: the first test image itself
  datasets::DataConfig data;
  data.limit = 1;
  data.val_fraction = 0;
  auto first = std::dynamic_pointer_cast<datasets::TensorDataset>(datasets::load_splits(data).test)->inputs()[0][0];
  CHECK(torch::equal(rec[0].slice(0, 2, 30).slice(1, 2, 30), first.mul(255).round().to(torch::kUInt8)));

  auto manifold = zoo::test::run_zoo("sample " + run + " --manifold --out " + tmp.str("m.png"));
  CHECK(manifold.code != 0);
  CHECK(manifold.err.find("--set latent=2") != std::string::npos);
  const auto run2 = tmp.str("run2");
  REQUIRE(zoo::test::run_zoo("train vae --epochs 1 --limit 500 --set latent=2 --no-progress --out " + run2).code == 0);
  REQUIRE(zoo::test::run_zoo("sample " + run2 + " --manifold --grid 10 --out " + tmp.str("m.png")).code == 0);
  CHECK(datasets::load_image(tmp.str("m.png")).sizes() == torch::IntArrayRef({1, 10 * 30 + 2, 10 * 30 + 2}));
  auto classifier = tmp.str("mlp");
  REQUIRE(zoo::test::run_zoo("train mlp --epochs 1 --limit 200 --no-progress --out " + classifier).code == 0);
  auto bad = zoo::test::run_zoo("sample " + classifier + " --out " + tmp.str("x.png"));
  CHECK(bad.code == 1);
  CHECK(bad.err.find("no latent space") != std::string::npos);
}
