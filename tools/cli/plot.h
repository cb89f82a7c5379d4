// Plots through gnuplot (Debian gnuplot-nox): the experiments write CSV and a gnuplot script, this runs it.
#pragma once

#include <string>

namespace zoo::cli {

/// Writes `script` next to `png` (same name, .gp) and runs gnuplot on it; a missing gnuplot or a failed run is
/// an error that says what to install.
void run_gnuplot(const std::string& script, const std::string& png);

/// "runs/NAME-YYYYmmdd-HHMMSS" for an experiment's output directory.
std::string experiment_dir(const std::string& name);

}  // namespace zoo::cli
