#include "training/threads.h"

#include <ATen/Parallel.h>

#include <dlfcn.h>

#include <algorithm>
#include <thread>

namespace zoo::training {

int64_t apply_threads(int64_t n) {
  if (n <= 0) n = std::max<int64_t>(1, static_cast<int64_t>(std::thread::hardware_concurrency()));
  n = std::min(n, max_threads);
  at::set_num_threads(static_cast<int>(n));
  // LibTorch parallelises around its BLAS calls (OpenMP). A threaded OpenBLAS underneath starts its own pool,
  // and the two spin against each other on the same cores: measured on 2 cores, training ran 1.4x (cnn) to 3x
  // (mlp) slower than with OpenBLAS single-threaded. Found at run time, so this is a no-op with other BLASes.
  using SetThreads = void (*)(int);
  if (auto set_blas_threads = reinterpret_cast<SetThreads>(dlsym(RTLD_DEFAULT, "openblas_set_num_threads")))
    set_blas_threads(1);
  return n;
}

}  // namespace zoo::training
