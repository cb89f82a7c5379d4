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

#include <torch/torch.h>

#include <nlohmann/json.hpp>

#include <functional>
#include <map>
#include <string>
#include <vector>

namespace zoo::training {

/// Writes a file atomically: `write(tmp_path)` then fsync and rename over `path`.
void write_file_atomically(const std::string& path, const std::function<void(const std::string& tmp)>& write);
/// Writes text atomically.
void write_text_atomically(const std::string& path, const std::string& text);

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
/// Writes bytes to `path`; a short write, flush or close is an error naming the reason (e.g. "File too large").
void write_bytes(const std::string& path, const std::string& bytes);

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

/// Reads a JSON file with an error that names the file and the problem.
nlohmann::json read_json_file(const std::string& path);

/// The default CPU generator's state as hex text, and back.
std::string rng_state_hex();
void set_rng_state_hex(const std::string& hex);

}  // namespace zoo::training
