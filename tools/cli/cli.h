// The `zoo` command line: one function per subcommand, each a thin layer over the library.
#pragma once

#include "datasets/registry.h"
#include "models/elmo.h"

#include <torch/torch.h>
#include <CLI/CLI.hpp>
#include <nlohmann/json.hpp>

#include <filesystem>
#include <string>
#include <vector>

namespace zoo::cli {

/// A fresh directory under the system's temporary directory (mkdtemp), removed with everything in it at scope
/// exit: the scratch space of zoo bench and zoo export --format onnx.
class ScopedTempDir {
 public:
  explicit ScopedTempDir(const std::string& prefix);
  ~ScopedTempDir();
  ScopedTempDir(const ScopedTempDir&) = delete;
  ScopedTempDir& operator=(const ScopedTempDir&) = delete;
  const std::filesystem::path& path() const { return path_; }

 private:
  std::filesystem::path path_;
};

void add_list(CLI::App& app);
void add_train(CLI::App& app);
void add_eval(CLI::App& app);
void add_info(CLI::App& app);
void add_generate(CLI::App& app);
void add_experiment(CLI::App& app);
void add_segment(CLI::App& app);
void add_embed(CLI::App& app);
void add_interop(CLI::App& app);
void add_bench(CLI::App& app);
void add_plot(CLI::App& app);
void add_lr_find(CLI::App& app);
void add_dataset(CLI::App& app);

/// Writes a classification dataset as DIR/train/<class>/N.png and DIR/test/<class>/N.png (zoo dataset export; also
/// the image folder zoo bench decodes). Refuses an existing non-empty `dir` and data without class names.
struct ExportCounts {
  int64_t train = 0, test = 0, classes = 0;
};
ExportCounts export_class_folders(datasets::DataConfig data, const std::string& dir, int64_t threads);

/// Flag validators with short messages ("must be a positive number, got 'fast'"), unlike CLI11's
/// PositiveNumber, whose message prints the whole range of a double.
inline CLI::Validator number_validator(bool allow_zero) {
  return CLI::Validator(
      [allow_zero](std::string& text) -> std::string {
        size_t used = 0;
        double value = 0;
        try {
          value = std::stod(text, &used);
        } catch (const std::exception&) {
          used = 0;
        }
        const std::string need = allow_zero ? "a number >= 0" : "a positive number";
        if (used == 0 || used != text.size() || !(allow_zero ? value >= 0 : value > 0))
          return "must be " + need + ", got '" + text + "'";
        return "";
      },
      allow_zero ? "NUMBER>=0" : "NUMBER>0");
}
/// --threads of every command (training/threads.h).
constexpr const char* threads_help = "Intra-op threads (0 = auto: the cores other work leaves free)";

inline const CLI::Validator& positive() {
  static const CLI::Validator v = number_validator(false);
  return v;
}
inline const CLI::Validator& non_negative() {
  static const CLI::Validator v = number_validator(true);
  return v;
}

/// "key=value" -> (key, JSON value); a value that is not JSON is taken as a string. `flag` names the flag in errors.
std::pair<std::string, nlohmann::json> parse_set(const std::string& item, const std::string& flag = "--set");

/// [..., D, H, W] -> [..., H, W] at depth D / 2 when `spatial_dims` is 3; unchanged for 2.
torch::Tensor middle_slice(const torch::Tensor& t, int64_t spatial_dims);

/// Thrown to end the program with `code` after everything was said (e.g. the launcher's result).
struct ExitCode {
  int code;
};

/// The process's command line, kept by main for the launcher.
void set_command_line(int argc, char** argv);
/// Starts `nproc` ranks of this same command (without --nproc, plus `extra_args`) with torchrun's environment
/// on this machine and waits for them. Returns 0 when all succeed; when one fails, says which and how, ends the
/// others if they have not failed too within `timeout_s`, and returns non-zero.
/// With `max_restarts` > 0 and the run directory `run_dir`, a failed rank (a signal or a non-zero exit) makes
/// the launcher stop the others, wait for them, and start all `nproc` again from the run's last checkpoint
/// (`train --resume run_dir`), up to `max_restarts` times, each restart logged with its cause; the same failure
/// twice in a row with no step checkpointed in between (a bad configuration) ends the job with its message.
/// Several hosts as torchrun does it: `nnodes` launchers, one per host, each started with its `node_rank`, the
/// same master address (node 0's) and port; this one's ranks are node_rank * nproc + 0..nproc-1 of
/// nnodes * nproc. An empty `master_addr` / zero `master_port`: MASTER_ADDR / MASTER_PORT from the environment,
/// else 127.0.0.1 and a free port (one host only).
struct LaunchOptions {
  int64_t nproc = 1;
  int64_t nnodes = 1;
  int64_t node_rank = 0;
  std::string master_addr;
  int64_t master_port = 0;
  double timeout_s = 60;
  int64_t max_restarts = 0;
  std::string run_dir;
};
int launch_ranks(const LaunchOptions& options, const std::vector<std::string>& extra_args);

/// Prints a metrics object as "name value" pairs on one line.
std::string format_metrics(const nlohmann::json& metrics);

/// --checkpoint best|last: which weights of a run a command uses (default best, the epoch chosen on validation).
void add_checkpoint_option(CLI::App* cmd, std::string& checkpoint);
/// --precision and --force for a command that runs a model (zoo train has --precision from the training schema
/// and --force of its own); `default_text` says what no --precision means.
void add_precision_options(CLI::App* cmd, std::string& precision, bool& force, const std::string& default_text);
/// Refuses `precision` on `device` with one line naming the fix ("--precision bf16-mixed: this CPU has no native
/// bfloat16 ..."): an unknown name, fp16-mixed off CUDA, bfloat16 on a CPU without it unless `force`.
void check_precision(const std::string& precision, const std::string& device, bool force);

}  // namespace zoo::cli
