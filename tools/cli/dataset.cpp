// `zoo dataset export NAME --out DIR`: a classification dataset written as class folders of PNGs
// (DIR/train/<class>/00001.png, DIR/test/<class>/...), the layout `--dataset image-classes` and torchvision's
// ImageFolder read.
#include "datasets/classes.h"
#include "datasets/images.h"
#include "datasets/registry.h"
#include "tools/cli/cli.h"

#include <fmt/format.h>

#include <filesystem>
#include <set>

namespace zoo::cli {

namespace fs = std::filesystem;

namespace {

struct ExportArgs {
  std::string name, out, data_dir;
  int64_t limit = 0, threads = 0;
  std::vector<std::string> data_options;
};

/// A class name as a folder name: path separators and a leading dot replaced, never empty.
std::string folder_name(std::string name, size_t id) {
  for (auto& c : name)
    if (c == '/' || c == '\\' || c == '\0') c = '-';
  if (name.empty() || name == "." || name == "..") name = std::to_string(id);
  if (name[0] == '.') name[0] = '_';
  return name;
}

void write_split(const datasets::Dataset& data, const fs::path& dir, const std::vector<std::string>& folders,
                 int64_t threads) {
  const int64_t n = data.size();
  const int width = static_cast<int>(std::to_string(n).size());
  for (const auto& f : folders) fs::create_directories(dir / f);
  constexpr int64_t kChunk = 256;  // items read at once
  for (int64_t lo = 0; lo < n; lo += kChunk) {
    const auto batch = data.get(torch::arange(lo, std::min(n, lo + kChunk), torch::kInt64));
    if (batch.target.dim() != 1 || batch.input.dim() != 4 || (batch.input.size(1) != 1 && batch.input.size(1) != 3))
      throw std::invalid_argument(
          "zoo dataset export writes image classification data (images [C, H, W] with one "
          "label each); " +
          data.describe() + " has items " + c10::str(batch.input.sizes().slice(1)) + " with targets " +
          c10::str(batch.target.sizes().slice(1)));
    const auto labels = batch.target.to(torch::kInt64);
    datasets::parallel_items(static_cast<size_t>(batch.size()), threads, [&](size_t j) {
      const int64_t label = labels[static_cast<int64_t>(j)].item<int64_t>();
      if (label < 0 || label >= static_cast<int64_t>(folders.size()))
        throw std::runtime_error(
            fmt::format("item {} has label {}, outside the {} classes", lo + j, label, folders.size()));
      datasets::save_png(
          batch.input[static_cast<int64_t>(j)],
          (dir / folders[static_cast<size_t>(label)] / fmt::format("{:0{}}.png", lo + static_cast<int64_t>(j), width))
              .string());
    });
  }
}

}  // namespace

ExportCounts export_class_folders(datasets::DataConfig data, const std::string& dir, int64_t threads) {
  if (fs::exists(dir) && !(fs::is_directory(dir) && fs::is_empty(dir)))
    throw std::invalid_argument("--out " + dir + " already exists; give a new directory");
  data.val_fraction = 0;  // every training item, none held out
  const auto splits = datasets::load_splits(data);
  const auto& names = splits.class_names;
  if (names.empty())
    throw std::invalid_argument("dataset '" + data.name +
                                "' names no classes: zoo dataset export writes classification "
                                "data");
  std::vector<std::string> folders;
  std::set<std::string> seen;
  for (size_t i = 0; i < names.size(); ++i) {
    auto f = folder_name(names[i], i);
    while (!seen.insert(f).second) f += "_" + std::to_string(i);
    folders.push_back(f);
  }
  // Written beside the target and renamed at the end: an interrupted export leaves no half-written DIR.
  const fs::path out(dir), partial = dir + ".partial";
  fs::remove_all(partial);
  try {
    write_split(*splits.train, partial / "train", folders, threads);
    write_split(*splits.test, partial / "test", folders, threads);
  } catch (...) {
    std::error_code ec;
    fs::remove_all(partial, ec);
    throw;
  }
  if (fs::exists(out)) fs::remove(out);  // an empty directory
  fs::rename(partial, out);
  return {splits.train->size(), splits.test->size(), static_cast<int64_t>(folders.size())};
}

namespace {

void run_export(const ExportArgs& a) {
  datasets::DataConfig data;
  data.name = a.name;
  data.data_dir = a.data_dir;
  data.limit = a.limit;
  for (const auto& item : a.data_options) {
    auto [key, value] = parse_set(item, "--data-option");
    data.options[key] = value;
  }
  const auto n = export_class_folders(data, a.out, a.threads);
  fmt::print("wrote {}: {} training and {} test images in {} class folders (train/<class>/, test/<class>/)\n", a.out,
             n.train, n.test, n.classes);
}

}  // namespace

void add_dataset(CLI::App& app) {
  auto* dataset = app.add_subcommand("dataset", "Work with datasets: export one as class folders of PNGs");
  dataset->require_subcommand(1);
  auto a = std::make_shared<ExportArgs>();
  auto* cmd = dataset->add_subcommand(
      "export", "Write a classification dataset as DIR/train/<class>/N.png and DIR/test/<class>/N.png");
  cmd->add_option("name", a->name, "Dataset (see 'zoo list --datasets'), e.g. fashion-mnist")->required();
  cmd->add_option("--out", a->out, "New directory to write")->required();
  cmd->add_option("--data-dir", a->data_dir, "The dataset's directory (default: its own)");
  cmd->add_option("--data-option", a->data_options, "Dataset option key=value, repeatable");
  cmd->add_option("--limit", a->limit, "Only the first N items of each split (0 = all)")->check(non_negative());
  cmd->add_option("--threads", a->threads, "Threads writing PNGs (0 = one per core)")->check(non_negative());
  cmd->callback([a] { run_export(*a); });
}

}  // namespace zoo::cli
