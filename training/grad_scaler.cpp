#include "training/grad_scaler.h"

#include <cmath>
#include <stdexcept>

namespace zoo::training {

GradScaler::GradScaler(GradScalerOptions options) : options_(options), scale_(options.init_scale()) {
  TORCH_CHECK(options_.init_scale() > 0 && std::isfinite(options_.init_scale()), "GradScaler: init_scale must be > 0");
  TORCH_CHECK(options_.growth_factor() > 1, "GradScaler: growth_factor must be > 1");
  TORCH_CHECK(options_.backoff_factor() > 0 && options_.backoff_factor() < 1, "GradScaler: backoff_factor in (0, 1)");
  TORCH_CHECK(options_.growth_interval() >= 1, "GradScaler: growth_interval must be >= 1");
}

torch::Tensor GradScaler::scale(const torch::Tensor& loss) const { return loss * scale_; }

bool GradScaler::unscale(const std::vector<torch::Tensor>& parameters) const {
  torch::NoGradGuard no_grad;
  const double inverse = 1.0 / scale_;
  std::vector<torch::Tensor> finite;  // one flag per gradient, read back once
  for (const auto& p : parameters) {
    auto g = p.grad();
    if (!g.defined()) continue;
    g.mul_(inverse);
    finite.push_back(torch::isfinite(g).all());
  }
  if (finite.empty()) return false;
  return !torch::stack(finite).all().item<bool>();
}

void GradScaler::update(bool found_inf) {
  if (found_inf) {
    scale_ *= options_.backoff_factor();
    growth_tracker_ = 0;
    return;
  }
  if (++growth_tracker_ == options_.growth_interval()) {
    const double grown = scale_ * options_.growth_factor();
    if (std::isfinite(grown)) scale_ = grown;
    growth_tracker_ = 0;
  }
}

nlohmann::json GradScaler::state() const { return {{"scale", scale_}, {"growth_tracker", growth_tracker_}}; }

void GradScaler::load_state(const nlohmann::json& state) {
  const double s = state.at("scale").get<double>();
  const auto n = state.at("growth_tracker").get<int64_t>();
  if (!(s > 0) || !std::isfinite(s) || n < 0 || n >= options_.growth_interval())
    throw std::runtime_error("the loss scaler's state is out of range (scale " + std::to_string(s) +
                             ", growth_tracker " + std::to_string(n) + ")");
  scale_ = s;
  growth_tracker_ = n;
}

}  // namespace zoo::training
