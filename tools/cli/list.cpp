#include "datasets/registry.h"
#include "models/registry.h"
#include "tools/cli/cli.h"
#include "training/callback.h"

#include <fmt/format.h>

namespace zoo::cli {

void add_list(CLI::App& app) {
  auto* cmd = app.add_subcommand("list", "List the registered models (name, then a one-line description)");
  auto datasets = std::make_shared<bool>(false), callbacks = std::make_shared<bool>(false),
       tasks = std::make_shared<bool>(false);
  cmd->add_flag("--datasets", *datasets, "List the registered datasets instead");
  cmd->add_flag("--tasks", *tasks, "List the registered tasks (objectives) instead");
  cmd->add_flag("--callbacks", *callbacks, "List the registered callbacks (zoo train --callback NAME) instead");
  cmd->callback([=] {
    auto print = [](const auto& registry, auto describe) {
      for (const auto& name : registry.names()) fmt::print("{:<16} {}\n", name, describe(registry.at(name)));
    };
    if (*datasets)
      print(datasets::DatasetRegistry::instance(), [](const auto& e) { return e.description; });
    else if (*callbacks)
      print(training::CallbackRegistry::instance(), [](const auto& e) { return e.description; });
    else if (*tasks)
      print(training::ObjectiveRegistry::instance(), [](const auto&) { return std::string(); });
    else
      print(models::ModelRegistry::instance(), [](const auto& e) { return e.description; });
  });
}

}  // namespace zoo::cli
