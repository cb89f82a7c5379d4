// Reader for the IDX format of (Fashion-)MNIST: plain or gzip-compressed.
//
// Format: magic = [0, 0, type, ndims] (big-endian), ndims big-endian uint32 sizes, then the data. Only type
// 0x08 (unsigned byte) is used by these data sets and accepted here.
#pragma once

#include <torch/torch.h>

#include <string>

namespace zoo::datasets {

/// Reads an IDX file (".gz" or not, detected from the content) into a uint8 tensor of the stored shape.
/// Throws std::runtime_error naming the file and the problem: missing, not IDX (bad magic), unsupported type,
/// truncated, or trailing data. The allocation is bounded by the real file content, never by the header.
torch::Tensor read_idx(const std::string& path);

/// Parses IDX bytes already in memory (exposed for tests and fuzzing); `name` is used in messages.
torch::Tensor parse_idx(const uint8_t* data, size_t size, const std::string& name);

}  // namespace zoo::datasets
