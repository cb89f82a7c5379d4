#include "training/runtime.h"

#include <torch/version.h>
#include <zoo_version.h>

#include <dlfcn.h>
#if defined(__GLIBC__)
#include <malloc.h>
#endif

#include <algorithm>
#include <atomic>
#include <climits>
#include <cstdlib>
#include <cstring>
#include <ctime>
#include <fstream>
#include <iterator>
#include <sstream>
#include <string>

#include <cstddef>

namespace zoo::training {

namespace {
std::atomic<bool> freed_memory_kept{false};

/// The library that defines the malloc every caller gets (the first in the global lookup scope).
std::string malloc_library() {
  Dl_info info{};
  void* malloc_symbol = dlsym(RTLD_DEFAULT, "malloc");
  std::string library = malloc_symbol && dladdr(malloc_symbol, &info) && info.dli_fname ? info.dli_fname : "";
  return library.substr(library.rfind('/') + 1);
}
}  // namespace

bool keep_freed_memory() {
  static const bool kept = [] {
    if (malloc_library().rfind("libc.so", 0) != 0) return false;  // another malloc manages its own memory
    if (const char* keep = std::getenv("ZOO_KEEP_FREED_MEMORY")) {
      const std::string v = keep;
      if (v == "0" || v == "false" || v == "no" || v == "off") return false;
    }
    for (const char* name : {"MALLOC_TRIM_THRESHOLD_", "MALLOC_MMAP_THRESHOLD_", "MALLOC_TOP_PAD_", "MALLOC_MMAP_MAX_"})
      if (std::getenv(name)) return false;
    if (const char* tunables = std::getenv("GLIBC_TUNABLES"); tunables && std::strstr(tunables, "glibc.malloc"))
      return false;
#if defined(__GLIBC__)
    // Both or neither: either alone fixes the other at its default and disables glibc's adaptation, which measured
    // slower than either default (the mmap threshold alone at 128 KiB: every large block mapped afresh).
    return mallopt(M_MMAP_THRESHOLD, 32 << 20) == 1 && mallopt(M_TRIM_THRESHOLD, INT_MAX) == 1;
#else
    return false;
#endif
  }();
  freed_memory_kept = kept;
  return kept;
}

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
  const std::string library = malloc_library();
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
  if (library.rfind("libc.so", 0) == 0) return freed_memory_kept ? "glibc malloc, freed memory kept" : "glibc malloc";
  return library.empty() ? "unknown" : library;
}

std::string blas_hint(const std::string& core, bool avx2, bool avx512) {
  // OpenBLAS's x86-64 cores without AVX kernels (its dynamic list; "Prescott" is its fallback for unknown models).
  static const char* const before_avx[] = {"Katmai",  "Coppermine",    "Northwood",  "Prescott", "Banias",
                                           "Core2",   "Penryn",        "Dunnington", "Nehalem",  "Atom",
                                           "Opteron", "Opteron(SSE3)", "Barcelona",  "Bobcat",   "Nano"};
  const bool old = std::any_of(std::begin(before_avx), std::end(before_avx), [&](const char* c) { return core == c; });
  if (!old || !(avx2 || avx512)) return "";
  return std::string("set OPENBLAS_CORETYPE=") + (avx512 ? "SkylakeX" : "Haswell") + " for faster float32 products";
}

std::string blas() {
  using Text = char* (*)();
  const auto corename = reinterpret_cast<Text>(dlsym(RTLD_DEFAULT, "openblas_get_corename"));
  const auto config = reinterpret_cast<Text>(dlsym(RTLD_DEFAULT, "openblas_get_config"));
  if (!corename || !config || !corename() || !config()) return "";
  std::istringstream words(config());  // "OpenBLAS 0.3.21 NO_LAPACKE DYNAMIC_ARCH NO_AFFINITY Prescott MAX_THREADS=64"
  std::string name, version;
  words >> name >> version;
  const std::string core = corename();
  std::string text = name + " " + version + ", " + core + " kernels";
#if defined(__x86_64__)
  const bool avx512 = __builtin_cpu_supports("avx512f") && __builtin_cpu_supports("avx512bw") &&
                      __builtin_cpu_supports("avx512vl") && __builtin_cpu_supports("avx512dq");
  const auto hint = blas_hint(core, __builtin_cpu_supports("avx2") && __builtin_cpu_supports("fma"), avx512);
  if (!hint.empty()) text += " (" + hint + ")";
#endif
  return text;
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
          {"blas", blas()},
          {"created", created}};
}

}  // namespace zoo::training
