// Plots through gnuplot (Debian gnuplot-nox): the experiments write CSV and a gnuplot script, this runs it.
#pragma once

#include <torch/torch.h>

#include <string>
#include <vector>

namespace zoo::cli {

/// `text` as a gnuplot single-quoted string literal ('' is a quote inside one).
std::string gnuplot_string(const std::string& text);

/// Writes `script` next to `png` (same name, .gp) and runs gnuplot on it; a missing gnuplot or a failed run is
/// an error that says what to install.
void run_gnuplot(const std::string& script, const std::string& png, const std::string& size = "900,560");

/// A picture of label maps that people can read: `tiles` [rows * columns, 3, H, W] in [0, 1] (images and
/// colorize_labels maps), `columns` per row under the column `titles`, each tile drawn at least 160 pixels wide
/// (pixels as squares), beside a legend of the classes `ids` in their colours, named `names[id]` where given.
/// Without gnuplot: the enlarged grid alone, and a line on stderr saying what to install for the rest.
/// `scale` > 0 draws each pixel as scale x scale instead.
void save_label_figure(const torch::Tensor& tiles, int64_t columns, const std::vector<std::string>& titles,
                       const std::vector<int64_t>& ids, const std::vector<std::string>& names, const std::string& png,
                       int64_t scale = 0);

/// The class ids that occur in any of the label maps, ascending (for save_label_figure's legend).
std::vector<int64_t> present_classes(const std::vector<torch::Tensor>& label_maps);

/// "runs/NAME-YYYYmmdd-HHMMSS" for an experiment's output directory.
std::string experiment_dir(const std::string& name);

}  // namespace zoo::cli
