// TorchScript export of C++ modules: a torch::jit::Module with the module's parameters and buffers under their
// dotted names and a `forward` method traced from the C++ forward, so Python can `torch.jit.load` it and call
// it, not only read its weights.
#pragma once

#include <torch/script.h>
#include <torch/torch.h>

#include <map>
#include <string>
#include <vector>

namespace zoo::training {

/// A traced module, and whether its forward takes other batch sizes than the example's.
struct Exported {
  torch::jit::Module module;
  bool any_batch = false;
};

/// Traces `model.forward(example)` (in eval mode, under no_grad) into a TorchScript module whose submodule
/// hierarchy mirrors the C++ one. The forward may return a tensor or a tuple of 2 or 3 tensors. Then runs the
/// traced forward against the C++ one: on `same_shape` (other values, the example's shape) they must agree, or
/// the forward depends on the data in ways a trace cannot record (routing, adaptive steps) and export is refused
/// with a message saying so; on `other_batch` (another batch size) agreement sets `any_batch` (sizes that C++
/// code reads from a tensor are constants in a LibTorch trace, so some models keep the example's batch size).
Exported export_torchscript(torch::nn::AnyModule& model, const torch::Tensor& example, const torch::Tensor& same_shape,
                            const torch::Tensor& other_batch);

/// Saves a TorchScript module (with `extra_files` beside its code) through memory and the checked atomic writer
/// of core/files.h: LibTorch's own file writer aborts the process when a write fails (a full disk); here a
/// failure is one error line and `path` is untouched.
void save_script_module(const torch::jit::Module& module, const std::string& path,
                        const std::map<std::string, std::string>& extra_files = {});

/// The C++ forward's outputs on `input` (eval mode, no_grad, seed 0): one tensor, or each of a tuple's.
std::vector<torch::Tensor> forward_outputs(torch::nn::AnyModule& model, const torch::Tensor& input);

/// What a file holds, for messages: "TorchScript", "torch.save pickle", "zip", "not a zip".
std::string describe_torch_file(const std::string& path);

}  // namespace zoo::training
