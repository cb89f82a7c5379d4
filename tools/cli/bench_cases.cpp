// zoo bench: the cases, and what each runs in C++ (a registry model on its own data, or a layer).
#include "tools/cli/bench.h"

#include "datasets/registry.h"
#include "models/attention.h"
#include "models/auxiliary.h"
#include "models/gated_lstm.h"
#include "models/mhc.h"
#include "models/moe.h"
#include "models/ode.h"
#include "models/registry.h"
#include "ops/sinkhorn.h"
#include "training/auxiliary.h"
#include "training/run.h"

#include <torch/csrc/jit/frontend/tracer.h>
#include <torch/csrc/jit/ir/ir.h>

namespace zoo::cli::bench {

namespace {
/// The layers of a module with an auxiliary loss (MoE load balancing), found once per case: the timed step only
/// sums their losses, as the trainer does (training/auxiliary.cpp).
using AuxiliaryLayers = std::vector<std::shared_ptr<models::AuxiliaryLoss>>;
AuxiliaryLayers auxiliary_layers(const std::shared_ptr<torch::nn::Module>& module) {
  AuxiliaryLayers layers;
  if (module)
    for (const auto& m : module->modules(/*include_self=*/true))
      if (auto layer = std::dynamic_pointer_cast<models::AuxiliaryLoss>(m)) layers.push_back(std::move(layer));
  return layers;
}

/// Sum of the layers' auxiliary losses after a training forward (undefined when there are none).
torch::Tensor auxiliary_losses(const AuxiliaryLayers& layers) {
  torch::Tensor total;
  for (const auto& layer : layers)
    if (auto l = layer->auxiliary_loss(); l.defined()) total = total.defined() ? total + l : l;
  return total;
}

/// Multiply-adds x 2 of the convolutions and matrix products in a trace of `fn(example)`.
double count_flops(torch::nn::Module& module, const std::function<torch::Tensor(const torch::Tensor&)>& fn,
                   const torch::Tensor& example) {
  torch::NoGradGuard no_grad;
  // Parameters that require grad cannot become constants of a trace: off while tracing, back on after.
  std::vector<torch::Tensor> frozen;
  for (auto& p : module.parameters())
    if (p.requires_grad()) frozen.push_back(p.requires_grad_(false));
  struct Restore {
    std::vector<torch::Tensor>& params;
    ~Restore() {
      for (auto& p : params) p.requires_grad_(true);
    }
  } restore{frozen};
  auto traced = torch::jit::tracer::trace(
      {example}, [&](torch::jit::Stack in) -> torch::jit::Stack { return {fn(in.at(0).toTensor())}; },
      [](const torch::autograd::Variable&) { return std::string(); }, /*strict=*/false);
  auto sizes = [](const torch::jit::Value* v) {
    auto t = v->type()->cast<c10::TensorType>();
    if (!t) return std::vector<int64_t>{};
    auto s = t->sizes().concrete_sizes();
    return s ? *s : std::vector<int64_t>{};
  };
  auto numel = [](const std::vector<int64_t>& s) {
    double n = 1;
    for (auto d : s) n *= static_cast<double>(d);
    return s.empty() ? 0.0 : n;
  };
  double flops = 0;
  std::function<void(torch::jit::Block*)> walk = [&](torch::jit::Block* block) {
    for (auto* node : block->nodes()) {
      for (auto* b : node->blocks()) walk(b);
      const std::string kind = node->kind().toQualString();
      const auto out = sizes(node->output(0));
      if (kind == "aten::_convolution" || kind == "aten::convolution" || kind.rfind("aten::conv", 0) == 0) {
        const auto in = sizes(node->input(0)), w = sizes(node->input(1));
        if (w.empty()) continue;
        bool transposed = kind.find("transpose") != std::string::npos;
        if ((kind == "aten::_convolution" || kind == "aten::convolution") && node->inputs().size() > 6)
          transposed = torch::jit::toIValue(node->input(6)).value_or(false).toBool();
        const double per = numel(w) / static_cast<double>(w[0]);  // Cin/g * k... or Cout/g * k... (transposed)
        flops += 2 * per * (transposed ? numel(in) : numel(out));
      } else if (kind == "aten::linear") {
        const auto w = sizes(node->input(1));
        if (w.size() == 2) flops += 2 * numel(out) * static_cast<double>(w[1]);
      } else if (kind == "aten::matmul" || kind == "aten::mm" || kind == "aten::bmm") {
        const auto a = sizes(node->input(0));
        if (!a.empty()) flops += 2 * numel(out) * static_cast<double>(a.back());
      } else if (kind == "aten::addmm") {
        const auto a = sizes(node->input(1));
        if (!a.empty()) flops += 2 * numel(out) * static_cast<double>(a.back());
      }
    }
  };
  walk(traced.first->graph->block());
  return flops;
}

/// The first tensor of whatever a forward returns.
torch::Tensor first_tensor(torch::nn::AnyValue v) {
  if (auto* t = v.try_get<torch::Tensor>()) return *t;
  if (auto* t2 = v.try_get<std::tuple<torch::Tensor, torch::Tensor>>()) return std::get<0>(*t2);
  if (auto* t3 = v.try_get<std::tuple<torch::Tensor, torch::Tensor, torch::Tensor>>()) return std::get<0>(*t3);
  throw std::runtime_error("cannot count the FLOPs of a forward that returns neither a tensor nor a tuple");
}

}  // namespace

const std::vector<CaseSpec>& all_cases() {
  static const std::vector<CaseSpec> cases{
      {"mlp", "mlp", {}, 0, false, true, "784-256-128-10 MLP"},
      {"cnn", "cnn", {}, 0, false, true, "2x conv-BN-ReLU-pool CNN"},
      {"conv1d", "conv1d", {}, 0, false, true, "1-D ConvNet"},
      {"conv3d", "conv3d", {}, 0, false, true, "3-D ConvNet"},
      {"conv4d", "conv4d", {}, 0, false, true, "4-D ConvNet (conv3d per frame)"},
      {"vae", "vae", {}, 0, false, true, "VAE 784-400-20"},
      {"unet", "unet", {}, 4, false, true, "U-Net, 64x64 scenes, batch 4"},
      {"deconvnet", "deconvnet", {}, 4, false, true, "DeconvNet, 64x64 scenes, batch 4"},
      {"unet3d", "unet3d", {}, 2, false, true, "3-D U-Net, batch 2"},
      {"deconvnet3d", "deconvnet3d", {}, 2, false, true, "3-D DeconvNet, batch 2"},
      {"elmo", "elmo", {}, 8, true, false, "ELMo biLM, batch 8 x 20 tokens"},
      {"moe", "moe", {}, 0, false, false, "CNN + top-2 of 8 experts"},
      {"moe-layer", "moe-layer", {}, 256, true, false, "MoE layer alone: 256 tokens, top-2 of 8 experts"},
      {"ode-resnet", "ode-resnet", {}, 0, false, false, "ODE-ResNet, RK4, 2 steps"},
      {"ode-euler-32",
       "ode-resnet",
       {{"method", "euler"}, {"steps", 32}, {"channels", 8}},
       8,
       true,
       false,
       "ODE-ResNet, Euler, 32 small steps, width 8, batch 8"},
      {"ode-solver",
       "ode-solver",
       {{"dim", 16}, {"hidden", 64}, {"steps", 50}},
       32,
       true,
       false,
       "MLPField.solve: RK4, 50 steps of a field 16-64-16, batch 32"},
      {"mhc-resnet", "mhc-resnet", {}, 0, false, false, "ResNet with mHC streams"},
      {"resnet18",
       "resnet18",
       {{"in_channels", 1}, {"num_classes", 10}, {"stem", "cifar"}},
       32,
       false,
       true,
       "torchvision's ResNet-18, CIFAR stem, 28x28 grey, batch 32",
       "fashion-mnist"},
      {"resnet50",
       "resnet50",
       {{"in_channels", 1}, {"num_classes", 10}, {"stem", "cifar"}},
       8,
       false,
       true,
       "torchvision's ResNet-50, CIFAR stem, 28x28 grey, batch 8",
       "fashion-mnist"},
      {"resnet18-folder",
       "resnet18",
       {{"in_channels", 1}, {"num_classes", 10}, {"stem", "cifar"}},
       32,
       false,
       false,
       "resnet18 on 10,000 PNGs in class folders, decoded per batch (cache none)",
       "image-classes",
       {{"channels", 1}, {"cache", "none"}, {"verify", false}}},
      {"sinkhorn",
       "sinkhorn",
       {{"n", 4}, {"iterations", 20}},
       64,
       true,
       false,
       "Sinkhorn-Knopp, 64 4x4 matrices, 20 iterations"},
      {"gated-lstm-cell",
       "gated-lstm-cell",
       {{"input_size", 32}, {"hidden_size", 64}, {"steps", 20}},
       8,
       true,
       false,
       "LSTM cell with explicit gates, 32 -> 64, 20 steps, batch 8"},
      {"attention",
       "attention",
       {{"embed_dim", 64}, {"num_heads", 4}, {"length", 20}},
       16,
       false,
       false,
       "multi-head self-attention, 16 x 20 x 64"},
  };
  return cases;
}

namespace {

/// The folder of PNGs the image-classes cases read: the first 10,000 training and test images of Fashion-MNIST,
/// written once per process (about 3 s) and removed at exit.
std::string bench_image_folder() {
  static ScopedTempDir tmp("zoo-bench-images");
  static const std::string dir = [] {
    datasets::DataConfig data;
    data.name = "fashion-mnist";
    data.limit = 10000;
    const auto out = (tmp.path() / "images").string();
    export_class_folders(data, out, 0);
    return out;
  }();
  return dir;
}

}  // namespace

Runner make_model_runner(const CaseSpec& spec, std::map<std::string, datasets::Splits>& data_cache,
                         training::Precision precision) {
  Runner r;
  r.spec = spec;
  training::RunConfig config;
  config.model = spec.model;
  config.options = spec.options.is_null() ? json::object() : spec.options;
  config.data.name = spec.dataset;  // empty: complete_config gives the model's own
  config.data.options = spec.data_options;
  if (spec.dataset == "image-classes") config.data.data_dir = bench_image_folder();
  config.data.val_fraction = 0;  // training steps on all items: nothing held out for validation
  config = training::complete_config(config);
  const auto& entry = models::ModelRegistry::instance().at(spec.model);
  r.batch = spec.batch > 0 ? spec.batch : entry.train_defaults.value("batch_size", int64_t{64});
  const std::string data_key = datasets::to_json(config.data).dump();
  if (!data_cache.count(data_key)) data_cache[data_key] = datasets::load_splits(config.data);
  r.data = data_cache[data_key].train;
  r.dataset = config.data.name;
  TORCH_CHECK(r.data->size() >= r.batch, "dataset ", config.data.name, " has only ", r.data->size(),
              " training items, fewer than the batch of ", r.batch);
  torch::manual_seed(0);
  auto batch = r.data->get(torch::randperm(r.data->size(), torch::kLong).slice(0, 0, r.batch));
  r.input = batch.input;
  r.target = batch.target;
  r.latency_input = batch.input.slice(0, 0, 1);
  auto model = models::build_model(spec.model, config.options).first;
  r.module = model.ptr();
  // The trainer's own step (Adam, lr 1e-3, with the callbacks a run attaches for any model: auxiliary losses).
  r.trainer = std::make_shared<training::Trainer>(
      model, training::make_objective(config.task, config.options, config.task_options), data_cache[data_key],
      training::TrainOptions()
          .optimizer("adam")
          .lr(1e-3)
          .progress(false)
          .threads(torch::get_num_threads())
          .precision(training::precision_name(precision)));
  training::attach_auxiliary_losses(*r.trainer);
  r.step_batch = batch;
  r.forward = [model](const torch::Tensor& x) mutable { model.any_forward(x); };
  r.python = {{"model", spec.model}, {"options", config.options}, {"task", config.task}, {"lr", 1e-3}};
  if (spec.flops) {
    r.module->eval();
    r.forward_flops = count_flops(
        *r.module, [model](const torch::Tensor& x) mutable { return first_tensor(model.any_forward(x)); }, r.input);
  }
  return r;
}

Runner make_layer_runner(const CaseSpec& spec) {
  Runner r;
  r.spec = spec;
  r.batch = spec.batch;
  const auto& o = spec.options;
  torch::manual_seed(0);
  std::function<torch::Tensor(const torch::Tensor&)> out;
  if (spec.model == "moe-layer") {
    models::MixtureOfExperts moe(
        models::MixtureOfExpertsOptions(64, 64).hidden(128).experts(8).k(2).capacity_factor(2.0));
    r.module = moe.ptr();
    r.input = torch::randn({spec.batch, 64});
    out = [moe](const torch::Tensor& x) mutable { return moe->forward(x); };
    r.python = {{"model", "moe-layer"},
                {"options",
                 {{"in_features", 64},
                  {"out_features", 64},
                  {"hidden", 128},
                  {"experts", 8},
                  {"gate", "topk"},
                  {"k", 2},
                  {"renormalize", true},
                  {"capacity_factor", 2.0},
                  {"balance", "switch"},
                  {"balance_coef", 1e-2}}}};
  } else if (spec.model == "ode-solver") {
    const int64_t dim = o.at("dim"), hidden = o.at("hidden"), steps = o.at("steps");
    models::MLPField field(models::MLPFieldOptions(dim, hidden));
    r.module = field.ptr();
    r.input = torch::randn({spec.batch, dim});
    out = [field, steps](const torch::Tensor& y0) mutable {
      return field->solve(y0, 0.0, 1.0, models::ODESolverOptions().method("rk4").steps(steps)).y;
    };
    r.python = {{"model", "ode-solver"}, {"options", {{"dim", dim}, {"hidden", hidden}, {"steps", steps}}}};
  } else if (spec.model == "sinkhorn") {
    const int64_t n = o.at("n"), iterations = o.at("iterations");
    r.input = torch::randn({spec.batch, n, n}).requires_grad_(true);
    out = [iterations](const torch::Tensor& x) { return ops::sinkhorn_knopp(x, iterations); };
    r.python = {{"model", "sinkhorn"}, {"options", {{"iterations", iterations}}}};
  } else if (spec.model == "gated-lstm-cell") {
    const int64_t in = o.at("input_size"), hidden = o.at("hidden_size"), steps = o.at("steps");
    models::GatedLSTMCell cell(models::GatedLSTMCellOptions(in, hidden));
    r.module = cell.ptr();
    r.input = torch::randn({steps, spec.batch, in});
    out = [cell, hidden](const torch::Tensor& x) mutable {
      auto h = torch::zeros({x.size(1), hidden}, x.options()), c = h;
      for (int64_t t = 0; t < x.size(0); ++t) {
        auto step = cell->forward(x[t], std::make_tuple(h, c));
        h = step.h;
        c = step.c;
      }
      return h;
    };
    r.python = {{"model", "gated-lstm-cell-explicit"}, {"options", {{"input_size", in}, {"hidden_size", hidden}}}};
  } else if (spec.model == "attention") {
    const int64_t e = o.at("embed_dim"), heads = o.at("num_heads"), length = o.at("length");
    models::Attention attention(models::AttentionOptions(e, heads));
    r.module = attention.ptr();
    r.input = torch::randn({spec.batch, length, e});
    out = [attention](const torch::Tensor& x) mutable { return attention->forward(x, x, x).output; };
    r.python = {{"model", "attention"}, {"options", {{"embed_dim", e}, {"num_heads", heads}}}};
  } else {
    throw std::invalid_argument("unknown benchmark layer '" + spec.model + "'");
  }
  r.python["task"] = "kernel";
  r.python["lr"] = 1e-3;
  // Sequences are [T, N, ...] for the LSTM cell: batch 1 is a slice of dimension 1.
  r.latency_input = spec.model == "gated-lstm-cell" ? r.input.slice(1, 0, 1).detach() : r.input.slice(0, 0, 1).detach();
  if (spec.model == "sinkhorn") r.latency_input.requires_grad_(false);
  r.loss = [out, x = r.input, aux_layers = auxiliary_layers(r.module)]() {
    auto l = out(x).pow(2).mean();
    if (auto aux = auxiliary_losses(aux_layers); aux.defined()) l = l + aux;
    return l;
  };
  r.forward = [out](const torch::Tensor& x) { out(x); };
  if (r.module)
    r.optimizer = std::make_unique<torch::optim::Adam>(r.module->parameters(), torch::optim::AdamOptions(1e-3));
  return r;
}

}  // namespace zoo::cli::bench
