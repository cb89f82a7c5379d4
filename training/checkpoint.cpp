#include "training/checkpoint.h"

#include "core/files.h"
#include "training/messages.h"
#include "training/precision.h"

#include <ATen/CPUGeneratorImpl.h>
#include <fcntl.h>
#include <torch/script.h>
#include <unistd.h>

#include <fmt/format.h>
#include <zip.h>

#include <algorithm>
#include <atomic>
#include <cerrno>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <iterator>
#include <memory>
#include <set>
#include <sstream>
#include <stdexcept>
#include <vector>

namespace zoo::training {
namespace fs = std::filesystem;

namespace {

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
  fsync_path(run.string(), true);
}

}  // namespace

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
      fsync_path((staging / f.name).string(), false);
    }
    fsync_path(staging.string(), true);
  } catch (const std::exception& e) {
    std::error_code ec;
    fs::remove_all(staging, ec);
    const bool previous =
        std::any_of(files.begin(), files.end(), [&](const CheckpointFile& f) { return fs::exists(run / f.name); });
    throw std::runtime_error(std::string(e.what()) + (previous
                                                          ? "; the previous checkpoint in " + run_dir + " is intact"
                                                          : "; no checkpoint was saved in " + run_dir));
  }
  fs::rename(staging, run / ".commit");  // commit point
  fsync_path(run.string(), true);
  finish_commit(run);
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

/// libzip's text for an error code.
std::string zip_error_text(int code) {
  zip_error_t error;
  zip_error_init_with_code(&error, code);
  std::string text = zip_error_strerror(&error);
  zip_error_fini(&error);
  return text;
}

/// What libzip's error code says of an archive, in the words of the message.
std::string zip_problem(int code) {
  switch (code) {
    case ZIP_ER_NOZIP:
      return "no zip directory at its end: truncated, or another kind of file";
    case ZIP_ER_EXISTS:
      return "an entry name is there twice";
    case ZIP_ER_INCONS:
      return "its zip directory and its entries' local headers disagree, or it is cut";
    case ZIP_ER_EOF:
    case ZIP_ER_READ:
      return "it is cut short";
    default:
      return zip_error_text(code);
  }
}

}  // namespace

std::vector<std::string> verify_archive(const std::string& path) {
  std::ifstream in(path, std::ios::binary);
  if (!in) throw std::runtime_error("cannot open " + path + ": " + std::strerror(errno));
  const std::string bytes((std::istreambuf_iterator<char>(in)), std::istreambuf_iterator<char>());
  auto damaged = [&](const std::string& why) {
    return std::runtime_error(path + " is not a TorchScript archive, or is damaged (" + why +
                              "); use another checkpoint, or save weights with zoo or torch.jit.save");
  };
  // libzip reads the directory (ZIP64 included) and, with ZIP_CHECKCONS, checks every local header against it
  // (name, method, sizes, CRC) and that the entries fit in the file.
  zip_error_t error;
  zip_error_init(&error);
  zip_source_t* source = zip_source_buffer_create(bytes.data(), bytes.size(), 0, &error);
  if (!source) throw std::runtime_error(std::string("libzip: ") + zip_error_strerror(&error));
  zip_t* opened = zip_open_from_source(source, ZIP_RDONLY | ZIP_CHECKCONS, &error);
  if (!opened) {
    zip_source_free(source);
    const int code = zip_error_code_zip(&error);
    zip_error_fini(&error);
    throw damaged(zip_problem(code));
  }
  const std::unique_ptr<zip_t, void (*)(zip_t*)> archive(opened, zip_discard);
  std::set<std::string> names;
  std::vector<char> buffer(1 << 16);
  const zip_int64_t entries = zip_get_num_entries(opened, 0);
  for (zip_int64_t i = 0; i < entries; ++i) {
    zip_stat_t stat;
    zip_stat_init(&stat);
    if (zip_stat_index(opened, static_cast<zip_uint64_t>(i), ZIP_FL_ENC_RAW, &stat) != 0 || !stat.name)
      throw damaged("its zip directory is cut or overwritten");
    const std::string name = stat.name;
    names.insert(name);  // libzip refused a name used twice already (which one miniz reads is not ours to guess)
    // Checks libzip leaves to its user.
    // miniz extracts nothing from a directory entry and LibTorch would read the buffer it did not fill.
    zip_uint8_t system = 0;
    zip_uint32_t attributes = 0;
    zip_file_get_external_attributes(opened, static_cast<zip_uint64_t>(i), 0, &system, &attributes);
    if ((attributes & 0x10) != 0 || (!name.empty() && name.back() == '/'))
      throw damaged("entry '" + name + "' is marked as a directory");
    if (stat.comp_method != ZIP_CM_STORE && stat.comp_method != ZIP_CM_DEFLATE)
      throw damaged("entry '" + name + "' uses compression method " + std::to_string(stat.comp_method) +
                    ", which LibTorch does not read");
    // LibTorch's miniz is built without CRC checks; libzip checks each entry's CRC-32 and size as it is read
    // (after inflating a deflated one).
    zip_file_t* file = zip_fopen_index(opened, static_cast<zip_uint64_t>(i), 0);
    if (!file) throw damaged("entry '" + name + "' cannot be read (" + zip_strerror(opened) + ")");
    zip_int64_t got = 0;
    while ((got = zip_fread(file, buffer.data(), buffer.size())) > 0) {
    }
    const int code = got < 0 ? zip_error_code_zip(zip_file_get_error(file)) : ZIP_ER_OK;
    zip_fclose(file);
    if (code == ZIP_ER_CRC) throw damaged("entry '" + name + "' fails its CRC-32 check: changed after it was written");
    if (code == ZIP_ER_COMPRESSED_DATA || code == ZIP_ER_INCONS)
      throw damaged("entry '" + name + "' does not inflate to its recorded size");
    if (code != ZIP_ER_OK) throw damaged("entry '" + name + "': " + zip_error_text(code));
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
    if (it == tensors.end())
      problems.push_back("missing " + name + " " + c10::str(t.sizes()));
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
  const auto tensors = read_tensors(path);
  // Weights saved in another precision (a --precision bf16 run read in float32, or the other way) are converted
  // by the copy; said once per process, not once per file.
  for (const auto& p : module.named_parameters(/*recurse=*/true)) {
    const auto it = tensors.find(p.key());
    if (it == tensors.end() || it->second.scalar_type() == p.value().scalar_type()) continue;
    static std::atomic<bool> said{false};
    if (!said.exchange(true))
      fmt::print(stderr, "note: {} holds {} weights; converted to {}, the precision of this model\n", path,
                 dtype_name(it->second.scalar_type()), dtype_name(p.value().scalar_type()));
    break;
  }
  auto problems = copy_tensors(module, tensors, /*strict=*/true);
  if (!problems.empty()) {
    std::string list;
    for (size_t i = 0; i < problems.size() && i < 5; ++i) list += (i ? "; " : "") + problems[i];
    if (problems.size() > 5) list += "; and " + std::to_string(problems.size() - 5) + " more";
    throw std::runtime_error(path + " does not match the model (" + list + ")");
  }
}

namespace {

/// Throws when `text` opens more than max_json_depth arrays or objects at once (strings skipped).
void check_json_depth(const std::string& text, const std::string& what) {
  size_t depth = 0;
  bool in_string = false;
  for (size_t i = 0; i < text.size(); ++i) {
    const char c = text[i];
    if (in_string) {
      if (c == '\\')
        ++i;
      else if (c == '"')
        in_string = false;
    } else if (c == '"') {
      in_string = true;
    } else if (c == '[' || c == '{') {
      if (++depth > max_json_depth)
        throw std::runtime_error(fmt::format("{} is nested more than {} levels deep", what, max_json_depth));
    } else if ((c == ']' || c == '}') && depth > 0) {
      --depth;
    }
  }
}

}  // namespace

nlohmann::json parse_json(const std::string& text, const std::string& what) {
  check_json_depth(text, what);
  try {
    return nlohmann::json::parse(text);
  } catch (const nlohmann::json::parse_error& e) {
    throw std::runtime_error(what + " is not valid JSON (" + first_line(e.what()) + ")");
  }
}

nlohmann::json parse_json_or_discard(const std::string& text, const std::string& what) {
  check_json_depth(text, what);
  return nlohmann::json::parse(text, nullptr, /*allow_exceptions=*/false);
}

nlohmann::json read_json_file(const std::string& path) {
  std::error_code ec;
  const auto status = std::filesystem::status(path, ec);
  if (ec || !std::filesystem::exists(status))
    throw std::runtime_error("cannot open " + path + ": " + (ec ? ec.message() : std::strerror(ENOENT)));
  if (!std::filesystem::is_regular_file(status))
    throw std::runtime_error(path +
                             " is not a regular file (a JSON file was expected, not a directory, FIFO or device)");
  const auto size = std::filesystem::file_size(path, ec);
  if (ec) throw std::runtime_error("cannot read " + path + ": " + ec.message());
  if (size > max_json_bytes)
    throw std::runtime_error(fmt::format("{} is {} MB: larger than any JSON file zoo reads (at most {} MB)", path,
                                         size >> 20, max_json_bytes >> 20));
  std::ifstream in(path, std::ios::binary);
  if (!in) throw std::runtime_error("cannot open " + path + ": " + std::strerror(errno));
  std::string text(static_cast<size_t>(size), '\0');
  in.read(text.data(), static_cast<std::streamsize>(text.size()));
  text.resize(static_cast<size_t>(in.gcount()));
  return parse_json(text, path);
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
  for (size_t i = 0; i < hex.size() / 2; ++i)
    p[i] = static_cast<uint8_t>(nibble(hex[2 * i]) * 16 + nibble(hex[2 * i + 1]));
  auto gen = at::detail::getDefaultCPUGenerator();
  std::lock_guard<std::mutex> lock(gen.mutex());
  try {
    gen.set_state(state);
  } catch (const c10::Error& e) {
    throw std::runtime_error("state.json: rng_state is invalid (" + first_line(e.what_without_backtrace()) + ")");
  }
}

}  // namespace zoo::training
