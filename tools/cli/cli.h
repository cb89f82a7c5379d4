// The `zoo` command line: one function per subcommand, each a thin layer over the library.
#pragma once

#include <CLI/CLI.hpp>
#include <nlohmann/json.hpp>

#include <string>

namespace zoo::cli {

void add_list(CLI::App& app);
void add_train(CLI::App& app);
void add_eval(CLI::App& app);
void add_info(CLI::App& app);
void add_generate(CLI::App& app);
void add_experiment(CLI::App& app);

/// Prints a metrics object as "name value" pairs on one line.
std::string format_metrics(const nlohmann::json& metrics);

}  // namespace zoo::cli
