// Facts about the running process that decide its speed, for logs and benchmarks.
#pragma once

#include <nlohmann/json.hpp>

#include <string>

namespace zoo::training {

/// The allocator that serves malloc in this process, found at run time: "glibc malloc" (zoo links no other; README,
/// "Speed"), or one put in front with LD_PRELOAD: "jemalloc 5.3.0" (with its version), "tcmalloc", "mimalloc".
std::string allocator();

/// {"zoo", "torch", "compiler", "allocator", "created"}: recorded in every run's config.json.
nlohmann::json library_versions();

}  // namespace zoo::training
