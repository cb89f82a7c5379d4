#include "tools/cli/plot.h"

#include "training/checkpoint.h"
#include "training/run.h"

#include <cstdlib>
#include <filesystem>

namespace zoo::cli {

void run_gnuplot(const std::string& script, const std::string& png) {
  const auto gp = std::filesystem::path(png).replace_extension(".gp").string();
  training::write_text_atomically(
      gp, "set terminal pngcairo size 900,560 font 'sans,10'\nset output '" + png + "'\n" + script);
  if (std::system("command -v gnuplot >/dev/null 2>&1") != 0)
    throw std::runtime_error("gnuplot is not installed, so " + png +
                             " was not drawn (the CSV is written): "
                             "apt-get install gnuplot-nox (or scripts/setup)");
  const std::string command = "gnuplot '" + gp + "' 2>&1";
  if (std::system(command.c_str()) != 0) throw std::runtime_error("gnuplot failed on " + gp);
}

std::string experiment_dir(const std::string& name) { return training::default_run_dir(name); }

}  // namespace zoo::cli
