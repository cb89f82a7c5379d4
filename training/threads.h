// How many threads LibTorch (and the BLAS under it) may use.
#pragma once

#include <cstdint>

namespace zoo::training {

/// The largest thread count a run may ask for: far above any core count this code runs on, far below what
/// makes OpenMP allocate gigabytes for its pool.
constexpr int64_t max_threads = 1024;

/// Sets LibTorch's intra-op threads: n > 0, or all cores for 0 (and OpenBLAS, if that is the BLAS, to one
/// thread: LibTorch parallelises around BLAS calls). Returns the number set.
int64_t apply_threads(int64_t n);

}  // namespace zoo::training
