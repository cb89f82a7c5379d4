#include "models/vae.h"

#include "models/registry.h"
#include "ops/autocast.h"

#include <cmath>

namespace zoo::models {

namespace {
/// The constructor's checks, which the registry also runs on options without building the module.
void check_vae(const VAEOptions& o) {
  TORCH_CHECK(o.arch() == "mlp" || o.arch() == "conv", "VAE arch must be \"mlp\" or \"conv\", got \"", o.arch(), "\"");
  TORCH_CHECK(o.latent() > 0 && o.hidden() > 0 && o.in_channels() > 0 && o.image_size() > 0,
              "VAE sizes (latent, hidden, in_channels, image_size) must be positive");
  TORCH_CHECK(o.beta() >= 0, "VAE beta must be >= 0");
  TORCH_CHECK(o.iwae_samples() >= 1, "VAE iwae_samples must be >= 1");
  TORCH_CHECK(o.arch() != "conv" || o.image_size() % 4 == 0, "the conv VAE needs image_size divisible by 4, got ",
              o.image_size());
}
}  // namespace

VAEImpl::VAEImpl(VAEOptions options_) : options(std::move(options_)) { reset(); }

void VAEImpl::reset() {
  namespace nn = torch::nn;
  const auto& o = options;
  check_vae(o);
  const int64_t c = o.in_channels(), size = o.image_size(), pixels = c * size * size;
  if (o.arch() == "mlp") {
    encoder = nn::Sequential(nn::Linear(pixels, o.hidden()), nn::ReLU());
    decoder = nn::Sequential(nn::Linear(o.latent(), o.hidden()), nn::ReLU(), nn::Linear(o.hidden(), pixels));
  } else {
    const int64_t s = size / 4;
    encoder = nn::Sequential(nn::Conv2d(nn::Conv2dOptions(c, 32, 4).stride(2).padding(1)), nn::ReLU(),
                             nn::Conv2d(nn::Conv2dOptions(32, 64, 4).stride(2).padding(1)), nn::ReLU(), nn::Flatten(),
                             nn::Linear(64 * s * s, o.hidden()), nn::ReLU());
    decoder =
        nn::Sequential(nn::Linear(o.latent(), o.hidden()), nn::ReLU(), nn::Linear(o.hidden(), 64 * s * s), nn::ReLU(),
                       nn::Unflatten(nn::UnflattenOptions(1, {64, s, s})),
                       nn::ConvTranspose2d(nn::ConvTranspose2dOptions(64, 32, 4).stride(2).padding(1)), nn::ReLU(),
                       nn::ConvTranspose2d(nn::ConvTranspose2dOptions(32, c, 4).stride(2).padding(1)));
  }
  fc_mu = nn::Linear(o.hidden(), o.latent());
  fc_logvar = nn::Linear(o.hidden(), o.latent());
  register_module("encoder", encoder);
  register_module("fc_mu", fc_mu);
  register_module("fc_logvar", fc_logvar);
  register_module("decoder", decoder);
}

std::tuple<torch::Tensor, torch::Tensor> VAEImpl::encode(const torch::Tensor& x) {
  const auto& o = options;
  TORCH_CHECK(
      x.dim() == 4 && x.size(1) == o.in_channels() && x.size(2) == o.image_size() && x.size(3) == o.image_size(),
      "VAE expects [N, ", o.in_channels(), ", ", o.image_size(), ", ", o.image_size(), "], got ", x.sizes());
  auto h = encoder->forward(o.arch() == "mlp" ? x.flatten(1) : x);
  return {fc_mu(h), fc_logvar(h)};
}

torch::Tensor VAEImpl::decode(const torch::Tensor& z) {
  auto logits = decoder->forward(z);
  return logits.view({-1, options.in_channels(), options.image_size(), options.image_size()});
}

std::tuple<torch::Tensor, torch::Tensor, torch::Tensor> VAEImpl::forward(const torch::Tensor& x) {
  auto [mu, logvar] = encode(x);
  return {decode(reparameterize(mu, logvar)), mu, logvar};
}

void VAEImpl::pretty_print(std::ostream& stream) const {
  stream << "zoo::VAE(arch=" << options.arch() << ", in_channels=" << options.in_channels()
         << ", image_size=" << options.image_size() << ", hidden=" << options.hidden()
         << ", latent=" << options.latent() << ", beta=" << options.beta() << ")";
}

torch::Tensor reparameterize(const torch::Tensor& mu, const torch::Tensor& logvar) {
  return mu + torch::exp(0.5 * logvar) * torch::randn_like(mu);
}

torch::Tensor gaussian_kl(const torch::Tensor& mu, const torch::Tensor& logvar) {
  return -0.5 * (1 + logvar - mu.pow(2) - logvar.exp()).sum(-1);
}

torch::Tensor bernoulli_nll(const torch::Tensor& logits, const torch::Tensor& x) {
  namespace F = torch::nn::functional;
  auto per_pixel = F::binary_cross_entropy_with_logits(
      logits, x, F::BinaryCrossEntropyWithLogitsFuncOptions().reduction(torch::kNone));
  return per_pixel.flatten(1).sum(1);
}

torch::Tensor gaussian_log_density(const torch::Tensor& z, const torch::Tensor& mu, const torch::Tensor& logvar) {
  static const double log_2pi = std::log(2.0 * M_PI);
  return -0.5 * (log_2pi + logvar + (z - mu).pow(2) * torch::exp(-logvar)).sum(-1);
}

NegativeELBO negative_elbo(const torch::Tensor& logits, const torch::Tensor& x, const torch::Tensor& mu,
                           const torch::Tensor& logvar, double beta) {
  auto recon = bernoulli_nll(logits, x).mean();
  auto kl = gaussian_kl(mu, logvar).mean();
  return {recon + beta * kl, recon, kl};
}

torch::Tensor iwae_log_likelihood(GaussianLatentModel& model, const torch::Tensor& x, int64_t k, int64_t max_rows,
                                  c10::optional<at::Generator> generator) {
  TORCH_CHECK(k >= 1, "IWAE needs k >= 1 samples");
  // In float32 under mixed precision: log-densities summed over pixels and latents, then a logsumexp over k.
  const auto encoded = model.encode(x);
  const auto mu = ops::float32(std::get<0>(encoded)), logvar = ops::float32(std::get<1>(encoded));
  const int64_t n = x.size(0), latent = mu.size(1);
  const int64_t per_chunk = std::max<int64_t>(1, max_rows / std::max<int64_t>(1, n));
  std::vector<torch::Tensor> log_w;  // each [chunk, N]
  for (int64_t done = 0; done < k; done += per_chunk) {
    const int64_t m = std::min(per_chunk, k - done);
    // A given generator is a CPU one: draw there and move, so the estimate is the same on every device.
    auto eps = generator ? at::randn({m, n, latent}, generator, mu.options().device(torch::kCPU)).to(mu.device())
                         : at::randn({m, n, latent}, mu.options());
    auto z = mu.unsqueeze(0) + torch::exp(0.5 * logvar).unsqueeze(0) * eps;  // [m, N, L]
    auto logits = ops::float32(model.decode(z.reshape({m * n, latent})));
    auto target = x.repeat({m, 1, 1, 1}).view_as(logits);  // m-major, like z
    auto log_px = -bernoulli_nll(logits, target).view({m, n});
    auto log_pz = gaussian_log_density(z, torch::zeros_like(z), torch::zeros_like(z));
    auto log_qz = gaussian_log_density(z, mu.unsqueeze(0), logvar.unsqueeze(0));
    log_w.push_back(log_px + log_pz - log_qz);
  }
  return torch::logsumexp(torch::cat(log_w, 0), 0) - std::log(static_cast<double>(k));
}

ZOO_REGISTER_MODEL(vae) {
  return ModelSpec<VAE, VAEOptions>("vae", "variational autoencoder, closed-form KL, ELBO and IWAE (784-400-20)")
      .task("vae")
      .dataset("fashion-mnist")
      .train_defaults({{"epochs", 10}, {"optimizer", "adam"}, {"lr", 1e-3}, {"batch_size", 128}})
      .ZOO_OPTION(VAEOptions, arch)
      .ZOO_OPTION(VAEOptions, in_channels)
      .ZOO_OPTION(VAEOptions, image_size)
      .ZOO_OPTION(VAEOptions, hidden)
      .ZOO_OPTION(VAEOptions, latent)
      .ZOO_OPTION(VAEOptions, beta)
      .ZOO_OPTION(VAEOptions, binarize)
      .ZOO_OPTION(VAEOptions, iwae_samples)
      .validate(check_vae);
}

}  // namespace zoo::models
