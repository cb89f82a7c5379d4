#include "training/safetensors.h"

#include "training/checkpoint.h"

#include <fcntl.h>
#include <fmt/format.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <unistd.h>

#include <algorithm>
#include <cstring>
#include <fstream>
#include <limits>
#include <memory>
#include <tuple>
#include <vector>

namespace zoo::training {

namespace {

struct DType {
  const char* name;
  torch::ScalarType type;
};
const DType kDTypes[] = {{"F64", torch::kFloat64},   {"F32", torch::kFloat32}, {"F16", torch::kFloat16},
                         {"BF16", torch::kBFloat16}, {"I64", torch::kInt64},   {"I32", torch::kInt32},
                         {"I16", torch::kInt16},     {"I8", torch::kInt8},     {"U8", torch::kUInt8},
                         {"BOOL", torch::kBool}};

const DType* dtype_named(const std::string& name) {
  for (const auto& d : kDTypes)
    if (name == d.name) return &d;
  return nullptr;
}

const char* safetensors_dtype(torch::ScalarType type) {
  for (const auto& d : kDTypes)
    if (type == d.type) return d.name;
  throw std::invalid_argument(fmt::format("safetensors: no dtype for {} tensors", c10::toString(type)));
}

uint64_t read_u64_le(const uint8_t* p) {
  uint64_t v = 0;
  for (int i = 7; i >= 0; --i) v = (v << 8) | p[i];
  return v;
}

/// A non-negative whole number of a header field, or an error naming it.
uint64_t whole(const nlohmann::json& v, const std::string& what) {
  if (v.is_number_unsigned()) return v.get<uint64_t>();
  if (v.is_number_integer() && v.get<int64_t>() >= 0) return static_cast<uint64_t>(v.get<int64_t>());
  throw std::runtime_error(what + " must be a whole number >= 0, got " + v.dump());
}

struct Entry {
  std::string name;
  const DType* dtype;
  std::vector<int64_t> shape;
  uint64_t begin, end;
};

}  // namespace

Safetensors parse_safetensors(const uint8_t* data, size_t size, const std::string& what) {
  static_assert(sizeof(size_t) == 8, "64-bit sizes");
  auto fail = [&](const std::string& problem) { return std::runtime_error(what + ": " + problem); };
  if (size < 8)
    throw fail(fmt::format("{} bytes: too short for a safetensors file (an 8-byte header length first)", size));
  const uint64_t n = read_u64_le(data);
  if (n > max_safetensors_header)
    throw fail(fmt::format("header length {} is above the limit of {} bytes", n, max_safetensors_header));
  if (n > size - 8) throw fail(fmt::format("header length {} runs past the end of the file ({} bytes)", n, size));
  if (n < 2 || data[8] != '{') throw fail("the header is not a JSON object");
  const std::string text(reinterpret_cast<const char*>(data + 8), n);
  nlohmann::json header;
  try {
    header = parse_json(text, "the header");  // nesting depth checked before parsing; UTF-8 checked by the parser
  } catch (const std::exception& e) {
    throw fail(e.what());
  }
  if (!header.is_object()) throw fail("the header is not a JSON object");
  const uint8_t* payload = data + 8 + n;
  const uint64_t payload_size = size - 8 - n;

  Safetensors out;
  std::vector<Entry> entries;
  for (const auto& [name, value] : header.items()) {
    if (name == "__metadata__") {
      if (!value.is_object()) throw fail("__metadata__ must be an object of strings");
      for (const auto& [k, v] : value.items()) {
        if (!v.is_string()) throw fail(fmt::format("__metadata__ '{}' must be a string, got {}", k, v.dump()));
        out.metadata[k] = v.get<std::string>();
      }
      continue;
    }
    const std::string tensor = "tensor '" + name + "'";
    if (!value.is_object() || value.size() != 3 || !value.contains("dtype") || !value.contains("shape") ||
        !value.contains("data_offsets"))
      throw fail(tensor + " must be {\"dtype\", \"shape\", \"data_offsets\"}, got " + value.dump().substr(0, 200));
    Entry e;
    e.name = name;
    const auto& dtype = value["dtype"];
    if (!dtype.is_string()) throw fail(tensor + ": dtype must be a string");
    e.dtype = dtype_named(dtype.get<std::string>());
    if (!e.dtype)
      throw fail(fmt::format("{}: dtype {} is not one zoo reads (F64, F32, F16, BF16, I64, I32, I16, I8, U8, BOOL)",
                             tensor, dtype.dump()));
    const auto& shape = value["shape"];
    if (!shape.is_array() || shape.size() > 16) throw fail(tensor + ": shape must be a list of at most 16 sizes");
    // numel * itemsize with overflow checks: a hostile shape must not wrap around to a small byte count.
    uint64_t bytes = torch::elementSize(e.dtype->type);
    for (const auto& d : shape) {
      const uint64_t v = whole(d, what + ": " + tensor + " shape");
      if (v > static_cast<uint64_t>(std::numeric_limits<int64_t>::max())) throw fail(tensor + ": a size is too large");
      e.shape.push_back(static_cast<int64_t>(v));
      if (v != 0 && bytes > std::numeric_limits<uint64_t>::max() / v)
        throw fail(tensor + ": shape " + shape.dump() + " overflows");
      bytes *= v;
    }
    const auto& offsets = value["data_offsets"];
    if (!offsets.is_array() || offsets.size() != 2) throw fail(tensor + ": data_offsets must be [begin, end]");
    e.begin = whole(offsets[0], what + ": " + tensor + " data_offsets");
    e.end = whole(offsets[1], what + ": " + tensor + " data_offsets");
    if (e.begin > e.end)
      throw fail(fmt::format("{}: data_offsets [{}, {}] end before they begin", tensor, e.begin, e.end));
    if (e.end > payload_size)
      throw fail(
          fmt::format("{}: data_offsets [{}, {}] run past the data ({} bytes)", tensor, e.begin, e.end, payload_size));
    if (e.end - e.begin != bytes)
      throw fail(fmt::format("{}: data_offsets [{}, {}] hold {} bytes, but {} {} needs {}", tensor, e.begin, e.end,
                             e.end - e.begin, e.dtype->name, shape.dump(), bytes));
    entries.push_back(std::move(e));
  }
  // The tensors tile the data: sorted by offset, each begins where the one before ends, the last ends the file.
  std::sort(entries.begin(), entries.end(),
            [](const Entry& a, const Entry& b) { return std::tie(a.begin, a.end) < std::tie(b.begin, b.end); });
  uint64_t at = 0;
  for (const auto& e : entries) {
    if (e.begin < at)
      throw fail(fmt::format("tensor '{}' overlaps the tensor before it (bytes {} to {})", e.name, e.begin, at));
    if (e.begin > at) throw fail(fmt::format("a gap of {} bytes before tensor '{}'", e.begin - at, e.name));
    at = e.end;
  }
  if (at != payload_size)
    throw fail(fmt::format("{} bytes after the last tensor (the data is {} bytes, the tensors cover {})",
                           payload_size - at, payload_size, at));
  for (const auto& e : entries) {
    auto t = torch::empty(e.shape, torch::TensorOptions().dtype(e.dtype->type));
    if (e.end > e.begin) std::memcpy(t.data_ptr(), payload + e.begin, e.end - e.begin);
    if (e.dtype->type == torch::kBool) {
      for (uint64_t i = e.begin; i < e.end; ++i)
        if (payload[i] > 1) throw fail(fmt::format("tensor '{}': a BOOL byte is {}, not 0 or 1", e.name, payload[i]));
    }
    out.tensors[e.name] = std::move(t);
  }
  return out;
}

Safetensors read_safetensors(const std::string& path) {
  const int fd = ::open(path.c_str(), O_RDONLY | O_CLOEXEC);
  if (fd < 0) throw std::runtime_error("cannot open " + path + ": " + std::strerror(errno));
  struct stat st {};
  if (::fstat(fd, &st) != 0 || !S_ISREG(st.st_mode)) {
    ::close(fd);
    throw std::runtime_error(path + " is not a regular file");
  }
  const auto size = static_cast<size_t>(st.st_size);
  if (size == 0) {
    ::close(fd);
    return parse_safetensors(nullptr, 0, path);
  }
  void* map = ::mmap(nullptr, size, PROT_READ, MAP_PRIVATE, fd, 0);
  ::close(fd);
  if (map == MAP_FAILED) throw std::runtime_error("cannot map " + path + ": " + std::strerror(errno));
  std::unique_ptr<void, std::function<void(void*)>> unmap(map, [size](void* p) { ::munmap(p, size); });
  return parse_safetensors(static_cast<const uint8_t*>(map), size, path);
}

bool looks_like_safetensors(const std::string& path) {
  std::ifstream in(path, std::ios::binary);
  uint8_t head[9] = {};
  if (!in.read(reinterpret_cast<char*>(head), 9)) return false;
  const uint64_t n = read_u64_le(head);
  return head[8] == '{' && n >= 2 && n <= max_safetensors_header;
}

std::string serialize_safetensors(const std::map<std::string, torch::Tensor>& tensors,
                                  const std::map<std::string, std::string>& metadata) {
  nlohmann::json header = nlohmann::json::object();
  if (!metadata.empty()) header["__metadata__"] = metadata;
  std::vector<torch::Tensor> data;
  uint64_t at = 0;
  for (const auto& [name, tensor] : tensors) {
    auto t = tensor.detach().to(torch::kCPU).contiguous();
    const uint64_t bytes = static_cast<uint64_t>(t.numel()) * t.element_size();
    header[name] = {
        {"dtype", safetensors_dtype(t.scalar_type())}, {"shape", t.sizes().vec()}, {"data_offsets", {at, at + bytes}}};
    at += bytes;
    data.push_back(std::move(t));
  }
  std::string text = header.dump();
  text.append((8 - text.size() % 8) % 8, ' ');  // the data starts 8-byte aligned, as the reference writes it
  std::string out(8, '\0');
  for (int i = 0; i < 8; ++i) out[static_cast<size_t>(i)] = static_cast<char>((text.size() >> (8 * i)) & 0xff);
  out += text;
  out.reserve(out.size() + at);
  for (const auto& t : data) out.append(static_cast<const char*>(t.data_ptr()), t.numel() * t.element_size());
  return out;
}

}  // namespace zoo::training
