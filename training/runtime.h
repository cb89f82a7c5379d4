// Facts about the running process that decide its speed, for logs and benchmarks.
#pragma once

#include <string>

namespace zoo::training {

/// The allocator that serves malloc in this process, found at run time: "jemalloc 5.3.0" (zoo's programs link it,
/// see ZOO_ALLOCATOR in CMakeLists.txt), "tcmalloc", "mimalloc" (e.g. under LD_PRELOAD) or "glibc malloc".
std::string allocator();

}  // namespace zoo::training
