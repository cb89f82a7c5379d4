// One registry for every kind of named entry (models, datasets, tasks, callbacks): a process-wide table filled
// at program start by the entries' own source files, and by plugins (core/plugins.h) loaded later.
//
//   struct Entry {
//     static constexpr const char* registry_kind = "model";   // names the entries in messages
//     static constexpr const char* registry_hint = "";        // ends the unknown-name message
//     std::string name; ...
//   };
//   Registry<Entry>::instance().add(entry);
//   Registry<Entry>::instance().at("mlp");        // or an error listing every registered name
//
// Each table exists once in the process: it is kept by the library (detail::registry_slot), so a plugin built
// against the installed headers fills the same table as the library.
#pragma once

#include "core/choices.h"
#include "core/plugins.h"

#include <map>
#include <stdexcept>
#include <string>
#include <typeinfo>
#include <vector>

namespace zoo {

namespace detail {
/// The one table for `key` in the process, made by `make` the first time (kept in the library, never freed).
void* registry_slot(const std::string& key, void* (*make)());
}  // namespace detail

template <typename Entry>
class Registry {
 public:
  /// The process's table of `Entry`s.
  static Registry& instance() {
    static Registry* registry = static_cast<Registry*>(detail::registry_slot(
        typeid(Entry).name(), []() -> void* { return new Registry(Entry::registry_kind, Entry::registry_hint); }));
    return *registry;
  }
  /// `kind` names the entries in messages ("model"); `hint` ends the unknown-name message (" (see 'zoo list')").
  explicit Registry(std::string kind, std::string hint = "") : kind_(std::move(kind)), hint_(std::move(hint)) {}

  /// Adds an entry; a second one with the same name is an error.
  void add(Entry entry) {
    if (entries_.count(entry.name)) {
      const std::string message = kind_ + " '" + entry.name + "' is registered twice";
      if (detail::defer_registration_error(message)) return;  // a plugin's: reported when it has loaded
      throw std::logic_error(message);
    }
    auto name = entry.name;
    entries_.emplace(std::move(name), std::move(entry));
  }
  bool contains(const std::string& name) const { return entries_.count(name) > 0; }
  /// The entry, or std::invalid_argument listing every registered name.
  const Entry& at(const std::string& name) const {
    auto it = entries_.find(name);
    if (it == entries_.end()) throw std::invalid_argument(unknown_choice(kind_, name, names()) + hint_);
    return it->second;
  }
  /// Sorted by name.
  std::vector<std::string> names() const {
    std::vector<std::string> out;
    for (const auto& [name, entry] : entries_) out.push_back(name);
    return out;
  }
  const std::string& kind() const { return kind_; }

 private:
  std::string kind_, hint_;
  std::map<std::string, Entry> entries_;
};

/// Registers an entry at program start (or when a plugin is loaded): `static const Registrar<E> r{entry};`.
template <typename Entry>
struct Registrar {
  explicit Registrar(Entry entry) { Registry<Entry>::instance().add(std::move(entry)); }
};

}  // namespace zoo
