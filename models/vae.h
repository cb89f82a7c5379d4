// Variational autoencoder (Kingma & Welling, "Auto-Encoding Variational Bayes", arXiv 1312.6114).
//
//   q(z|x) = N(mu(x), diag exp(logvar(x)))      encoder
//   z      = mu + exp(logvar / 2) * eps,  eps ~ N(0, I)   (reparameterisation: gradients reach mu and logvar)
//   p(x|z) = Bernoulli(sigmoid(decoder(z)))      decoder returns logits
//   ELBO   = E_q[log p(x|z)] - KL(q(z|x) || N(0, I)),  with the closed form (AEVB appendix B)
//            -KL = 1/2 sum_j (1 + logvar_j - mu_j^2 - exp(logvar_j))
//   IWAE   = log (1/k) sum_i p(x|z_i) p(z_i) / q(z_i|x),  z_i ~ q  (Burda et al., arXiv 1509.00519)
//            ELBO = E[IWAE_1] <= E[IWAE_k] <= E[IWAE_k+1] <= log p(x)
#pragma once

#include "models/latent.h"

#include <torch/torch.h>

#include <string>
#include <tuple>

namespace zoo::models {

struct VAEOptions {
  TORCH_ARG(std::string, arch) = "mlp";  ///< "mlp" (784-400-latent, the classic) or "conv"
  TORCH_ARG(int64_t, in_channels) = 1;
  TORCH_ARG(int64_t, image_size) = 28;
  TORCH_ARG(int64_t, hidden) = 400;
  TORCH_ARG(int64_t, latent) = 20;
  TORCH_ARG(double, beta) = 1.0;
  /// Data as Bernoulli targets: false uses the [0,1] intensities, true draws x ~ Bernoulli(pixel) every time
  /// an image is used (dynamic binarisation, for likelihoods comparable with the literature).
  TORCH_ARG(bool, binarize) = false;
  /// Importance samples of the evaluation's IWAE estimate of log p(x).
  TORCH_ARG(int64_t, iwae_samples) = 100;
};

/// Parameters: encoder.* (Sequential), fc_mu, fc_logvar, decoder.* (Sequential).
///   mlp:  encoder = [Linear(784, hidden), ReLU];  decoder = [Linear(latent, hidden), ReLU, Linear(hidden, 784)]
///   conv: encoder = [Conv(C,32,4,s2,p1), ReLU, Conv(32,64,4,s2,p1), ReLU, Flatten, Linear(64*s*s, hidden), ReLU]
///         decoder = [Linear(latent, hidden), ReLU, Linear(hidden, 64*s*s), ReLU, Unflatten,
///                    ConvT(64,32,4,s2,p1), ReLU, ConvT(32,C,4,s2,p1)]        (s = image_size / 4)
class VAEImpl : public torch::nn::Cloneable<VAEImpl>, public GaussianLatentModel {
 public:
  explicit VAEImpl(VAEOptions options = {});
  void reset() override;
  /// x [N, C, H, W] -> (reconstruction logits [N, C, H, W], mu, logvar), with one reparameterised sample.
  std::tuple<torch::Tensor, torch::Tensor, torch::Tensor> forward(const torch::Tensor& x);
  std::tuple<torch::Tensor, torch::Tensor> encode(const torch::Tensor& x) override;
  torch::Tensor decode(const torch::Tensor& z) override;
  int64_t latent_size() const override { return options.latent(); }
  double beta() const override { return options.beta(); }
  void pretty_print(std::ostream& stream) const override;

  VAEOptions options;
  torch::nn::Sequential encoder{nullptr}, decoder{nullptr};
  torch::nn::Linear fc_mu{nullptr}, fc_logvar{nullptr};
};
TORCH_MODULE(VAE);

}  // namespace zoo::models
