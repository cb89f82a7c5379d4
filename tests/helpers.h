// Shared test helpers: temporary directories, running the zoo binary, data availability.
#pragma once

#include "training/run.h"

#include <nlohmann/json.hpp>

#include <algorithm>
#include <cstdlib>
#include <filesystem>
#include <fstream>
#include <functional>
#include <sstream>
#include <string>
#include <vector>

namespace zoo::test {

namespace fs = std::filesystem;

/// A fresh directory, removed with everything in it when the object goes.
class TempDir {
 public:
  TempDir() {
    std::string pattern = (fs::temp_directory_path() / "zoo-test-XXXXXX").string();
    if (!mkdtemp(pattern.data())) throw std::runtime_error("mkdtemp failed");
    path_ = pattern;
  }
  ~TempDir() {
    std::error_code ec;
    fs::remove_all(path_, ec);
  }
  TempDir(const TempDir&) = delete;
  TempDir& operator=(const TempDir&) = delete;
  const fs::path& path() const { return path_; }
  std::string str(const std::string& child = "") const {
    return child.empty() ? path_.string() : (path_ / child).string();
  }

 private:
  fs::path path_;
};

struct CommandResult {
  int code = -1;
  std::string out, err;
};

inline std::string read_text(const fs::path& path) {
  std::ifstream in(path, std::ios::binary);
  std::stringstream ss;
  ss << in.rdbuf();
  return ss.str();
}

/// Runs a shell command line; stdout and stderr are captured separately.
inline CommandResult run_command(const std::string& command) {
  TempDir tmp;
  const std::string full = command + " >" + tmp.str("out") + " 2>" + tmp.str("err") + " </dev/null";
  const int status = std::system(full.c_str());
  CommandResult r;
  r.code = WIFEXITED(status) ? WEXITSTATUS(status) : 128 + WTERMSIG(status);
  r.out = read_text(tmp.path() / "out");
  r.err = read_text(tmp.path() / "err");
  return r;
}

/// Runs the zoo binary with arguments (a shell-quoted string), one thread.
/// float64 tensor options (the tests that compare against hand computations use them).
inline const torch::TensorOptions kF64 = torch::TensorOptions().dtype(torch::kFloat64);

/// The largest absolute entry; how far rows and columns of (batches of) matrices are from summing to 1.
inline double max_abs(const torch::Tensor& t) { return t.abs().max().item<double>(); }
/// The largest difference of a from b relative to b's largest magnitude (in float64).
inline double max_rel(const torch::Tensor& a, const torch::Tensor& b) {
  return ((a.to(torch::kFloat64) - b.to(torch::kFloat64)).abs().max() /
          b.to(torch::kFloat64).abs().max().clamp_min(1e-30))
      .item<double>();
}
/// t's values as a bfloat16 kernel reads them (rounded to bfloat16), in float64: the operands of an exact reference.
inline torch::Tensor bfloat16_in_float64(const torch::Tensor& t) {
  return t.detach().to(torch::kBFloat16).to(torch::kFloat64);
}
/// |got - exact| <= rel |exact| + 1e-5 max(1, max |exact|) elementwise: a float32 sum rounded once to bfloat16
/// (rel = 2^-8) or kept in float32 (rel = 0: products of bfloat16 values are exact in float32, only the order rounds).
inline bool within_rounding(const torch::Tensor& got, const torch::Tensor& exact, double rel) {
  const auto e = exact.to(torch::kFloat64);
  const auto err = (got.to(torch::kFloat64) - e).abs() - rel * e.abs();
  return err.max().item<double>() < 1e-5 * std::max(1.0, e.abs().max().item<double>());
}

inline double row_error(const torch::Tensor& m) { return max_abs(m.sum(-1) - 1); }
inline double column_error(const torch::Tensor& m) { return max_abs(m.sum(-2) - 1); }

/// The names of a module's parameters, in registration order (Python's named_parameters()).
inline std::vector<std::string> parameter_names(const torch::nn::Module& m) {
  std::vector<std::string> names;
  for (const auto& p : m.named_parameters()) names.push_back(p.key());
  return names;
}

/// The message of what `f` throws ("" when it does not throw).
inline std::string error_of(const std::function<void()>& f) {
  try {
    f();
  } catch (const std::exception& e) {
    return e.what();
  }
  return "";
}

/// Writes `text` to `path` as it is (binary).
inline void write_text(const fs::path& path, const std::string& text) { std::ofstream(path, std::ios::binary) << text; }

/// Debian's python3-torch (the same LibTorch build as zoo's), not the python3 first on PATH.
inline constexpr const char* kPython = "/usr/bin/python3";
inline bool python_has_torch() { return run_command(std::string(kPython) + " -c 'import torch'").code == 0; }

inline CommandResult run_zoo(const std::string& args) { return run_command(std::string(ZOO_BIN) + " " + args); }

/// The last non-empty line of a text.
inline std::string last_line(const std::string& text) {
  auto end = text.find_last_not_of('\n');
  if (end == std::string::npos) return "";
  auto start = text.rfind('\n', end);
  return text.substr(start == std::string::npos ? 0 : start + 1,
                     end - (start == std::string::npos ? 0 : start + 1) + 1);
}

/// The first line of a text (all of it when it has no newline).
inline std::string first_line(const std::string& text) { return text.substr(0, text.find('\n')); }

/// Number of lines of a text.
inline size_t count_lines(const std::string& text) {
  size_t n = 0;
  for (char c : text) n += c == '\n';
  return n;
}

/// A run configuration on the first `limit` Fashion-MNIST items, quiet and single-threaded unless `train` says.
inline training::RunConfig small_run(
    const std::string& model, int64_t limit,
    training::TrainOptions train = training::TrainOptions().progress(false).threads(1)) {
  training::RunConfig config;
  config.model = model;
  config.data.limit = limit;
  config.train = train;
  return config;
}

inline bool have_fashion_mnist() {
  const char* env = std::getenv("ZOO_DATA_DIR");
  const std::string dir = env && *env ? env : "/usr/share/datasets/fashion-mnist";
  return fs::exists(fs::path(dir) / "train-images-idx3-ubyte.gz") ||
         fs::exists(fs::path(dir) / "train-images-idx3-ubyte");
}

}  // namespace zoo::test
