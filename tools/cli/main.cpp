#include "tools/cli/cli.h"

#include <torch/torch.h>

#include <cstdio>
#include <iostream>

namespace {
std::string first_line(const std::string& s) { return s.substr(0, s.find('\n')); }
}  // namespace

int main(int argc, char** argv) {
  CLI::App app{"zoo: classic deep-learning models as trainable LibTorch modules"};
  app.require_subcommand(1);
  app.fallthrough(false);
  zoo::cli::add_list(app);
  zoo::cli::add_train(app);
  zoo::cli::add_eval(app);
  zoo::cli::add_info(app);
  zoo::cli::add_generate(app);
  zoo::cli::add_experiment(app);
  try {
    app.parse(argc, argv);
  } catch (const CLI::CallForHelp& e) {
    return app.exit(e);
  } catch (const CLI::CallForAllHelp& e) {
    return app.exit(e);
  } catch (const CLI::ParseError& e) {
    std::string where = "zoo";
    for (const auto* sub : app.get_subcommands()) where += " " + sub->get_name();
    std::fprintf(stderr, "zoo: error: %s (see '%s --help')\n", first_line(e.what()).c_str(), where.c_str());
    return 2;
  } catch (const c10::Error& e) {
    std::fprintf(stderr, "zoo: error: %s\n", first_line(e.what_without_backtrace()).c_str());
    return 1;
  } catch (const std::exception& e) {
    std::fprintf(stderr, "zoo: error: %s\n", first_line(e.what()).c_str());
    return 1;
  }
  return 0;
}
