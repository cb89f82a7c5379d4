#include "training/run_directory.h"

#include "training/checkpoint.h"
#include "training/messages.h"
#include "training/progress.h"

#include <fcntl.h>
#include <fmt/format.h>
#include <sys/file.h>
#include <sys/stat.h>
#include <unistd.h>

#include <algorithm>
#include <chrono>
#include <cmath>
#include <cstdio>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <map>
#include <mutex>
#include <optional>
#include <sstream>
#include <thread>

namespace zoo::training {
namespace fs = std::filesystem;

namespace {

std::string epoch_file(int64_t epoch) { return fmt::format("epoch-{}.pt", epoch); }

/// Saves `weights` (module_tensors order) through `module`, whose own weights are put back afterwards.
void save_weights(torch::nn::Module& module, const std::vector<torch::Tensor>& weights, const std::string& path) {
  const auto own = module_tensors(module, true);
  load_module_tensors(module, weights);
  try {
    save_module(module, path);
  } catch (...) {
    load_module_tensors(module, own);
    throw;
  }
  load_module_tensors(module, own);
}

/// The epochs of the epoch-N.pt files in `dir`.
std::vector<int64_t> epoch_files(const fs::path& dir) {
  std::vector<int64_t> epochs;
  std::error_code ec;
  for (fs::directory_iterator it(dir, ec), end; !ec && it != end; it.increment(ec)) {
    const auto name = it->path().filename().string();
    if (name.size() > 9 && name.size() < 25 && name.rfind("epoch-", 0) == 0 && name.substr(name.size() - 3) == ".pt" &&
        name.find_first_not_of("0123456789", 6) == name.size() - 3)
      epochs.push_back(std::stoll(name.substr(6, name.size() - 9)));
  }
  std::sort(epochs.begin(), epochs.end());
  return epochs;
}

/// Removes the epoch-N.pt files of epochs no longer in the top k (after the commit that dropped them).
void remove_dropped_epochs(const fs::path& dir, const std::vector<std::pair<int64_t, double>>& top_k) {
  for (const int64_t e : epoch_files(dir)) {
    bool kept = false;
    for (const auto& [epoch, value] : top_k) kept |= epoch == e;
    std::error_code ec;
    if (!kept) fs::remove(dir / epoch_file(e), ec);
  }
}

/// The whole number `key` of `object` (`fallback` when absent; required when there is none), from `lo` to `hi`;
/// anything else is an error naming the key and the value.
int64_t whole_number(const json& object, const std::string& key, int64_t lo, int64_t hi,
                     std::optional<int64_t> fallback = std::nullopt) {
  const auto it = object.find(key);
  if (it == object.end()) {
    if (fallback) return *fallback;
    throw std::runtime_error("no \"" + key + "\"");
  }
  const bool whole = it->is_number_integer() && !(it->is_number_unsigned() && it->get<uint64_t>() > INT64_MAX);
  if (!whole || it->get<int64_t>() < lo || it->get<int64_t>() > hi)
    throw std::runtime_error(
        fmt::format("\"{}\" is {}: expected a whole number from {} to {}", key, it->dump().substr(0, 40), lo, hi));
  return it->get<int64_t>();
}

/// A number, or null for "none yet" (NaN).
double number_or_null(const json& object, const std::string& key) {
  const auto& v = object.at(key);
  if (v.is_null()) return std::numeric_limits<double>::quiet_NaN();
  if (!v.is_number()) throw std::runtime_error("\"" + key + "\" is " + v.dump().substr(0, 40) + ": expected a number");
  return v.get<double>();
}

/// An object member (`{}` when absent).
json object_member(const json& object, const std::string& key) {
  const auto it = object.find(key);
  if (it == object.end()) return json::object();
  if (!it->is_object())
    throw std::runtime_error("\"" + key + "\" is " + it->dump().substr(0, 40) + ": expected an object");
  return *it;
}

}  // namespace

std::optional<json> parse_epoch_record(const std::string& line) {
  json record;
  try {
    record = parse_json_or_discard(line, "a line of metrics.jsonl");
  } catch (const std::exception&) {
    return std::nullopt;  // nested too deep to be a record
  }
  const auto epoch = record.is_object() ? record.find("epoch") : record.end();
  if (!record.is_object() || epoch == record.end() || !epoch->is_number_integer() || epoch->get<int64_t>() < 1)
    return std::nullopt;
  return record;
}

RunDirectory::RunDirectory(std::string path, bool writer) : path_(std::move(path)), writer_(writer) {}

/// flock on the directory itself: no file of its own in the run, released by the kernel with the descriptor.
struct RunDirectory::Lock {
  int fd = -1;
  bool created = false;  ///< lock() made the directory
  ~Lock() {
    if (fd >= 0) close(fd);
  }
};

namespace {

/// The process holding a flock on `fd`'s file, from /proc/locks ("1: FLOCK ADVISORY WRITE PID MAJ:MIN:INODE
/// ..."); 0 when not found.
int64_t flock_holder(int fd) {
  struct stat st {};
  if (fstat(fd, &st) != 0) return 0;
  std::ifstream in("/proc/locks");
  for (std::string line; std::getline(in, line);) {
    std::istringstream fields(line);
    std::string id, kind, mode, access, device;
    int64_t pid = 0;
    if (!(fields >> id >> kind >> mode >> access >> pid >> device) || kind != "FLOCK") continue;
    const auto colon = device.rfind(':');
    if (colon != std::string::npos && device.substr(colon + 1) == std::to_string(st.st_ino)) return pid;
  }
  return 0;
}

}  // namespace

std::optional<std::string> run_owning(const std::string& path) {
  std::error_code ec;
  const auto full = fs::weakly_canonical(fs::absolute(path, ec), ec);
  if (ec) return std::nullopt;
  const auto dir = full.parent_path();
  if (!fs::exists(dir / "config.json", ec)) return std::nullopt;
  const auto name = full.filename().string();
  static const std::vector<std::string> own{"config.json", "state.json", "metrics.jsonl", "test.json",
                                            "model.pt",    "best.pt",    "optimizer.pt",  "ema.pt",
                                            ".commit",     ".staging",   "steps.csv",     "epochs.csv"};
  const bool epoch = name.rfind("epoch-", 0) == 0 && name.size() > 9 && name.substr(name.size() - 3) == ".pt";
  if (std::find(own.begin(), own.end(), name) != own.end() || epoch) return dir.string();
  return std::nullopt;
}

void RunDirectory::lock(bool create) const {
  if (!writer_ || lock_) return;
  auto held = std::make_shared<Lock>();
  std::error_code ec;
  const fs::path dir(path_);
  if (fs::exists(dir, ec) && !fs::is_directory(dir, ec))
    throw std::runtime_error(path_ + " is a file, not a run directory; choose another --out");
  if (create) held->created = fs::create_directories(dir, ec);
  if (ec) throw std::runtime_error("cannot create run directory " + path_ + ": " + ec.message());
  if (create && !held->created && !fs::exists(dir / "config.json") && !fs::is_empty(dir, ec))
    throw std::runtime_error(path_ +
                             " is not empty and holds no zoo run (no config.json); choose another --out (a new or "
                             "empty directory)");
  held->fd = open(path_.c_str(), O_RDONLY | O_DIRECTORY | O_CLOEXEC);
  if (held->fd < 0) throw std::runtime_error("cannot open run directory " + path_ + ": " + std::strerror(errno));
  // Within one process the lock is shared: a program that trains a run and then resumes it (the tests do) holds
  // it through both objects. The lock keeps other processes out.
  struct stat st {};
  if (fstat(held->fd, &st) != 0)
    throw std::runtime_error("cannot open run directory " + path_ + ": " + std::strerror(errno));
  static std::mutex mutex;
  static std::map<std::pair<dev_t, ino_t>, std::weak_ptr<Lock>> held_here;
  std::lock_guard<std::mutex> guard(mutex);
  if (auto shared = held_here[{st.st_dev, st.st_ino}].lock()) {
    lock_ = std::move(shared);
    return;
  }
  if (flock(held->fd, LOCK_EX | LOCK_NB) != 0) {
    if (errno != EWOULDBLOCK)
      throw std::runtime_error("cannot lock run directory " + path_ + ": " + std::strerror(errno));
    const int64_t pid = flock_holder(held->fd);
    throw std::runtime_error(fmt::format("{} is being written by {}; wait for it or choose another --out", path_,
                                         pid > 0 ? fmt::format("process {}", pid) : "another process"));
  }
  held_here[{st.st_dev, st.st_ino}] = held;
  lock_ = std::move(held);
}

void RunDirectory::remove_if_unused() const {
  if (!lock_ || !lock_->created) return;
  std::error_code ec;
  if (fs::is_empty(path_, ec) && !ec) fs::remove(path_, ec);
}

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

void RunDirectory::save(Trainer& trainer, bool epoch_end) const {
  if (!writer_) return;
  const auto& st = trainer.state();
  json top_k = json::array();
  for (const auto& [epoch, value] : st.top_k) top_k.push_back({{"epoch", epoch}, {"value", value}});
  json state = {{"epoch", st.epoch},
                {"step", st.step},
                {"epoch_step", st.epoch_step},
                {"partial", st.partial},
                {"best", std::isnan(st.best) ? json(nullptr) : json(st.best)},
                {"best_metric", trainer.monitor()},
                {"best_epoch", st.best_epoch},
                {"world_size", trainer.world_size()},
                {"last", st.last},
                {"final", st.final},
                {"top_k", top_k},
                {"schedule",
                 {{"start", st.schedule_start},
                  {"steps", st.schedule_steps},
                  {"lr_scale", st.lr_scale},
                  {"lr_reduced_epoch", st.lr_reduced_epoch}}},
                {"callbacks", trainer.callback_states()},
                {"rng_state", rng_state_hex()}};
  if (!st.grad_scaler.empty()) state["grad_scaler"] = st.grad_scaler;
  std::vector<CheckpointFile> files = {
      {"model.pt", [&](const std::string& p) { save_module(*trainer.model().ptr(), p); }},
      {"optimizer.pt",
       [&](const std::string& p) {
         torch::serialize::OutputArchive archive;
         trainer.optimizer().save(archive);
         save_archive(archive, p);
       }},
      {"state.json", [&](const std::string& p) { write_bytes(p, state.dump(2) + "\n"); }}};
  auto& module = *trainer.model().ptr();
  if (epoch_end && st.best_epoch == st.epoch)
    files.insert(files.begin(), {"best.pt", [&](const std::string& p) { save_module(module, p); }});
  if (epoch_end && trainer.options().save_top_k() > 1)
    for (const auto& [epoch, value] : st.top_k)
      if (epoch == st.epoch)
        files.insert(files.begin(), {epoch_file(epoch), [&](const std::string& p) { save_module(module, p); }});
  if (!trainer.ema_weights().empty())
    files.insert(files.begin(),
                 {"ema.pt", [&](const std::string& p) { save_weights(module, trainer.ema_weights(), p); }});
  write_checkpoint(path_, files);
  if (trainer.options().save_top_k() > 1) remove_dropped_epochs(path_, st.top_k);
}

void RunDirectory::write_test(const json& final) const {
  if (!writer_) return;
  write_text_atomically((fs::path(path_) / "test.json").string(), final.dump(2) + "\n");
}

void RunDirectory::append_metrics(const json& record) const {
  if (!writer_) return;
  // metrics.jsonl is a log, appended after the commit; restore() repairs it from state.json if needed.
  append_text((fs::path(path_) / "metrics.jsonl").string(), record.dump() + "\n", false);
}

std::vector<std::string> RunDirectory::checkpoints() const {
  std::vector<std::string> names{"best", "last"};
  if (fs::exists(file("ema.pt"))) names.push_back("ema");
  for (const int64_t e : epoch_files(path_)) names.push_back(fmt::format("epoch-{}", e));
  return names;
}

void RunDirectory::load_weights(torch::nn::Module& module, const std::string& checkpoint) const {
  const auto model_path = file("model.pt");
  if (!fs::exists(model_path))
    throw std::runtime_error(path_ + " has no model.pt yet: the run has not finished an epoch");
  const auto held = checkpoints();
  if (std::find(held.begin(), held.end(), checkpoint) == held.end()) {
    std::string hint;
    if (checkpoint == "ema") hint = " (ema exists only for a run trained with --ema)";
    if (checkpoint.rfind("epoch-", 0) == 0) hint = " (epoch-N exists for the --save-top-k best epochs)";
    throw std::invalid_argument(
        fmt::format("{} holds the checkpoints {}, not '{}'{}; choose one of them with "
                    "--checkpoint",
                    path_, fmt::join(held, ", "), checkpoint, hint));
  }
  auto choose = [&] {
    if (checkpoint == "best" && fs::exists(file("best.pt"))) return file("best.pt");
    if (checkpoint == "ema") return file("ema.pt");
    if (checkpoint.rfind("epoch-", 0) == 0) return file(checkpoint + ".pt");
    return file("model.pt");
  };
  // A writer's commit can finish between choosing RUN/.commit/model.pt and opening it (the file has moved to
  // RUN/model.pt): choose again, a few times, while the choice keeps changing under us.
  for (int attempt = 1;; ++attempt) {
    const auto path = choose();
    try {
      load_module(module, path);
      return;
    } catch (...) {
      if (attempt >= 5 || (choose() == path && fs::exists(path))) throw;
      std::this_thread::sleep_for(std::chrono::milliseconds(20 * attempt));
    }
  }
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
  const auto state_file = (run / "state.json").string();
  try {
    if (!state.is_object()) throw std::runtime_error("not a JSON object");
    constexpr int64_t most = int64_t{1} << 50;  // far beyond any real run, far from overflowing
    st.epoch = whole_number(state, "epoch", 0, most);
    st.step = whole_number(state, "step", 0, most);
    st.best = number_or_null(state, "best");
    st.best_epoch = whole_number(state, "best_epoch", 0, st.epoch);
    st.last = object_member(state, "last");
    if (!state.contains("last")) throw std::runtime_error("no \"last\"");
    st.final = object_member(state, "final");
    st.epoch_step = whole_number(state, "epoch_step", 0, most, 0);
    st.partial = object_member(state, "partial");
    if (const auto top = state.find("top_k"); top != state.end()) {
      if (!top->is_array()) throw std::runtime_error("\"top_k\" is not a list");
      for (const auto& entry : *top) {
        if (!entry.is_object()) throw std::runtime_error("an entry of \"top_k\" is not an object");
        st.top_k.emplace_back(whole_number(entry, "epoch", 1, st.epoch), number_or_null(entry, "value"));
      }
    }
    const json schedule = object_member(state, "schedule");
    st.schedule_start = whole_number(schedule, "start", 0, most, 0);
    st.schedule_steps = whole_number(schedule, "steps", 0, most, 0);
    st.lr_scale = schedule.contains("lr_scale") ? number_or_null(schedule, "lr_scale") : 1.0;
    if (!(st.lr_scale > 0)) throw std::runtime_error("\"lr_scale\" must be above 0");
    st.lr_reduced_epoch = whole_number(schedule, "lr_reduced_epoch", 0, st.epoch, 0);
    st.grad_scaler = object_member(state, "grad_scaler");
    const int64_t saved_world = whole_number(state, "world_size", 1, 1 << 20, 1);
    if (st.epoch_step > 0 && saved_world != trainer.world_size())
      throw std::invalid_argument(fmt::format(
          "{} stopped in the middle of epoch {} with {} rank(s); resume it with {} (at an epoch boundary any "
          "number of ranks may continue)",
          path_, st.epoch + 1, saved_world,
          saved_world > 1 ? "--nproc " + std::to_string(saved_world) : "one process"));
    whole_number(state, "epoch_step", 0, std::max<int64_t>(0, trainer.steps_per_epoch() - 1), 0);  // in an epoch
    trainer.load_callback_states(object_member(state, "callbacks"));
  } catch (const std::invalid_argument&) {
    throw;
  } catch (const std::exception& e) {
    throw std::runtime_error(state_file + " is damaged (" + first_line(e.what()) + ")");
  }
  trainer.set_state(st);
  trainer.load_grad_scaler(st.grad_scaler);
  if (fs::exists(run / "best.pt")) {  // the best epoch's weights, for the final test of a resumed run
    load_module(*trainer.model().ptr(), (run / "best.pt").string());
    trainer.set_best_weights(module_tensors(*trainer.model().ptr(), true));
  }
  if (fs::exists(run / "ema.pt") && !trainer.ema_weights().empty()) {  // the moving average goes on from here
    load_module(*trainer.model().ptr(), (run / "ema.pt").string());
    trainer.set_ema_weights(module_tensors(*trainer.model().ptr(), true));
  }
  load_module(*trainer.model().ptr(), (run / "model.pt").string());
  trainer.model().ptr()->to(trainer.device());
  verify_archive((run / "optimizer.pt").string());  // a damaged file is refused, not read as other moments
  try {
    torch::serialize::InputArchive archive;
    archive.load_from((run / "optimizer.pt").string(), trainer.device());
    // Every optimizer of LibTorch >= 1.5 writes pytorch_version; without it LibTorch would try its old format
    // and print warnings before failing.
    c10::IValue version;
    if (!archive.try_read("pytorch_version", version))
      throw std::runtime_error((run / "optimizer.pt").string() +
                               " holds no optimizer state (no pytorch_version entry): it was replaced by another "
                               "file; restore it from a copy of the run, or start a new run");
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
      // Lines that are no epoch records are dropped, so the log agrees with the checkpoint again.
      const auto parsed = parse_epoch_record(line);
      if (!parsed) continue;
      const json& rec = *parsed;
      const int64_t e = rec["epoch"].get<int64_t>();
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
  if (writer_ && trainer.options().save_top_k() > 1) remove_dropped_epochs(run, st.top_k);
}

void CheckpointCallback::on_epoch_end(Trainer& trainer, const json& record) {
  dir_->save(trainer, true);
  dir_->append_metrics(record);
}

void CheckpointCallback::on_fit_end(Trainer& trainer) {
  dir_->save(trainer);
  dir_->write_test(trainer.state().final);
}

void CheckpointCallback::on_interrupt(Trainer& trainer) { dir_->save(trainer); }

void CheckpointCallback::on_checkpoint(Trainer& trainer) { dir_->save(trainer); }

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
