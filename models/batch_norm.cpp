#include "models/batch_norm.h"

#include "ops/batch_norm.h"

namespace zoo::models {

template <size_t D>
torch::Tensor BatchNormImpl<D>::forward(const torch::Tensor& x) {
  // torch::nn::BatchNormImplBase::forward, with ops::batch_norm for the functional call.
  _check_input_dim(x);
  const auto& o = this->options;
  double factor = o.momentum().value_or(0.0);
  if (this->is_training() && o.track_running_stats() && this->num_batches_tracked.defined()) {
    this->num_batches_tracked += 1;
    // No momentum: the cumulative average of every batch so far.
    if (!o.momentum().has_value()) factor = 1.0 / this->num_batches_tracked.template item<double>();
  }
  return ops::batch_norm(x, this->weight, this->bias, this->running_mean, this->running_var,
                         this->is_training() || !o.track_running_stats(), factor, o.eps());
}

template <size_t D>
void BatchNormImpl<D>::_check_input_dim(const torch::Tensor& x) {
  TORCH_CHECK(x.dim() == static_cast<int64_t>(D) + 2, "expected ", D + 2, "D input (got ", x.dim(), "D input)");
}

template <size_t D>
void BatchNormImpl<D>::pretty_print(std::ostream& stream) const {
  const auto& o = this->options;
  stream << std::boolalpha << "zoo::BatchNorm" << D << "d(" << o.num_features() << ", eps=" << o.eps() << ", momentum=";
  if (o.momentum().has_value()) {
    stream << *o.momentum();
  } else {
    stream << "None";
  }
  stream << ", affine=" << o.affine() << ", track_running_stats=" << o.track_running_stats() << ")";
}

template class BatchNormImpl<2>;
template class BatchNormImpl<3>;

}  // namespace zoo::models
