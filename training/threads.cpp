#include "training/threads.h"

#include <ATen/Parallel.h>

#include <dlfcn.h>
#include <sched.h>
#include <sys/resource.h>
#include <unistd.h>

#include <fmt/format.h>

#include <algorithm>
#include <atomic>
#include <chrono>
#include <cmath>
#include <cstdlib>
#include <fstream>
#include <mutex>
#include <sstream>
#include <string>
#include <thread>

namespace zoo::training {

namespace {

double steady_seconds() {
  return std::chrono::duration<double>(std::chrono::steady_clock::now().time_since_epoch()).count();
}

/// The CPU seconds spent by anyone on the cores in `mask` since boot: user, nice, system, irq, softirq and steal
/// (a hypervisor giving the core to another machine is other work too). < 0 when /proc/stat is not there.
double busy_seconds(const cpu_set_t& mask) {
  std::ifstream in("/proc/stat");
  if (!in) return -1;
  static const double tick = static_cast<double>(std::max(1L, sysconf(_SC_CLK_TCK)));
  double busy = 0;
  bool any = false;
  std::string line;
  while (std::getline(in, line)) {
    if (line.rfind("cpu", 0) != 0 || line.size() < 4 || line[3] < '0' || line[3] > '9') continue;
    std::istringstream fields(line.substr(3));
    int cpu = -1;
    unsigned long long user = 0, nice = 0, system = 0, idle = 0, iowait = 0, irq = 0, softirq = 0, steal = 0;
    fields >> cpu >> user >> nice >> system >> idle >> iowait >> irq >> softirq >> steal;  // older kernels: fewer
    if (cpu < 0 || cpu >= CPU_SETSIZE || !CPU_ISSET(cpu, &mask)) continue;
    busy += static_cast<double>(user + nice + system + irq + softirq + steal) / tick;
    any = true;
  }
  return any ? busy : -1;
}

cpu_set_t affinity() {
  cpu_set_t mask;
  CPU_ZERO(&mask);
  if (sched_getaffinity(0, sizeof mask, &mask) != 0 || CPU_COUNT(&mask) == 0) {
    const auto n = std::max(1u, std::thread::hardware_concurrency());
    for (unsigned i = 0; i < n && i < CPU_SETSIZE; ++i) CPU_SET(i, &mask);
  }
  return mask;
}

// The program's start, as far as a library can see it: the first moment this file's objects are initialised.
// `apply_threads(0)` measures the other work on the machine from here (or from its previous call).
std::mutex last_sample_mutex;
CpuSample last_sample = sample_cpu();

}  // namespace

int64_t usable_cores() {
  const auto mask = affinity();
  return std::max(1, CPU_COUNT(&mask));
}

int64_t auto_thread_limit() {
  const int64_t cores = usable_cores();
  const char* env = std::getenv("OMP_NUM_THREADS");  // "4" or a list per nesting level, "4,2": the first
  if (!env) return cores;
  char* end = nullptr;
  const long n = std::strtol(env, &end, 10);
  return end != env && n > 0 ? std::min<int64_t>(cores, n) : cores;
}

CpuSample sample_cpu() {
  CpuSample s;
  s.wall = steady_seconds();
  s.busy = busy_seconds(affinity());
  rusage usage{};
  if (getrusage(RUSAGE_SELF, &usage) == 0)
    s.self = static_cast<double>(usage.ru_utime.tv_sec + usage.ru_stime.tv_sec) +
             static_cast<double>(usage.ru_utime.tv_usec + usage.ru_stime.tv_usec) * 1e-6;
  return s;
}

double busy_elsewhere(const CpuSample& from, const CpuSample& to) {
  const double wall = to.wall - from.wall;
  if (from.busy < 0 || to.busy < 0 || wall <= 0) return 0;
  return std::max(0.0, (to.busy - from.busy - (to.self - from.self)) / wall);
}

int64_t threads_for_load(int64_t cores, double busy, int64_t limit) {
  const double free = static_cast<double>(cores) - std::max(0.0, busy);
  const int64_t most = limit > 0 ? std::min(cores, limit) : cores;
  return std::clamp<int64_t>(static_cast<int64_t>(std::floor(free + 0.3 + 1e-9)), 1, std::max<int64_t>(1, most));
}

int64_t apply_threads(int64_t n) {
  if (n <= 0) {
    std::lock_guard<std::mutex> lock(last_sample_mutex);
    constexpr double window = 0.25, stale = 10.0;
    auto now = sample_cpu();
    if (now.wall - last_sample.wall > stale) {  // an average over minutes says little about now
      last_sample = now;
      now = sample_cpu();
    }
    if (const double short_by = window - (now.wall - last_sample.wall); short_by > 0) {
      std::this_thread::sleep_for(std::chrono::duration<double>(short_by));
      now = sample_cpu();
    }
    n = threads_for_load(usable_cores(), busy_elsewhere(last_sample, now), auto_thread_limit());
    last_sample = now;
  }
  // More threads than cores only make them wait for each other; far more (--threads 100000) would spawn threads
  // by the thousand. Above the cores: a warning; above 4 per core: that many.
  const int64_t cores = usable_cores(), most = std::min(max_threads, 4 * cores);
  if (n > cores) {
    static std::atomic<int64_t> warned{0};
    if (warned.exchange(n) != n)
      fmt::print(stderr,
                 "warning: --threads {} is more than the {} cores this process may use: threads sharing a core "
                 "wait for each other at every step{}\n",
                 n, cores, n > most ? fmt::format("; using {}", most) : "");
    n = std::min(n, most);
  }
  at::set_num_threads(static_cast<int>(n));
  // LibTorch parallelises around its BLAS calls (OpenMP). A threaded OpenBLAS underneath starts its own pool,
  // and the two spin against each other on the same cores: measured on 2 cores, training ran 1.4x (cnn) to 3x
  // (mlp) slower than with OpenBLAS single-threaded. Found at run time, so this is a no-op with other BLASes.
  using SetThreads = void (*)(int);
  if (auto set_blas_threads = reinterpret_cast<SetThreads>(dlsym(RTLD_DEFAULT, "openblas_set_num_threads")))
    set_blas_threads(1);
  return n;
}

AutoThreads::AutoThreads(double interval)
    : AutoThreads(usable_cores(), auto_thread_limit(), at::get_num_threads(), sample_cpu(), interval) {}

AutoThreads::AutoThreads(int64_t cores, int64_t limit, int64_t current, const CpuSample& start, double interval)
    : interval_(interval), cores_(cores), limit_(limit), current_(current), last_(start) {}

int64_t AutoThreads::update(const CpuSample& now) {
  if (now.wall - last_.wall < interval_) return 0;
  busy_ = busy_elsewhere(last_, now);
  last_ = now;
  const int64_t wanted = threads_for_load(cores_, busy_, limit_);
  if (wanted < current_ || (wanted > current_ && pending_ == wanted)) {
    pending_ = 0;
    current_ = wanted;
    return wanted;
  }
  pending_ = wanted > current_ ? wanted : 0;
  return 0;
}

int64_t AutoThreads::tick() {
  // A clock read per step; /proc/stat only once an interval has passed.
  if (steady_seconds() - last_.wall < interval_) return 0;
  const int64_t n = update(sample_cpu());
  if (n > 0) at::set_num_threads(static_cast<int>(n));
  return n;
}

}  // namespace zoo::training
