#include "training/device.h"

#include <torch/cuda.h>

#include <optional>
#include <stdexcept>

namespace zoo::training {

c10::Device parse_device(const std::string& spec) {
  std::optional<c10::Device> device;
  try {
    device.emplace(spec);
  } catch (const c10::Error&) {
    throw std::invalid_argument("unknown device '" + spec + "'; valid devices: cpu, cuda, cuda:N");
  }
  if (device->is_cuda() && !torch::cuda::is_available())
    throw std::invalid_argument("device '" + spec + "' requested but CUDA is not available here; use --device cpu");
  if (!device->is_cpu() && !device->is_cuda())
    throw std::invalid_argument("device '" + spec + "' is not supported; valid devices: cpu, cuda, cuda:N");
  return *device;
}

}  // namespace zoo::training
