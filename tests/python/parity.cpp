// Parity with Python: every zoo model that has a twin in tests/python/zoo_twins.py computes the same outputs and
// the same gradients of a scalar loss as the twin fed the same weights (by name) and inputs, within 1e-5.
// Also the interop tools: zoo export -> Python runs forward; Python -> zoo import -> zoo eval; zoo predict.
#include "datasets/images.h"
#include "datasets/text.h"
#include "helpers.h"
#include "models/attention.h"
#include "models/gated_lstm.h"
#include "models/ode.h"
#include "models/registry.h"
#include "models/vae.h"
#include "training/auxiliary.h"
#include "training/checkpoint.h"
#include "training/export.h"
#include "training/priors.h"
#include "training/probe.h"
#include "training/torch_save.h"
#include "training/trainer.h"

#include <torch/csrc/jit/serialization/pickle.h>
#include <catch2/catch.hpp>

#include <fstream>
#include <functional>
#include <map>
#include <regex>

using namespace zoo;
using test::TempDir;
namespace fs = std::filesystem;

namespace {

using test::kPython;
using test::python_has_torch;

struct Case {
  std::string name, model;
  nlohmann::json options;
  torch::Tensor input;
  double tolerance = 1e-5;  ///< parity.py's bound on the scaled difference of outputs and gradients
  nlohmann::json twin = nlohmann::json::object();  ///< options of the twin alone (merged into "options")
};

/// Moves a fresh model's batch-norm statistics away from 0 and 1 and its parameters away from initial values such
/// as zero gate projections, so that every path counts.
void perturb(torch::nn::Module& module) {
  torch::NoGradGuard no_grad;
  for (auto& b : module.named_buffers())
    if (b.key().find("running_mean") != std::string::npos)
      b.value().copy_(torch::randn_like(b.value()) * 0.1);
    else if (b.key().find("running_var") != std::string::npos)
      b.value().copy_(torch::rand_like(b.value()) + 0.5);
  for (auto& p : module.parameters()) p.add_(torch::randn_like(p) * 0.05);
}

void write_pickle(const fs::path& path, const c10::IValue& value) {
  const auto bytes = torch::jit::pickle_save(value);
  std::ofstream(path, std::ios::binary).write(bytes.data(), static_cast<std::streamsize>(bytes.size()));
}

/// Writes one case directory: weights, the twin's spec, and the C++ inputs, outputs and gradients. `run` maps
/// the inputs to the outputs (several for tuple results).
void write_case_with(const fs::path& dir, torch::nn::Module& module, const nlohmann::json& spec,
                     const std::vector<torch::Tensor>& inputs,
                     const std::function<std::vector<torch::Tensor>(const std::vector<torch::Tensor>&)>& run) {
  fs::create_directories(dir);
  perturb(module);
  module.eval();
  training::save_module(module, (dir / "weights.pt").string());
  std::ofstream(dir / "options.json") << spec.dump();
  const int64_t seed = 123;
  torch::manual_seed(seed);
  const auto outs = run(inputs);
  REQUIRE(!outs.empty());
  torch::manual_seed(7);
  c10::impl::GenericList weights(c10::TensorType::get()), outputs(c10::TensorType::get()), in(c10::TensorType::get());
  for (const auto& x : inputs) in.push_back(x);
  torch::Tensor loss = torch::zeros({});
  for (const auto& o : outs) {
    const auto w = torch::randn_like(o);
    weights.push_back(w);
    outputs.push_back(o.detach());
    loss = loss + (o * w).sum();
  }
  loss.backward();
  c10::impl::GenericDict grads(c10::StringType::get(), c10::TensorType::get());
  for (const auto& p : module.named_parameters())
    grads.insert(p.key(), p.value().grad().defined() ? p.value().grad() : torch::zeros_like(p.value()));
  c10::impl::GenericDict d(c10::StringType::get(), c10::AnyType::get());
  d.insert("inputs", in);
  d.insert("seed", seed);
  d.insert("outputs", outputs);
  d.insert("loss_weights", weights);
  d.insert("grads", grads);
  write_pickle(dir / "case.pt", d);
}

/// A registered model on one input.
void write_case(const fs::path& root, const Case& c) {
  torch::manual_seed(0);
  auto [model, options] = models::build_model(c.model, c.options);
  write_case_with(root / c.name, *model.ptr(),
                  {{"model", c.model}, {"options", options}, {"tolerance", c.tolerance}, {"twin", c.twin}}, {c.input},
                  [&](const std::vector<torch::Tensor>& x) -> std::vector<torch::Tensor> {
                    auto any = model.any_forward(x[0]);
                    if (auto* t = any.try_get<torch::Tensor>()) return {*t};
                    const auto& t3 = *any.try_get<std::tuple<torch::Tensor, torch::Tensor, torch::Tensor>>();
                    return {std::get<0>(t3), std::get<1>(t3), std::get<2>(t3)};
                  });
}

}  // namespace

TEST_CASE("Parity: every model with a Python twin gives the same outputs and gradients (within 1e-5)",
          "[parity][python]") {
  if (!python_has_torch()) {
    WARN("skipped: /usr/bin/python3 cannot import torch (apt-get install python3-torch)");
    return;
  }
  torch::manual_seed(1);
  const auto chars =
      torch::cat({datasets::words_to_chars({"<S>", "the", "fair", "is", "fair", "</S>"}, 12).unsqueeze(0),
                  datasets::words_to_chars({"<S>", "a", "day", "</S>", "", ""}, 12).unsqueeze(0)});
  auto padded = chars.clone();
  padded[1].slice(0, 4).zero_();  // a shorter sentence, padded
  const std::vector<Case> cases{
      {"mlp", "mlp", {{"hidden", {16, 8}}}, torch::rand({3, 1, 28, 28})},
      {"mlp-dropout", "mlp", {{"hidden", {16}}, {"dropout", 0.2}}, torch::rand({2, 1, 28, 28})},
      {"cnn", "cnn", {{"channels", {4, 8}}, {"hidden", 16}}, torch::rand({2, 1, 28, 28})},
      {"conv1d", "conv1d", {{"channels", {4, 8}}}, torch::randn({2, 1, 32})},
      {"conv3d", "conv3d", {{"channels", {4, 8}}}, torch::randn({2, 1, 8, 8, 8})},
      {"conv4d", "conv4d", {{"channels", {2, 4}}}, torch::randn({2, 1, 5, 6, 6, 6})},
      {"vae-mlp", "vae", {{"hidden", 32}, {"latent", 4}}, torch::rand({2, 1, 28, 28})},
      {"vae-conv", "vae", {{"arch", "conv"}, {"hidden", 32}, {"latent", 4}}, torch::rand({2, 1, 28, 28})},
      {"unet", "unet", {{"levels", 3}, {"base_channels", 4}}, torch::randn({2, 1, 20, 20})},
      {"unet-bilinear",
       "unet",
       {{"levels", 3}, {"base_channels", 4}, {"upsample", "bilinear"}},
       torch::randn({1, 1, 16, 16})},
      {"unet3d", "unet3d", {{"levels", 2}, {"base_channels", 2}}, torch::randn({1, 1, 7, 8, 8})},
      {"deconvnet", "deconvnet", {{"levels", 3}, {"base_channels", 4}}, torch::randn({2, 1, 20, 20})},
      {"deconvnet3d", "deconvnet3d", {{"levels", 2}, {"base_channels", 2}}, torch::randn({1, 1, 8, 8, 8})},
      {"moe-top2", "moe", {{"channels", {4, 8}}, {"experts", 4}, {"k", 2}, {"hidden", 8}}, torch::rand({5, 1, 28, 28})},
      {"moe-shared",
       "moe",
       {{"channels", {4}}, {"experts", 4}, {"k", 1}, {"hidden", 8}, {"shared_hidden", 6}},
       torch::rand({5, 1, 28, 28})},
      {"moe-softmax",
       "moe",
       {{"channels", {4}}, {"experts", 3}, {"gate", "softmax"}, {"hidden", 8}},
       torch::rand({3, 1, 28, 28})},
      {"moe-noisy",
       "moe",
       {{"channels", {4}}, {"experts", 3}, {"gate", "noisy-topk"}, {"k", 1}, {"renormalize", false}, {"hidden", 8}},
       torch::rand({4, 1, 28, 28})},
      {"ode-rk4", "ode-resnet", {{"channels", 8}}, torch::rand({2, 1, 28, 28})},
      {"ode-euler",
       "ode-resnet",
       {{"channels", 8}, {"method", "euler"}, {"steps", 3}, {"time", false}},
       torch::rand({2, 1, 16, 16})},
      {"ode-midpoint", "ode-resnet", {{"channels", 8}, {"method", "midpoint"}}, torch::rand({2, 1, 16, 16})},
      // A bias's gradient through dopri5 sums over every pixel of every stage of every step in float32: rounding
      // reaches 1.1e-5 and 1.6e-5 there (measured with two initialisations), while the outputs agree to 3e-7-7e-7.
      {"ode-dopri5",
       "ode-resnet",
       {{"channels", 8}, {"method", "dopri5"}, {"rtol", 1e-3}, {"atol", 1e-3}},
       torch::rand({2, 1, 16, 16}),
       5e-5},
      // The same against torchdiffeq's own last step (past t1, then its quartic interpolation back to t1) rather
      // than zoo's shortened one: two discretisations, which agree to the solver's tolerance (outputs 1.7e-4 at
      // rtol = atol = 1e-3), their gradients to 1.4e-2 (measured), not to float rounding.
      {"ode-dopri5-interpolated",
       "ode-resnet",
       {{"channels", 8}, {"method", "dopri5"}, {"rtol", 1e-3}, {"atol", 1e-3}},
       torch::rand({2, 1, 16, 16}),
       1e-3,
       {{"solver", {{"last_step", "interpolate"}}}, {"gradient_tolerance", 3e-2}}},
      {"ode-resnet-blocks",
       "ode-resnet",
       {{"channels", 8}, {"block", "resnet"}, {"steps", 3}, {"step_size", 0.5}},
       torch::rand({2, 1, 16, 16})},
      {"resnet18", "resnet18", {{"num_classes", 10}}, torch::randn({2, 3, 32, 32})},
      {"resnet18-cifar-grey",
       "resnet18",
       {{"stem", "cifar"}, {"in_channels", 1}, {"num_classes", 10}, {"zero_init_residual", true}},
       torch::randn({2, 1, 16, 16})},
      {"resnet50", "resnet50", {{"num_classes", 5}}, torch::randn({2, 3, 40, 40})},
      {"mhc", "mhc-resnet", {{"channels", 8}, {"blocks", 2}, {"streams", 3}}, torch::rand({2, 1, 16, 16})},
      {"mhc-lite",
       "mhc-resnet",
       {{"channels", 8}, {"blocks", 2}, {"variant", "mhc-lite"}, {"streams", 3}},
       torch::rand({2, 1, 16, 16})},
      {"mhc-hc", "mhc-resnet", {{"channels", 8}, {"blocks", 2}, {"variant", "hc"}}, torch::rand({2, 1, 16, 16})},
      {"mhc-residual",
       "mhc-resnet",
       {{"channels", 8}, {"blocks", 2}, {"variant", "residual"}},
       torch::rand({2, 1, 16, 16})},
      {"elmo",
       "elmo",
       {{"char_embedding", 4},
        {"filters", {1, 4, 2, 8, 3, 16}},
        {"highway_layers", 2},
        {"max_word_length", 12},
        {"projection_dim", 8},
        {"cell_size", 16},
        {"vocab_size", 20},
        {"mix_layer_norm", true}},
       padded},
  };
  TempDir tmp;
  for (const auto& c : cases) write_case(tmp.path(), c);
  // Layers outside the registry: the attention layer (its twin: the same maths written in Python), the gated
  // LSTM cell (its twin: torch.nn.LSTMCell itself, which has the same parameter names) and MLPField below.
  torch::manual_seed(2);
  models::Attention attention(models::AttentionOptions(8, 2).temperature(0.7));
  write_case_with(tmp.path() / "attention", *attention,
                  {{"model", "attention"}, {"options", {{"embed_dim", 8}, {"num_heads", 2}, {"temperature", 0.7}}}},
                  {torch::randn({2, 3, 8}), torch::randn({2, 5, 8}), torch::randn({2, 5, 8})},
                  [&](const std::vector<torch::Tensor>& x) -> std::vector<torch::Tensor> {
                    auto r = attention->forward(x[0], x[1], x[2]);
                    return {r.output, r.weights};
                  });
  models::GatedLSTMCell cell(models::GatedLSTMCellOptions(6, 4));
  write_case_with(tmp.path() / "gated-lstm-cell", *cell,
                  {{"model", "gated-lstm-cell"}, {"options", {{"input_size", 6}, {"hidden_size", 4}}}},
                  {torch::randn({3, 6}), torch::randn({3, 4}), torch::randn({3, 4})},
                  [&](const std::vector<torch::Tensor>& x) -> std::vector<torch::Tensor> {
                    auto step = cell->forward(x[0], std::make_tuple(x[1], x[2]));
                    return {step.h, step.c};
                  });
  // MLPField::solve (a hand-written adjoint) against torchdiffeq-style stepping through autograd in Python.
  for (const std::string method : {"euler", "midpoint", "rk4"}) {
    models::MLPField field(models::MLPFieldOptions(3, 6));
    write_case_with(
        tmp.path() / ("mlp-field-" + method), *field,
        {{"model", "mlp-field-solve"},
         {"options", {{"dim", 3}, {"hidden", 6}, {"method", method}, {"steps", 5}, {"t0", 0.0}, {"t1", 1.5}}}},
        {torch::randn({4, 3})}, [&](const std::vector<torch::Tensor>& x) -> std::vector<torch::Tensor> {
          return {field->solve(x[0], 0.0, 1.5, models::ODESolverOptions().method(method).steps(5)).y};
        });
  }
  const auto r =
      test::run_command(std::string(kPython) + " " + ZOO_SOURCE_DIR + "/tests/python/parity.py " + tmp.str());
  INFO(r.out << r.err);
  std::vector<std::string> names{"attention", "gated-lstm-cell", "mlp-field-euler", "mlp-field-midpoint",
                                 "mlp-field-rk4"};
  for (const auto& c : cases) names.push_back(c.name);
  for (const auto& name : names) {
    const std::regex ok("case " + name + " ok output [0-9.e+-]+ gradient [0-9.e+-]+");
    CHECK(std::regex_search(r.out, ok));
    // The twin's torch.save(model.state_dict()) read by zoo: the same names, dtypes and values as zoo's weights.
    INFO(name);
    const auto path = (tmp.path() / name / "state_dict.pth").string();
    const auto saved = training::saved_state_dict(training::read_torch_save(path), path, "", nullptr);
    const auto ours = training::read_tensors((tmp.path() / name / "weights.pt").string());
    CHECK(saved.size() == ours.size());
    for (const auto& [key, t] : saved) {
      INFO(key);
      REQUIRE(ours.count(key) == 1);
      CHECK(t.scalar_type() == ours.at(key).scalar_type());
      CHECK(torch::equal(t, ours.at(key)));
    }
  }
  CHECK(r.code == 0);
}

namespace {

/// A training-mode case: `steps` optimizer steps of the trainer itself (Trainer::train_step, with the callbacks a
/// run attaches: the prior and the layers' auxiliary losses) from the same weights, batches and seed as the twin.
struct TrainCase {
  std::string name, model;
  nlohmann::json options;
  std::string task;
  nlohmann::json task_options = nlohmann::json::object();
  training::TrainOptions train;
  training::PriorOptions prior = {};
  std::vector<datasets::Batch> batches;
  bool random = true;  ///< draws noise or masks: a run at another seed must then give other losses
  std::vector<std::string> positive_terms = {};  ///< logged terms that must be > 0 (e.g. "dropped")
};

c10::impl::GenericDict tensor_dict() { return c10::impl::GenericDict(c10::StringType::get(), c10::TensorType::get()); }

/// Runs the steps from `initial` weights at `seed`: the losses, each step's logged terms, the last gradients and
/// the weights and buffers after.
struct TrainRun {
  std::vector<double> losses;
  c10::impl::GenericList terms{c10::AnyType::get()};
  c10::impl::GenericDict grads = tensor_dict(), after = tensor_dict();
  std::map<std::string, double> positive;
};

TrainRun run_train_case(const TrainCase& c, const fs::path& initial, int64_t seed) {
  auto [model, options] = models::build_model(c.model, c.options);
  training::load_module(*model.ptr(), initial.string());
  training::Trainer trainer(model, training::make_objective(c.task, options, c.task_options),
                            {std::make_shared<datasets::TensorDataset>(c.batches[0].input, c.batches[0].target, "x"),
                             std::make_shared<datasets::TensorDataset>(c.batches[0].input, c.batches[0].target, "x")},
                            training::TrainOptions(c.train).progress(false).threads(torch::get_num_threads()));
  training::attach_prior(trainer, c.prior);
  training::attach_auxiliary_losses(trainer);
  model.ptr()->train();
  torch::manual_seed(seed);
  TrainRun r;
  for (const auto& batch : c.batches) {
    training::Terms terms;
    r.losses.push_back(trainer.train_step(batch, c.train.lr(), terms));
    auto logged = tensor_dict();
    for (const auto& [name, value] : terms) {
      logged.insert(name, value.to(torch::kFloat64));
      if (value.numel() == 1) r.positive[name] = std::max(r.positive[name], value.item<double>());
    }
    r.terms.push_back(logged);
  }
  for (const auto& p : model.ptr()->named_parameters()) {
    r.grads.insert(p.key(), p.value().grad().defined() ? p.value().grad() : torch::zeros_like(p.value()));
    r.after.insert(p.key(), p.value().detach().clone());
  }
  for (const auto& b : model.ptr()->named_buffers()) r.after.insert(b.key(), b.value().clone());
  return r;
}

void write_train_case(const fs::path& root, const TrainCase& c) {
  INFO(c.name);
  const auto dir = root / c.name;
  fs::create_directories(dir);
  torch::manual_seed(0);
  auto [model, options] = models::build_model(c.model, c.options);
  perturb(*model.ptr());
  training::save_module(*model.ptr(), (dir / "weights.pt").string());
  const auto& t = c.train;
  std::ofstream(dir / "options.json") << nlohmann::json{
      {"kind", "train"},
      {"model", c.model},
      {"options", options},
      {"task", c.task},
      {"task_options", c.task_options},
      {"train",
       {{"optimizer", t.optimizer()},
        {"lr", t.lr()},
        {"momentum", t.momentum()},
        {"weight_decay", t.weight_decay()},
        {"clip_grad", t.clip_grad()}}},
      {"prior", training::to_json(c.prior)},
      {"random", c.random}}.dump();
  const int64_t seed = 42;
  const auto run = run_train_case(c, dir / "weights.pt", seed);
  for (const auto& name : c.positive_terms) {
    INFO(name);
    CHECK((run.positive.count(name) == 1 && run.positive.at(name) > 0));
  }
  c10::impl::GenericList batches(c10::AnyType::get());
  for (const auto& b : c.batches) {
    auto d = tensor_dict();
    d.insert("input", b.input);
    d.insert("target", b.target);
    batches.push_back(d);
  }
  c10::impl::GenericDict d(c10::StringType::get(), c10::AnyType::get());
  d.insert("seed", seed);
  d.insert("batches", batches);
  d.insert("losses", torch::tensor(run.losses, torch::kFloat64));
  d.insert("terms", run.terms);
  d.insert("grads", run.grads);
  d.insert("after", run.after);
  // The same steps at another seed: where the case draws noise or masks, the twin's losses must match the first
  // run and not this one, which shows that both sides drew the same noise rather than noise that does not matter.
  d.insert("other_seed_losses", torch::tensor(run_train_case(c, dir / "weights.pt", seed + 1).losses, torch::kFloat64));
  write_pickle(dir / "case.pt", d);
}

datasets::Batch image_batch(int64_t n, int64_t classes, std::vector<int64_t> shape = {1, 28, 28}) {
  shape.insert(shape.begin(), n);
  return {torch::rand(shape), torch::randint(0, classes, {n}, torch::kLong)};
}

}  // namespace

TEST_CASE(
    "Parity in training mode: steps of the trainer equal the twin's (noise, dropout, capacity, objectives, "
    "priors, ScalarMix)",
    "[parity][python]") {
  if (!python_has_torch()) {
    WARN("skipped: /usr/bin/python3 cannot import torch (apt-get install python3-torch)");
    return;
  }
  torch::manual_seed(3);
  auto sgd = training::TrainOptions().optimizer("sgd").lr(0.05).momentum(0.9);
  auto adam = training::TrainOptions().optimizer("adam").lr(1e-2);
  // Priors as config.json holds them (training/priors.h's schema).
  auto prior = [](const nlohmann::json& j) { return training::prior_options_from_json(j); };
  auto two = [](std::function<datasets::Batch()> make) { return std::vector<datasets::Batch>{make(), make()}; };
  auto images = [&](int64_t n) { return two([n] { return image_batch(n, 10); }); };
  // Segmentation: labels from thresholds of the image, so the classes are spatially coherent.
  auto segments = two([] {
    const auto x = torch::randn({2, 1, 16, 16});
    return datasets::Batch{x, ((x > 0.5).to(torch::kLong) + (x > 1.2).to(torch::kLong)).squeeze(1)};
  });
  // Sentences for the biLM: character ids of random words, targets the next (forward) and previous (backward)
  // word ids, -1 past the end, and one shorter sentence padded.
  auto sentences = two([] {
    const int64_t n = 2, steps = 5, width = 8, vocab = 12;
    auto chars = torch::randint(1, 261, {n, steps, width}, torch::kLong);
    chars.select(1, steps - 1)[1].zero_();
    auto target = torch::randint(0, vocab, {n, 2, steps}, torch::kLong);
    target[1][0][steps - 2] = -1;
    target[1].select(1, steps - 1).fill_(-1);
    target.select(2, steps - 1)[0][0] = -1;
    return datasets::Batch{chars, target};
  });
  const auto proximal = prior({{"kind", "laplace"}, {"lambda", 0.05}, {"proximal", true}});
  const auto decoupled = prior({{"kind", "gaussian"}, {"lambda", 0.5}, {"decoupled", true}, {"include_all", true}});
  const nlohmann::json mlp{{"hidden", {16}}};
  std::vector<TrainCase> cases{
      {"train-mlp-dropout", "mlp", {{"hidden", {16}}, {"dropout", 0.3}}, "classify", {}, adam, {}, images(6)},
      {"train-cnn",
       "cnn",
       {{"channels", {4, 8}}, {"hidden", 16}, {"dropout", 0.25}},
       "classify",
       {},
       sgd,
       {},
       images(4)},
      {"train-moe-noisy-cv",
       "moe",
       {{"channels", {4}},
        {"dropout", 0.2},
        {"moe",
         {{"experts", 4},
          {"gate", "noisy-topk"},
          {"k", 2},
          {"hidden", 8},
          {"balance", "cv"},
          {"balance_coef", 0.1},
          {"capacity_factor", 0.75}}}},
       "classify",
       {},
       adam,
       {},
       images(8),
       true,
       {"aux", "dropped"}},
      {"train-moe-switch-capacity",
       "moe",
       {{"channels", {4}},
        {"dropout", 0.0},
        {"moe", {{"experts", 4}, {"k", 1}, {"hidden", 8}, {"balance", "switch"}, {"capacity_factor", 0.5}}}},
       "classify",
       {},
       sgd,
       {},
       images(8),
       false,
       {"aux", "dropped"}},
      {"train-moe-softmax-cv",
       "moe",
       {{"channels", {4}},
        {"dropout", 0.0},
        {"moe", {{"experts", 3}, {"gate", "softmax"}, {"hidden", 8}, {"balance", "cv"}}}},
       "classify",
       {},
       adam,
       {},
       images(4),
       false,
       {"aux"}},
      {"train-vae-binarize",
       "vae",
       {{"hidden", 32}, {"latent", 4}, {"binarize", true}},
       "vae",
       {},
       adam,
       {},
       images(4)},
      {"train-vae-conv",
       "vae",
       {{"arch", "conv"}, {"hidden", 16}, {"latent", 3}, {"beta", 0.5}},
       "vae",
       {},
       sgd,
       {},
       images(3)},
      {"train-unet-dice",
       "unet",
       {{"levels", 3}, {"base_channels", 4}, {"num_classes", 3}},
       "segment",
       {{"dice", 0.5}},
       sgd,
       {},
       segments,
       false},
      {"train-elmo-bilm",
       "elmo",
       {{"char_embedding", 4},
        {"filters", {1, 4, 2, 8}},
        {"highway_layers", 1},
        {"max_word_length", 8},
        {"projection_dim", 6},
        {"cell_size", 10},
        {"vocab_size", 12},
        {"dropout", 0.3}},
       "bilm",
       {},
       adam,
       {},
       sentences},
      {"train-prior-gaussian",
       "mlp",
       mlp,
       "classify",
       {},
       sgd,
       prior({{"kind", "gaussian"}, {"lambda", 0.1}, {"layers", {{{"pattern", "net.2.*"}, {"lambda", 0.5}}}}}),
       images(4),
       false,
       {"prior"}},
      {"train-prior-laplace",
       "mlp",
       mlp,
       "classify",
       {},
       adam,
       prior({{"kind", "laplace"}, {"lambda", 0.02}}),
       images(4),
       false,
       {"prior"}},
      {"train-prior-proximal-sgd", "mlp", mlp, "classify", {}, sgd, proximal, images(4), false, {"prior"}},
      {"train-prior-proximal-adam", "mlp", mlp, "classify", {}, adam, proximal, images(4), false, {"prior"}},
      {"train-prior-decoupled-adam", "mlp", mlp, "classify", {}, adam, decoupled, images(4), false, {"prior"}},
      {"train-prior-decoupled-sgd-clip",
       "mlp",
       mlp,
       "classify",
       {},
       training::TrainOptions(sgd).clip_grad(0.5),
       decoupled,
       images(4),
       false,
       {"prior"}},
  };
  TempDir tmp;
  for (const auto& c : cases) write_train_case(tmp.path(), c);
  // IWAE (Burda et al.): the k-sample bound and its gradients, the noise from a seeded generator on both sides.
  {
    torch::manual_seed(4);
    models::VAE vae(models::VAEOptions().hidden(24).latent(3));
    perturb(*vae);
    const auto dir = tmp.path() / "iwae";
    fs::create_directories(dir);
    training::save_module(*vae, (dir / "weights.pt").string());
    std::ofstream(dir / "options.json") << nlohmann::json{
        {"kind", "iwae"},
        {"model", "vae"},
        {"options", models::build_model("vae", {{"hidden", 24}, {"latent", 3}})
                        .second}}.dump();
    const auto x = torch::bernoulli(torch::rand({3, 1, 28, 28}));
    const int64_t k = 6, seed = 11;
    const auto bound = models::iwae_log_likelihood(*vae, x, k, 1 << 20, at::detail::createCPUGenerator(seed));
    bound.sum().backward();
    auto grads = tensor_dict();
    for (const auto& p : vae->named_parameters()) grads.insert(p.key(), p.value().grad());
    c10::impl::GenericDict d(c10::StringType::get(), c10::AnyType::get());
    d.insert("input", x);
    d.insert("k", k);
    d.insert("seed", seed);
    d.insert("bound", bound.detach());
    d.insert("grads", grads);
    write_pickle(dir / "case.pt", d);
  }
  // ELMo's downstream ScalarMix (training/probe.h): the learned softmax(s), gamma and accuracies after a few steps.
  {
    const auto dir = tmp.path() / "probe-scalar-mix";
    fs::create_directories(dir);
    const auto labels = torch::randint(0, 3, {40}, torch::kLong);
    std::vector<torch::Tensor> layers{torch::randn({40, 6}) * 100, torch::randn({40, 6}),
                                      torch::randn({40, 6}) * 0.01 + labels.unsqueeze(1).to(torch::kFloat) * 0.01};
    const auto train = torch::arange(0, 30, torch::kLong), test = torch::arange(30, 40, torch::kLong);
    const auto o = training::ProbeOptions().steps(7).lr(0.05).seed(5);
    const auto r = training::train_probe(layers, labels, 3, train, test, o);
    std::ofstream(dir / "options.json") << nlohmann::json{
        {"kind", "probe"}, {"classes", 3}, {"steps", o.steps()}, {"lr", o.lr()}, {"weight_decay", o.weight_decay()},
        {"seed", 5}}.dump();
    c10::impl::GenericList list(c10::TensorType::get());
    for (const auto& h : layers) list.push_back(h);
    c10::impl::GenericDict d(c10::StringType::get(), c10::AnyType::get());
    d.insert("layers", list);
    d.insert("labels", labels);
    d.insert("train", train);
    d.insert("test", test);
    d.insert("weights", torch::tensor(r.weights, torch::kFloat64));
    d.insert("gamma", r.gamma);
    d.insert("accuracy", torch::tensor({r.train_accuracy, r.test_accuracy}, torch::kFloat64));
    write_pickle(dir / "case.pt", d);
  }
  const auto r =
      test::run_command(std::string(kPython) + " " + ZOO_SOURCE_DIR + "/tests/python/train_parity.py " + tmp.str());
  INFO(r.out << r.err);
  std::vector<std::string> names{"iwae", "probe-scalar-mix"};
  for (const auto& c : cases) names.push_back(c.name);
  for (const auto& name : names) CHECK(std::regex_search(r.out, std::regex("case " + name + " ok ")));
  CHECK(r.code == 0);
}

TEST_CASE("Interop: zoo export -> Python calls forward, zoo predict runs it, Python -> zoo import -> zoo eval",
          "[parity][python][cli]") {
  if (!python_has_torch()) {
    WARN("skipped: /usr/bin/python3 cannot import torch (apt-get install python3-torch)");
    return;
  }
  REQUIRE(test::have_fashion_mnist());
  TempDir tmp;
  auto r = test::run_zoo("train mlp --set hidden=[32] --limit 300 --epochs 1 --threads 1 --out " + tmp.str("run"));
  REQUIRE(r.code == 0);
  r = test::run_zoo("export " + tmp.str("run") + " --out " + tmp.str("mlp.pt"));
  REQUIRE(r.code == 0);
  CHECK_THAT(r.out, Catch::Contains("torch.jit.load"));
  // Python runs the exported forward; it equals the C++ model on the same input.
  const std::string py = std::string(kPython) + " -c '\nimport torch\nm = torch.jit.load(\"" + tmp.str("mlp.pt") +
                         "\")\ntorch.manual_seed(0)\nx = torch.rand(4, 1, 28, 28)\ny = m(x)\nprint(list(y.shape))\n"
                         "torch.save({\"x\": x, \"y\": y}, \"" +
                         tmp.str("py.pt") +
                         "\")\n"
                         "print(sorted(n for n, _ in m.named_parameters()))\n'";
  r = test::run_command(py);
  REQUIRE(r.code == 0);
  CHECK_THAT(r.out, Catch::Contains("[4, 10]"));
  CHECK_THAT(r.out, Catch::Contains("net.0.weight") && Catch::Contains("net.2.bias"));
  {
    std::ifstream in(tmp.str("py.pt"), std::ios::binary);
    std::vector<char> bytes((std::istreambuf_iterator<char>(in)), std::istreambuf_iterator<char>());
    const auto d = torch::jit::pickle_load(bytes).toGenericDict();
    auto [config, model] = training::load_run_model(tmp.str("run"), "cpu");
    torch::NoGradGuard no_grad;
    const auto ours = model.forward(d.at("x").toTensor());
    CHECK((ours - d.at("y").toTensor()).abs().max().item<double>() < 1e-5);
  }
  // zoo predict on the export: random input and an image.
  r = test::run_zoo("predict " + tmp.str("mlp.pt") + " --shape 2,1,28,28 --topk 3");
  REQUIRE(r.code == 0);
  CHECK_THAT(r.out,
             Catch::Contains("input [2, 1, 28, 28] -> output [2, 10]") && Catch::Contains("item 1: top classes"));
  // A folder of images, two per forward; one image; an image-to-image module made in Python with --out.
  fs::create_directories(tmp.path() / "images");
  for (int i = 0; i < 3; ++i)
    datasets::save_png(torch::rand({1, 28, 28}), tmp.str("images/" + std::to_string(i) + ".png"));
  r = test::run_zoo("predict " + tmp.str("mlp.pt") + " --batch " + tmp.str("images") + " --batch-size 2 --topk 1");
  REQUIRE(r.code == 0);
  CHECK(test::count_lines(r.out) == 3);
  CHECK_THAT(r.out, Catch::Contains("0.png  ") && Catch::Contains("2.png  "));
  r = test::run_zoo("predict " + tmp.str("mlp.pt") + " --input " + tmp.str("images/1.png"));
  REQUIRE(r.code == 0);
  CHECK_THAT(r.out, Catch::Contains("input [1, 1, 28, 28] -> output [1, 10]"));
  // A tensor saved in Python (the x of py.pt, again on its own).
  r = test::run_command(std::string(kPython) + " -c 'import torch; torch.save(torch.load(\"" + tmp.str("py.pt") +
                        "\")[\"x\"], \"" + tmp.str("x.pt") + "\")'");
  REQUIRE(r.code == 0);
  r = test::run_zoo("predict " + tmp.str("mlp.pt") + " --input " + tmp.str("x.pt") + " --topk 1");
  REQUIRE(r.code == 0);
  CHECK_THAT(r.out,
             Catch::Contains("input [4, 1, 28, 28] -> output [4, 10]") && Catch::Contains("item 3: top classes"));
  r = test::run_command(std::string(kPython) +
                        " -c 'import torch; torch.jit.save(torch.jit.script(torch.nn.Conv2d(1, 3, 1)), \"" +
                        tmp.str("colour.pt") + "\")'");
  REQUIRE(r.code == 0);
  r = test::run_zoo("predict " + tmp.str("colour.pt") + " --input " + tmp.str("images/1.png") + " --out " +
                    tmp.str("out.png"));
  REQUIRE(r.code == 0);
  CHECK(datasets::load_image(tmp.str("out.png")).sizes() == torch::IntArrayRef({3, 28, 28}));
  // A Python model: trained weights saved as a state_dict and as TorchScript, imported, evaluated.
  const std::string train_py =
      std::string(kPython) + " -c '\nimport sys, torch\nsys.path.insert(0, \"" + ZOO_SOURCE_DIR +
      "/tests/python\")\nimport zoo_twins\ntorch.manual_seed(0)\nm = zoo_twins.build(\"mlp\", {\"in_features\": 784, "
      "\"hidden\": [32], \"num_classes\": 10, \"dropout\": 0.0})\ntorch.save(dict(m.state_dict()), \"" +
      tmp.str("sd.pt") + "\")\ntorch.save(m.state_dict(), \"" + tmp.str("ordered.pt") +
      "\")\ntorch.jit.save(torch.jit.script(m), \"" + tmp.str("scripted.pt") + "\")\n'";
  r = test::run_command(train_py);
  REQUIRE(r.code == 0);
  for (const char* file : {"sd.pt", "scripted.pt"}) {
    const std::string out = tmp.str(std::string("imported-") + file);
    r = test::run_zoo(std::string("import ") + tmp.str(file) + " --model mlp --set hidden=[32] --out " + out);
    INFO(file << ": " << r.err);
    REQUIRE(r.code == 0);
    const auto a = training::read_tensors(out + "/model.pt");
    CHECK(a.count("net.0.weight") == 1);
    r = test::run_zoo("eval " + out + " --limit 200 --json");
    REQUIRE(r.code == 0);
  }
  // Both imports hold the same weights.
  const auto sd = training::read_tensors(tmp.str("imported-sd.pt/model.pt"));
  const auto scripted = training::read_tensors(tmp.str("imported-scripted.pt/model.pt"));
  for (const auto& [name, t] : sd) CHECK(torch::equal(t, scripted.at(name)));
  // Mismatches are listed and nothing is written; --partial imports what matches.
  r = test::run_zoo("import " + tmp.str("sd.pt") + " --model mlp --out " + tmp.str("wrong"));
  CHECK(r.code != 0);
  CHECK_THAT(r.err, Catch::Contains("does not match model 'mlp'") && Catch::Contains("shape of net.0.weight"));
  CHECK_FALSE(fs::exists(tmp.path() / "wrong"));
  r = test::run_zoo("import " + tmp.str("sd.pt") + " --model mlp --partial --out " + tmp.str("partial"));
  CHECK(r.code == 0);
  CHECK_THAT(r.out, Catch::Contains("not imported: shape of net.0.weight"));
  // model.state_dict() itself (an OrderedDict with _metadata) imports to the same weights.
  r = test::run_zoo("import " + tmp.str("ordered.pt") + " --model mlp --set hidden=[32] --out " + tmp.str("od"));
  REQUIRE(r.code == 0);
  const auto ordered = training::read_tensors(tmp.str("od/model.pt"));
  CHECK(ordered.size() == sd.size());
  for (const auto& [name, t] : sd) CHECK(torch::equal(t, ordered.at(name)));
  // Files that are not TorchScript: clear messages.
  std::ofstream(tmp.str("junk.pt")) << "junk";
  r = test::run_zoo("predict " + tmp.str("junk.pt") + " --shape 1,1,28,28");
  CHECK(r.code != 0);
  CHECK_THAT(r.err, Catch::Contains("not a PyTorch file") && Catch::Contains("torch.jit.save"));
  r = test::run_zoo("predict " + tmp.str("sd.pt") + " --shape 1,1,28,28");
  CHECK(r.code != 0);
  CHECK_THAT(r.err, Catch::Contains("is a torch.save pickle, not a TorchScript module"));
  r = test::run_zoo("predict " + tmp.str("mlp.pt") + " --shape 1,3,5");
  CHECK(r.code != 0);
  CHECK_THAT(r.err, Catch::Contains("the module does not take input [1, 3, 5]"));
}

TEST_CASE("Export: traced forwards equal the C++ ones, batch sizes stay free where they can, dopri5 is refused",
          "[parity][export]") {
  struct Model {
    std::string name;
    nlohmann::json options;
    std::vector<int64_t> shape;
    bool any_batch;
  };
  const std::vector<Model> models{
      {"mlp", {{"hidden", {16}}}, {2, 1, 28, 28}, true},
      {"cnn", {{"channels", {4, 8}}, {"hidden", 16}}, {2, 1, 28, 28}, true},
      {"vae", {{"hidden", 16}, {"latent", 2}}, {2, 1, 28, 28}, true},
      {"conv1d", {{"channels", {4, 8}}}, {2, 1, 32}, true},
      {"conv4d", {{"channels", {2, 4}}}, {2, 1, 4, 6, 6, 6}, false},  // Conv4d reshapes by the batch size
      {"unet", {{"levels", 3}, {"base_channels", 4}}, {2, 1, 20, 20}, true},
      {"deconvnet", {{"levels", 3}, {"base_channels", 4}}, {2, 1, 16, 16}, true},
      {"moe", {{"channels", {4}}, {"experts", 4}, {"hidden", 8}}, {2, 1, 28, 28}, true},
      {"mhc-resnet", {{"channels", 8}, {"blocks", 2}}, {2, 1, 16, 16}, true},
      {"mhc-resnet", {{"channels", 8}, {"blocks", 2}, {"variant", "mhc-lite"}, {"streams", 3}}, {2, 1, 16, 16}, true},
      {"mhc-resnet", {{"channels", 8}, {"blocks", 2}, {"variant", "hc"}}, {2, 1, 16, 16}, true},
      {"ode-resnet", {{"channels", 8}}, {2, 1, 16, 16}, true},
      {"ode-resnet", {{"channels", 8}, {"block", "resnet"}, {"steps", 2}}, {2, 1, 16, 16}, true},
  };
  for (const auto& m : models) {
    INFO(m.name << " " << m.options.dump());
    torch::manual_seed(0);
    auto [model, options] = models::build_model(m.name, m.options);
    torch::NoGradGuard no_grad;
    for (auto& p : model.ptr()->parameters()) p.add_(torch::randn_like(p) * 0.05);  // routing and mixing that vary
    auto shape = m.shape;
    const auto example = torch::rand(shape), same = torch::rand(shape);
    shape[0] = 3;
    const auto other = torch::rand(shape);
    training::Exported e;
    REQUIRE_NOTHROW(e = training::export_torchscript(model, example, same, other));
    CHECK(e.any_batch == m.any_batch);
    // Saved and loaded again, it still computes the C++ outputs.
    TempDir tmp;
    e.module.save(tmp.str("m.pt"));
    auto loaded = torch::jit::load(tmp.str("m.pt"));
    const auto x = torch::rand(m.shape);
    torch::manual_seed(5);
    auto ours = model.any_forward(x);
    torch::manual_seed(5);
    const auto traced = loaded.forward({x});
    const auto expected = ours.try_get<torch::Tensor>()
                              ? *ours.try_get<torch::Tensor>()
                              : std::get<0>(*ours.try_get<std::tuple<torch::Tensor, torch::Tensor, torch::Tensor>>());
    const auto got = traced.isTensor() ? traced.toTensor() : traced.toTupleRef().elements()[0].toTensor();
    CHECK((expected - got).abs().max().item<double>() < 1e-5);
  }
  // dopri5 chooses its steps from the data: no trace can stand for it.
  torch::manual_seed(0);
  auto [ode, options] = models::build_model("ode-resnet", {{"channels", 8}, {"method", "dopri5"}});
  {
    torch::NoGradGuard no_grad;
    for (auto& p : ode.ptr()->parameters()) p.add_(torch::randn_like(p) * 0.3);
  }
  CHECK_THROWS_WITH(training::export_torchscript(ode, torch::rand({1, 1, 16, 16}), torch::rand({1, 1, 16, 16}) * 3,
                                                 torch::rand({2, 1, 16, 16})),
                    Catch::Contains("depends on the data") && Catch::Contains("cannot be exported"));
}
