// --threads 0: the thread count follows the cores other work leaves free (training/threads.h).
#include "training/threads.h"
#include "helpers.h"

#include <catch2/catch.hpp>

#include <ATen/Parallel.h>

#include <signal.h>
#include <sys/resource.h>
#include <sys/wait.h>
#include <unistd.h>

#include <chrono>
#include <cstdlib>
#include <thread>

using namespace zoo::training;

namespace {

/// A CPU sample `wall` seconds in, when anyone had used `busy` and this process `self` CPU seconds.
CpuSample sample_at(double wall, double busy, double self) { return {wall, busy, self}; }

/// Spins for `seconds` on the calling thread.
void spin(double seconds) {
  const auto end = std::chrono::steady_clock::now() + std::chrono::duration<double>(seconds);
  volatile uint64_t n = 0;
  while (std::chrono::steady_clock::now() < end) n = n + 1;
}

/// A child process that spins for `seconds`, as another program on the machine would.
pid_t hog(double seconds) {
  const pid_t pid = fork();
  if (pid == 0) {
    spin(seconds);
    _exit(0);
  }
  return pid;
}

}  // namespace

TEST_CASE("Threads: the cores other work leaves free, a core less than 70% free counted as taken", "[threads]") {
  CHECK(threads_for_load(2, 0.0) == 2);
  CHECK(threads_for_load(2, 0.3) == 2);   // 70% of the second core is still free
  CHECK(threads_for_load(2, 0.35) == 1);  // a thread there would stall the other at every barrier
  CHECK(threads_for_load(2, 1.0) == 1);
  CHECK(threads_for_load(2, 2.0) == 1);  // never fewer than one
  CHECK(threads_for_load(8, 2.67) == 5);
  CHECK(threads_for_load(8, 0.0, 4) == 4);  // OMP_NUM_THREADS=4 on 8 cores
  CHECK(threads_for_load(8, 3.0, 4) == 4);  // 5 cores free: the limit still holds
  CHECK(threads_for_load(8, 6.0, 4) == 2);
}

TEST_CASE("Threads: other work is the machine's CPU time less this process's own", "[threads]") {
  // 2 s in which the machine used 3 CPU seconds, 1 of them this process's: other work kept 1 core busy.
  CHECK(busy_elsewhere(sample_at(10, 100, 5), sample_at(12, 103, 6)) == Approx(1.0));
  CHECK(busy_elsewhere(sample_at(10, 100, 5), sample_at(12, 102, 7)) == 0.0);  // only this process ran
  CHECK(busy_elsewhere(sample_at(10, -1, 5), sample_at(12, -1, 6)) == 0.0);    // no /proc/stat: assume an idle machine
  CHECK(busy_elsewhere(sample_at(10, 100, 5), sample_at(10, 100, 5)) == 0.0);  // no time passed
}

TEST_CASE("Threads: fewer threads as soon as other work takes a core, more once two intervals agree", "[threads]") {
  AutoThreads a(/*cores=*/2, /*limit=*/2, /*current=*/2, sample_at(0, 0, 0), /*interval=*/2.0);
  CHECK(a.update(sample_at(1, 0, 0)) == 0);  // within the interval: nothing measured
  // A hog took 2/3 of a core (three busy threads on two cores), this process the rest: drop to one at once.
  double busy = 4, self = 2 * (2 - 2.0 / 3);
  CHECK(a.update(sample_at(2, busy, self)) == 1);
  CHECK(a.busy() == Approx(2.0 / 3));
  // Each interval below: the machine's busy seconds and this process's, 2 s long.
  auto interval = [&](double wall, double machine, double own) {
    busy += machine;
    self += own;
    return a.update(sample_at(wall, busy, self));
  };
  CHECK(interval(4, 4, 2) == 0);  // the hog's core and this one: stays at one
  CHECK(a.busy() == Approx(1.0));
  // The hog ended: the first idle interval is not enough, the second is.
  CHECK(interval(6, 2, 2) == 0);
  CHECK(interval(8, 2, 2) == 2);
  CHECK(interval(10, 4, 2) == 1);  // busy again: down at once
  // Idle, busy, idle, idle: the busy interval in between resets the count of agreeing ones.
  CHECK(interval(12, 2, 2) == 0);
  CHECK(interval(14, 4, 2) == 0);
  CHECK(interval(16, 2, 2) == 0);
  CHECK(interval(18, 2, 2) == 2);
}

TEST_CASE("Threads: a process spinning next to this one is seen, this process's own spinning is not", "[threads]") {
  if (sample_cpu().busy < 0) {
    WARN("skipped: no /proc/stat on this system (--threads 0 means all cores there)");
    return;
  }
  // Both compared with the CPU time the spinning really got: other tests running alongside share the cores.
  SECTION("another process") {
    const auto from = sample_cpu();
    const pid_t pid = hog(0.6);
    int status = 0;
    rusage usage{};
    wait4(pid, &status, 0, &usage);
    const auto to = sample_cpu();
    const double hog_cpu = static_cast<double>(usage.ru_utime.tv_sec + usage.ru_stime.tv_sec) +
                           static_cast<double>(usage.ru_utime.tv_usec + usage.ru_stime.tv_usec) * 1e-6;
    REQUIRE(hog_cpu > 0.1);
    // At least the hog's CPU time (up to /proc/stat's 10 ms ticks); other tests can only add to it.
    CHECK(busy_elsewhere(from, to) * (to.wall - from.wall) > 0.9 * hog_cpu - 0.05);
  }
  SECTION("this process") {
    const auto from = sample_cpu();
    spin(0.6);
    const auto to = sample_cpu();
    const double wall = to.wall - from.wall, own = to.self - from.self;
    REQUIRE(own > 0.1);
    // The machine's busy time includes the spinning; the estimate of other work leaves it out.
    CHECK((to.busy - from.busy) - busy_elsewhere(from, to) * wall == Approx(own).margin(0.05 + 0.1 * own));
  }
}

TEST_CASE("Threads: apply_threads(0) gives the free cores, within OMP_NUM_THREADS", "[threads]") {
  const int before = at::get_num_threads();
  const char* env = std::getenv("OMP_NUM_THREADS");
  const std::string saved = env ? env : "";
  setenv("OMP_NUM_THREADS", "1", 1);
  CHECK(auto_thread_limit() == 1);
  CHECK(apply_threads(0) == 1);
  unsetenv("OMP_NUM_THREADS");
  CHECK(auto_thread_limit() == usable_cores());
  const int64_t n = apply_threads(0);
  CHECK(n >= 1);
  CHECK(n <= usable_cores());
  CHECK(at::get_num_threads() == n);
  CHECK(apply_threads(3) == 3);
  if (env) setenv("OMP_NUM_THREADS", saved.c_str(), 1);
  at::set_num_threads(before);
}
