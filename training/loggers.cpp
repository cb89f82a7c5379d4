#include "training/loggers.h"

#include "core/choices.h"
#include "training/checkpoint.h"
#include "training/trainer.h"

#include <fmt/format.h>

#include <algorithm>
#include <cerrno>
#include <cmath>
#include <cstdlib>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <map>
#include <sstream>

#include <fcntl.h>
#include <unistd.h>

namespace zoo::training {

namespace fs = std::filesystem;

namespace {

std::string number(double v) { return std::isfinite(v) ? fmt::format("{:.9g}", v) : std::string(); }

std::string join_row(const std::vector<std::string>& cells) {
  std::string line;
  for (size_t i = 0; i < cells.size(); ++i) line += (i ? "," : "") + cells[i];
  return line + "\n";
}

/// The CSV row of `values` under `columns`: counters (step, epoch) as integers, a missing or non-finite value empty.
std::string row_of(const std::vector<std::string>& columns, const std::map<std::string, double>& values) {
  std::vector<std::string> cells;
  for (const auto& c : columns) {
    const auto it = values.find(c);
    cells.push_back(it == values.end()            ? std::string()
                    : c == "step" || c == "epoch" ? std::to_string(static_cast<int64_t>(it->second))
                                                  : number(it->second));
  }
  return join_row(cells);
}

/// A dotted metric name as a TensorBoard tag: train.loss -> train/loss, ema.val.accuracy -> ema/val/accuracy.
std::string tag_of(std::string name) {
  std::replace(name.begin(), name.end(), '.', '/');
  return name;
}

/// The numbers of an epoch record by dotted name: train.loss, val.accuracy, ema.val.loss, lr, ...
void flatten(const json& j, const std::string& prefix, std::map<std::string, double>& out) {
  for (const auto& [k, v] : j.items()) {
    const std::string name = prefix.empty() ? k : prefix + "." + k;
    if (v.is_object())
      flatten(v, name, out);
    else if (v.is_number())
      out[name] = v.get<double>();
  }
}

/// Keeps the rows of a CSV whose column `key` is at most `last`; rewrites the file (atomically) only when rows
/// (or a torn last line) have to go. Returns the header.
std::vector<std::string> keep_rows_up_to(const std::string& path, const std::string& key, int64_t last) {
  if (!fs::exists(path)) return {};
  std::ifstream in(path, std::ios::binary);
  std::stringstream buffer;
  buffer << in.rdbuf();
  const std::string text = buffer.str();
  const CsvTable table = read_csv(path);
  if (table.columns.empty()) {
    if (!text.empty()) write_text_atomically(path, "");
    return {};
  }
  size_t column = 0;
  while (column < table.columns.size() && table.columns[column] != key) ++column;
  std::string kept = join_row(table.columns);
  size_t rows = 0;
  for (const auto& row : table.rows) {
    char* end = nullptr;
    const long long value = column < row.size() ? std::strtoll(row[column].c_str(), &end, 10) : 0;
    if (column >= row.size() || row[column].empty() || *end != '\0' || value > last) continue;
    kept += join_row(row);
    ++rows;
  }
  if (kept != text) write_text_atomically(path, kept);
  return table.columns;
}

}  // namespace

CsvTable read_csv(const std::string& path) {
  CsvTable table;
  std::ifstream in(path, std::ios::binary);
  if (!in) return table;
  std::stringstream buffer;
  buffer << in.rdbuf();
  const std::string text = buffer.str();
  size_t start = 0;
  while (start < text.size()) {
    const size_t end = text.find('\n', start);
    if (end == std::string::npos) break;  // a torn last line
    std::vector<std::string> cells;
    std::string cell;
    for (size_t i = start; i < end; ++i) {
      if (text[i] == ',') {
        cells.push_back(cell);
        cell.clear();
      } else {
        cell += text[i];
      }
    }
    cells.push_back(cell);
    start = end + 1;
    if (table.columns.empty())
      table.columns = cells;
    else if (cells.size() == table.columns.size())
      table.rows.push_back(std::move(cells));
  }
  return table;
}

// ---------------------------------------------------------------- CSV

CsvLogger::CsvLogger(std::string run_dir)
    : steps_path_((fs::path(run_dir) / "steps.csv").string()),
      epochs_path_((fs::path(run_dir) / "epochs.csv").string()) {
  append_text(steps_path_, "", false);  // can they be written? (an error now, before training)
  append_text(epochs_path_, "", false);
}

void CsvLogger::on_fit_start(Trainer& trainer) {
  // The files agree with the checkpoint: rows after it are dropped; they are logged again as training repeats them.
  const auto& st = trainer.state();
  step_columns_ = keep_rows_up_to(steps_path_, "step", st.step);
  epoch_columns_ = keep_rows_up_to(epochs_path_, "epoch", st.epoch);
}

void CsvLogger::on_batch_end(Trainer& trainer, const StepInfo& step) {
  std::map<std::string, double> values{
      {"step", static_cast<double>(trainer.state().step)},
      {"epoch", static_cast<double>(step.epoch)},
      {"loss", step.loss},
      {"lr", step.lr},
      {"grad_norm", step.grad_norm},
      {"items_per_s", step.seconds > 0 ? static_cast<double>(step.step_items) *
                                             static_cast<double>(trainer.world_size()) / step.seconds
                                       : 0.0}};
  std::vector<std::string> terms;
  if (step.terms)
    for (const auto& [name, value] : *step.terms)
      if (value.defined() && value.numel() == 1 && !values.count(name)) {
        values[name] = value.item<double>();
        terms.push_back(name);
      }
  if (step_columns_.empty()) {
    step_columns_ = {"step", "epoch", "loss"};
    step_columns_.insert(step_columns_.end(), terms.begin(), terms.end());
    for (const char* c : {"lr", "grad_norm", "items_per_s"}) step_columns_.push_back(c);
    pending_ += join_row(step_columns_);
  }
  pending_ += row_of(step_columns_, values);
  if (++pending_rows_ >= 64) write_pending();
}

void CsvLogger::write_pending() {
  if (pending_.empty()) return;
  append_text(steps_path_, pending_, false);
  pending_.clear();
  pending_rows_ = 0;
}

void CsvLogger::on_epoch_end(Trainer& trainer, const json& record) {
  std::map<std::string, double> values;
  flatten(record, "", values);
  values["step"] = static_cast<double>(trainer.state().step);
  std::string text;
  if (epoch_columns_.empty()) {
    epoch_columns_ = {"epoch", "step"};
    for (const auto& [name, value] : values)
      if (name != "epoch" && name != "step") epoch_columns_.push_back(name);
    text += join_row(epoch_columns_);
  }
  text += row_of(epoch_columns_, values);
  // Both files on disk before the checkpoint that follows commits.
  append_text(steps_path_, pending_, true);
  pending_.clear();
  pending_rows_ = 0;
  append_text(epochs_path_, text, true);
}

void CsvLogger::on_interrupt(Trainer&) {
  append_text(steps_path_, pending_, true);
  pending_.clear();
  pending_rows_ = 0;
}

void CsvLogger::on_fit_end(Trainer&) { write_pending(); }

// ---------------------------------------------------------------- TensorBoard

TensorBoardLogger::TensorBoardLogger(const std::string& run_dir, json config)
    : writer_(std::make_unique<EventWriter>((fs::path(run_dir) / "tb").string())), config_(std::move(config)) {}

void TensorBoardLogger::on_fit_start(Trainer& trainer) {
  const auto& st = trainer.state();
  if (st.step > 0) {
    writer_->add_session_start(st.step + 1);  // TensorBoard drops what an earlier process logged after the checkpoint
  } else {
    writer_->add_text("config", "```\n" + config_.dump(2) + "\n```", 0);
  }
  writer_->flush();
}

void TensorBoardLogger::on_batch_end(Trainer& trainer, const StepInfo& step) {
  const int64_t s = trainer.state().step;
  writer_->add_scalar("train/loss_step", step.loss, s);
  if (step.terms)
    for (const auto& [name, value] : *step.terms)
      if (value.defined() && value.numel() == 1 && name != "loss")
        writer_->add_scalar("train/" + name + "_step", value.item<double>(), s);
  writer_->add_scalar("lr", step.lr, s);
  if (std::isfinite(step.grad_norm)) writer_->add_scalar("grad_norm", step.grad_norm, s);
  if (step.seconds > 0)
    writer_->add_scalar("items_per_s", static_cast<double>(step.step_items * trainer.world_size()) / step.seconds, s);
}

void TensorBoardLogger::on_epoch_end(Trainer& trainer, const json& record) {
  const int64_t s = trainer.state().step;
  std::map<std::string, double> values;
  flatten(record, "", values);
  for (const auto& [name, value] : values) {
    if (name == "step" || name == "lr") continue;  // the step is the x axis; lr is logged every step
    // items_per_s -> epoch/items_per_s: the record's own numbers apart from the per-step ones
    writer_->add_scalar(tag_of(name.find('.') == std::string::npos ? "epoch." + name : name), value, s);
  }
  for (const auto& [name, image] : trainer.pictures()) writer_->add_image("pictures/" + name, image, s);
  writer_->flush();
}

void TensorBoardLogger::on_interrupt(Trainer&) { writer_->flush(); }

void TensorBoardLogger::on_fit_end(Trainer& trainer) {
  const auto& final = trainer.state().final;
  std::map<std::string, double> values;
  flatten(final.value("test", json::object()), "final/test", values);
  if (final.contains("ema")) flatten(final["ema"].value("test", json::object()), "final/ema/test", values);
  for (const auto& [name, value] : values) {
    writer_->add_scalar(tag_of(name), value, trainer.state().step);
  }
  writer_->flush();
}

// ---------------------------------------------------------------- attaching, --log-errors

namespace {

/// A logger whose failures are a warning: the first one is reported on stderr and the logger is dropped.
class Lenient : public Callback {
 public:
  Lenient(std::string name, std::shared_ptr<Callback> inner) : name_(std::move(name)), inner_(std::move(inner)) {}
  bool wants_grad_norm() const override { return inner_ && inner_->wants_grad_norm(); }
  void on_fit_start(Trainer& t) override {
    guard([&] { inner_->on_fit_start(t); });
  }
  void on_batch_end(Trainer& t, const StepInfo& s) override {
    guard([&] { inner_->on_batch_end(t, s); });
  }
  void on_epoch_end(Trainer& t, const json& r) override {
    guard([&] { inner_->on_epoch_end(t, r); });
  }
  void on_interrupt(Trainer& t) override {
    guard([&] { inner_->on_interrupt(t); });
  }
  void on_fit_end(Trainer& t) override {
    guard([&] { inner_->on_fit_end(t); });
  }

 private:
  template <typename F>
  void guard(F&& f) {
    if (!inner_) return;
    try {
      f();
    } catch (const std::exception& e) {
      fmt::print(stderr, "warning: the {} logger stopped ({}); training goes on without it (--log-errors warn)\n",
                 name_, e.what());
      inner_.reset();
    }
  }
  std::string name_;
  std::shared_ptr<Callback> inner_;
};

}  // namespace

void attach_loggers(Trainer& trainer, const std::string& run_dir, const TrainOptions& options, const json& config) {
  const bool warn = options.log_errors() == "warn";
  for (const auto& name : split_list(options.log())) {
    std::shared_ptr<Callback> logger;
    try {
      if (name == "csv")
        logger = std::make_shared<CsvLogger>(run_dir);
      else if (name == "tensorboard")
        logger = std::make_shared<TensorBoardLogger>(run_dir, config);
      else
        throw std::invalid_argument(unknown_choice("logger", name, logger_names()));
    } catch (const std::exception& e) {
      if (!warn)
        throw std::runtime_error(
            fmt::format("the {} logger cannot start: {} (--log-errors warn trains without it)", name, e.what()));
      fmt::print(stderr, "warning: the {} logger cannot start ({}); training goes on without it\n", name, e.what());
      continue;
    }
    trainer.add_callback(warn ? std::make_shared<Lenient>(name, logger) : logger);
  }
}

}  // namespace zoo::training
