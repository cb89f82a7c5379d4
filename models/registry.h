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

#include <torch/torch.h>

#include <nlohmann/json.hpp>

#include <functional>
#include <map>
#include <memory>
#include <string>
#include <vector>

namespace zoo::models {

using json = nlohmann::json;

/// Human-readable name of a JSON-mappable C++ type, for error messages.
template <typename T>
std::string type_name() {
  if constexpr (std::is_same_v<T, bool>) {
    return "true or false";
  } else if constexpr (std::is_integral_v<T>) {
    return "an integer";
  } else if constexpr (std::is_floating_point_v<T>) {
    return "a number";
  } else if constexpr (std::is_same_v<T, std::string>) {
    return "a string";
  } else if constexpr (std::is_same_v<T, std::vector<int64_t>>) {
    return "a list of integers, e.g. [64,32]";
  } else if constexpr (std::is_same_v<T, std::vector<double>>) {
    return "a list of numbers";
  } else {
    return "a value of the option's type";
  }
}

/// Converts `value` to T exactly: no silent narrowing of 2.5 to 2, no strings for numbers.
template <typename T>
T strict_get(const json& value, const std::string& what) {
  auto fail = [&] {
    throw std::invalid_argument(what + " expects " + type_name<T>() + ", got " + value.dump());
  };
  if constexpr (std::is_same_v<T, bool>) {
    if (!value.is_boolean()) fail();
  } else if constexpr (std::is_integral_v<T>) {
    if (!value.is_number_integer()) fail();
  } else if constexpr (std::is_floating_point_v<T>) {
    if (!value.is_number()) fail();
  } else if constexpr (std::is_same_v<T, std::string>) {
    if (!value.is_string()) fail();
  } else if constexpr (std::is_same_v<T, std::vector<int64_t>>) {
    if (!value.is_array()) fail();
    for (const auto& v : value)
      if (!v.is_number_integer()) fail();
  } else if constexpr (std::is_same_v<T, std::vector<double>>) {
    if (!value.is_array()) fail();
    for (const auto& v : value)
      if (!v.is_number()) fail();
  }
  return value.get<T>();
}

/// Everything the tools need to know about one registered model.
struct ModelEntry {
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
  /// Builds a fresh module from a complete option set.
  std::function<torch::nn::AnyModule(const json& options)> build;
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
    fields_.push_back(Field{key, [get](const Options& o) { return json(get(o)); },
                            [set, key, name = entry_.name](Options& o, const json& v) {
                              set(o, strict_get<T>(v, "option '" + key + "' of model '" + name + "'"));
                            }});
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
    auto fields = fields_;
    auto validate = validate_;
    auto to_options = [fields, validate, name = e.name, base = base_](const json& j) {
      if (!j.is_object())
        throw std::invalid_argument("options of model '" + name + "' must be a JSON object, got " + j.dump());
      Options o = base;
      for (auto it = j.begin(); it != j.end(); ++it) {
        auto f = std::find_if(fields.begin(), fields.end(), [&](const Field& fl) { return fl.key == it.key(); });
        if (f == fields.end()) {
          std::string valid;
          for (const auto& fl : fields) valid += (valid.empty() ? "" : ", ") + fl.key;
          throw std::invalid_argument("model '" + name + "' has no option '" + it.key() +
                                      "'; valid options: " + (valid.empty() ? "(none)" : valid));
        }
        f->set(o, it.value());
      }
      if (validate) {
        try {
          validate(o);
        } catch (const c10::Error& e) {
          const std::string msg = e.what_without_backtrace();
          throw std::invalid_argument("invalid options for model '" + name + "': " + msg.substr(0, msg.find('\n')));
        }
      }
      return o;
    };
    auto to_json = [fields](const Options& o) {
      json j = json::object();
      for (const auto& f : fields) j[f.key] = f.get(o);
      return j;
    };
    e.default_options = [to_json, base = base_] { return to_json(base); };
    e.complete_options = [to_options, to_json](const json& j) { return to_json(to_options(j)); };
    e.build = [to_options](const json& j) { return torch::nn::AnyModule(Holder(to_options(j))); };
    return e;
  }

 private:
  struct Field {
    std::string key;
    std::function<json(const Options&)> get;
    std::function<void(Options&, const json&)> set;
  };
  ModelEntry entry_;
  std::vector<Field> fields_;
  std::function<void(const Options&)> validate_;
  Options base_{};
};

/// The process-wide table of models, sorted by name.
class ModelRegistry {
 public:
  static ModelRegistry& instance();

  /// Adds a model; a second model with the same name is an error.
  void add(ModelEntry entry);
  bool contains(const std::string& name) const;
  /// The entry, or an error that lists every registered model.
  const ModelEntry& at(const std::string& name) const;
  std::vector<std::string> names() const;

 private:
  std::map<std::string, ModelEntry> entries_;
};

/// Builds a registered model from (possibly partial) options; returns the module and the complete options.
std::pair<torch::nn::AnyModule, json> build_model(const std::string& name, const json& options = json::object());

/// Number of scalar parameters of a module.
int64_t count_parameters(const torch::nn::Module& module);

namespace detail {
struct Registrar {
  explicit Registrar(ModelEntry entry) { ModelRegistry::instance().add(std::move(entry)); }
};
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
