// Facts about the running process that decide its speed, for logs and benchmarks.
#pragma once

#include <nlohmann/json.hpp>

#include <string>

namespace zoo::training {

/// The allocator that serves malloc in this process, found at run time: "glibc malloc" (zoo links no other; README,
/// "Speed"; "glibc malloc, freed memory kept" after keep_freed_memory), or one put in front with LD_PRELOAD:
/// "jemalloc 5.3.0" (with its version), "tcmalloc", "mimalloc".
std::string allocator();

/// The BLAS that serves LibTorch's float32 matrix products on the CPU, found at run time: "OpenBLAS 0.3.21,
/// SkylakeX kernels" (its version and the kernels it picked for this CPU) where OpenBLAS is loaded, else "" (MKL,
/// the reference BLAS). OpenBLAS picks its kernels by the CPU's model number and falls back to its oldest x86-64 ones
/// (Prescott: SSE3) for a model it does not know: Debian 12's 0.3.21 on an Intel Xeon of model 207 (2023), where its
/// float32 products ran 3x slower than with OPENBLAS_CORETYPE=SkylakeX (docs/speed.md).
std::string blas();

/// For blas(): a hint where OpenBLAS runs kernels older than the CPU (a core without AVX, `core`, on a CPU with AVX2
/// or AVX-512): "set OPENBLAS_CORETYPE=SkylakeX (or Haswell) for faster float32 products"; else "". zoo leaves the
/// choice to the user: the variable is read when OpenBLAS loads, before zoo runs.
std::string blas_hint(const std::string& core, bool avx2, bool avx512);

/// Makes glibc's malloc keep freed memory for reuse instead of giving it back to the kernel at once. By default
/// glibc returns a freed block above its (adaptive) mmap threshold with munmap and trims the top of its heap above
/// the trim threshold, so a training step that frees and reallocates the same large buffers pays a page fault per
/// 4 KiB page for them, every step: measured on the 2-core VM, the 3-D U-Net's one-item inference took 147-166 ms
/// against 34 ms kept, and a Python twin's conv3d training step 104 ms against 27 ms (glibc's default, which
/// python3 runs with; docs/speed.md). Sets M_MMAP_THRESHOLD to its maximum (32 MiB) and M_TRIM_THRESHOLD to INT_MAX:
/// blocks below 32 MiB come from the heap and stay there once freed (the process keeps its peak heap, as PyTorch's
/// CUDA caching allocator keeps device memory). Does nothing, and returns false, when malloc is not glibc's or the
/// environment tunes it already (MALLOC_TRIM_THRESHOLD_, MALLOC_MMAP_THRESHOLD_, MALLOC_TOP_PAD_, MALLOC_MMAP_MAX_
/// or glibc.malloc in GLIBC_TUNABLES: the user's settings win) or says ZOO_KEEP_FREED_MEMORY=0 (or false, no, off:
/// glibc's defaults, e.g. to measure them). The zoo program and zoo_bench call it first thing; a program of your own
/// that trains with zoo's library may too.
bool keep_freed_memory();

/// The process's resident memory now (VmRSS) and at its peak so far (VmHWM), in MB, from /proc/self/status; 0
/// where that cannot be read. Every epoch record of metrics.jsonl holds both (rss_mb, peak_rss_mb).
struct Memory {
  double rss_mb = 0, peak_mb = 0;
};
Memory process_memory();

/// {"zoo", "torch", "compiler", "allocator", "blas", "created"}: recorded in every run's config.json.
nlohmann::json library_versions();

}  // namespace zoo::training
