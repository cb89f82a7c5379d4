#include "training/checkpoint.h"

#include "training/messages.h"

#include <ATen/CPUGeneratorImpl.h>
#include <torch/script.h>
#include <fcntl.h>
#include <unistd.h>

#include <zlib.h>

#include <algorithm>
#include <cerrno>
#include <iterator>
#include <set>
#include <vector>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <sstream>
#include <stdexcept>

namespace zoo::training {
namespace fs = std::filesystem;

namespace {

void fsync_path(const fs::path& path, bool directory) {
  int fd = ::open(path.c_str(), directory ? (O_RDONLY | O_DIRECTORY) : O_RDONLY);
  if (fd < 0) return;
  ::fsync(fd);
  ::close(fd);
}


// Runs a writer and turns every failure (disk full, read-only, permission) into one clear line.
void run_writer(const std::function<void(const std::string&)>& write, const fs::path& path) {
  try {
    write(path.string());
  } catch (const c10::Error& e) {
    throw std::runtime_error("cannot write " + path.string() + ": " + first_line(e.what_without_backtrace()));
  }
  if (!fs::exists(path)) throw std::runtime_error("cannot write " + path.string());
}

void finish_commit(const fs::path& run) {
  const fs::path commit = run / ".commit";
  for (const auto& entry : fs::directory_iterator(commit)) fs::rename(entry.path(), run / entry.path().filename());
  fs::remove_all(commit);
  fsync_path(run, true);
}

}  // namespace

void write_file_atomically(const std::string& path, const std::function<void(const std::string&)>& write) {
  const fs::path target(path);
  const fs::path tmp = target.string() + ".tmp";
  try {
    run_writer(write, tmp);
    fsync_path(tmp, false);
    fs::rename(tmp, target);
    fsync_path(target.parent_path().empty() ? fs::path(".") : target.parent_path(), true);
  } catch (...) {
    std::error_code ec;
    fs::remove(tmp, ec);
    throw;
  }
}

void write_text_atomically(const std::string& path, const std::string& text) {
  write_file_atomically(path, [&](const std::string& tmp) {
    write_bytes(tmp, text);
  });
}

void recover_checkpoint(const std::string& run_dir) {
  const fs::path run(run_dir);
  if (fs::exists(run / ".commit")) finish_commit(run);
  if (fs::exists(run / ".staging")) fs::remove_all(run / ".staging");
}

std::string checkpoint_file(const std::string& run_dir, const std::string& name) {
  const fs::path pending = fs::path(run_dir) / ".commit" / name;
  if (fs::exists(pending)) return pending.string();
  return (fs::path(run_dir) / name).string();
}

void write_checkpoint(const std::string& run_dir, const std::vector<CheckpointFile>& files) {
  const fs::path run(run_dir);
  recover_checkpoint(run_dir);
  const fs::path staging = run / ".staging";
  try {
    fs::create_directories(staging);
    for (const auto& f : files) {
      run_writer(f.write, staging / f.name);
      fsync_path(staging / f.name, false);
    }
    fsync_path(staging, true);
  } catch (const std::exception& e) {
    std::error_code ec;
    fs::remove_all(staging, ec);
    throw std::runtime_error(std::string(e.what()) + "; the previous checkpoint in " + run_dir + " is intact");
  }
  fs::rename(staging, run / ".commit");  // commit point
  fsync_path(run, true);
  finish_commit(run);
}

void write_bytes(const std::string& path, const std::string& bytes) {
  std::FILE* f = std::fopen(path.c_str(), "wb");
  if (!f) throw std::runtime_error("cannot write " + path + ": " + std::strerror(errno));
  const size_t written = std::fwrite(bytes.data(), 1, bytes.size(), f);
  const int saved_errno = errno;
  const bool flushed = std::fflush(f) == 0;
  const int flush_errno = errno;
  const bool closed = std::fclose(f) == 0;
  if (written != bytes.size() || !flushed || !closed)
    throw std::runtime_error("cannot write " + path + ": " +
                             std::strerror(written != bytes.size() ? saved_errno : flush_errno));
}

void save_archive(torch::serialize::OutputArchive& archive, const std::string& path) {
  // Into memory first: LibTorch's file writer, when a write fails (disk full), throws again from its destructor
  // and terminates the process. Our own write reports the failure and the checkpoint protocol keeps the old set.
  std::ostringstream buffer;
  archive.save_to(buffer);
  write_bytes(path, buffer.str());
}

void save_module(const torch::nn::Module& module, const std::string& path) {
  torch::serialize::OutputArchive archive;
  module.save(archive);
  save_archive(archive, path);
}

namespace {
uint16_t le16(const uint8_t* p) { return static_cast<uint16_t>(p[0] | (p[1] << 8)); }
uint32_t le32(const uint8_t* p) { return static_cast<uint32_t>(le16(p)) | (static_cast<uint32_t>(le16(p + 2)) << 16); }
uint64_t le64(const uint8_t* p) { return static_cast<uint64_t>(le32(p)) | (static_cast<uint64_t>(le32(p + 4)) << 32); }
}  // namespace

std::vector<std::string> verify_archive(const std::string& path) {
  std::ifstream in(path, std::ios::binary);
  if (!in) throw std::runtime_error("cannot open " + path + ": " + std::strerror(errno));
  const std::string bytes((std::istreambuf_iterator<char>(in)), std::istreambuf_iterator<char>());
  const auto* data = reinterpret_cast<const uint8_t*>(bytes.data());
  const uint64_t size = bytes.size();
  auto damaged = [&](const std::string& why) {
    return std::runtime_error(path + " is not a TorchScript archive, or is damaged (" + why +
                              "); use another checkpoint, or save weights with zoo or torch.jit.save");
  };
  // End of central directory: the last "PK\5\6" record, within the last 64 KiB + 22 bytes (the comment's room).
  int64_t eocd = -1;
  for (int64_t i = static_cast<int64_t>(size) - 22; i >= 0 && i >= static_cast<int64_t>(size) - 22 - 65535; --i)
    if (le32(data + i) == 0x06054b50) {
      eocd = i;
      break;
    }
  if (eocd < 0) throw damaged("no zip directory at its end: truncated, or another kind of file");
  uint64_t entries = le16(data + eocd + 10), dir_size = le32(data + eocd + 12), dir_offset = le32(data + eocd + 16);
  // ZIP64: a locator right before the EOCD. LibTorch's reader (miniz) uses it whenever it is there, so do we.
  if (eocd >= 20 && le32(data + eocd - 20) == 0x07064b50) {
    const uint64_t record = le64(data + eocd - 20 + 8);
    if (size < 56 || record > size - 56 || le32(data + record) != 0x06064b50) throw damaged("bad ZIP64 directory record");
    entries = le64(data + record + 32);
    dir_size = le64(data + record + 40);
    dir_offset = le64(data + record + 48);
  } else if (entries == 0xFFFF || dir_size == 0xFFFFFFFF || dir_offset == 0xFFFFFFFF) {
    throw damaged("bad ZIP64 locator");
  }
  if (dir_offset > size || dir_size > size - dir_offset) throw damaged("its zip directory points outside the file");
  if (entries > dir_size / 46) throw damaged("its zip directory is cut or overwritten");
  std::set<std::string> names;
  uint64_t at = dir_offset;
  for (uint64_t n = 0; n < entries; ++n) {
    if (at + 46 > size || le32(data + at) != 0x02014b50) throw damaged("its zip directory is cut or overwritten");
    const uint16_t method = le16(data + at + 10);
    const uint32_t crc = le32(data + at + 16);
    uint64_t compressed = le32(data + at + 20), uncompressed = le32(data + at + 24), local = le32(data + at + 42);
    const uint16_t name_len = le16(data + at + 28), extra_len = le16(data + at + 30), comment_len = le16(data + at + 32);
    if (at + 46 + name_len + extra_len + comment_len > size) throw damaged("its zip directory is cut");
    const std::string name(bytes.data() + at + 46, name_len);
    if (!names.insert(name).second) throw damaged("entry '" + name + "' is there twice");
    // miniz extracts nothing from a directory entry and LibTorch would read the buffer it did not fill.
    if ((le32(data + at + 38) & 0x10) != 0 || (!name.empty() && name.back() == '/'))
      throw damaged("entry '" + name + "' is marked as a directory");
    // ZIP64 sizes and offsets live in extra field 0x0001, in this order, for the fields that hold 0xFFFFFFFF.
    const uint8_t* extra = data + at + 46 + name_len;
    for (uint32_t e = 0; e + 4 <= extra_len;) {
      const uint16_t id = le16(extra + e), len = le16(extra + e + 2);
      if (e + 4u + len > extra_len) throw damaged("entry '" + name + "' has a cut extra field");
      if (id == 0x0001) {
        uint32_t f = e + 4;
        if (uncompressed == 0xFFFFFFFF && f + 8 <= e + 4u + len) uncompressed = le64(extra + f), f += 8;
        if (compressed == 0xFFFFFFFF && f + 8 <= e + 4u + len) compressed = le64(extra + f), f += 8;
        if (local == 0xFFFFFFFF && f + 8 <= e + 4u + len) local = le64(extra + f);
      }
      e += 4u + len;
    }
    if (size < 30 || local > size - 30 || le32(data + local) != 0x04034b50)
      throw damaged("entry '" + name + "' has no local header where the directory says");
    const uint16_t local_name_len = le16(data + local + 26);
    if (local_name_len != name_len || local + 30 + name_len > size ||
        std::memcmp(data + local + 30, name.data(), name_len) != 0)
      throw damaged("entry '" + name + "' has another name in its local header");
    const uint64_t start = local + 30 + local_name_len + le16(data + local + 28);
    if (start > size || compressed > size - start) throw damaged("entry '" + name + "' is cut");
    // LibTorch's miniz is built without CRC checks: check the CRC-32 of every entry's bytes after decompression.
    uLong actual = crc32(0L, Z_NULL, 0);
    uint64_t length = 0;
    if (method == 0) {  // stored, as LibTorch and PyTorch write tensors
      for (uint64_t off = 0; off < compressed;) {
        const auto chunk = static_cast<uInt>(std::min<uint64_t>(compressed - off, 1u << 30));
        actual = crc32(actual, data + start + off, chunk);
        off += chunk;
      }
      length = compressed;
    } else if (method == 8) {  // deflated (PyTorch compresses some records)
      z_stream z{};
      if (inflateInit2(&z, -MAX_WBITS) != Z_OK) throw std::runtime_error("zlib: inflateInit2 failed");
      std::vector<Bytef> out(1 << 16);
      uint64_t off = 0;
      int rc = Z_OK;
      while (rc == Z_OK) {
        const auto chunk = static_cast<uInt>(std::min<uint64_t>(compressed - off, 1u << 30));
        z.next_in = const_cast<Bytef*>(data + start + off);
        z.avail_in = chunk;
        z.next_out = out.data();
        z.avail_out = static_cast<uInt>(out.size());
        rc = inflate(&z, Z_NO_FLUSH);
        off += chunk - z.avail_in;
        const auto produced = out.size() - z.avail_out;
        actual = crc32(actual, out.data(), static_cast<uInt>(produced));
        length += produced;
        if (rc == Z_BUF_ERROR && (produced > 0 || off < compressed)) rc = Z_OK;  // more room or more input
        if (length > uncompressed) break;
      }
      inflateEnd(&z);
      if (rc != Z_STREAM_END || length != uncompressed)
        throw damaged("entry '" + name + "' does not inflate to its recorded size");
    } else {
      throw damaged("entry '" + name + "' uses compression method " + std::to_string(method) +
                    ", which LibTorch does not read");
    }
    if (length != uncompressed) throw damaged("entry '" + name + "' is not its recorded size");
    if (actual != crc) throw damaged("entry '" + name + "' fails its CRC-32 check: changed after it was written");
    at += 46 + name_len + extra_len + comment_len;
  }
  return {names.begin(), names.end()};
}

std::map<std::string, torch::Tensor> read_tensors(const std::string& path) {
  if (!fs::exists(path)) throw std::runtime_error("missing " + path);
  // LibTorch's loader trusts the archive: a flipped bit in its code section can crash it (found by fuzzing,
  // LibTorch 1.13). The zip's own CRC-32s catch such damage first.
  verify_archive(path);
  torch::jit::Module archive;
  try {
    archive = torch::jit::load(path, torch::kCPU);
  } catch (const c10::Error& e) {
    throw std::runtime_error(path + " is not a TorchScript archive (" + first_line(e.what_without_backtrace()) +
                             "); save weights with zoo or torch.jit.save");
  } catch (const std::exception& e) {
    throw std::runtime_error(path + " is not a TorchScript archive (" + first_line(e.what()) + ")");
  }
  std::map<std::string, torch::Tensor> out;
  for (const auto& p : archive.named_parameters(/*recurse=*/true)) out[p.name] = p.value;
  for (const auto& b : archive.named_buffers(/*recurse=*/true)) out[b.name] = b.value;
  return out;
}

std::vector<std::string> copy_tensors(torch::nn::Module& module, const std::map<std::string, torch::Tensor>& tensors,
                                      bool strict) {
  std::map<std::string, torch::Tensor> own;
  for (const auto& p : module.named_parameters(/*recurse=*/true)) own[p.key()] = p.value();
  for (const auto& b : module.named_buffers(/*recurse=*/true)) own[b.key()] = b.value();
  std::vector<std::string> problems;
  for (const auto& [name, t] : own) {
    auto it = tensors.find(name);
    if (it == tensors.end()) problems.push_back("missing " + name + " " + c10::str(t.sizes()));
    else if (it->second.sizes() != t.sizes())
      problems.push_back("shape of " + name + ": file " + c10::str(it->second.sizes()) + ", model " +
                         c10::str(t.sizes()));
  }
  for (const auto& [name, t] : tensors)
    if (!own.count(name)) problems.push_back("unexpected " + name + " " + c10::str(t.sizes()));
  if (strict && !problems.empty()) return problems;
  torch::NoGradGuard no_grad;
  for (auto& [name, t] : own) {
    auto it = tensors.find(name);
    if (it != tensors.end() && it->second.sizes() == t.sizes()) t.copy_(it->second);
  }
  return problems;
}

void load_module(torch::nn::Module& module, const std::string& path) {
  auto problems = copy_tensors(module, read_tensors(path), /*strict=*/true);
  if (!problems.empty()) {
    std::string list;
    for (size_t i = 0; i < problems.size() && i < 5; ++i) list += (i ? "; " : "") + problems[i];
    if (problems.size() > 5) list += "; and " + std::to_string(problems.size() - 5) + " more";
    throw std::runtime_error(path + " does not match the model (" + list + ")");
  }
}

nlohmann::json read_json_file(const std::string& path) {
  std::ifstream in(path);
  if (!in) throw std::runtime_error("cannot open " + path + ": " + std::strerror(errno));
  std::stringstream ss;
  ss << in.rdbuf();
  try {
    return nlohmann::json::parse(ss.str());
  } catch (const nlohmann::json::parse_error& e) {
    throw std::runtime_error(path + " is not valid JSON (" + first_line(e.what()) + ")");
  }
}

std::string rng_state_hex() {
  auto state = at::detail::getDefaultCPUGenerator().get_state();
  static const char* digits = "0123456789abcdef";
  std::string out;
  const auto* p = state.data_ptr<uint8_t>();
  out.reserve(static_cast<size_t>(state.numel()) * 2);
  for (int64_t i = 0; i < state.numel(); ++i) {
    out.push_back(digits[p[i] >> 4]);
    out.push_back(digits[p[i] & 15]);
  }
  return out;
}

void set_rng_state_hex(const std::string& hex) {
  if (hex.size() % 2) throw std::runtime_error("state.json: rng_state is not hex");
  auto state = torch::empty({static_cast<int64_t>(hex.size() / 2)}, torch::kUInt8);
  auto* p = state.data_ptr<uint8_t>();
  auto nibble = [](char c) -> int {
    if (c >= '0' && c <= '9') return c - '0';
    if (c >= 'a' && c <= 'f') return c - 'a' + 10;
    throw std::runtime_error("state.json: rng_state is not hex");
  };
  for (size_t i = 0; i < hex.size() / 2; ++i) p[i] = static_cast<uint8_t>(nibble(hex[2 * i]) * 16 + nibble(hex[2 * i + 1]));
  auto gen = at::detail::getDefaultCPUGenerator();
  std::lock_guard<std::mutex> lock(gen.mutex());
  try {
    gen.set_state(state);
  } catch (const c10::Error& e) {
    throw std::runtime_error("state.json: rng_state is invalid (" + first_line(e.what_without_backtrace()) + ")");
  }
}

}  // namespace zoo::training
