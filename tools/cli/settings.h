// Command-line flags generated from settings schemas (core/schema.h): each setting is its flag, typed and
// checked as its schema says, documented by its doc line; a bool setting is a flag with a --no- form.
#pragma once

#include "core/schema.h"

#include <CLI/CLI.hpp>
#include <nlohmann/json.hpp>

#include <charconv>
#include <memory>
#include <string>
#include <vector>

namespace zoo::cli {

/// `text` as the JSON value of a setting whose default is `like` (integers exactly, numbers, strings as
/// given, lists and objects as JSON). Sets `problem` when it is not one.
nlohmann::json parse_setting_text(const std::string& text, const nlohmann::json& like, std::string& problem);

/// Library messages name settings by their path in config.json ("train.epochs", "data.limit"); the command line
/// says the flag ("--epochs", "--limit").
std::string in_flags(std::string message);

/// The flags of one schema's settings on a command.
template <typename Options>
class SettingFlags {
 public:
  /// Adds every setting of `schema` to `cmd`, except those named in `skip` (handled by the command itself).
  SettingFlags(CLI::App& cmd, const Schema<Options>& schema, const std::vector<std::string>& skip = {}) {
    for (const auto& s : schema.settings()) {
      if (contains(skip, s.name)) continue;
      auto flag = std::make_shared<Flag>();
      flag->setting = &s;
      if (s.is_flag) {
        const std::string name = s.cli_flag.substr(2);
        flag->option = cmd.add_flag("--" + name + ",!--no-" + name, flag->on,
                                    s.doc + (s.default_value == true ? " (default: on)" : " (default: off)"));
      } else {
        const auto* setting = &s;
        flag->option = cmd.add_option(s.cli_flag, flag->text, s.doc)
                           ->check(CLI::Validator(
                               [setting](std::string& text) -> std::string {
                                 std::string problem;
                                 const auto value = parse_setting_text(text, setting->default_value, problem);
                                 if (problem.empty()) problem = setting->problem(value);
                                 return problem.empty() ? "" : problem;
                               },
                               ""))
                           ->type_name(type_hint(s));
      }
      flags_.push_back(flag);
    }
  }

  /// The settings given on the command line: {"name": value} (nested names stay dotted).
  nlohmann::json given() const {
    nlohmann::json out = nlohmann::json::object();
    for (const auto& f : flags_) {
      if (f->option->count() == 0) continue;
      std::string problem;
      out[f->setting->name] =
          f->setting->is_flag ? nlohmann::json(f->on) : parse_setting_text(f->text, f->setting->default_value, problem);
    }
    return out;
  }
  /// The flags given that a resumed run may not change.
  std::vector<std::string> given_fixed() const {
    std::vector<std::string> out;
    for (const auto& f : flags_)
      if (f->option->count() > 0 && !f->setting->resumable) out.push_back(f->setting->cli_flag);
    return out;
  }
  /// The flags of settings a resumed run may change.
  std::vector<std::string> resumable() const {
    std::vector<std::string> out;
    for (const auto& f : flags_)
      if (f->setting->resumable) out.push_back(f->setting->cli_flag);
    return out;
  }
  bool was_given(const std::string& setting) const {
    for (const auto& f : flags_)
      if (f->setting->name == setting) return f->option->count() > 0;
    return false;
  }

 private:
  struct Flag {
    const SettingInfo* setting = nullptr;
    CLI::Option* option = nullptr;
    std::string text;
    bool on = false;
  };
  static std::string type_hint(const SettingInfo& s) {
    if (!s.choices.empty()) return "{" + join(s.choices, ",") + "}";
    switch (s.default_value.type()) {
      case nlohmann::json::value_t::number_integer:
      case nlohmann::json::value_t::number_unsigned:
        return "INT";
      case nlohmann::json::value_t::number_float:
        return "NUMBER";
      case nlohmann::json::value_t::string:
        return "TEXT";
      default:
        return "JSON";
    }
  }
  std::vector<std::shared_ptr<Flag>> flags_;
};

}  // namespace zoo::cli
