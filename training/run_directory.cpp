#include "training/run_directory.h"

#include "training/checkpoint.h"
#include "training/messages.h"
#include "training/progress.h"

#include <fmt/format.h>

#include <cmath>
#include <cstdio>
#include <filesystem>
#include <fstream>

namespace zoo::training {
namespace fs = std::filesystem;

RunDirectory::RunDirectory(std::string path, bool writer) : path_(std::move(path)), writer_(writer) {}

void RunDirectory::recover() const {
  if (writer_ && (fs::exists(fs::path(path_) / ".commit") || fs::exists(fs::path(path_) / ".staging")))
    recover_checkpoint(path_);
}

bool RunDirectory::has_checkpoint() const { return fs::exists(file("state.json")); }

std::string RunDirectory::file(const std::string& name) const { return checkpoint_file(path_, name); }

void RunDirectory::refuse_existing_run() const {
  recover();
  if (fs::exists(fs::path(path_) / "state.json"))
    throw std::runtime_error(path_ + " already holds a run; continue it with --resume " + path_ +
                             " or choose another --out");
}

void RunDirectory::create(const json& config) const {
  // The other ranks looked before the barrier in Run::create; looking again now could find rank 0's new run.
  if (!writer_) return;
  refuse_existing_run();
  std::error_code ec;
  fs::create_directories(path_, ec);
  if (ec) throw std::runtime_error("cannot create run directory " + path_ + ": " + ec.message());
  write_text_atomically((fs::path(path_) / "config.json").string(), config.dump(2) + "\n");
}

json RunDirectory::read_config() const {
  const auto path = (fs::path(path_) / "config.json").string();
  if (!fs::exists(path_)) throw std::runtime_error("run directory " + path_ + " does not exist");
  if (!fs::exists(path)) throw std::runtime_error(path_ + " is not a zoo run directory (no config.json)");
  return read_json_file(path);
}

void RunDirectory::update_config(const std::function<void(json&)>& change) const {
  if (!writer_) return;
  json saved = read_config();
  change(saved);
  write_text_atomically((fs::path(path_) / "config.json").string(), saved.dump(2) + "\n");
}

void RunDirectory::save(Trainer& trainer, bool best) const {
  if (!writer_) return;
  const auto& st = trainer.state();
  const json state = {{"epoch", st.epoch},
                      {"step", st.step},
                      {"epoch_step", st.epoch_step},
                      {"partial", st.partial},
                      {"best", std::isnan(st.best) ? json(nullptr) : json(st.best)},
                      {"best_metric", trainer.monitor()},
                      {"best_epoch", st.best_epoch},
                      {"world_size", trainer.world_size()},
                      {"last", st.last},
                      {"final", st.final},
                      {"callbacks", trainer.callback_states()},
                      {"rng_state", rng_state_hex()}};
  std::vector<CheckpointFile> files = {
      {"model.pt", [&](const std::string& p) { save_module(*trainer.model().ptr(), p); }},
      {"optimizer.pt",
       [&](const std::string& p) {
         torch::serialize::OutputArchive archive;
         trainer.optimizer().save(archive);
         save_archive(archive, p);
       }},
      {"state.json", [&](const std::string& p) { write_bytes(p, state.dump(2) + "\n"); }}};
  if (best)
    files.insert(files.begin(), {"best.pt", [&](const std::string& p) { save_module(*trainer.model().ptr(), p); }});
  write_checkpoint(path_, files);
}

void RunDirectory::write_test(const json& final) const {
  if (!writer_) return;
  write_text_atomically((fs::path(path_) / "test.json").string(), final.dump(2) + "\n");
}

void RunDirectory::append_metrics(const json& record) const {
  if (!writer_) return;
  // metrics.jsonl is a log, appended after the commit; restore() repairs it from state.json if needed.
  std::ofstream log(fs::path(path_) / "metrics.jsonl", std::ios::app);
  log << record.dump() << "\n";
}

void RunDirectory::load_weights(torch::nn::Module& module, const std::string& checkpoint) const {
  if (checkpoint != "best" && checkpoint != "last")
    throw std::invalid_argument(
        fmt::format("a run holds the checkpoints best and last, not '{}'; choose one of them", checkpoint));
  const auto model_path = file("model.pt");
  if (!fs::exists(model_path))
    throw std::runtime_error(path_ + " has no model.pt yet: the run has not finished an epoch");
  const auto best_path = file("best.pt");
  load_module(module, checkpoint == "best" && fs::exists(best_path) ? best_path : model_path);
}

void RunDirectory::restore(Trainer& trainer) const {
  recover();  // only a writer repairs; the other ranks read after it (see Run::resume)
  const fs::path run(path_);
  if (!fs::exists(run / "state.json"))
    throw std::runtime_error(path_ +
                             " has no checkpoint yet (no state.json): the run stopped before its first "
                             "epoch ended; start it again without --resume (the same --out is fine)");
  const json state = read_json_file((run / "state.json").string());
  TrainState st;
  try {
    st.epoch = state.at("epoch").get<int64_t>();
    st.step = state.at("step").get<int64_t>();
    st.best = state.at("best").is_null() ? std::numeric_limits<double>::quiet_NaN() : state.at("best").get<double>();
    st.best_epoch = state.at("best_epoch").get<int64_t>();
    st.last = state.at("last");
    st.final = state.value("final", json::object());
    st.epoch_step = state.value("epoch_step", int64_t{0});
    st.partial = state.value("partial", json::object());
    const int64_t saved_world = state.value("world_size", int64_t{1});
    if (st.epoch_step > 0 && saved_world != trainer.world_size())
      throw std::runtime_error(fmt::format(
          "{} stopped in the middle of epoch {} with {} rank(s); resume it with {} (at an epoch boundary any "
          "number of ranks may continue)",
          path_, st.epoch + 1, saved_world,
          saved_world > 1 ? "--nproc " + std::to_string(saved_world) : "one process"));
    trainer.load_callback_states(state.value("callbacks", json::object()));
  } catch (const json::exception& e) {
    throw std::runtime_error((run / "state.json").string() + " is damaged (" + first_line(e.what()) + ")");
  }
  trainer.set_state(st);
  if (fs::exists(run / "best.pt")) {  // the best epoch's weights, for the final test of a resumed run
    load_module(*trainer.model().ptr(), (run / "best.pt").string());
    trainer.set_best_weights(module_tensors(*trainer.model().ptr(), true));
  }
  load_module(*trainer.model().ptr(), (run / "model.pt").string());
  trainer.model().ptr()->to(trainer.device());
  try {
    torch::serialize::InputArchive archive;
    archive.load_from((run / "optimizer.pt").string(), trainer.device());
    trainer.optimizer().load(archive);
  } catch (const c10::Error& e) {
    throw std::runtime_error((run / "optimizer.pt").string() + " cannot be loaded (" +
                             first_line(e.what_without_backtrace()) + "); was the optimizer changed?");
  }
  set_rng_state_hex(state.value("rng_state", std::string()));
  // Make metrics.jsonl agree with the checkpoint: keep the epochs it covers, drop a torn last line, and add the
  // checkpoint's own epoch if the process died between the commit and the append.
  const fs::path log_path = run / "metrics.jsonl";
  std::vector<std::string> keep;
  int64_t logged = 0;
  if (std::ifstream in(log_path); in) {
    for (std::string line; std::getline(in, line);) {
      if (line.empty()) continue;
      json rec;
      try {
        rec = json::parse(line);
      } catch (const json::exception&) {
        continue;  // a torn last line
      }
      const int64_t e = rec.value("epoch", int64_t{0});
      if (e > st.epoch) continue;
      logged = std::max(logged, e);
      keep.push_back(rec.dump());
    }
  }
  if (logged < st.epoch && !st.last.empty() && st.last.value("epoch", int64_t{0}) == st.epoch)
    keep.push_back(st.last.dump());
  std::string text;
  for (const auto& l : keep) text += l + "\n";
  if (writer_) write_text_atomically(log_path.string(), text);
}

void CheckpointCallback::on_epoch_end(Trainer& trainer, const json& record) {
  dir_->save(trainer, trainer.state().best_epoch == record.value("epoch", int64_t{-1}));
  dir_->append_metrics(record);
}

void CheckpointCallback::on_fit_end(Trainer& trainer) {
  dir_->save(trainer);
  dir_->write_test(trainer.state().final);
}

void CheckpointCallback::on_interrupt(Trainer& trainer) { dir_->save(trainer); }

void ConsoleCallback::on_epoch_end(Trainer& trainer, const json& record) {
  fmt::print("{}\n", format_epoch_summary(record, trainer.options().epochs()));
  std::fflush(stdout);
}

void ProgressCallback::on_epoch_start(Trainer& trainer, int64_t epoch, int64_t, int64_t steps) {
  progress_ = std::make_unique<Progress>(fmt::format("epoch {}/{}", epoch, trainer.options().epochs()), steps,
                                         Progress::stderr_is_terminal(), true);
}

void ProgressCallback::on_batch_end(Trainer&, const StepInfo& step) {
  if (progress_) progress_->update(step.step, step.items, step.mean_loss);
}

void ProgressCallback::on_train_end(Trainer&) {
  if (progress_) progress_->finish();
  progress_.reset();
}

}  // namespace zoo::training
