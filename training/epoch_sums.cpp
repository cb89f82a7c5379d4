#include "training/epoch_sums.h"

#include <algorithm>

namespace zoo::training {

EpochSums::EpochSums(const json& partial)
    : loss_sum_(partial.value("loss_sum", 0.0)), items_(partial.value("items", 0.0)) {
  const json terms = partial.value("terms", json::object());  // kept: items() refers to it
  for (const auto& [name, sw] : terms.items()) {
    const auto sum = sw[0].is_array() ? torch::tensor(sw[0].get<std::vector<double>>(), torch::kFloat64)
                                      : torch::tensor(sw[0].get<double>(), torch::kFloat64);
    record(name, sum / std::max(1e-300, sw[1].get<double>()), sw[1].get<double>());
  }
}

void EpochSums::record(const std::string& name, const torch::Tensor& value, double n) {
  auto it = std::find_if(terms_.begin(), terms_.end(), [&](const auto& t) { return t.first == name; });
  if (it == terms_.end()) it = terms_.insert(terms_.end(), {name, {}});
  it->second.emplace_back(value.detach(), n);
}

void EpochSums::add(double loss, double n, const Terms& terms) {
  items_ += n;
  loss_sum_ += loss * n;
  for (const auto& [name, value] : terms) record(name, value, n);
}

json EpochSums::reduce(const std::function<void(torch::Tensor&)>& all_reduce) {
  json out = json::object();
  for (const auto& [name, values] : terms_) {
    std::vector<torch::Tensor> v;
    std::vector<double> w;
    for (const auto& [value, n] : values) {
      v.push_back(value.to(torch::kCPU, torch::kFloat64).reshape({-1}));
      w.push_back(n);
    }
    const auto weights = torch::tensor(w, torch::kFloat64);
    const auto sum = (torch::stack(v) * weights.unsqueeze(1)).sum(0);  // terms are scalars or 1-D
    const json total = sum.numel() == 1 && values.front().first.dim() == 0
                           ? json(sum.item<double>())
                           : json(std::vector<double>(sum.data_ptr<double>(), sum.data_ptr<double>() + sum.numel()));
    out[name] = {total, weights.sum().item<double>()};
  }
  if (!all_reduce) return out;
  std::vector<double> sums{loss_sum_, items_};
  for (const auto& [name, sw] : out.items()) {
    if (sw[0].is_array())
      for (const auto& v : sw[0]) sums.push_back(v.get<double>());
    else
      sums.push_back(sw[0].get<double>());
    sums.push_back(sw[1].get<double>());
  }
  auto all = torch::tensor(sums, torch::kFloat64);
  all_reduce(all);
  const auto* v = all.data_ptr<double>();
  size_t i = 0;
  loss_sum_ = v[i++];
  items_ = v[i++];
  for (auto& [name, sw] : out.items()) {
    if (sw[0].is_array())
      for (auto& x : sw[0]) x = v[i++];
    else
      sw[0] = v[i++];
    sw[1] = v[i++];
  }
  return out;
}

json EpochSums::partial(double seconds, const json& term_sums) const {
  return {{"loss_sum", loss_sum_}, {"items", items_}, {"seconds", seconds}, {"terms", term_sums}};
}

json EpochSums::metrics(const json& term_sums) const {
  json train = {{"loss", loss_sum_ / std::max(1.0, items_)}};
  for (const auto& [name, sw] : term_sums.items()) {
    const double weight = sw[1].get<double>();
    if (sw[0].is_array()) {
      std::vector<double> mean = sw[0].get<std::vector<double>>();
      for (auto& m : mean) m /= weight;
      train[name] = mean;
    } else {
      train[name] = sw[0].get<double>() / weight;
    }
  }
  return train;
}

}  // namespace zoo::training
