#include "training/trainer.h"

#include "models/registry.h"
#include "training/checkpoint.h"
#include "training/messages.h"
#include "training/progress.h"

#include <dlfcn.h>

#include <chrono>
#include <optional>
#include <cmath>
#include <filesystem>
#include <fstream>
#include <iomanip>
#include <sstream>
#include <thread>

namespace zoo::training {
namespace fs = std::filesystem;

json to_json(const TrainOptions& o) {
  return {{"epochs", o.epochs()},       {"batch_size", o.batch_size()}, {"eval_batch_size", o.eval_batch_size()},
          {"optimizer", o.optimizer()}, {"lr", o.lr()},                 {"momentum", o.momentum()},
          {"weight_decay", o.weight_decay()}, {"schedule", o.schedule()}, {"step_size", o.step_size()},
          {"gamma", o.gamma()},         {"warmup", o.warmup()},         {"clip_grad", o.clip_grad()},
          {"seed", o.seed()},           {"threads", o.threads()},       {"device", o.device()},
          {"shuffle", o.shuffle()},     {"progress", o.progress()}};
}

TrainOptions train_options_from_json(const json& j, TrainOptions o) {
  if (!j.is_object()) throw std::invalid_argument("training options must be a JSON object, got " + j.dump());
  using models::strict_get;
  for (auto it = j.begin(); it != j.end(); ++it) {
    const std::string& k = it.key();
    const json& v = it.value();
    const std::string what = "training option '" + k + "'";
    if (k == "epochs") o.epochs(strict_get<int64_t>(v, what));
    else if (k == "batch_size") o.batch_size(strict_get<int64_t>(v, what));
    else if (k == "eval_batch_size") o.eval_batch_size(strict_get<int64_t>(v, what));
    else if (k == "optimizer") o.optimizer(strict_get<std::string>(v, what));
    else if (k == "lr") o.lr(strict_get<double>(v, what));
    else if (k == "momentum") o.momentum(strict_get<double>(v, what));
    else if (k == "weight_decay") o.weight_decay(strict_get<double>(v, what));
    else if (k == "schedule") o.schedule(strict_get<std::string>(v, what));
    else if (k == "step_size") o.step_size(strict_get<int64_t>(v, what));
    else if (k == "gamma") o.gamma(strict_get<double>(v, what));
    else if (k == "warmup") o.warmup(strict_get<int64_t>(v, what));
    else if (k == "clip_grad") o.clip_grad(strict_get<double>(v, what));
    else if (k == "seed") o.seed(strict_get<int64_t>(v, what));
    else if (k == "threads") o.threads(strict_get<int64_t>(v, what));
    else if (k == "device") o.device(strict_get<std::string>(v, what));
    else if (k == "shuffle") o.shuffle(strict_get<bool>(v, what));
    else if (k == "progress") o.progress(strict_get<bool>(v, what));
    else {
      std::string valid;
      const json defaults = to_json(TrainOptions{});
      for (const auto& [key, val] : defaults.items()) valid += (valid.empty() ? "" : ", ") + key;
      throw std::invalid_argument("unknown training option '" + k + "'; valid: " + valid);
    }
  }
  return o;
}

namespace {
std::string join(const std::vector<std::string>& v) {
  std::string out;
  for (const auto& s : v) out += (out.empty() ? "" : ", ") + s;
  return out;
}
bool contains(const std::vector<std::string>& v, const std::string& s) {
  return std::find(v.begin(), v.end(), s) != v.end();
}
}  // namespace

void validate(const TrainOptions& o) {
  auto bad = [](const std::string& msg) { throw std::invalid_argument(msg); };
  if (o.epochs() < 1) bad("--epochs must be >= 1, got " + std::to_string(o.epochs()));
  if (o.batch_size() < 1) bad("--batch-size must be >= 1, got " + std::to_string(o.batch_size()));
  if (o.eval_batch_size() < 1) bad("--eval-batch-size must be >= 1, got " + std::to_string(o.eval_batch_size()));
  if (!(o.lr() > 0) || !std::isfinite(o.lr())) bad("--lr must be a positive number, got " + std::to_string(o.lr()));
  if (!contains(optimizer_names(), o.optimizer()))
    bad("unknown optimizer '" + o.optimizer() + "'; valid optimizers: " + join(optimizer_names()));
  if (!contains(schedule_names(), o.schedule()))
    bad("unknown schedule '" + o.schedule() + "'; valid schedules: " + join(schedule_names()));
  if (o.momentum() < 0) bad("--momentum must be >= 0");
  if (o.weight_decay() < 0) bad("--weight-decay must be >= 0");
  if (o.step_size() < 1) bad("--step-size must be >= 1");
  if (!(o.gamma() > 0)) bad("--gamma must be > 0");
  if (o.warmup() < 0) bad("--warmup must be >= 0");
  if (o.clip_grad() < 0) bad("--clip-grad must be >= 0 (0 turns clipping off)");
  if (o.threads() < 0) bad("--threads must be >= 0 (0 means all cores)");
  if (o.seed() < 0) bad("--seed must be >= 0");
  parse_device(o.device());
}

namespace {
std::atomic<int> stop_signal{-1};
}  // namespace

void request_stop(int signal) { stop_signal.store(signal); }
bool stop_requested() { return stop_signal.load(std::memory_order_relaxed) >= 0; }
void clear_stop_request() { stop_signal.store(-1); }

int64_t apply_threads(int64_t n) {
  if (n <= 0) n = std::max<int64_t>(1, static_cast<int64_t>(std::thread::hardware_concurrency()));
  torch::set_num_threads(static_cast<int>(n));
  // LibTorch parallelises around its BLAS calls (OpenMP). A threaded OpenBLAS underneath starts its own pool,
  // and the two spin against each other on the same cores: measured on 2 cores, training ran 1.4x (cnn) to 3x
  // (mlp) slower than with OpenBLAS single-threaded. Found at run time, so this is a no-op with other BLASes.
  using SetThreads = void (*)(int);
  if (auto set_blas_threads = reinterpret_cast<SetThreads>(dlsym(RTLD_DEFAULT, "openblas_set_num_threads")))
    set_blas_threads(1);
  return n;
}

torch::Device parse_device(const std::string& spec) {
  std::optional<torch::Device> device;
  try {
    device.emplace(spec);
  } catch (const c10::Error&) {
    throw std::invalid_argument("unknown device '" + spec + "'; valid devices: cpu, cuda, cuda:N");
  }
  if (device->is_cuda() && !torch::cuda::is_available())
    throw std::invalid_argument("device '" + spec + "' requested but CUDA is not available here; use --device cpu");
  if (!device->is_cpu() && !device->is_cuda())
    throw std::invalid_argument("device '" + spec + "' is not supported; valid devices: cpu, cuda, cuda:N");
  return *device;
}

Trainer::Trainer(torch::nn::AnyModule model, std::shared_ptr<Objective> objective, datasets::Splits data,
                 TrainOptions options)
    : model_(std::move(model)), objective_(std::move(objective)), data_(std::move(data)),
      options_(std::move(options)), device_(torch::kCPU) {
  validate(options_);
  TORCH_CHECK(data_.train && data_.test, "Trainer needs a train and a test split");
  device_ = parse_device(options_.device());
  apply_threads(options_.threads());
  model_.ptr()->to(device_);
  optimizer_ = make_optimizer(options_.optimizer(), model_.ptr()->parameters(), options_.lr(), options_.momentum(),
                              options_.weight_decay());
}

void Trainer::add_loss_term(std::string name, std::function<torch::Tensor(torch::nn::Module&)> term) {
  loss_terms_.emplace_back(std::move(name), std::move(term));
}
void Trainer::add_log_terms(std::function<Terms(torch::nn::Module&)> terms) { log_terms_.push_back(std::move(terms)); }
void Trainer::add_gradient_hook(std::function<void(torch::nn::Module&)> hook) {
  gradient_hooks_.push_back(std::move(hook));
}
void Trainer::add_step_hook(std::function<void(torch::nn::Module&)> hook) { step_hooks_.push_back(std::move(hook)); }
void Trainer::add_epoch_hook(std::function<void(const json&)> hook) { epoch_hooks_.push_back(std::move(hook)); }
void Trainer::set_parallel(int64_t rank, int64_t world_size, std::function<void(torch::Tensor&)> all_reduce_sum) {
  TORCH_CHECK(world_size >= 1 && rank >= 0 && rank < world_size, "bad rank ", rank, " of ", world_size);
  rank_ = rank;
  world_size_ = world_size;
  all_reduce_sum_ = std::move(all_reduce_sum);
}
bool Trainer::stop_agreed() {
  if (world_size_ == 1 || !all_reduce_sum_) return stop_requested();
  // Every rank must leave the loop at the same step, or the others would wait in the next all-reduce.
  auto flag = torch::full({1}, stop_requested() ? 1.0 : 0.0, torch::kFloat32);
  all_reduce_sum_(flag);
  return flag.item<float>() > 0;
}

void Trainer::set_epochs(int64_t epochs) {
  options_.epochs(epochs);
  validate(options_);
}

int64_t Trainer::steps_per_epoch() const {
  const int64_t shard = (data_.train->size() + world_size_ - 1) / world_size_;
  int64_t steps = (shard + options_.batch_size() - 1) / options_.batch_size();
  if (steps > 1 && shard % options_.batch_size() == 1) --steps;  // a last batch of one is dropped (batch norm)
  return steps;
}

Schedule Trainer::schedule() const {
  Schedule s;
  s.name = options_.schedule();
  s.lr = options_.lr();
  s.step_size = options_.step_size();
  s.gamma = options_.gamma();
  s.warmup = options_.warmup();
  s.total_steps = options_.epochs() * steps_per_epoch();
  return s;
}

json Trainer::train_epoch(int64_t epoch) {
  auto& module = *model_.ptr();
  module.train();
  const auto order = datasets::epoch_order(data_.train->size(), options_.shuffle(),
                                           static_cast<uint64_t>(options_.seed()), epoch, rank_, world_size_);
  const int64_t steps = steps_per_epoch();
  const auto sched = schedule();
  const bool show = options_.progress() && rank_ == 0;
  Progress progress("epoch " + std::to_string(epoch) + "/" + std::to_string(options_.epochs()), steps,
                    Progress::stderr_is_terminal(), show);
  // An interrupted epoch goes on where it stopped, with the sums of the part already done.
  const int64_t first_step = state_.epoch_step;
  // A resumed data-parallel epoch: the saved sums are already over all ranks, so rank 0 alone carries them on.
  const json partial = rank_ == 0 ? state_.partial : json::object();
  double loss_sum = partial.value("loss_sum", 0.0), items = partial.value("items", 0.0);
  const double seconds_before = state_.partial.value("seconds", 0.0);
  // Per-term (value, batch size) pairs, reduced once at the end of the epoch.
  std::vector<std::pair<std::string, std::vector<std::pair<torch::Tensor, double>>>> term_values;
  auto record_term = [&](const std::string& name, const torch::Tensor& value, double n) {
    auto it = std::find_if(term_values.begin(), term_values.end(), [&](const auto& t) { return t.first == name; });
    if (it == term_values.end()) it = term_values.insert(term_values.end(), {name, {}});
    it->second.emplace_back(value.detach(), n);
  };
  const json partial_terms = partial.value("terms", json::object());
  for (const auto& [name, sw] : partial_terms.items()) {
    const auto sum = sw[0].is_array() ? torch::tensor(sw[0].get<std::vector<double>>(), torch::kFloat64)
                                      : torch::tensor(sw[0].get<double>(), torch::kFloat64);
    record_term(name, sum / std::max(1e-300, sw[1].get<double>()), sw[1].get<double>());
  }
  auto reduce_terms = [&] {
    json out = json::object();
    for (const auto& [name, values] : term_values) {
      std::vector<torch::Tensor> v;
      std::vector<double> w;
      for (const auto& [value, n] : values) {
        v.push_back(value.to(torch::kCPU, torch::kFloat64).reshape({-1}));
        w.push_back(n);
      }
      const auto weights = torch::tensor(w, torch::kFloat64);
      const auto sum = (torch::stack(v) * weights.unsqueeze(1)).sum(0);  // terms are scalars or 1-D
      const json total = sum.numel() == 1 && values.front().first.dim() == 0
                             ? json(sum.item<double>())
                             : json(std::vector<double>(sum.data_ptr<double>(), sum.data_ptr<double>() + sum.numel()));
      out[name] = {total, weights.sum().item<double>()};
    }
    return out;  // name -> [weighted sum, total weight]
  };
  // Over every rank's shard (data-parallel): one all-reduce of all the sums, in the same order on every rank.
  auto reduce_over_ranks = [&](json term_sums) {
    if (world_size_ == 1 || !all_reduce_sum_) return term_sums;
    std::vector<double> sums{loss_sum, items};
    for (const auto& [name, sw] : term_sums.items()) {
      if (sw[0].is_array())
        for (const auto& v : sw[0]) sums.push_back(v.get<double>());
      else
        sums.push_back(sw[0].get<double>());
      sums.push_back(sw[1].get<double>());
    }
    auto all = torch::tensor(sums, torch::kFloat64);
    all_reduce_sum_(all);
    const auto* v = all.data_ptr<double>();
    size_t i = 0;
    loss_sum = v[i++];
    items = v[i++];
    for (auto& [name, sw] : term_sums.items()) {
      if (sw[0].is_array())
        for (auto& x : sw[0]) x = v[i++];
      else
        sw[0] = v[i++];
      sw[1] = v[i++];
    }
    return term_sums;
  };
  const auto start = std::chrono::steady_clock::now();
  auto elapsed = [&] {
    return seconds_before + std::chrono::duration<double>(std::chrono::steady_clock::now() - start).count();
  };
  for (int64_t s = first_step; s < steps; ++s) {
    const int64_t lo = s * options_.batch_size();
    const int64_t hi = std::min<int64_t>(lo + options_.batch_size(), order.size(0));
    const auto batch = data_.train->get(order.slice(0, lo, hi)).to(device_);
    const double lr = sched.at(state_.step, epoch - 1);
    set_learning_rate(*optimizer_, lr);
    optimizer_->zero_grad();
    Terms terms;
    auto loss = objective_->loss(model_, batch, terms);
    for (auto& [name, term] : loss_terms_) {
      auto value = term(module);
      terms.emplace_back(name, value.detach());
      loss = loss + value;
    }
    for (auto& log_terms : log_terms_)
      for (auto& [name, value] : log_terms(module))
        if (value.defined()) terms.emplace_back(name, value.detach());
    const double loss_value = loss.item<double>();
    if (!std::isfinite(loss_value)) {
      progress.finish();
      std::ostringstream msg;
      msg << "loss became " << loss_value << " at epoch " << epoch << ", step " << (s + 1) << " of " << steps
          << "; training stopped";
      if (!run_dir_.empty())
        msg << " and the last good checkpoint in " << run_dir_ << " (epoch " << state_.epoch << ") is intact";
      msg << ". Try a lower --lr or --clip-grad 1.0";
      throw DivergedError(msg.str());
    }
    loss.backward();
    for (auto& hook : gradient_hooks_) hook(module);
    if (options_.clip_grad() > 0) torch::nn::utils::clip_grad_norm_(module.parameters(), options_.clip_grad());
    optimizer_->step();
    for (auto& hook : step_hooks_) hook(module);
    ++state_.step;

    const auto n = static_cast<double>(batch.size());
    items += n;
    loss_sum += loss_value * n;
    for (const auto& [name, value] : terms) record_term(name, value, n);
    progress.update(s + 1, static_cast<int64_t>(items), loss_sum / items);
    if (stop_agreed() && s + 1 < steps) {
      progress.finish();
      state_.epoch_step = s + 1;
      const json terms_so_far = reduce_over_ranks(reduce_terms());  // also sums loss_sum and items over ranks
      state_.partial = {{"loss_sum", loss_sum}, {"items", items}, {"seconds", elapsed()}, {"terms", terms_so_far}};
      save_checkpoint();
      std::ostringstream msg;
      msg << "stopped at epoch " << epoch << ", step " << (s + 1) << " of " << steps;
      if (!run_dir_.empty() && rank_ == 0) msg << "; checkpoint saved in " << run_dir_;
      throw Interrupted(msg.str(), stop_signal.load());
    }
  }
  progress.finish();
  const double seconds = elapsed();
  const json term_sums = reduce_over_ranks(reduce_terms());  // also sums loss_sum and items over ranks
  json train = {{"loss", loss_sum / std::max(1.0, items)}};
  for (const auto& [name, sw] : term_sums.items()) {
    const double weight = sw[1].get<double>();
    if (sw[0].is_array()) {
      std::vector<double> mean = sw[0].get<std::vector<double>>();
      for (auto& m : mean) m /= weight;
      train[name] = mean;
    } else {
      train[name] = sw[0].get<double>() / weight;
    }
  }
  state_.epoch_step = 0;
  state_.partial = json::object();
  return {{"epoch", epoch},
          {"step", state_.step},
          {"lr", sched.at(std::max<int64_t>(0, state_.step - 1), epoch - 1)},
          {"train", train},
          {"train_time_s", seconds},
          {"items_per_s", seconds > 0 ? items / seconds : 0.0}};  // items of all ranks
}

void Trainer::check_data_fits() {
  auto& module = *model_.ptr();
  const bool was_training = module.is_training();
  module.eval();
  torch::NoGradGuard no_grad;
  const auto batch = data_.train->get(torch::arange(std::min<int64_t>(2, data_.train->size()))).to(device_);
  try {
    Terms terms;
    objective_->loss(model_, batch, terms);
  } catch (const std::exception& e) {
    module.train(was_training);
    std::string what = e.what();
    if (const auto* c10_error = dynamic_cast<const c10::Error*>(&e)) what = c10_error->what_without_backtrace();
    throw std::invalid_argument("the model does not fit the data (" + data_.train->describe() + ", items " +
                                c10::str(batch.input.sizes().slice(1)) + "): " + first_line(what) +
                                "; change the model's options (--set) or the dataset");
  }
  module.train(was_training);
}

json Trainer::evaluate(bool thorough) {
  auto& module = *model_.ptr();
  const bool was_training = module.is_training();
  module.eval();
  torch::NoGradGuard no_grad;
  auto evaluator = objective_->evaluator(thorough);
  const int64_t n = data_.test->size();
  // Each rank takes every world_size-th item (no padding, so no item counts twice).
  const auto mine = torch::arange(rank_, n, world_size_, torch::kInt64);
  for (int64_t lo = 0; lo < mine.size(0); lo += options_.eval_batch_size()) {
    const int64_t hi = std::min<int64_t>(lo + options_.eval_batch_size(), mine.size(0));
    evaluator->add(model_, data_.test->get(mine.slice(0, lo, hi)).to(device_));
  }
  auto state = evaluator->state();
  if (world_size_ > 1 && all_reduce_sum_) all_reduce_sum_(state);
  module.train(was_training);
  return evaluator->result(state);
}

void Trainer::save_checkpoint() {
  if (run_dir_.empty() || rank_ != 0) return;
  json state = {{"epoch", state_.epoch},
                {"step", state_.step},
                {"epoch_step", state_.epoch_step},
                {"partial", state_.partial},
                {"best", std::isnan(state_.best) ? json(nullptr) : json(state_.best)},
                {"best_metric", objective_->primary_metric()},
                {"best_epoch", state_.best_epoch},
                {"world_size", world_size_},
                {"last", state_.last},
                {"rng_state", rng_state_hex()}};
  write_checkpoint(run_dir_, {{"model.pt", [&](const std::string& p) { save_module(*model_.ptr(), p); }},
                              {"optimizer.pt",
                               [&](const std::string& p) {
                                 torch::serialize::OutputArchive archive;
                                 optimizer_->save(archive);
                                 save_archive(archive, p);
                               }},
                              {"state.json", [&](const std::string& p) { write_bytes(p, state.dump(2) + "\n"); }}});
}

void Trainer::append_metrics(const json& record) {
  if (run_dir_.empty() || rank_ != 0) return;
  // metrics.jsonl is a log, appended after the commit; restore() repairs it from state.json if needed.
  std::ofstream log(fs::path(run_dir_) / "metrics.jsonl", std::ios::app);
  log << record.dump() << "\n";
}

std::string format_epoch_summary(const json& record, int64_t epochs) {
  std::ostringstream line;
  line << "epoch " << record.value("epoch", 0) << "/" << epochs << std::fixed << std::setprecision(4);
  const json train = record.value("train", json::object()), test = record.value("test", json::object());
  for (const auto& [k, v] : train.items()) {
    if (v.is_array()) {  // e.g. the fraction of tokens per expert, in two decimals
      line << "  train " << k << " [" << std::setprecision(2);
      for (size_t i = 0; i < v.size(); ++i) line << (i ? " " : "") << v[i].get<double>();
      line << "]" << std::setprecision(4);
    } else {
      line << "  train " << k << " " << v.get<double>();
    }
  }
  for (const auto& [k, v] : test.items())
    if (v.is_number_float()) line << "  test " << k << " " << v.get<double>();
  line << " (" << format_duration(record.value("train_time_s", 0.0)) << ", "
       << static_cast<int64_t>(record.value("items_per_s", 0.0)) << " items/s)";
  return line.str();
}

json Trainer::fit() {
  json last = state_.last;
  for (int64_t epoch = state_.epoch + 1; epoch <= options_.epochs(); ++epoch) {
    json record = train_epoch(epoch);
    record["test"] = evaluate();
    state_.epoch = epoch;
    const auto metric = objective_->primary_metric();
    if (record["test"].contains(metric)) {
      const double value = record["test"][metric].get<double>();
      const bool better = std::isnan(state_.best) ||
                          (objective_->higher_is_better() ? value > state_.best : value < state_.best);
      if (better) {
        state_.best = value;
        state_.best_epoch = epoch;
      }
    }
    state_.last = record;
    save_checkpoint();
    append_metrics(record);
    for (auto& hook : epoch_hooks_) hook(record);
    last = record;
    if (stop_agreed() && epoch < options_.epochs()) {
      std::string msg = "stopped after epoch " + std::to_string(epoch);
      if (!run_dir_.empty() && rank_ == 0) msg += "; checkpoint saved in " + run_dir_;
      throw Interrupted(msg, stop_signal.load());
    }
  }
  return last;
}

void Trainer::restore(const std::string& run_dir) {
  if (rank_ == 0) recover_checkpoint(run_dir);  // other ranks only read (after rank 0, see Run::resume)
  const fs::path run(run_dir);
  if (!fs::exists(run / "state.json"))
    throw std::runtime_error(run_dir + " has no checkpoint yet (no state.json): the run stopped before its first "
                             "epoch ended; start it again without --resume (the same --out is fine)");
  const json state = read_json_file((run / "state.json").string());
  try {
    state_.epoch = state.at("epoch").get<int64_t>();
    state_.step = state.at("step").get<int64_t>();
    state_.best = state.at("best").is_null() ? std::numeric_limits<double>::quiet_NaN() : state.at("best").get<double>();
    state_.best_epoch = state.at("best_epoch").get<int64_t>();
    state_.last = state.at("last");
    state_.epoch_step = state.value("epoch_step", int64_t{0});
    state_.partial = state.value("partial", json::object());
    const int64_t saved_world = state.value("world_size", int64_t{1});
    if (state_.epoch_step > 0 && saved_world != world_size_)
      throw std::runtime_error(run_dir + " stopped in the middle of epoch " + std::to_string(state_.epoch + 1) +
                               " with " + std::to_string(saved_world) + " rank(s); resume it with " +
                               (saved_world > 1 ? "--nproc " + std::to_string(saved_world) : "one process") +
                               " (at an epoch boundary any number of ranks may continue)");
  } catch (const json::exception& e) {
    throw std::runtime_error((run / "state.json").string() + " is damaged (" + first_line(e.what()) + ")");
  }
  load_module(*model_.ptr(), (run / "model.pt").string());
  model_.ptr()->to(device_);
  try {
    torch::serialize::InputArchive archive;
    archive.load_from((run / "optimizer.pt").string(), device_);
    optimizer_->load(archive);
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
      if (e > state_.epoch) continue;
      logged = std::max(logged, e);
      keep.push_back(rec.dump());
    }
  }
  if (logged < state_.epoch && !state_.last.empty() && state_.last.value("epoch", int64_t{0}) == state_.epoch)
    keep.push_back(state_.last.dump());
  std::string text;
  for (const auto& l : keep) text += l + "\n";
  if (rank_ == 0) write_text_atomically(log_path.string(), text);
  run_dir_ = run_dir;
}

}  // namespace zoo::training
