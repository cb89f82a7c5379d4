// Dynamic loss scaling for float16 mixed precision (fp16-mixed), with the semantics of PyTorch's
// torch.cuda.amp.GradScaler (Micikevicius et al. 2018, "Mixed Precision Training", section 3.2):
//   the loss is multiplied by S before backward, so that small gradients do not flush to zero in float16;
//   before clipping and the step the gradients are divided by S; if any is inf or NaN the step is skipped;
//   then S *= backoff (0.5) after a skipped step, S *= growth (2) after `growth_interval` finite steps in a row
//   (only while S * growth is finite).
// Its state (S and the count of finite steps) is saved with every checkpoint, so a resumed run scales as an
// uninterrupted one would. bfloat16 has float32's exponent range and needs none of this.
#pragma once

#include <torch/torch.h>

#include <nlohmann/json.hpp>

#include <vector>

namespace zoo::training {

struct GradScalerOptions {
  TORCH_ARG(double, init_scale) = 65536.0;  ///< 2^16, as PyTorch
  TORCH_ARG(double, growth_factor) = 2.0;
  TORCH_ARG(double, backoff_factor) = 0.5;
  TORCH_ARG(int64_t, growth_interval) = 2000;
};

class GradScaler {
 public:
  explicit GradScaler(GradScalerOptions options = {});
  /// loss * S, to call backward on.
  torch::Tensor scale(const torch::Tensor& loss) const;
  /// Divides the gradients of `parameters` by S in place; true when any of them holds an inf or NaN (then the
  /// optimizer step must be skipped).
  bool unscale(const std::vector<torch::Tensor>& parameters) const;
  /// After a step (taken, or skipped when `found_inf`): backs off or grows S.
  void update(bool found_inf);
  double current_scale() const { return scale_; }
  /// Finite steps in a row since S last changed.
  int64_t growth_tracker() const { return growth_tracker_; }
  const GradScalerOptions& options() const { return options_; }

  /// {"scale": S, "growth_tracker": n}, as in state.json.
  nlohmann::json state() const;
  void load_state(const nlohmann::json& state);

 private:
  GradScalerOptions options_;
  double scale_;
  int64_t growth_tracker_ = 0;
};

}  // namespace zoo::training
