#include "tools/cli/cli.h"
#include "tools/cli/settings.h"

#include "core/plugins.h"

#include <fmt/format.h>
#include <torch/torch.h>

#include <cstdio>
#include <iostream>

#include "training/messages.h"
#include "training/runtime.h"
#include "training/trainer.h"

#include <torch/version.h>
#include <zoo_version.h>

#include <thread>

#include <unistd.h>
#include <csignal>
#include <cstring>

namespace {
using zoo::training::first_line;

/// LibTorch's allocation failure ("... DefaultCPUAllocator: can't allocate memory: you tried to allocate N bytes.
/// Error code 12 ...") as one line a user can act on; other messages as they are.
std::string torch_error_line(const std::string& message) {
  const std::string marker = "you tried to allocate ";
  const auto at = message.find(marker);
  if (at == std::string::npos) return first_line(message);
  const double bytes = std::strtod(message.c_str() + at + marker.size(), nullptr);
  return fmt::format(
      "out of memory: one tensor of {:.1f} GB did not fit; make the model or the batch smaller (--set options "
      "that size the model, --batch-size, --limit)",
      bytes / 1e9);
}

// First SIGINT/SIGTERM during training: ask the trainer to stop after its step and save a checkpoint. The default
// action is put back, so a second signal ends the process at once (the checkpoint protocol keeps the last one
// whole anyway). Any other time (loading data, evaluating, sampling, benchmarking) nothing would look at the
// request: the process ends at once with 128 + signal, as training does after its checkpoint. Every file zoo
// writes goes through a temporary file and a rename, so nothing is left half-written.
extern "C" void on_stop_signal(int sig) {
  if (!zoo::training::stop_answered()) {
    static const char message[] = "zoo: stopped by a signal\n";
    [[maybe_unused]] const auto written = write(STDERR_FILENO, message, sizeof message - 1);
    _exit(128 + sig);
  }
  zoo::training::request_stop(sig);
  std::signal(sig, SIG_DFL);
}

void install_signal_handlers() {
  struct sigaction action {};
  action.sa_handler = on_stop_signal;
  sigemptyset(&action.sa_mask);
  sigaction(SIGINT, &action, nullptr);
  sigaction(SIGTERM, &action, nullptr);
  // A file-size limit (ulimit -f) would kill the process with SIGXFSZ in the middle of a write; ignored, the
  // write fails with EFBIG and the checkpoint writer reports it like a full disk.
  std::signal(SIGXFSZ, SIG_IGN);
}

/// --plugin PATH / --plugin=PATH anywhere on the command line, then ZOO_PLUGINS: loaded before the commands are
/// defined, so a plugin's models, datasets and tasks are there for every subcommand (and its --help).
void load_plugins(int argc, char** argv) {
  zoo::load_plugins_from_environment();
  for (int i = 1; i < argc; ++i) {
    const std::string arg = argv[i];
    if (arg == "--") break;
    if (arg == "--plugin" && i + 1 < argc)
      zoo::load_plugin(argv[++i]);
    else if (arg.rfind("--plugin=", 0) == 0)
      zoo::load_plugin(arg.substr(9));
  }
}
}  // namespace

int main(int argc, char** argv) {
  zoo::training::keep_freed_memory();  // before the first large allocation (training/runtime.h)
  try {
    load_plugins(argc, argv);
  } catch (const std::exception& e) {
    fmt::print(stderr, "zoo: error: {}\n", first_line(e.what()));
    return 1;
  }
  CLI::App app{"zoo: classic deep-learning models as trainable LibTorch modules"};
  app.require_subcommand(1);
  // Options of the whole program (--plugin) may also come after the subcommand's name.
  app.fallthrough(true);
  std::vector<std::string> plugins;
  app.add_option("--plugin", plugins,
                 "Load a shared library of your own models, datasets, tasks or callbacks (repeatable; also "
                 "ZOO_PLUGINS=a.so:b.so). See docs/extending.md");
  app.set_version_flag("--version", [] {
    const auto blas = zoo::training::blas();
    return std::string("zoo ") + ZOO_VERSION + " (LibTorch " + std::to_string(TORCH_VERSION_MAJOR) + "." +
           std::to_string(TORCH_VERSION_MINOR) + "." + std::to_string(TORCH_VERSION_PATCH) + ", " +
           zoo::training::allocator() + ", " + (blas.empty() ? std::string() : blas + ", ") +
           std::to_string(zoo::training::usable_cores()) + " cores, " + zoo::training::cpu_bf16_description() + ")";
  });
  zoo::cli::add_list(app);
  zoo::cli::add_train(app);
  zoo::cli::add_eval(app);
  zoo::cli::add_plot(app);
  zoo::cli::add_lr_find(app);
  zoo::cli::add_info(app);
  zoo::cli::add_generate(app);
  zoo::cli::add_segment(app);
  zoo::cli::add_embed(app);
  zoo::cli::add_interop(app);
  zoo::cli::add_experiment(app);
  zoo::cli::add_bench(app);
  zoo::cli::add_dataset(app);
  install_signal_handlers();
  zoo::cli::set_command_line(argc, argv);
  try {
    app.parse(argc, argv);
  } catch (const zoo::cli::ExitCode& e) {
    return e.code;
  } catch (const zoo::training::Interrupted& e) {
    fmt::print(stderr, "zoo: {} ({}); continue with --resume\n", e.what(),
               e.signal > 0 ? strsignal(e.signal) : "stop requested");
    return e.signal > 0 ? 128 + e.signal : 1;
  } catch (const CLI::CallForHelp& e) {
    return app.exit(e);
  } catch (const CLI::CallForAllHelp& e) {
    return app.exit(e);
  } catch (const CLI::CallForVersion& e) {
    return app.exit(e);
  } catch (const CLI::ParseError& e) {
    std::string where = "zoo";
    for (const auto* sub : app.get_subcommands()) where += " " + sub->get_name();
    fmt::print(stderr, "zoo: error: {} (see '{} --help')\n", first_line(e.what()), where);
    return 2;
  } catch (const c10::Error& e) {
    fmt::print(stderr, "zoo: error: {}\n", torch_error_line(e.what_without_backtrace()));
    return 1;
  } catch (const std::exception& e) {
    fmt::print(stderr, "zoo: error: {}\n", zoo::cli::in_flags(first_line(e.what())));
    return 1;
  }
  return 0;
}
