// The numeric precision of training and inference (--precision), as Lightning's `precision=` spells it:
//   32          float32 everywhere (the default)
//   bf16-mixed  float32 weights, gradients and optimizer state; the forward under autocast, which runs
//               convolutions and matrix products in bfloat16 (CPUs with avx512_bf16 or AMX, and CUDA)
//   bf16        the weights themselves in bfloat16 (inference; training only when insisted on: updates smaller
//               than 2^-8 of a weight are lost)
//   fp16-mixed  float16 under CUDA autocast with dynamic loss scaling (training/grad_scaler.h); CUDA only
// Losses and metrics are reduced in float32 in every mode (the objectives pass outputs through ops::float32).
#pragma once

#include "ops/autocast.h"

#include <c10/core/Device.h>

#include <string>
#include <vector>

namespace zoo::training {

enum class Precision { fp32, bf16_mixed, bf16, fp16_mixed };

/// "32", "bf16-mixed", "bf16", "fp16-mixed".
const std::vector<std::string>& precision_names();
/// The precision a name spells; an unknown name throws SettingError listing the valid ones.
Precision parse_precision(const std::string& name);
const char* precision_name(Precision p);

/// The reduced type of a precision (kBFloat16, kHalf) or kFloat32 for "32".
torch::ScalarType reduced_type(Precision p);
/// "float32", "bfloat16", "float16", "float64" (PyTorch's names), else LibTorch's name of the type.
std::string dtype_name(torch::ScalarType type);
/// Whether the weights themselves are stored in the reduced type ("bf16").
inline bool reduced_weights(Precision p) { return p == Precision::bf16; }

/// Whether a /proc/cpuinfo "flags" text names native bfloat16 arithmetic (avx512_bf16 or amx_bf16).
bool cpu_flags_have_bf16(const std::string& flags);
/// Whether this CPU computes in bfloat16 natively; without it oneDNN emulates bfloat16 and is slower than float32.
/// ZOO_CPU_BF16=0 or 1 in the environment overrides what /proc/cpuinfo says (a CPU a container hides, or a test).
bool cpu_has_bf16();
/// What `zoo --version` says of it: "native bfloat16, AMX" (oneDNN's bfloat16 runs on AMX tiles, and zoo's
/// AVX512-BF16 kernels step aside where oneDNN's are faster: docs/precision.md), "native bfloat16" or
/// "no native bfloat16".
std::string cpu_bf16_description();

/// What stands against `p` on `device`, as one line with the fix, to follow the setting's name ("fp16-mixed is for
/// CUDA devices ..."); empty when nothing does. `force` accepts an emulated bfloat16 (a CPU without it), never
/// fp16-mixed off CUDA. SettingError("train.precision", problem) says it.
std::string precision_problem(Precision p, const c10::Device& device, bool force);

/// Autocast as `p` asks for it on `device`, for the scope of the returned object (a no-op for "32"):
/// `auto scope = autocast(precision, device);`
ops::AutocastScope autocast(Precision p, const c10::Device& device);

}  // namespace zoo::training
