#include "datasets/idx.h"

#include <zlib.h>

#include <cerrno>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <stdexcept>
#include <vector>

namespace zoo::datasets {
namespace {

// Decompressed input larger than this is refused: the largest IDX file of these data sets is 47 MB (EMNIST's
// largest, 640 MB).
constexpr size_t kMaxBytes = size_t{2} << 30;

uint32_t be32(const uint8_t* p) {
  return (uint32_t{p[0]} << 24) | (uint32_t{p[1]} << 16) | (uint32_t{p[2]} << 8) | uint32_t{p[3]};
}

/// The bytes the header of `data` (at least its magic) says the whole file holds, header included, once the header
/// is complete; 0 while it is not. A bad magic, type or rank is refused at once (parse_idx's messages).
size_t claimed_size(const std::vector<uint8_t>& data, const std::string& name) {
  if (data.size() < 4) return 0;
  if (data[0] != 0 || data[1] != 0 || data[2] != 0x08 || data[3] == 0 || data[3] > 8)
    parse_idx(data.data(), 4, name);  // throws the message for what is wrong
  const size_t ndims = data[3], header = 4 + 4 * ndims;
  if (data.size() < header) return 0;
  uint64_t claimed = 1;
  for (size_t i = 0; i < ndims; ++i) {
    const uint64_t d = be32(data.data() + 4 + 4 * i);
    if (d != 0 && claimed > (kMaxBytes - header) / d) {  // saturated: more than any IDX file zoo reads
      std::vector<int64_t> dims;
      for (size_t k = 0; k < ndims; ++k) dims.push_back(be32(data.data() + 4 + 4 * k));
      throw std::runtime_error(name + ": its header claims more data (" + c10::str(c10::IntArrayRef(dims)) +
                               ") than an IDX data file may hold (2 GiB); it is not a data set file");
    }
    claimed *= d;
  }
  return header + claimed;
}

std::vector<uint8_t> read_all(const std::string& path) {
  {
    std::error_code ec;
    if (std::filesystem::exists(path, ec) && !std::filesystem::is_regular_file(path, ec))
      throw std::runtime_error(path + " is not a regular file (a device, FIFO or directory); give an IDX data file");
    std::ifstream probe(path, std::ios::binary);
    if (!probe) throw std::runtime_error("cannot open " + path + ": " + std::strerror(errno));
  }
  // gzread reads gzip members and passes plain files through unchanged.
  gzFile f = gzopen(path.c_str(), "rb");
  if (!f) throw std::runtime_error("cannot open " + path + ": " + std::strerror(errno));
  gzbuffer(f, 1 << 20);
  std::vector<uint8_t> out;
  std::vector<uint8_t> chunk(1 << 22);
  while (true) {
    int n = gzread(f, chunk.data(), static_cast<unsigned>(chunk.size()));
    if (n < 0) {
      int code = 0;
      std::string msg = gzerror(f, &code);
      gzclose(f);
      throw std::runtime_error(path + " is corrupt (" + msg + "); download or reinstall the data set");
    }
    if (n == 0) break;
    out.insert(out.end(), chunk.begin(), chunk.begin() + n);
    // The header decides how much may follow: checked while streaming, so a gzip bomb or an endless file stops
    // at the size its header claims, not at the end of memory.
    size_t expected = 0;
    try {
      expected = claimed_size(out, path);
    } catch (...) {
      gzclose(f);
      throw;
    }
    if ((expected > 0 && out.size() > expected) || out.size() > kMaxBytes) {
      gzclose(f);
      throw std::runtime_error(path + " holds more bytes than its header describes (at least " +
                               std::to_string(out.size() - expected) + " after the data); it is not a valid IDX file");
    }
  }
  // A gzip stream cut short reads as a clean end of data on some zlib versions; gzclose reports it.
  int rc = gzclose(f);
  if (rc != Z_OK && rc != Z_BUF_ERROR)
    throw std::runtime_error(path + " is corrupt (gzip error " + std::to_string(rc) + ")");
  if (rc == Z_BUF_ERROR) throw std::runtime_error(path + " is truncated (the gzip stream ends early)");
  return out;
}

}  // namespace

torch::Tensor parse_idx(const uint8_t* data, size_t size, const std::string& name) {
  if (size < 4) throw std::runtime_error(name + " is not an IDX file (only " + std::to_string(size) + " bytes)");
  if (data[0] != 0 || data[1] != 0)
    throw std::runtime_error(name + " is not an IDX file (bad magic number " + std::to_string(be32(data)) + ")");
  const uint8_t type = data[2];
  const size_t ndims = data[3];
  if (type != 0x08)
    throw std::runtime_error(name + ": IDX element type 0x" + std::to_string(type) +
                             " is not supported (only unsigned bytes, 0x08)");
  if (ndims == 0 || ndims > 8)
    throw std::runtime_error(name + ": IDX header has " + std::to_string(ndims) + " dimensions");
  const size_t header = 4 + 4 * ndims;
  if (size < header) throw std::runtime_error(name + " is truncated (incomplete IDX header)");
  std::vector<int64_t> dims(ndims);
  // Multiply with saturation: a header claiming 2^32 x 2^32 x ... items must not overflow or allocate.
  const uint64_t available = size - header;
  uint64_t claimed = 1;
  bool saturated = false;
  for (size_t i = 0; i < ndims; ++i) {
    dims[i] = be32(data + 4 + 4 * i);
    const auto d = static_cast<uint64_t>(dims[i]);
    if (d != 0 && claimed > available / d)
      saturated = true;
    else
      claimed *= d;
  }
  if (saturated) claimed = available + 1;
  if (claimed > available)
    throw std::runtime_error(name + " is truncated: its header claims more data (" + c10::str(c10::IntArrayRef(dims)) +
                             ") than the " + std::to_string(available) + " bytes it holds");
  if (claimed < available)
    throw std::runtime_error(name + " has " + std::to_string(available - claimed) +
                             " bytes after the data its header describes; it is not a valid IDX file");
  auto out = torch::empty(dims, torch::kUInt8);
  if (claimed > 0) std::memcpy(out.data_ptr<uint8_t>(), data + header, claimed);  // an empty tensor has no data
  return out;
}

torch::Tensor read_idx(const std::string& path) {
  auto bytes = read_all(path);
  return parse_idx(bytes.data(), bytes.size(), path);
}

}  // namespace zoo::datasets
