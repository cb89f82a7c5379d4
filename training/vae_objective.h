// The "vae" task: minimise -ELBO = recon + beta * KL for models that implement models::GaussianLatentModel.
//
// Training logs recon, kl and elbo (nats per item). Evaluation reports elbo, recon, kl (beta = 1: the true
// bound) and, when thorough (`zoo eval`), the IWAE estimate of log p(x) with k samples. Evaluation draws its
// randomness (binarisation, samples) from a fixed seed, so it is repeatable and leaves the training RNG alone.
#pragma once

#include "models/latent.h"
#include "training/objective.h"

namespace zoo::training {

class VAEObjective : public Objective {
 public:
  /// `binarize`: Bernoulli targets x ~ Bernoulli(pixel) drawn every time (dynamic binarisation).
  VAEObjective(bool binarize, int64_t iwae_samples);
  torch::Tensor loss(torch::nn::AnyModule& model, const datasets::Batch& batch, Terms& terms) override;
  std::unique_ptr<Evaluator> evaluator(bool thorough) const override;
  std::string primary_metric() const override { return "elbo"; }
  /// "samples": 16 decodings of z ~ N(0, I) (a fixed seed, so epochs compare); "reconstructions": the first 8
  /// items over their reconstructions (the decoded means).
  Pictures pictures(torch::nn::AnyModule& model, const datasets::Dataset& data) const override;

  /// The model as a GaussianLatentModel, or an error naming what is missing.
  static models::GaussianLatentModel& latent_model(torch::nn::AnyModule& model);

 private:
  bool binarize_;
  int64_t iwae_samples_;
};

}  // namespace zoo::training
