#include "datasets/registry.h"
#include "models/registry.h"
#include "tools/cli/cli.h"

#include <cstdio>

namespace zoo::cli {

void add_list(CLI::App& app) {
  auto* cmd = app.add_subcommand("list", "List the registered models (name, then a one-line description)");
  auto datasets = std::make_shared<bool>(false);
  cmd->add_flag("--datasets", *datasets, "List the registered datasets instead");
  cmd->callback([datasets] {
    if (*datasets) {
      for (const auto& name : zoo::datasets::DatasetRegistry::instance().names())
        std::printf("%-16s %s\n", name.c_str(),
                    zoo::datasets::DatasetRegistry::instance().at(name).description.c_str());
      return;
    }
    const auto& registry = models::ModelRegistry::instance();
    for (const auto& name : registry.names())
      std::printf("%-16s %s\n", name.c_str(), registry.at(name).description.c_str());
  });
}

}  // namespace zoo::cli
