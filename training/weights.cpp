#include "training/weights.h"

#include "training/checkpoint.h"
#include "training/export.h"
#include "training/safetensors.h"
#include "training/torch_save.h"

#include <fmt/format.h>

#include <filesystem>
#include <stdexcept>

namespace zoo::training {

namespace fs = std::filesystem;

std::map<std::string, torch::Tensor> read_weights(const std::string& path, const std::string& key,
                                                  std::string* chosen) {
  std::error_code ec;
  if (!fs::exists(path, ec)) throw std::runtime_error("missing " + path);
  if (chosen) chosen->clear();
  if (fs::is_directory(path, ec)) {
    if (!fs::exists(fs::path(path) / "config.json"))
      throw std::runtime_error(path + " is a directory but not a zoo run (no config.json); give a weights file");
    recover_checkpoint(path);
    auto file = checkpoint_file(path, "best.pt");
    if (!fs::exists(file)) file = checkpoint_file(path, "model.pt");
    if (!fs::exists(file)) throw std::runtime_error(path + " has no model.pt yet: the run has not finished an epoch");
    if (!key.empty()) throw std::invalid_argument("a key picks an entry of a torch.save file; " + path + " is a run");
    return read_tensors(file);
  }
  const bool safetensors = looks_like_safetensors(path);
  const auto kind = safetensors ? "safetensors" : describe_torch_file(path);
  if (!key.empty() && kind != "a torch.save pickle")
    throw std::invalid_argument("a key picks an entry of a torch.save file; " + path + " is " + kind);
  if (safetensors) return read_safetensors(path).tensors;
  if (kind == "TorchScript") return read_tensors(path);
  if (kind == "a torch.save pickle") {
    std::string entry;
    const auto tensors = saved_state_dict(read_torch_save(path), path, key, &entry);
    if (chosen) *chosen = entry;
    return {tensors.begin(), tensors.end()};
  }
  if (kind.rfind("a legacy", 0) == 0)
    throw std::runtime_error(path + " is " + kind +
                             ", which zoo does not read; in Python re-save it in the zip format: "
                             "torch.save(torch.load(PATH), NEW_PATH)");
  throw std::runtime_error(path + " is " + kind +
                           "; in Python save the weights with torch.save(model.state_dict(), PATH), or the module "
                           "with torch.jit.save(torch.jit.script(model), PATH)");
}

InitReport init_from(torch::nn::Module& module, const std::map<std::string, torch::Tensor>& weights,
                     const std::string& what) {
  std::map<std::string, torch::Tensor> own;
  for (const auto& p : module.named_parameters(/*recurse=*/true)) own[p.key()] = p.value();
  for (const auto& b : module.named_buffers(/*recurse=*/true)) own[b.key()] = b.value();
  InitReport report;
  report.total = own.size();
  torch::NoGradGuard no_grad;
  for (auto& [name, t] : own) {
    const auto it = weights.find(name);
    if (it == weights.end()) {
      report.kept.push_back(fmt::format("{} {} (not in the file)", name, c10::str(t.sizes())));
    } else if (it->second.sizes() != t.sizes()) {
      report.kept.push_back(fmt::format("{} {} (file {})", name, c10::str(t.sizes()), c10::str(it->second.sizes())));
    } else {
      t.copy_(it->second);
      ++report.copied;
    }
  }
  for (const auto& [name, t] : weights)
    if (!own.count(name)) report.unused.push_back(fmt::format("{} {}", name, c10::str(t.sizes())));
  if (report.copied == 0) {
    std::string names;
    for (size_t i = 0; i < report.unused.size() && i < 3; ++i) names += (i ? ", " : "") + report.unused[i];
    throw std::runtime_error(fmt::format(
        "{} matches no tensor of the model ({} has {}, e.g. {}); is it the "
        "right model and --set?",
        what, what, report.unused.empty() ? "no tensors" : "other names or shapes", names.empty() ? "nothing" : names));
  }
  return report;
}

}  // namespace zoo::training
