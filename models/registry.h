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
#include <memory>
#include <mutex>
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
  /// `options` with every key under its declared name, nested (aliases such as a flat "method" for
  /// "solver.method" resolved), so that merging two option sets lets the later win; unknown keys are kept.
  std::function<json(const json& options)> normalize_options;
  /// Validates `options` (unknown names and wrong types are errors) and returns the complete option set.
  std::function<json(const json& options)> complete_options;
  /// Builds a fresh module from a complete option set (as complete_options returns it: not checked again).
  std::function<torch::nn::AnyModule(const json& options)> build;
  /// The options' names, types and docs.
  std::vector<SettingInfo> settings;
};

/// `base` with `changes` applied (a run's options with --set values): each key under its declared name, so the
/// change wins whichever spelling either used ("method" or "solver.method").
inline json merge_options(const ModelEntry& entry, const json& base, const json& changes) {
  auto normalize = [&](const json& j) { return entry.normalize_options ? entry.normalize_options(j) : j; };
  json out = normalize(base);
  if (changes.is_object()) out.merge_patch(normalize(changes));
  return out;
}

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

/// A module constructor's check of its options against their schema: c10::Error "model: setting problem".
template <typename Options>
void check_options(const Schema<Options>& schema, const Options& options, const char* model) {
  try {
    schema.validate(options);
  } catch (const SettingError& e) {
    TORCH_CHECK(false, model, ": ", e.what());
  }
}

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
  /// Declares an option: its JSON name, a getter and a setter on Options, and a one-line doc.
  template <typename Get, typename Set>
  ModelSpec& option(const std::string& key, Get get, Set set, std::string doc = "") {
    using T = std::decay_t<decltype(get(std::declval<const Options&>()))>;
    schema_.add_json(
        key, [get](const Options& o) { return json(get(o)); },
        [set, key](Options& o, const json& v) { set(o, strict_get<T>(v, key)); }, std::move(doc), type_name<T>());
    return *this;
  }
  /// Declares the options of a Schema written beside the module (whose constructor checks with it as well).
  ModelSpec& options(const Schema<Options>& schema) {
    schema_.extend(schema);
    return *this;
  }
  /// The option values this entry starts from (default: Options{}), for several entries over one module.
  ModelSpec& defaults(Options base) {
    base_ = std::move(base);
    return *this;
  }
  /// Checks an option set (e.g. a value out of range, or two options that do not fit together) without
  /// building the module; throw to reject. Usually the function the module's constructor calls itself.
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
          if (!schema->find(schema->canonical(key)))
            throw std::invalid_argument("model '" + name + "' has no option '" + key + "'; valid options: " +
                                        (schema->settings().empty() ? "(none)" : join(schema->names())));
      try {
        return schema->from_json(j, base);
      } catch (const SettingError& err) {
        throw SettingError("option '" + err.setting() + "' of model '" + name + "':", err.problem());
      } catch (const std::invalid_argument& err) {
        throw std::invalid_argument("model '" + name + "': " + err.what());
      }
    };
    auto check = [schema, validate, name](const Options& o) {
      try {
        schema->validate(o);  // the declared checks: ranges and choices
      } catch (const SettingError& err) {
        throw SettingError("option '" + err.setting() + "' of model '" + name + "':", err.problem());
      }
      if (!validate) return;
      // A user's check may build the module; it must not draw from the generator, so that a seed gives the same
      // model whether or not its options were checked first.
      const PreserveRandomState keep;
      try {
        validate(o);
      } catch (const c10::Error& err) {
        const std::string msg = err.what_without_backtrace();
        throw std::invalid_argument("invalid options for model '" + name + "': " + msg.substr(0, msg.find('\n')));
      }
    };
    e.default_options = [schema, base] { return schema->to_json(base); };
    e.normalize_options = [schema](const json& j) { return schema->normalize(j); };
    e.complete_options = [schema, read, check](const json& j) {
      const Options o = read(j);
      check(o);
      return schema->to_json(o);
    };
    // Options are checked by complete_options; build makes the module once, consuming the random numbers of
    // its own initialisation only.
    e.build = [read](const json& j) { return torch::nn::AnyModule(Holder(read(j))); };
    const json defaults = schema->to_json(base);
    for (const auto& setting : schema->settings()) {
      e.settings.push_back(setting);
      e.settings.back().default_value = defaults.at(json::json_pointer(setting_pointer(setting.name)));
    }
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
#define ZOO_REGISTER_MODEL(id)                                                                                        \
  static ::zoo::models::ModelEntry ZOO_REGISTRY_CONCAT(zoo_model_entry_, id)();                                       \
  static const ::zoo::models::detail::Registrar ZOO_REGISTRY_CONCAT(zoo_model_registrar_,                             \
                                                                    id){ZOO_REGISTRY_CONCAT(zoo_model_entry_, id)()}; \
  static ::zoo::models::ModelEntry ZOO_REGISTRY_CONCAT(zoo_model_entry_, id)()

/// Getter and setter of a TORCH_ARG option, for ModelSpec::option.
#define ZOO_GET(Options, name) [](const Options& o) { return o.name(); }
#define ZOO_SET(Options, name) [](Options& o, const auto& v) { o.name(v); }
/// Shorthand: `.ZOO_OPTION(MLPOptions, hidden)` declares option "hidden".
#define ZOO_OPTION(Options, name) option(#name, ZOO_GET(Options, name), ZOO_SET(Options, name))
