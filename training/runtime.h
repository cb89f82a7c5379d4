// Facts about the running process that decide its speed, for logs and benchmarks.
#pragma once

#include <nlohmann/json.hpp>

#include <string>

namespace zoo::training {

/// The allocator that serves malloc in this process, found at run time: "glibc malloc" (zoo links no other; README,
/// "Speed"), or one put in front with LD_PRELOAD: "jemalloc 5.3.0" (with its version), "tcmalloc", "mimalloc".
std::string allocator();

/// The process's resident memory now (VmRSS) and at its peak so far (VmHWM), in MB, from /proc/self/status; 0
/// where that cannot be read. Every epoch record of metrics.jsonl holds both (rss_mb, peak_rss_mb).
struct Memory {
  double rss_mb = 0, peak_mb = 0;
};
Memory process_memory();

/// {"zoo", "torch", "compiler", "allocator", "created"}: recorded in every run's config.json.
nlohmann::json library_versions();

}  // namespace zoo::training
