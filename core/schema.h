// Settings declared once. A Schema<Options> lists the settings of one options struct: name, type, default (the
// struct's own), one-line doc, check (range or choices) and whether a resumed run may change it. Everything else
// comes from that one declaration: JSON in and out (unknown keys and wrong types are errors), validation without
// building anything, the command-line flags and their --help text (tools/cli/settings.h), and the resume rule.
//
//   const Schema<TrainOptions>& schema() {
//     static const auto s = [] {
//       Schema<TrainOptions> s("training option");
//       s.add("epochs", ZOO_FIELD(TrainOptions, epochs), "number of epochs").at_least(1).resumable();
//       return s;
//     }();
//     return s;
//   }
//
// Options may nest: `nest("solver", access, Schema<ODESolverOptions>)` holds a child struct whose settings read
// as "solver.method" (JSON: {"solver": {"method": ...}}).
#pragma once

#include "core/choices.h"

#include <fmt/format.h>
#include <nlohmann/json.hpp>

#include <cmath>
#include <deque>
#include <functional>
#include <limits>
#include <memory>
#include <stdexcept>
#include <string>
#include <type_traits>
#include <vector>

namespace zoo {

using json = nlohmann::json;

/// A setting's value is wrong: `setting` is its (dotted) name, `problem` the rest of the sentence
/// ("must be >= 1, got 0"). The CLI rewords it with the flag's name.
class SettingError : public std::invalid_argument {
 public:
  SettingError(std::string setting, std::string problem)
      : std::invalid_argument(setting + " " + problem), setting_(std::move(setting)), problem_(std::move(problem)) {}
  const std::string& setting() const { return setting_; }
  const std::string& problem() const { return problem_; }

 private:
  std::string setting_, problem_;
};

/// Human-readable name of a JSON-mappable C++ type, for error messages and --help.
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
  } else if constexpr (std::is_same_v<T, json>) {
    return "a JSON value";
  } else {
    return "a value of the setting's type";
  }
}

/// Converts `value` to T exactly: no silent narrowing of 2.5 to 2, no strings for numbers, no integers that
/// overflow. Throws SettingError(what, "expects ..., got ...").
template <typename T>
T strict_get(const json& value, const std::string& what) {
  auto fail = [&] { throw SettingError(what, "expects " + type_name<T>() + ", got " + value.dump()); };
  auto integer = [&](const json& v) {
    if (!v.is_number_integer()) return false;
    // nlohmann stores large positive integers as unsigned: one above INT64_MAX would wrap.
    if (v.is_number_unsigned() && v.get<uint64_t>() > static_cast<uint64_t>(std::numeric_limits<int64_t>::max()))
      return false;
    return true;
  };
  if constexpr (std::is_same_v<T, json>) {
    return value;
  } else {
    if constexpr (std::is_same_v<T, bool>) {
      if (!value.is_boolean()) fail();
    } else if constexpr (std::is_integral_v<T>) {
      if (!integer(value)) fail();
      const auto v = value.get<int64_t>();
      if (v < static_cast<int64_t>(std::numeric_limits<T>::min()) ||
          (v > 0 && static_cast<uint64_t>(v) > static_cast<uint64_t>(std::numeric_limits<T>::max())))
        fail();
    } else if constexpr (std::is_floating_point_v<T>) {
      if (!value.is_number()) fail();
    } else if constexpr (std::is_same_v<T, std::string>) {
      if (!value.is_string()) fail();
    } else if constexpr (std::is_same_v<T, std::vector<int64_t>>) {
      if (!value.is_array()) fail();
      for (const auto& v : value)
        if (!integer(v)) fail();
    } else if constexpr (std::is_same_v<T, std::vector<double>>) {
      if (!value.is_array()) fail();
      for (const auto& v : value)
        if (!v.is_number()) fail();
    }
    return value.get<T>();
  }
}

/// What a schema says of one setting, without its type: enough for --help, docs and the resume rule.
struct SettingInfo {
  std::string name;  ///< JSON key; dotted inside nested options ("solver.method")
  std::string doc;
  std::string type;        ///< type_name<T>()
  bool is_flag = false;    ///< a bool: on the command line a flag without a value
  bool resumable = false;  ///< a resumed run may change it (epochs, threads, ...)
  json default_value;
  std::vector<std::string> choices;  ///< the valid values of a string setting; empty: any
  std::string cli_flag;              ///< the command-line flag ("--batch-size")
};

/// "batch_size" -> "--batch-size"; "solver.method" -> "--solver.method".
inline std::string flag_of(const std::string& setting) {
  std::string flag = "--" + setting;
  for (auto& c : flag)
    if (c == '_') c = '-';
  return flag;
}

/// "solver.method" -> "/solver/method": where a setting sits in its JSON object.
inline std::string setting_pointer(const std::string& dotted) {
  std::string p = "/" + dotted;
  for (auto& c : p)
    if (c == '.') c = '/';
  return p;
}

template <typename Options>
class Schema {
 public:
  /// One setting of Options, with its conversions and checks.
  class Setting : public SettingInfo {
   public:
    /// Refuses values below `min` ("must be >= min, got v").
    Setting& at_least(double min) {
      checks_.push_back([min](const json& v) -> std::string {
        if (v.is_number() && !(v.get<double>() >= min)) return fmt::format("must be >= {}, got {}", min, v.dump());
        return {};
      });
      return *this;
    }
    /// Refuses values not above `min` (and non-finite ones).
    Setting& above(double min) {
      checks_.push_back([min](const json& v) -> std::string {
        if (v.is_number() && !(v.get<double>() > min && std::isfinite(v.get<double>())))
          return fmt::format("must be a number > {}, got {}", min, v.dump());
        return {};
      });
      return *this;
    }
    /// Refuses values above `max`.
    Setting& at_most(double max) {
      checks_.push_back([max](const json& v) -> std::string {
        if (v.is_number() && !(v.get<double>() <= max)) return fmt::format("must be <= {}, got {}", max, v.dump());
        return {};
      });
      return *this;
    }
    /// A string setting with a fixed set of values; `kind` names one in the message ("optimizer 'x' is unknown;
    /// valid optimizers: a, b, c").
    Setting& one_of(std::vector<std::string> valid, std::string kind = "value") {
      choices = valid;
      checks_.push_back([valid, kind](const json& v) -> std::string {
        if (v.is_string() && !contains(valid, v.get<std::string>()))
          return fmt::format("'{}' is unknown; valid {}s: {}", v.get<std::string>(), kind, join(valid));
        return {};
      });
      return *this;
    }
    /// Any other check: returns the problem ("must be ...") or an empty string; may also throw.
    Setting& check(std::function<std::string(const json&)> c) {
      checks_.push_back(std::move(c));
      return *this;
    }
    /// A resumed run may change this setting (its length, threads, display).
    Setting& resumable() {
      SettingInfo::resumable = true;
      return *this;
    }
    /// The command-line flag, when it is not flag_of(name) (e.g. "--dataset" for DataConfig's "name").
    Setting& flag(std::string f) {
      cli_flag = std::move(f);
      return *this;
    }
    /// The problem with `value` (type or range), or an empty string: for validators that see one value.
    std::string problem(const json& value) const {
      try {
        Options o{};
        set_(o, value);
        const json v = get_(o);
        for (const auto& c : checks_)
          if (auto p = c(v); !p.empty()) return p;
      } catch (const SettingError& e) {
        return e.problem();
      } catch (const std::exception& e) {
        return e.what();
      }
      return {};
    }

   private:
    template <typename>
    friend class Schema;
    std::function<json(const Options&)> get_;
    std::function<void(Options&, const json&)> set_;  // strict: throws SettingError
    std::vector<std::function<std::string(const json&)>> checks_;
    const void* nested_ = nullptr;  // a nested schema's settings are copied in with a prefix
  };

  template <typename>
  friend class Schema;

  /// `what` names an entry in messages: "training option", "option of model 'mlp'".
  explicit Schema(std::string what = "option") : what_(std::move(what)) {}

  /// Declares a setting; `access` maps Options& to the member (see ZOO_FIELD). The default is Options{}'s value.
  template <typename Access>
  Setting& add(const std::string& name, Access access, std::string doc) {
    using T = std::decay_t<decltype(access(std::declval<Options&>()))>;
    Setting s;
    s.name = name;
    s.cli_flag = flag_of(name);
    s.doc = std::move(doc);
    s.type = type_name<T>();
    s.is_flag = std::is_same_v<T, bool>;
    Options defaults{};
    s.default_value = json(access(defaults));
    s.get_ = [access](const Options& o) { return json(access(const_cast<Options&>(o))); };
    s.set_ = [access, name](Options& o, const json& v) { access(o) = strict_get<T>(v, name); };
    settings_.push_back(std::move(s));
    return settings_.back();
  }

  /// Declares a setting of a type JSON cannot map by itself: `get` gives its JSON form, `set` reads one (and
  /// throws SettingError on a bad value).
  Setting& add_json(const std::string& name, std::function<json(const Options&)> get,
                    std::function<void(Options&, const json&)> set, std::string doc, std::string type) {
    Setting s;
    s.name = name;
    s.cli_flag = flag_of(name);
    s.doc = std::move(doc);
    s.type = std::move(type);
    s.default_value = get(Options{});
    s.get_ = std::move(get);
    s.set_ = std::move(set);
    settings_.push_back(std::move(s));
    return settings_.back();
  }

  /// Declares a nested options struct: its settings appear as "prefix.name" (JSON: an object under "prefix").
  /// `child` must outlive this schema (a function-local static, as every schema here is).
  template <typename Access, typename Child>
  void nest(const std::string& prefix, Access access, const Schema<Child>& child) {
    for (const auto& c : child.settings()) {
      Setting s;
      static_cast<SettingInfo&>(s) = c;
      s.name = prefix + "." + c.name;  // the flag stays the child's: --epochs for train.epochs
      s.get_ = [access, &c](const Options& o) { return c.get_(access(const_cast<Options&>(o))); };
      s.set_ = [access, &c, prefix](Options& o, const json& v) {
        try {
          c.set_(access(o), v);
        } catch (const SettingError& e) {
          throw SettingError(prefix + "." + e.setting(), e.problem());
        }
      };
      s.checks_ = c.checks_;
      s.default_value = s.get_(Options{});  // the parent's default for its child may differ from the child's own
      settings_.push_back(std::move(s));
    }
    for (const auto& r : child.rules_)
      rules_.push_back({prefix + "." + r.setting,
                        [access, rule = r.rule](const Options& o) { return rule(access(const_cast<Options&>(o))); }});
  }

  /// A check that reads several settings (k <= experts): `rule` returns the problem with `setting` ("must be in
  /// [1, 4] ..."), or an empty string. validate runs it after the settings' own checks.
  void require(const std::string& setting, std::function<std::string(const Options&)> rule) {
    rules_.push_back({setting, std::move(rule)});
  }

  /// Declares every setting and alias of `other` here as well (e.g. a model's schema inside its registration).
  void extend(const Schema& other) {
    settings_.insert(settings_.end(), other.settings_.begin(), other.settings_.end());
    aliases_.insert(aliases_.end(), other.aliases_.begin(), other.aliases_.end());
    rules_.insert(rules_.end(), other.rules_.begin(), other.rules_.end());
  }

  /// Accepts `old_name` as another name of the setting `name` (e.g. a key of an earlier, flat format:
  /// "method" for "solver.method"). Aliases are read, never written; --help and to_json use `name`.
  void alias(const std::string& old_name, const std::string& name) {
    if (!find(name)) throw std::logic_error("alias '" + old_name + "' of an undeclared setting '" + name + "'");
    aliases_.emplace_back(old_name, name);
  }
  /// The declared name `name` stands for (itself, or what it is an alias of).
  std::string canonical(const std::string& name) const {
    for (const auto& [old_name, target] : aliases_)
      if (old_name == name && !find(name)) return target;
    return name;
  }
  const std::vector<std::pair<std::string, std::string>>& aliases() const { return aliases_; }

  /// `j` with every key under its declared name, nested ({"method": 1} -> {"solver": {"method": 1}}), so that
  /// JSON-merging two option sets lets the later win whichever spelling each used. Unknown keys are kept (as
  /// given) for from_json to name.
  json normalize(const json& j) const {
    if (!j.is_object()) return j;
    json out = json::object();
    for (const auto& [key, value] : flatten(j)) {
      if (find(canonical(key)))
        out[json::json_pointer(setting_pointer(canonical(key)))] = value;
      else
        out[key] = value;
    }
    return out;
  }

  const std::deque<Setting>& settings() const { return settings_; }
  const std::string& what() const { return what_; }
  /// The setting called `name`, or nullptr.
  const Setting* find(const std::string& name) const {
    for (const auto& s : settings_)
      if (s.name == name) return &s;
    return nullptr;
  }
  std::vector<std::string> names() const {
    std::vector<std::string> out;
    for (const auto& s : settings_) out.push_back(s.name);
    return out;
  }

  /// Every setting as JSON; nested settings as objects.
  json to_json(const Options& o) const {
    json j = json::object();
    for (const auto& s : settings_) j[json::json_pointer(setting_pointer(s.name))] = s.get_(o);
    return j;
  }

  /// Reads the keys present in `j` over `base`. Unknown keys and wrong types are errors; a key may also be
  /// dotted ("solver.method") instead of nested. Values are not range-checked: see validate.
  Options from_json(const json& j, Options base = Options{}) const {
    if (!j.is_object()) throw std::invalid_argument(what_ + "s must be a JSON object, got " + j.dump());
    for (const auto& [key, value] : flatten(j)) {
      const Setting* s = find(canonical(key));
      if (!s)
        throw std::invalid_argument(fmt::format("unknown {} '{}'; valid {}s: {}", what_, key, what_,
                                                settings_.empty() ? "(none)" : join(names())));
      s->set_(base, value);
    }
    return base;
  }

  /// Throws SettingError for the first setting whose value fails its check.
  void validate(const Options& o) const {
    for (const auto& s : settings_) {
      const json v = s.get_(o);
      for (const auto& check : s.checks_)
        if (auto problem = check(v); !problem.empty()) throw SettingError(s.name, problem);
    }
    for (const auto& r : rules_)
      if (auto problem = r.rule(o); !problem.empty()) throw SettingError(r.setting, problem);
  }

  /// {"a": {"b": 1}, "c": 2} -> [("a.b", 1), ("c", 2)] where "a" is a nested prefix of this schema.
  std::vector<std::pair<std::string, json>> flatten(const json& j, const std::string& prefix = "") const {
    std::vector<std::pair<std::string, json>> out;
    for (auto it = j.begin(); it != j.end(); ++it) {
      const std::string key = prefix.empty() ? it.key() : prefix + "." + it.key();
      if (it.value().is_object() && !find(canonical(key)) && has_prefix(key + ".")) {
        auto inner = flatten(it.value(), key);
        out.insert(out.end(), inner.begin(), inner.end());
      } else {
        out.emplace_back(key, it.value());
      }
    }
    return out;
  }

 private:
  bool has_prefix(const std::string& p) const {
    for (const auto& s : settings_)
      if (s.name.rfind(p, 0) == 0) return true;
    return false;
  }

  std::string what_;
  std::deque<Setting> settings_;
  std::vector<std::pair<std::string, std::string>> aliases_;  // (old name, declared name)
  struct Rule {
    std::string setting;
    std::function<std::string(const Options&)> rule;
  };
  std::vector<Rule> rules_;
};

}  // namespace zoo

/// The member `name` of a TORCH_ARG options struct, as a Schema accessor.
#define ZOO_FIELD(Options, name) \
  [](Options & o) -> auto& { return o.name(); }
/// A plain struct member, as a Schema accessor.
#define ZOO_MEMBER(Options, name) \
  [](Options & o) -> auto& { return o.name; }
