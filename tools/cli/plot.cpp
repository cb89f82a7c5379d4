#include "tools/cli/plot.h"

#include "datasets/images.h"
#include "training/checkpoint.h"
#include "training/run.h"

#include <fmt/format.h>

#include <algorithm>
#include <cstdio>
#include <cstdlib>
#include <filesystem>
#include <fstream>

namespace zoo::cli {

namespace {

bool have_gnuplot() { return std::system("command -v gnuplot >/dev/null 2>&1") == 0; }

/// `text` as one word of a /bin/sh command line.
std::string shell_word(const std::string& text) {
  std::string out = "'";
  for (const char c : text) out += c == '\'' ? std::string("'\\''") : std::string(1, c);
  return out + "'";
}

}  // namespace

std::string gnuplot_string(const std::string& text) {
  std::string out = "'";
  for (const char c : text) out += c == '\'' ? std::string("''") : std::string(1, c);
  return out + "'";
}

void run_gnuplot(const std::string& script, const std::string& png, const std::string& size) {
  if (!have_gnuplot())
    throw std::runtime_error("gnuplot is not installed, so " + png +
                             " was not drawn (the CSV is written): "
                             "apt-get install gnuplot-nox (or scripts/setup)");
  const auto gp = std::filesystem::path(png).replace_extension(".gp").string();
  const auto terminal = "set terminal pngcairo size " + size + " font 'sans,10'\n";
  zoo::write_text_atomically(gp, terminal + "set output " + gnuplot_string(png) + "\n" + script);  // to rerun
  // gnuplot draws into PNG.tmp, which becomes PNG only once it is whole (gnuplot does not report a full disk).
  zoo::write_file_atomically(png, [&](const std::string& tmp) {
    // The same script with the temporary output, run from a file (a pipe could break under gnuplot); its
    // warnings go to a log whose last line is the reason when it fails.
    const std::string run = tmp + ".gp", log = tmp + ".log";
    zoo::write_bytes(run, terminal + "set output " + gnuplot_string(tmp) + "\n" + script + "\nunset output\n", false);
    const std::string command = "gnuplot " + shell_word(run) + " >" + shell_word(log) + " 2>&1";
    const bool ok = std::system(command.c_str()) == 0;
    std::string reason;
    for (std::ifstream in(log); std::getline(in, reason);) {
    }
    std::error_code ec;
    std::filesystem::remove(run, ec);
    std::filesystem::remove(log, ec);
    if (!ok) throw std::runtime_error("gnuplot failed on " + gp + (reason.empty() ? "" : ": " + reason));
    if (!datasets::is_whole_png(tmp))
      throw std::runtime_error("cannot write " + png + ": gnuplot's picture is cut short (is the disk full?)");
  });
}

void save_label_figure(const torch::Tensor& tiles, int64_t columns, const std::vector<std::string>& titles,
                       const std::vector<int64_t>& ids, const std::vector<std::string>& names, const std::string& png,
                       int64_t pixel_scale) {
  TORCH_CHECK(tiles.dim() == 4 && tiles.size(1) == 3 && columns > 0 && tiles.size(0) % columns == 0,
              "save_label_figure: expects [rows * columns, 3, H, W], got ", tiles.sizes());
  constexpr int64_t pad = 2, min_tile = 160, title_band = 24;
  const int64_t tile_w = tiles.size(3),
                scale = pixel_scale > 0 ? pixel_scale : std::max<int64_t>(1, (min_tile + tile_w - 1) / tile_w);
  auto grid = datasets::make_grid(tiles, datasets::GridOptions().nrow(columns).padding(pad).pad_value(1.0));
  grid = grid.repeat_interleave(scale, 1).repeat_interleave(scale, 2);  // nearest neighbours: pixels as squares
  if (!have_gnuplot()) {
    datasets::save_png(grid, png);
    fmt::print(stderr, "note: {} has no titles or legend: apt-get install gnuplot-nox (or scripts/setup) for them\n",
               png);
    return;
  }
  const int64_t gw = grid.size(2), gh = grid.size(1);
  size_t longest = 0;
  for (const auto id : ids) {
    const auto i = static_cast<size_t>(id);
    longest = std::max(longest, fmt::format("{}", id).size() + (i < names.size() ? names[i].size() + 1 : 0));
  }
  const int64_t legend_w = 60 + 8 * static_cast<int64_t>(longest);
  const int64_t width = gw + legend_w,
                height = std::max<int64_t>(gh + title_band, 40 + 18 * static_cast<int64_t>(ids.size()));
  const auto x_screen = [&](double px) { return px / static_cast<double>(width); };
  const auto y_screen = [&](double px) { return 1.0 - px / static_cast<double>(height); };  // px from the top
  const auto grid_png = std::filesystem::path(png).replace_extension(".grid.png").string();
  datasets::save_png(grid, grid_png);
  std::string script = fmt::format(
      "unset border; unset tics\n"
      "set lmargin at screen 0; set rmargin at screen {}; set tmargin at screen {}; set bmargin at screen {}\n"
      "set xrange [-0.5:{}]; set yrange [-0.5:{}]\n"
      "set key at screen {}, screen {} left top Left reverse samplen 1 spacing 1.2\n",
      x_screen(static_cast<double>(gw)), y_screen(title_band), y_screen(static_cast<double>(gh + title_band)), gw - 0.5,
      gh - 0.5, x_screen(static_cast<double>(gw) + 12), y_screen(title_band));
  for (size_t c = 0; c < titles.size() && static_cast<int64_t>(c) < columns; ++c) {
    const double centre = static_cast<double>((pad + static_cast<int64_t>(c) * (tile_w + pad)) * scale) +
                          static_cast<double>(tile_w * scale) / 2;
    script += fmt::format("set label {} {} at screen {}, screen {} center\n", c + 1, gnuplot_string(titles[c]),
                          x_screen(centre), y_screen(title_band / 2.0));
  }
  script += fmt::format("plot {} binary filetype=png with rgbimage notitle", gnuplot_string(grid_png));
  for (const auto id : ids) {
    const auto i = static_cast<size_t>(id);
    const auto label = i < names.size() ? fmt::format("{} {}", id, names[i]) : fmt::format("{}", id);
    script += fmt::format(", \\\n  keyentry with boxes fs solid 1.0 border lc rgb 'black' fc rgb '{}' title {}",
                          datasets::class_colour_hex(id), gnuplot_string(label));
  }
  script += "\n";
  // The grid and the script are scaffolding here (the picture is the product): both go, whatever happens.
  const auto gp = std::filesystem::path(png).replace_extension(".gp").string();
  const auto clean = [&] {
    std::remove(grid_png.c_str());
    std::remove(gp.c_str());
  };
  try {
    run_gnuplot(script, png, fmt::format("{},{}", width, height));
  } catch (...) {
    clean();
    throw;
  }
  clean();
}

std::vector<int64_t> present_classes(const std::vector<torch::Tensor>& label_maps) {
  std::vector<torch::Tensor> flat;
  for (const auto& m : label_maps) flat.push_back(m.flatten().to(torch::kCPU, torch::kInt64));
  const auto ids = std::get<0>(torch::_unique(torch::cat(flat), /*sorted=*/true));
  return {ids.data_ptr<int64_t>(), ids.data_ptr<int64_t>() + ids.numel()};
}

std::string experiment_dir(const std::string& name) { return training::default_run_dir(name); }

}  // namespace zoo::cli
