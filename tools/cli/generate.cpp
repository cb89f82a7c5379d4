// `zoo sample` and `zoo reconstruct`: pictures from a latent-variable model (the VAE).
#include <ATen/CPUGeneratorImpl.h>
#include <fmt/format.h>

#include "datasets/images.h"
#include "datasets/registry.h"
#include "models/vae.h"
#include "tools/cli/cli.h"
#include "training/run.h"
#include "training/trainer.h"
#include "training/vae_objective.h"

#include <cmath>
#include <cstdio>

namespace zoo::cli {

namespace {

models::GaussianLatentModel& latent_of(torch::nn::AnyModule& model, const std::string& name) {
  auto* latent = dynamic_cast<models::GaussianLatentModel*>(model.ptr().get());
  if (!latent) throw std::invalid_argument("model '" + name + "' has no latent space to sample (use a run of 'vae')");
  return *latent;
}

}  // namespace

void add_generate(CLI::App& app) {
  struct SampleArgs {
    std::string run, out = "samples.png", device = "cpu", checkpoint = "best";
    int64_t n = 64, nrow = 0, seed = 0, grid = 20, threads = 0;
    double range = 0.95;
    bool manifold = false;
  };
  auto s = std::make_shared<SampleArgs>();
  auto* sample = app.add_subcommand("sample", "Decode z ~ N(0, I) (or a grid over a 2-D latent plane) to a PNG grid");
  sample->add_option("run", s->run, "Run directory of a latent-variable model (vae)")->required();
  add_checkpoint_option(sample, s->checkpoint);
  sample->add_option("--n", s->n, "Number of samples (default 64)")->check(positive());
  sample->add_option("--nrow", s->nrow, "Images per row (default: square-ish)")->check(non_negative());
  sample->add_option("--out", s->out, "Output PNG (default samples.png)");
  sample->add_option("--seed", s->seed, "Seed of z (default 0)")->check(non_negative());
  sample->add_flag("--manifold", s->manifold, "Decode a grid over the latent plane (2-D latent only)");
  sample->add_option("--grid", s->grid, "Grid side for --manifold (default 20)")->check(CLI::Range(2, 100));
  sample->add_option("--range", s->range, "--manifold spans the Gaussian quantiles 1-p .. p (default 0.95)")
      ->check(CLI::Range(0.5, 0.9999));
  sample->add_option("--device", s->device, "cpu, cuda or cuda:N (default cpu)");
  sample->add_option("--threads", s->threads, threads_help)->check(non_negative());
  sample->callback([s] {
    training::apply_threads(s->threads);
    auto [config, model] = training::load_run_model(s->run, s->device, s->checkpoint);
    auto& vae = latent_of(model, config.model);
    torch::NoGradGuard no_grad;
    const auto device = training::parse_device(s->device);
    torch::Tensor z;
    int64_t nrow = s->nrow;
    if (s->manifold) {
      if (vae.latent_size() != 2)
        throw std::invalid_argument("--manifold needs a 2-D latent space; this model has latent " +
                                    std::to_string(vae.latent_size()) + " (train with --set latent=2)");
      // Equally spaced Gaussian quantiles, as in the AEVB paper's figure: z = Phi^-1(p) = sqrt(2) erfinv(2p - 1).
      auto p = torch::linspace(1 - s->range, s->range, s->grid, torch::kFloat64);
      auto q = (std::sqrt(2.0) * torch::erfinv(2 * p - 1)).to(torch::kFloat32);
      auto grid = torch::meshgrid({q.flip(0), q}, "ij");  // rows: z2 from high to low; columns: z1
      z = torch::stack({grid[1].flatten(), grid[0].flatten()}, 1);
      nrow = s->grid;
    } else {
      auto gen = at::detail::createCPUGenerator(static_cast<uint64_t>(s->seed));
      z = at::randn({s->n, vae.latent_size()}, gen, torch::kFloat32);
      if (nrow == 0) nrow = static_cast<int64_t>(std::ceil(std::sqrt(static_cast<double>(s->n))));
    }
    auto images = torch::sigmoid(vae.decode(z.to(device)));
    datasets::save_image_grid(images, s->out, datasets::GridOptions().nrow(nrow));
    fmt::print("wrote {} ({} images, {})\n", s->out, static_cast<long long>(z.size(0)),
               s->manifold ? "latent-plane grid" : "z ~ N(0, I)");
  });

  struct ReconArgs {
    std::string run, out = "recon.png", device = "cpu", data_dir, checkpoint = "best";
    int64_t n = 16, threads = 0, offset = 0;
  };
  auto r = std::make_shared<ReconArgs>();
  auto* recon = app.add_subcommand("reconstruct", "Test images (top row) above their reconstructions, as a PNG");
  recon->add_option("run", r->run, "Run directory of a latent-variable model (vae)")->required();
  add_checkpoint_option(recon, r->checkpoint);
  recon->add_option("--n", r->n, "Number of test images (default 16)")->check(CLI::Range(1, 1000));
  recon->add_option("--offset", r->offset, "Index of the first test image (default 0)")->check(non_negative());
  recon->add_option("--out", r->out, "Output PNG (default recon.png)");
  recon->add_option("--data-dir", r->data_dir, "Data directory (default: the run's)");
  recon->add_option("--device", r->device, "cpu, cuda or cuda:N (default cpu)");
  recon->add_option("--threads", r->threads, threads_help)->check(non_negative());
  recon->callback([r, recon] {
    training::apply_threads(r->threads);
    auto [config, model] = training::load_run_model(r->run, r->device, r->checkpoint);
    auto& vae = latent_of(model, config.model);
    auto data = config.data;
    data.limit = 0;
    if (recon->count("--data-dir")) data.data_dir = r->data_dir;
    data.val_fraction = 0;  // only the test split is used: nothing held out for validation
    auto test = datasets::load_splits(data).test;
    if (r->offset + r->n > test->size())
      throw std::invalid_argument("--offset + --n = " + std::to_string(r->offset + r->n) + " exceeds the " +
                                  std::to_string(test->size()) + " test images");
    torch::NoGradGuard no_grad;
    const auto device = training::parse_device(r->device);
    auto x = test->get(torch::arange(r->offset, r->offset + r->n, torch::kInt64)).input.to(device);
    auto [mu, logvar] = vae.encode(x);
    auto rec = torch::sigmoid(vae.decode(mu));  // the posterior mean: a deterministic reconstruction
    datasets::save_image_grid(torch::cat({x, rec}), r->out, datasets::GridOptions().nrow(r->n));
    fmt::print("wrote {} ({} test images above their reconstructions)\n", r->out, static_cast<long long>(r->n));
  });
}

}  // namespace zoo::cli
