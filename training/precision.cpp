#include "training/precision.h"

#include "core/choices.h"
#include "core/schema.h"
#include "ops/conv2d_bf16.h"

#include <fmt/format.h>

#include <cstdlib>
#include <fstream>
#include <sstream>

namespace zoo::training {

const std::vector<std::string>& precision_names() {
  static const std::vector<std::string> names{"32", "bf16-mixed", "bf16", "fp16-mixed"};
  return names;
}

Precision parse_precision(const std::string& name) {
  const auto& n = precision_names();
  for (size_t i = 0; i < n.size(); ++i)
    if (n[i] == name) return static_cast<Precision>(i);
  throw SettingError("train.precision", fmt::format("'{}' is unknown; valid precisions: {}", name, join(n)));
}

const char* precision_name(Precision p) { return precision_names().at(static_cast<size_t>(p)).c_str(); }

torch::ScalarType reduced_type(Precision p) {
  switch (p) {
    case Precision::bf16_mixed:
    case Precision::bf16:
      return torch::kBFloat16;
    case Precision::fp16_mixed:
      return torch::kHalf;
    case Precision::fp32:
      break;
  }
  return torch::kFloat32;
}

std::string dtype_name(torch::ScalarType type) {
  switch (type) {
    case torch::kFloat32:
      return "float32";
    case torch::kBFloat16:
      return "bfloat16";
    case torch::kHalf:
      return "float16";
    case torch::kFloat64:
      return "float64";
    default:
      return c10::toString(type);
  }
}

bool cpu_flags_have_bf16(const std::string& flags) {
  std::istringstream words(flags);
  for (std::string w; words >> w;)
    if (w == "avx512_bf16" || w == "amx_bf16") return true;
  return false;
}

bool cpu_has_bf16() {
  if (const char* env = std::getenv("ZOO_CPU_BF16"); env != nullptr && (env[0] == '0' || env[0] == '1'))
    return env[0] == '1';
  static const bool has = [] {
    std::ifstream in("/proc/cpuinfo");
    for (std::string line; std::getline(in, line);)
      if (line.rfind("flags", 0) == 0) return cpu_flags_have_bf16(line.substr(line.find(':') + 1));
    return false;
  }();
  return has;
}

std::string cpu_bf16_description() {
  if (!cpu_has_bf16()) return "no native bfloat16";
  return ops::detail::cpu_has_amx_bf16() ? "native bfloat16, AMX" : "native bfloat16";
}

std::string precision_problem(Precision p, const c10::Device& device, bool force) {
  if (p == Precision::fp16_mixed && !device.is_cuda())
    return "fp16-mixed is for CUDA devices (float16 with loss scaling); on the CPU use bf16-mixed";
  if ((p == Precision::bf16_mixed || p == Precision::bf16) && device.is_cpu() && !force && !cpu_has_bf16())
    return fmt::format(
        "{}: this CPU has no native bfloat16 (no avx512_bf16 or amx_bf16 in /proc/cpuinfo), so bfloat16 is "
        "emulated and slower than float32; use --precision 32, or --force to run it anyway",
        precision_name(p));
  return "";
}

ops::AutocastScope autocast(Precision p, const c10::Device& device) {
  return ops::AutocastScope(device.type(), reduced_type(p), p != Precision::fp32);
}

}  // namespace zoo::training
