// Model registry: names -> factories that build a module from JSON options.
//
// Tools and the trainer know models only through this registry. A model registers itself in its own .cpp:
//
//   ZOO_REGISTER_MODEL(mlp) {
//     return zoo::models::ModelSpec<MLP, MLPOptions>("mlp", "multilayer perceptron on 28x28 images")
//         .task("classify").dataset("fashion-mnist")
//         .option("hidden", ZOO_GET(MLPOptions, hidden), ZOO_SET(MLPOptions, hidden));
//   }
//
// Options are data: every option declared here round-trips through config.json and can be set from the
// command line with `--set name=value`.
#pragma once

#include "core/registry.h"
#include "core/schema.h"

#include <torch/torch.h>

#include <nlohmann/json.hpp>

#include <functional>
#include <map>
#include <mutex>
#include <memory>
#include <string>
#include <vector>

namespace zoo::models {

using json = nlohmann::json;

using zoo::strict_get;
using zoo::type_name;

/// Everything the tools need to know about one registered model.
struct ModelEntry {
  static constexpr const char* registry_kind = "model";
  static constexpr const char* registry_hint = " (see 'zoo list')";
  std::string name;
  std::string description;
  /// Objective the trainer uses ("classify", ...): a tag, so models never include training code.
  std::string task = "classify";
  /// Dataset the model trains on by default.
  std::string dataset = "fashion-mnist";
  /// Recommended training hyperparameters (epochs, lr, optimizer, ...), overridden by command-line flags.
  json train_defaults = json::object();
  /// Dataset options that follow from the model's complete options (e.g. the vocabulary size of a language
  /// model); a run's own --data-option values win. Empty: none.
  std::function<json(const json& options)> data_options;
  /// The full option set with defaults.
  std::function<json()> default_options;
  /// Validates `options` (unknown names and wrong types are errors) and returns the complete option set.
  std::function<json(const json& options)> complete_options;
  /// Builds a fresh module from a complete option set (as complete_options returns it: not checked again).
  std::function<torch::nn::AnyModule(const json& options)> build;
  /// The options' names, types and docs.
  std::vector<SettingInfo> settings;
};

/// Restores the default CPU generator's state when it goes out of scope.
class PreserveRandomState {
 public:
  PreserveRandomState() : generator_(at::detail::getDefaultCPUGenerator()) {
    std::lock_guard<std::mutex> lock(generator_.mutex());
    state_ = generator_.get_state();
  }
  ~PreserveRandomState() {
    std::lock_guard<std::mutex> lock(generator_.mutex());
    generator_.set_state(state_);
  }
  PreserveRandomState(const PreserveRandomState&) = delete;
  PreserveRandomState& operator=(const PreserveRandomState&) = delete;

 private:
  at::Generator generator_;
  torch::Tensor state_;
};

/// Typed builder of a ModelEntry for a module `Holder` (a TORCH_MODULE) built from `Options`.
template <typename Holder, typename Options>
class ModelSpec {
 public:
  ModelSpec(std::string name, std::string description) {
    entry_.name = std::move(name);
    entry_.description = std::move(description);
  }
  ModelSpec& task(std::string t) {
    entry_.task = std::move(t);
    return *this;
  }
  ModelSpec& dataset(std::string d) {
    entry_.dataset = std::move(d);
    return *this;
  }
  ModelSpec& train_defaults(json j) {
    entry_.train_defaults = std::move(j);
    return *this;
  }
  /// Dataset options derived from the model's complete options (see ModelEntry::data_options).
  ModelSpec& data_options(std::function<json(const json&)> f) {
    entry_.data_options = std::move(f);
    return *this;
  }
  /// Declares an option: its JSON name, a getter and a setter on Options.
  template <typename Get, typename Set>
  ModelSpec& option(const std::string& key, Get get, Set set) {
    using T = std::decay_t<decltype(get(std::declval<const Options&>()))>;
    schema_.add_json(
        key, [get](const Options& o) { return json(get(o)); },
        [set, key, name = entry_.name](Options& o, const json& v) {
          set(o, strict_get<T>(v, "option '" + key + "' of model '" + name + "'"));
        },
        "", type_name<T>());
    return *this;
  }
  /// The option values this entry starts from (default: Options{}), for several entries over one module.
  ModelSpec& defaults(Options base) {
    base_ = std::move(base);
    return *this;
  }
  /// Checks that a built module accepts an option set (e.g. a value out of range); throw to reject.
  ModelSpec& validate(std::function<void(const Options&)> check) {
    validate_ = std::move(check);
    return *this;
  }

  operator ModelEntry() const {  // NOLINT: implicit by design, so registrations read as one expression
    ModelEntry e = entry_;
    auto schema = std::make_shared<Schema<Options>>(schema_);
    auto validate = validate_;
    const auto name = e.name;
    const auto base = base_;
    auto read = [schema, name, base](const json& j) {
      if (j.is_object())
        for (const auto& [key, value] : schema->flatten(j))
          if (!schema->find(key))
            throw std::invalid_argument("model '" + name + "' has no option '" + key + "'; valid options: " +
                                        (schema->settings().empty() ? "(none)" : join(schema->names())));
      try {
        return schema->from_json(j, base);
      } catch (const SettingError&) {
        throw;
      } catch (const std::invalid_argument& err) {
        throw std::invalid_argument("model '" + name + "': " + err.what());
      }
    };
    auto check = [validate, name](const Options& o) {
      if (!validate) return;
      // A check may build the module; it must not draw from the generator, so that a seed gives the same model
      // whether or not its options were checked first.
      const PreserveRandomState keep;
      try {
        validate(o);
      } catch (const c10::Error& err) {
        const std::string msg = err.what_without_backtrace();
        throw std::invalid_argument("invalid options for model '" + name + "': " + msg.substr(0, msg.find('\n')));
      }
    };
    e.default_options = [schema, base] { return schema->to_json(base); };
    e.complete_options = [schema, read, check](const json& j) {
      const Options o = read(j);
      check(o);
      return schema->to_json(o);
    };
    // Options are checked by complete_options; build makes the module once, consuming the random numbers of
    // its own initialisation only.
    e.build = [read](const json& j) { return torch::nn::AnyModule(Holder(read(j))); };
    for (const auto& setting : schema->settings()) e.settings.push_back(setting);
    return e;
  }

 private:
  ModelEntry entry_;
  Schema<Options> schema_{"option"};
  std::function<void(const Options&)> validate_;
  Options base_{};
};

/// The process-wide table of models, sorted by name.
using ModelRegistry = ::zoo::Registry<ModelEntry>;

/// Builds a registered model from (possibly partial) options; returns the module and the complete options.
std::pair<torch::nn::AnyModule, json> build_model(const std::string& name, const json& options = json::object());

/// Number of scalar parameters of a module.
int64_t count_parameters(const torch::nn::Module& module);

namespace detail {
using Registrar = ::zoo::Registrar<ModelEntry>;
}  // namespace detail

}  // namespace zoo::models

#define ZOO_REGISTRY_CONCAT_(a, b) a##b
#define ZOO_REGISTRY_CONCAT(a, b) ZOO_REGISTRY_CONCAT_(a, b)

/// Registers a model at program start: the body returns a ModelEntry (usually a ModelSpec).
#define ZOO_REGISTER_MODEL(id)                                                                        \
  static ::zoo::models::ModelEntry ZOO_REGISTRY_CONCAT(zoo_model_entry_, id)();                       \
  static const ::zoo::models::detail::Registrar ZOO_REGISTRY_CONCAT(zoo_model_registrar_, id){        \
      ZOO_REGISTRY_CONCAT(zoo_model_entry_, id)()};                                                   \
  static ::zoo::models::ModelEntry ZOO_REGISTRY_CONCAT(zoo_model_entry_, id)()

/// Getter and setter of a TORCH_ARG option, for ModelSpec::option.
#define ZOO_GET(Options, name) [](const Options& o) { return o.name(); }
#define ZOO_SET(Options, name) [](Options& o, const auto& v) { o.name(v); }
/// Shorthand: `.ZOO_OPTION(MLPOptions, hidden)` declares option "hidden".
#define ZOO_OPTION(Options, name) option(#name, ZOO_GET(Options, name), ZOO_SET(Options, name))
