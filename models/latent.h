// Gaussian latent-variable models: the interface the "vae" objective and the sample / reconstruct tools use, and
// the formulas of the VAE's loss and bound (Kingma & Welling, arXiv 1312.6114; IWAE: Burda et al., arXiv
// 1509.00519), for any model that implements it. training/ knows this header, not the VAE.
//
//   z      = mu + exp(logvar / 2) * eps,  eps ~ N(0, I)
//   -KL    = 1/2 sum_j (1 + logvar_j - mu_j^2 - exp(logvar_j))          (KL(q(z|x) || N(0, I)), closed form)
//   ELBO   = E_q[log p(x|z)] - KL
//   IWAE_k = log (1/k) sum_i p(x|z_i) p(z_i) / q(z_i|x),  z_i ~ q
#pragma once

#include <torch/torch.h>

#include <tuple>

namespace zoo::models {

/// What the "vae" objective and the sample/reconstruct tools need of a latent-variable model.
class GaussianLatentModel {
 public:
  virtual ~GaussianLatentModel() = default;
  /// x [N, ...] -> (mu, logvar), each [N, latent].
  virtual std::tuple<torch::Tensor, torch::Tensor> encode(const torch::Tensor& x) = 0;
  /// z [N, latent] -> Bernoulli logits with the shape of one input item, [N, C, H, W].
  virtual torch::Tensor decode(const torch::Tensor& z) = 0;
  virtual int64_t latent_size() const = 0;
  /// beta of the beta-VAE loss recon + beta * KL (1 is the plain VAE).
  virtual double beta() const = 0;
};

/// z = mu + exp(logvar / 2) * eps, eps ~ N(0, I) drawn here (not differentiated).
torch::Tensor reparameterize(const torch::Tensor& mu, const torch::Tensor& logvar);

/// Closed-form KL(N(mu, exp(logvar)) || N(0, I)) per item: -1/2 sum_j (1 + logvar - mu^2 - exp(logvar)), [N].
torch::Tensor gaussian_kl(const torch::Tensor& mu, const torch::Tensor& logvar);

/// -log p(x|z) per item for Bernoulli logits, summed over every non-batch dimension (stable, from logits), [N].
torch::Tensor bernoulli_nll(const torch::Tensor& logits, const torch::Tensor& x);

/// log N(z; mu, exp(logvar)) summed over the last dimension.
torch::Tensor gaussian_log_density(const torch::Tensor& z, const torch::Tensor& mu, const torch::Tensor& logvar);

/// The VAE loss of a batch: recon = mean over items of -log p(x|z) (summed over pixels), kl = mean closed-form
/// KL (summed over latent dimensions), loss = recon + beta * kl. In nats per item.
struct NegativeELBO {
  torch::Tensor loss, recon, kl;
};
NegativeELBO negative_elbo(const torch::Tensor& logits, const torch::Tensor& x, const torch::Tensor& mu,
                           const torch::Tensor& logvar, double beta = 1.0);

/// Importance-weighted estimate of log p(x) per item with k samples from q(z|x) (logsumexp of the log
/// weights minus log k), computed in chunks of at most `max_rows` decoded items. [N].
/// `generator`: where the samples come from (default: LibTorch's global generator).
torch::Tensor iwae_log_likelihood(GaussianLatentModel& model, const torch::Tensor& x, int64_t k,
                                  int64_t max_rows = 32768, c10::optional<at::Generator> generator = c10::nullopt);

}  // namespace zoo::models
