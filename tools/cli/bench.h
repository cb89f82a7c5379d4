// `zoo bench`, in four parts: the cases and what each runs in C++ (bench_cases.cpp), the Python twins' worker
// process (bench_python.cpp), the report: JSON, Markdown and the README block (bench_report.cpp), and the command
// that times them in interleaved rounds (bench.cpp).
#pragma once

#include "datasets/dataset.h"
#include "training/trainer.h"

#include <torch/torch.h>
#include <nlohmann/json.hpp>

#include <cstdio>
#include <functional>
#include <memory>
#include <string>
#include <vector>

#include <sys/types.h>

namespace zoo::cli::bench {

using nlohmann::json;

/// One benchmarked configuration: a registry model (with option overrides) or a layer outside the registry.
struct CaseSpec {
  std::string name;
  std::string model;  ///< registry name, or a layer: "moe-layer", "sinkhorn", "gated-lstm-cell", "attention"
  json options = json::object();
  int64_t batch = 0;  ///< 0: the model's training batch size
  /// Per-operation overhead dominates: the target is 1.3x the Python twin, not 1.0x.
  bool overhead_bound = false;
  /// Report achieved GFLOP/s (FLOPs counted from a trace of the forward).
  bool flops = false;
  std::string what;
  std::string dataset = {};  ///< empty: the model's own (models whose own needs a --data-dir bench on another)
  /// Options of that dataset. "image-classes" reads a folder of 10,000 + 10,000 Fashion-MNIST PNGs that zoo
  /// bench writes for the purpose (decoded per batch with cache=none: the loader threads' share of a step).
  json data_options = json::object();
};

/// Every case `zoo bench` knows, in the order of the published table.
const std::vector<CaseSpec>& all_cases();

/// What one case runs, in C++, and what the Python side needs to run the same.
struct Runner {
  CaseSpec spec;
  /// 32 or bf16-mixed: a registry model's trainer runs its step under autocast itself; a layer's loss and every
  /// forward run under the scope below.
  training::Precision precision = training::Precision::fp32;
  /// The Python twin's id: the case's name, with "@bf16-mixed" when more than one precision is measured.
  std::string id;
  std::shared_ptr<torch::nn::Module> module;  ///< null for sinkhorn (no parameters)
  /// A registry model's training step is the trainer's own (Trainer::train_step on `step_batch`); a layer's is
  /// `loss`.
  std::shared_ptr<training::Trainer> trainer;
  datasets::Batch step_batch;
  std::function<torch::Tensor()> loss;  ///< a layer's training loss (module in training mode)
  std::function<void(const torch::Tensor&)> forward;
  torch::Tensor input, target, latency_input;
  std::unique_ptr<torch::optim::Optimizer> optimizer;
  json python;                              ///< case.json: twin name, options, task
  std::shared_ptr<datasets::Dataset> data;  ///< the model's training split (registry models)
  std::string dataset;
  int64_t batch = 0;
  double forward_flops = 0;  ///< per batch; 0 = not counted

  void train_step() {
    if (trainer) {
      module->train();
      training::Terms terms;
      trainer->train_step(step_batch, 1e-3, terms);
      return;
    }
    if (module) {
      module->train();
      optimizer->zero_grad();
    }
    torch::Tensor l;
    {
      auto scope = training::autocast(precision, torch::kCPU);
      l = loss();
    }
    l.item<double>();
    l.backward();
    if (optimizer) optimizer->step();
  }
  void infer(const torch::Tensor& x) {
    if (module) module->eval();
    torch::NoGradGuard no_grad;
    auto scope = training::autocast(precision, torch::kCPU);
    forward(x);
  }
};

/// A registry model's runner: a batch of its own dataset (`data_cache` keeps each dataset loaded once), its
/// training step in `precision`.
Runner make_model_runner(const CaseSpec& spec, std::map<std::string, datasets::Splits>& data_cache,
                         training::Precision precision = training::Precision::fp32);
/// A layer outside the registry (moe-layer, ode-solver, sinkhorn, gated-lstm-cell, attention).
Runner make_layer_runner(const CaseSpec& spec);

struct Rule {
  int64_t min_steps = 3;
  double min_time = 0.3;
};

/// One untimed call, then at least `min_steps` calls and `min_time` seconds: the mean seconds per call.
double measure(const std::function<void()>& step, const Rule& rule);

/// The order in which one round times the measurements, laid out case by case, each case's precisions in the order
/// given and each precision's thread counts: indices into that layout. In every other round (odd `round`) each
/// case's precisions go in reverse order, so that what the first of two back-to-back measurements suffers or gains
/// (after another model, or after its own other precision) falls on both alike, as C++ and Python take turns.
inline std::vector<size_t> round_order(size_t cases, size_t precisions, size_t threads, int64_t round) {
  std::vector<size_t> order;
  order.reserve(cases * precisions * threads);
  for (size_t c = 0; c < cases; ++c)
    for (size_t k = 0; k < precisions; ++k) {
      const size_t p = round % 2 == 1 ? precisions - 1 - k : k;
      for (size_t t = 0; t < threads; ++t) order.push_back((c * precisions + p) * threads + t);
    }
  return order;
}

/// tests/python/bench_twins.py as a child process speaking JSON lines over two pipes.
class PythonWorker {
 public:
  PythonWorker(const std::string& python, const std::string& script);
  ~PythonWorker();
  PythonWorker(const PythonWorker&) = delete;
  PythonWorker& operator=(const PythonWorker&) = delete;
  json request(const json& r);

 private:
  [[noreturn]] void dead();
  std::string python_;
  pid_t pid_ = -1;
  FILE* to_ = nullptr;
  FILE* from_ = nullptr;
};

struct Figures {
  std::vector<double> train, infer, latency;
};

struct Result {
  Runner* runner = nullptr;
  int64_t threads = 1;
  Figures cpp, python;
  std::vector<double> load;  ///< seconds per batch of the dataset
};

struct Calibration {
  int64_t threads = 1;
  double conv_gflops = 0, matmul_gflops = 0;
};

/// The machine's 3x3-convolution and matmul throughput at `threads`.
Calibration calibrate(int64_t threads, const Rule& rule);
/// "AMD EPYC ..., 2 cores"
std::string machine_description();
/// One row of the JSON report.
json result_json(const Result& r, bool python);
/// To each bf16-mixed row of the JSON report's `results` that has a float32 row of the same case and thread count:
/// `over_32`, bf16-mixed's speed-up over float32 per side ("cpp", and "python" where measured) and measurement
/// ("train", "infer", "latency"): the median over rounds of time in 32 / time in bf16-mixed of the same round
/// (paired_ratios), and `over_32_rounds`, those rounds' ratios.
void add_speedups_over_32(json& results);
/// The published tables, from the JSON report.
std::string markdown(const json& doc);
/// Replaces the block between the README's zoo bench markers with `table`.
void replace_readme_block(const std::string& path, const std::string& table);

}  // namespace zoo::cli::bench
