// Plugins: a user's shared library whose registrations (ZOO_REGISTER_MODEL, dataset and task registrars,
// callbacks) join the registries of a running `zoo`, so `zoo --plugin libmine.so train mine` trains a model built
// outside this tree. A run records the plugins it was made with and loads them again on resume and evaluation.
//
// A plugin's source names itself once, in any one of its files:
//
//   #include <zoo/core/plugins.h>
//   ZOO_PLUGIN();
//
// which embeds the zoo version it was built against; it is compared before the library is loaded, so a plugin
// built against another version is refused in one line instead of running its constructors.
#pragma once

#include <zoo_version.h>

#include <string>
#include <vector>

namespace zoo {

/// Loads the plugin at `path` (once per file). Throws std::runtime_error naming the file and the problem: not
/// found, not a zoo plugin, built against another zoo version, failed to load, or a registration it refused
/// (e.g. a model name already taken).
void load_plugin(const std::string& path);
/// Loads each of `paths`; `needed_by` (a run directory) is named in the error of one that cannot be loaded.
void load_plugins(const std::vector<std::string>& paths, const std::string& needed_by = "");
/// Loads the plugins of the environment variable ZOO_PLUGINS (colon-separated).
void load_plugins_from_environment();
/// Every plugin loaded so far, as absolute paths in load order.
std::vector<std::string> loaded_plugins();

namespace detail {
/// While a plugin loads, registrations that fail are kept here instead of thrown (an exception cannot leave a
/// library's constructor). Returns false when no plugin is loading.
bool defer_registration_error(const std::string& message);
}  // namespace detail

}  // namespace zoo

/// Marks a shared library as a zoo plugin built against this zoo version (see above).
#define ZOO_PLUGIN()                                                                       \
  extern "C" __attribute__((used, visibility("default"))) const char zoo_plugin_marker[] = \
      "zoo-plugin-version=" ZOO_VERSION ";"
