// How many threads LibTorch (and the BLAS under it) may use, and how many when the machine is shared.
//
// LibTorch's intra-op threads are OpenMP's, and OpenMP threads spin at every barrier waiting for the slowest of
// them: when another process holds one of the cores, the thread that shares that core is late at every barrier,
// and a step with all cores ran 3-10x slower than with one thread (docs/speed.md, "Threads"). So `--threads 0`
// (the default) is not "all cores" but "the cores other work leaves free": the cores this process may run on,
// less the CPU time other processes took on them (/proc/stat less this process's own), looked at again every
// few seconds of training.
#pragma once

#include <cstdint>

namespace zoo::training {

/// The largest thread count a run may ask for: far above any core count this code runs on, far below what
/// makes OpenMP allocate gigabytes for its pool.
constexpr int64_t max_threads = 1024;

/// The cores this process may run on (its affinity mask: `taskset` and container cpusets shrink it).
int64_t usable_cores();

/// The most threads `--threads 0` uses: the usable cores, or fewer when OMP_NUM_THREADS says so (as PyTorch
/// takes its default from it).
int64_t auto_thread_limit();

/// CPU time on the cores this process may run on, all processes together and this one alone.
struct CpuSample {
  double wall = 0;  ///< seconds on a steady clock
  double busy = 0;  ///< CPU seconds spent by anyone on those cores (/proc/stat, USER_HZ ticks); < 0: unknown
  double self = 0;  ///< CPU seconds of this process, all threads (getrusage)
};
CpuSample sample_cpu();

/// The cores other processes kept busy between two samples (0 where /proc/stat cannot be read).
double busy_elsewhere(const CpuSample& from, const CpuSample& to);

/// The thread count for `cores` when other work keeps `busy` of them busy: the free cores, counting one that
/// is less than 70% free as taken (a thread on a shared core stalls all the others at each barrier), at most
/// `limit` (0: no limit), at least 1.
int64_t threads_for_load(int64_t cores, double busy, int64_t limit = 0);

/// Sets LibTorch's intra-op threads: n > 0, or for 0 the cores other work leaves free now (`threads_for_load`
/// over the time since the previous call or the program's start, at least a quarter of a second). More than the
/// cores: a warning (once per count), and at most 4 per core. OpenBLAS, if that is the BLAS, gets one thread:
/// LibTorch parallelises around BLAS calls. Returns the number set.
int64_t apply_threads(int64_t n);

/// `--threads 0` during training: every `interval` seconds, the cores other work left free in that time. Fewer
/// threads at once when other work takes cores (a shared core costs more than a missing one); more only when
/// two intervals in a row agree, so a short burst of other work does not make the count swing.
class AutoThreads {
 public:
  /// Starts from LibTorch's current count, measuring from now.
  explicit AutoThreads(double interval = 2.0);
  /// Starts from `current` threads on `cores` (at most `limit`), measuring from `start` (tests give their own
  /// samples).
  AutoThreads(int64_t cores, int64_t limit, int64_t current, const CpuSample& start, double interval);
  /// Once per training step. When an interval has passed: measures, sets LibTorch's count if it changes and
  /// returns the new count, else 0.
  int64_t tick();
  /// The decision alone, from a sample the caller took: the new count if it changes, else 0 (also before an
  /// interval has passed since the last measurement).
  int64_t update(const CpuSample& now);
  /// The cores other work kept busy in the last interval.
  double busy() const { return busy_; }
  int64_t cores() const { return cores_; }

 private:
  double interval_;
  int64_t cores_, limit_, current_, pending_ = 0;
  CpuSample last_;
  double busy_ = 0;
};

}  // namespace zoo::training
