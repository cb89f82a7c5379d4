#include "training/runtime.h"

#include <torch/version.h>
#include <zoo_version.h>

#include <dlfcn.h>

#include <cstdlib>
#include <ctime>
#include <fstream>
#include <string>

#include <cstddef>

namespace zoo::training {

Memory process_memory() {
  Memory m;
  std::ifstream status("/proc/self/status");
  std::string line;
  while (std::getline(status, line)) {
    const bool rss = line.rfind("VmRSS:", 0) == 0, peak = line.rfind("VmHWM:", 0) == 0;
    if (!rss && !peak) continue;
    const double kb = std::strtod(line.c_str() + 6, nullptr);
    (rss ? m.rss_mb : m.peak_mb) = kb / 1024.0;
  }
  return m;
}

std::string allocator() {
  // The library that defines the malloc every caller gets (the first in the global lookup scope).
  Dl_info info{};
  void* malloc_symbol = dlsym(RTLD_DEFAULT, "malloc");
  std::string library = malloc_symbol && dladdr(malloc_symbol, &info) && info.dli_fname ? info.dli_fname : "";
  library = library.substr(library.rfind('/') + 1);
  if (library.find("jemalloc") != std::string::npos) {
    using Mallctl = int (*)(const char*, void*, std::size_t*, void*, std::size_t);
    if (auto mallctl = reinterpret_cast<Mallctl>(dlsym(RTLD_DEFAULT, "mallctl"))) {
      const char* version = nullptr;
      std::size_t size = sizeof version;
      if (mallctl("version", &version, &size, nullptr, 0) == 0 && version) {
        const std::string v = version;  // "5.3.0-0-g54eaed1d8b56b1aa528be3bdd1877e59c56fa90c"
        return "jemalloc " + v.substr(0, v.find('-'));
      }
    }
    return "jemalloc";
  }
  if (library.find("tcmalloc") != std::string::npos) return "tcmalloc";
  if (library.find("mimalloc") != std::string::npos) return "mimalloc";
  if (library.rfind("libc.so", 0) == 0) return "glibc malloc";
  return library.empty() ? "unknown" : library;
}

nlohmann::json library_versions() {
  std::time_t t = std::time(nullptr);
  std::tm tm{};
  localtime_r(&t, &tm);
  char created[64];
  std::strftime(created, sizeof created, "%Y-%m-%dT%H:%M:%S%z", &tm);
  return {{"zoo", ZOO_VERSION},
          {"torch", std::to_string(TORCH_VERSION_MAJOR) + "." + std::to_string(TORCH_VERSION_MINOR) + "." +
                        std::to_string(TORCH_VERSION_PATCH)},
          {"compiler", __VERSION__},
          {"allocator", allocator()},
          {"created", created}};
}

}  // namespace zoo::training
