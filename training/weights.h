// Weights from the files people have, by dotted name: zoo's run directories and checkpoints, safetensors,
// TorchScript modules and torch.save files; and a model started from them (zoo train --init, zoo import).
#pragma once

#include <torch/torch.h>

#include <map>
#include <string>
#include <vector>

namespace zoo::training {

/// Every tensor of a weights file: safetensors, TorchScript (parameters and buffers) or a torch.save state_dict
/// (`key` picks the entry of a checkpoint dict; without it the file itself or its one state_dict). A run
/// directory gives its best weights (best.pt, else model.pt). `chosen` gets the torch.save entry taken ("" when
/// none). Anything else is refused with what the file is and how to save it from Python.
std::map<std::string, torch::Tensor> read_weights(const std::string& path, const std::string& key = "",
                                                  std::string* chosen = nullptr);

/// What starting a model from a file did: tensors copied, and those left at their fresh values with why.
struct InitReport {
  size_t copied = 0, total = 0;
  std::vector<std::string> kept;    ///< "fc.weight [10, 512] (file [1000, 512])", "head.bias [10] (not in the file)"
  std::vector<std::string> unused;  ///< tensors of the file the model does not have
};

/// Copies every tensor of `weights` whose name and shape match into `module` (converted to its dtype); the others
/// keep their values and are listed, a new head for instance. Refuses (naming `what`) when nothing matches.
InitReport init_from(torch::nn::Module& module, const std::map<std::string, torch::Tensor>& weights,
                     const std::string& what);

}  // namespace zoo::training
