#include "datasets/registry.h"
#include "models/registry.h"
#include "tools/cli/cli.h"
#include "training/callback.h"

#include <fmt/format.h>

#include <algorithm>

namespace zoo::cli {

void add_list(CLI::App& app) {
  auto* cmd = app.add_subcommand("list", "List the registered models (name, then a one-line description)");
  auto datasets = std::make_shared<bool>(false), callbacks = std::make_shared<bool>(false),
       tasks = std::make_shared<bool>(false);
  cmd->add_flag("--datasets", *datasets, "List the registered datasets instead");
  cmd->add_flag("--tasks", *tasks, "List the registered tasks (objectives) instead");
  cmd->add_flag("--callbacks", *callbacks, "List the registered callbacks (zoo train --callback NAME) instead");
  auto model = std::make_shared<std::string>();
  cmd->add_option("model", *model, "A model: list its options (zoo train MODEL --set name=value) instead");
  cmd->callback([=] {
    if (!model->empty()) {
      const auto& entry = models::ModelRegistry::instance().at(*model);
      fmt::print("{}: {}\noptions (--set name=value; the value is JSON):\n", entry.name, entry.description);
      for (const auto& s : entry.settings) {
        // The choices, unless the doc already names every one.
        const bool named = std::all_of(s.choices.begin(), s.choices.end(),
                                       [&](const std::string& c) { return s.doc.find(c) != std::string::npos; });
        fmt::print("  {:<26} {:<14} {}{}\n", s.name, s.default_value.dump(), s.doc.empty() ? s.type : s.doc,
                   named ? "" : " (" + join(s.choices) + ")");
      }
      return;
    }
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
