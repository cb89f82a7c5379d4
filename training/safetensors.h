// safetensors, Hugging Face's weight format: no code runs on load (unlike a pickle or a TorchScript archive).
//
//   [8 bytes: N, unsigned little-endian][N bytes: UTF-8 JSON header, padded with spaces][data]
//   header = {"__metadata__": {string: string, ...},            (optional)
//             NAME: {"dtype": "F32", "shape": [2, 3], "data_offsets": [BEGIN, END]}, ...}
// Offsets count from the start of the data; the tensors are row-major and little-endian and tile the data exactly
// (no gaps, no overlaps, nothing after the last). Specification: github.com/huggingface/safetensors (README,
// "Format"). Written here from that description; the reader checks every rule and the limits the reference
// implementation has (a header of at most 100,000,000 bytes).
#pragma once

#include <torch/torch.h>

#include <cstdint>
#include <map>
#include <string>

namespace zoo::training {

struct Safetensors {
  std::map<std::string, torch::Tensor> tensors;
  std::map<std::string, std::string> metadata;  ///< the header's "__metadata__"
};

/// The largest header the reader accepts (the reference implementation's limit).
constexpr uint64_t max_safetensors_header = 100'000'000;

/// Parses a whole safetensors file held in memory; `what` names it in errors. Every problem is a
/// std::runtime_error naming it: "WHAT: tensor 'w': data_offsets [0, 12] hold 12 bytes, but F32 [2, 2] needs 16".
Safetensors parse_safetensors(const uint8_t* data, size_t size, const std::string& what);
/// Reads `path` (memory-mapped) with parse_safetensors.
Safetensors read_safetensors(const std::string& path);
/// Whether `path` starts like a safetensors file (a header length and a '{'), for telling formats apart.
bool looks_like_safetensors(const std::string& path);

/// The bytes of a safetensors file: tensors in name order, each made contiguous on the CPU; float64, float32,
/// float16, bfloat16, int64, int32, int16, int8, uint8 and bool.
std::string serialize_safetensors(const std::map<std::string, torch::Tensor>& tensors,
                                  const std::map<std::string, std::string>& metadata = {});

}  // namespace zoo::training
