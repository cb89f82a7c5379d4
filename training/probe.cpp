#include "training/probe.h"

#include "models/elmo.h"

#include <stdexcept>
#include <string>

namespace zoo::training {

namespace {

double accuracy(const torch::Tensor& logits, const torch::Tensor& labels) {
  if (labels.numel() == 0) return 0;
  return logits.argmax(1).eq(labels).to(torch::kFloat64).mean().item<double>();
}

}  // namespace

ProbeResult train_probe(const std::vector<torch::Tensor>& layers, const torch::Tensor& labels, int64_t classes,
                        const torch::Tensor& train, const torch::Tensor& test, const ProbeOptions& o) {
  const auto count = static_cast<int64_t>(layers.size());
  if (count == 0) throw std::invalid_argument("train_probe: no layers");
  if (o.layer() >= count)
    throw std::invalid_argument("train_probe: layer " + std::to_string(o.layer()) + " of " + std::to_string(count));
  for (const auto& h : layers)
    TORCH_CHECK(h.dim() == 2 && h.sizes() == layers[0].sizes() && h.size(0) == labels.size(0),
                "train_probe: every layer must be [N, D] with N = the number of labels, got ", h.sizes());
  TORCH_CHECK(classes >= 2, "train_probe: at least 2 classes");
  // Each layer standardised per feature with the training items' mean and deviation: the layers' scales differ by
  // orders of magnitude (ELMo's layer 0 has norms in the hundreds, the LSTM layers tens), which would otherwise
  // decide the mix weights and stall the optimiser.
  std::vector<torch::Tensor> standard;
  for (const auto& h : layers) {
    const auto x = h.to(torch::kFloat32), seen = x.index_select(0, train);
    standard.push_back((x - seen.mean(0)) / (seen.std(0, /*unbiased=*/false) + 1e-6));
  }
  torch::manual_seed(o.seed());
  models::ScalarMix mix(count);
  torch::nn::Linear classifier(layers[0].size(1), classes);
  const bool mixed = o.layer() < 0;
  auto features = [&](const torch::Tensor& index) {
    if (!mixed) return standard[static_cast<size_t>(o.layer())].index_select(0, index);
    std::vector<torch::Tensor> picked;
    for (const auto& h : standard) picked.push_back(h.index_select(0, index));
    return mix->forward(picked);
  };
  std::vector<torch::optim::OptimizerParamGroup> groups;
  groups.emplace_back(classifier->parameters(), std::make_unique<torch::optim::AdamOptions>(
                                                    torch::optim::AdamOptions(o.lr()).weight_decay(o.weight_decay())));
  if (mixed)
    groups.emplace_back(mix->parameters(),
                        std::make_unique<torch::optim::AdamOptions>(torch::optim::AdamOptions(o.lr())));
  torch::optim::Adam optimizer(groups, torch::optim::AdamOptions(o.lr()));
  const auto train_labels = labels.index_select(0, train);
  for (int64_t step = 0; step < o.steps(); ++step) {
    optimizer.zero_grad();
    const auto loss = torch::nn::functional::cross_entropy(classifier->forward(features(train)), train_labels);
    loss.backward();
    optimizer.step();
  }
  torch::NoGradGuard no_grad;
  ProbeResult r;
  r.train_accuracy = accuracy(classifier->forward(features(train)), train_labels);
  r.test_accuracy = accuracy(classifier->forward(features(test)), labels.index_select(0, test));
  if (mixed) {
    const auto w = mix->weights().to(torch::kFloat64).contiguous();
    r.weights.assign(w.data_ptr<double>(), w.data_ptr<double>() + w.numel());
    r.gamma = mix->gamma.item<double>();
  } else {
    r.weights.assign(static_cast<size_t>(count), 0.0);
    r.weights[static_cast<size_t>(o.layer())] = 1;
  }
  return r;
}

}  // namespace zoo::training
