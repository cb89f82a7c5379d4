#include "training/vae_objective.h"

#include "datasets/images.h"
#include "ops/autocast.h"

#include <ATen/CPUGeneratorImpl.h>

namespace zoo::training {

namespace {
/// The posterior's mean and log-variance in float32 (under mixed precision the encoder's last layer gives
/// bfloat16): the sample, the KL and the likelihoods are computed in float32.
std::tuple<torch::Tensor, torch::Tensor> encode_float32(models::GaussianLatentModel& vae, const torch::Tensor& x) {
  auto [mu, logvar] = vae.encode(x);
  return {ops::float32(mu), ops::float32(logvar)};
}
}  // namespace

VAEObjective::VAEObjective(bool binarize, int64_t iwae_samples) : binarize_(binarize), iwae_samples_(iwae_samples) {
  TORCH_CHECK(iwae_samples >= 1, "iwae_samples must be >= 1");
}

models::GaussianLatentModel& VAEObjective::latent_model(torch::nn::AnyModule& model) {
  auto* latent = dynamic_cast<models::GaussianLatentModel*>(model.ptr().get());
  if (!latent)
    throw std::invalid_argument(
        "the 'vae' task needs a model that implements zoo::models::GaussianLatentModel "
        "(encode, decode, latent_size, beta)");
  return *latent;
}

torch::Tensor VAEObjective::loss(torch::nn::AnyModule& model, const datasets::Batch& batch, Terms& terms) {
  auto& vae = latent_model(model);
  const auto x = binarize_ ? torch::bernoulli(batch.input) : batch.input;
  auto [mu, logvar] = encode_float32(vae, x);
  auto logits = ops::float32(vae.decode(models::reparameterize(mu, logvar)));
  auto elbo = models::negative_elbo(logits, x, mu, logvar, vae.beta());
  terms.emplace_back("recon", elbo.recon.detach());
  terms.emplace_back("kl", elbo.kl.detach());
  terms.emplace_back("elbo", -(elbo.recon + elbo.kl).detach());
  return elbo.loss;
}

namespace {

class VAEEvaluator : public Evaluator {
 public:
  VAEEvaluator(bool binarize, int64_t k, bool thorough) : binarize_(binarize), k_(k), thorough_(thorough) {
    // Evaluation randomness comes from a fixed seed; the training stream is put back afterwards.
    auto gen = at::detail::getDefaultCPUGenerator();
    std::lock_guard<std::mutex> lock(gen.mutex());
    saved_ = gen.get_state();
    gen.set_current_seed(20240521);
  }
  ~VAEEvaluator() override {
    auto gen = at::detail::getDefaultCPUGenerator();
    std::lock_guard<std::mutex> lock(gen.mutex());
    gen.set_state(saved_);
  }
  void add(torch::nn::AnyModule& model, const datasets::Batch& batch) override {
    auto& vae = VAEObjective::latent_model(model);
    const auto x = binarize_ ? torch::bernoulli(batch.input) : batch.input;
    auto [mu, logvar] = encode_float32(vae, x);
    auto logits = ops::float32(vae.decode(models::reparameterize(mu, logvar)));
    recon_ += models::bernoulli_nll(logits, x).sum().item<double>();
    kl_ += models::gaussian_kl(mu, logvar).sum().item<double>();
    beta_ = vae.beta();
    // IWAE samples from its own generator, so the ELBO's samples are the same with and without it.
    if (thorough_) iwae_ += models::iwae_log_likelihood(vae, x, k_, 32768, iwae_generator_).sum().item<double>();
    n_ += static_cast<double>(batch.size());
  }
  torch::Tensor state() const override { return torch::tensor({recon_, kl_, iwae_, n_}, torch::kFloat64); }
  json result(const torch::Tensor& s) const override {
    auto a = s.accessor<double, 1>();
    const double n = std::max(1.0, a[3]);
    json out = {{"elbo", -(a[0] + a[1]) / n},
                {"recon", a[0] / n},
                {"kl", a[1] / n},
                {"loss", (a[0] + beta_ * a[1]) / n},
                {"items", static_cast<int64_t>(a[3])}};
    if (thorough_) {
      out["iwae"] = a[2] / n;
      out["iwae_k"] = k_;
    }
    return out;
  }

 private:
  bool binarize_;
  int64_t k_;
  bool thorough_;
  double beta_ = 1.0;
  at::Generator iwae_generator_ = at::detail::createCPUGenerator(7);
  double recon_ = 0, kl_ = 0, iwae_ = 0, n_ = 0;
  torch::Tensor saved_;
};

const detail::ObjectiveRegistrar vae{"vae", [](const json& model_options, const json& task_options) {
                                       if (!task_options.empty())
                                         throw std::invalid_argument("task 'vae' takes its options from the model");
                                       return std::make_shared<VAEObjective>(model_options.value("binarize", false),
                                                                             model_options.value("iwae_samples", 100));
                                     }};

}  // namespace

std::unique_ptr<Evaluator> VAEObjective::evaluator(bool thorough) const {
  return std::make_unique<VAEEvaluator>(binarize_, iwae_samples_, thorough);
}

Pictures VAEObjective::pictures(torch::nn::AnyModule& model, const datasets::Dataset& data) const {
  auto& vae = latent_model(model);
  const auto device = model.ptr()->parameters().front().device();
  auto generator = at::detail::createCPUGenerator(20261203);
  const auto z = torch::randn({16, vae.latent_size()}, generator, torch::kFloat32).to(device);
  Pictures out;
  out.emplace_back("samples", datasets::make_grid(torch::sigmoid(ops::float32(vae.decode(z))).cpu(),
                                                  datasets::GridOptions().nrow(8)));
  const auto batch = data.get(torch::arange(std::min<int64_t>(8, data.size()))).to(device);
  const auto mu = std::get<0>(vae.encode(batch.input));
  const auto recon = torch::sigmoid(ops::float32(vae.decode(mu)));
  out.emplace_back("reconstructions", datasets::make_grid(torch::cat({batch.input, recon}).cpu(),
                                                          datasets::GridOptions().nrow(batch.size())));
  return out;
}

}  // namespace zoo::training
