#include "core/plugins.h"

#include <dlfcn.h>
#include <fmt/format.h>

#include <cstdlib>
#include <filesystem>
#include <fstream>
#include <iterator>
#include <mutex>
#include <sstream>
#include <stdexcept>

namespace zoo {
namespace fs = std::filesystem;

namespace {
std::mutex mutex;
std::vector<std::string> loaded;
bool loading = false;
std::vector<std::string> deferred;

/// The version in the file's "zoo-plugin-version=X;" marker, read without loading it ("" when there is none).
std::string marked_version(const std::string& path) {
  std::ifstream in(path, std::ios::binary);
  const std::string bytes((std::istreambuf_iterator<char>(in)), std::istreambuf_iterator<char>());
  const std::string key = "zoo-plugin-version=";
  const auto at = bytes.find(key);
  if (at == std::string::npos) return {};
  const auto end = bytes.find(';', at);
  if (end == std::string::npos || end - at > 64) return {};
  return bytes.substr(at + key.size(), end - at - key.size());
}
}  // namespace

namespace detail {
bool defer_registration_error(const std::string& message) {
  if (!loading) return false;
  deferred.push_back(message);
  return true;
}
}  // namespace detail

void load_plugin(const std::string& path) {
  std::lock_guard<std::mutex> lock(mutex);
  std::error_code ec;
  if (!fs::is_regular_file(path, ec))
    throw std::runtime_error(fmt::format("plugin {} does not exist (or is not a file)", path));
  const std::string absolute = fs::canonical(path, ec).string();
  for (const auto& p : loaded)
    if (p == absolute) return;
  const std::string version = marked_version(absolute);
  if (version.empty())
    throw std::runtime_error(fmt::format("{} is not a zoo plugin (no ZOO_PLUGIN() in its sources)", path));
  if (version != ZOO_VERSION)
    throw std::runtime_error(
        fmt::format("plugin {} was built against zoo {}, this is zoo {}; rebuild it against "
                    "this version",
                    path, version, ZOO_VERSION));
  loading = true;
  deferred.clear();
  void* handle = dlopen(absolute.c_str(), RTLD_NOW | RTLD_GLOBAL);
  loading = false;
  if (!handle) {
    const char* why = dlerror();
    throw std::runtime_error(fmt::format("plugin {} cannot be loaded: {}", path, why ? why : "unknown error"));
  }
  if (!deferred.empty()) {
    // Registrations that succeeded stay: the library cannot be unloaded safely once its entries exist.
    throw std::runtime_error(fmt::format("plugin {}: {}", path, deferred.front()));
  }
  loaded.push_back(absolute);
}

void load_plugins(const std::vector<std::string>& paths, const std::string& needed_by) {
  for (const auto& p : paths) {
    try {
      load_plugin(p);
    } catch (const std::exception& e) {
      if (needed_by.empty()) throw;
      throw std::runtime_error(fmt::format("{} needs a plugin that cannot be loaded: {}", needed_by, e.what()));
    }
  }
}

void load_plugins_from_environment() {
  const char* env = std::getenv("ZOO_PLUGINS");
  if (!env || !*env) return;
  std::stringstream list(env);
  for (std::string p; std::getline(list, p, ':');)
    if (!p.empty()) load_plugin(p);
}

std::vector<std::string> loaded_plugins() {
  std::lock_guard<std::mutex> lock(mutex);
  return loaded;
}

}  // namespace zoo
