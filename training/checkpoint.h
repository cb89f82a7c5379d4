// Crash-safe checkpoints in a run directory.
//
// A checkpoint is a set of files (model.pt, optimizer.pt, state.json) that must change together. Writing one:
//   1. write every file into RUN/.staging/ and fsync it;
//   2. rename RUN/.staging -> RUN/.commit            (the commit point: one atomic rename);
//   3. move each file from RUN/.commit into RUN, then remove RUN/.commit.
// A process killed before step 2 leaves the previous checkpoint untouched (the staging directory is discarded
// later); killed after it, the next writer or `recover` rolls the move forward. Readers that cannot write (a
// read-only run) take each file from RUN/.commit when it is there.
#pragma once

#include "core/files.h"

#include <torch/torch.h>

#include <nlohmann/json.hpp>

#include <functional>
#include <map>
#include <string>
#include <vector>

namespace zoo::training {

/// Finishes a committed but unfinished checkpoint and discards an uncommitted one.
void recover_checkpoint(const std::string& run_dir);

/// The path to read checkpoint file `name` from (RUN/.commit/name while a commit is pending).
std::string checkpoint_file(const std::string& run_dir, const std::string& name);

/// Writes the files of one checkpoint as one atomic unit: each writer fills the temporary path it is given.
struct CheckpointFile {
  std::string name;
  std::function<void(const std::string& path)> write;
};
void write_checkpoint(const std::string& run_dir, const std::vector<CheckpointFile>& files);

/// Writes an archive to `path` through memory with checked I/O (a failed write is an exception, never a crash).
void save_archive(torch::serialize::OutputArchive& archive, const std::string& path);

/// Module parameters and buffers <-> a TorchScript-format archive (`torch.jit.load` opens it in Python).
void save_module(const torch::nn::Module& module, const std::string& path);
/// Loads into `module`; a missing, extra or mis-shaped tensor is an error naming it (nothing is changed then).
void load_module(torch::nn::Module& module, const std::string& path);

/// Every parameter and buffer of a TorchScript archive (saved by zoo or by torch.jit.save), by dotted name.
std::map<std::string, torch::Tensor> read_tensors(const std::string& path);
/// Checks that `path` is a whole zip archive whose entries match their CRC-32s (LibTorch does not check, and
/// crashes on some damaged archives); throws std::runtime_error naming the first problem. Returns the entry
/// names, sorted.
std::vector<std::string> verify_archive(const std::string& path);
/// Copies tensors into `module` by name. Returns the problems (missing, unexpected, wrong shape), one line
/// each; with `strict`, nothing is copied unless there are none.
std::vector<std::string> copy_tensors(torch::nn::Module& module, const std::map<std::string, torch::Tensor>& tensors,
                                      bool strict);

/// JSON nested deeper than this is refused before it is parsed (a hostile file would exhaust the stack), and a
/// JSON file larger than this is refused before it is read: zoo's own files are kilobytes (state.json of a long
/// run with many callbacks a few megabytes).
constexpr size_t max_json_depth = 256;
constexpr uintmax_t max_json_bytes = uintmax_t{64} << 20;

/// Parses `text` (`what` names it in errors: "--set hidden", "RUN/state.json"): "WHAT is not valid JSON (...)",
/// "WHAT is nested more than 256 levels deep".
nlohmann::json parse_json(const std::string& text, const std::string& what);
/// The same, or a discarded value (`is_discarded()`) when `text` is not JSON: for flags whose text may be a plain
/// string. Nesting beyond the limit is still an error.
nlohmann::json parse_json_or_discard(const std::string& text, const std::string& what);
/// Reads a JSON file: a regular file (not a FIFO or a device) of at most max_json_bytes, with errors that name
/// the file and the problem.
nlohmann::json read_json_file(const std::string& path);

/// The default CPU generator's state as hex text, and back.
std::string rng_state_hex();
void set_rng_state_hex(const std::string& hex);

}  // namespace zoo::training
