// `zoo train --nproc N`: starts N copies of this command as ranks 0..N-1 of one data-parallel run, with
// torchrun's environment (RANK, LOCAL_RANK, WORLD_SIZE, MASTER_ADDR, MASTER_PORT), and watches them.
#include "tools/cli/cli.h"
#include "training/distributed.h"

#include <fmt/format.h>
#include <sys/prctl.h>
#include <sys/wait.h>
#include <unistd.h>

#include <atomic>
#include <chrono>
#include <csignal>
#include <cstdio>
#include <cstring>
#include <stdexcept>
#include <string>
#include <thread>
#include <vector>

namespace zoo::cli {

namespace {

std::vector<std::string> command_line_;

// The children, for the signal handler: a signal to the launcher is passed on to every rank once.
constexpr int kMaxRanks = 256;
pid_t children[kMaxRanks];
std::atomic<int> child_count{0};

extern "C" void forward_signal(int sig) {
  for (int i = 0; i < child_count.load(); ++i)
    if (children[i] > 0) kill(children[i], sig);
  std::signal(sig, SIG_DFL);  // a second one ends the launcher itself
}

std::string describe(int status) {
  if (WIFSIGNALED(status))
    return "was killed by signal " + std::to_string(WTERMSIG(status)) + " (" + strsignal(WTERMSIG(status)) + ")";
  return "exited with status " + std::to_string(WEXITSTATUS(status));
}

}  // namespace

void set_command_line(int argc, char** argv) { command_line_.assign(argv, argv + argc); }

int launch_ranks(int64_t nproc, const std::vector<std::string>& extra_args, double timeout_s) {
  if (nproc < 2) throw std::invalid_argument("--nproc must be >= 2 to start several ranks");
  if (nproc > kMaxRanks) throw std::invalid_argument("--nproc must be at most " + std::to_string(kMaxRanks));
  // The children run this same command without --nproc, plus what the launcher decided for all of them.
  std::vector<std::string> args{"/proc/self/exe"};
  for (size_t i = 1; i < command_line_.size(); ++i) {
    const std::string& a = command_line_[i];
    if (a == "--nproc") {
      ++i;
      continue;
    }
    if (a.rfind("--nproc=", 0) == 0) continue;
    args.push_back(a);
  }
  args.insert(args.end(), extra_args.begin(), extra_args.end());
  const char* port_env = std::getenv("MASTER_PORT");
  const std::string port = port_env && *port_env ? port_env : std::to_string(training::free_loopback_port());
  const char* addr_env = std::getenv("MASTER_ADDR");
  const std::string addr = addr_env && *addr_env ? addr_env : "127.0.0.1";
  std::fflush(stdout);
  std::fflush(stderr);

  child_count.store(0);
  for (int64_t rank = 0; rank < nproc; ++rank) {
    const pid_t pid = fork();
    if (pid < 0) throw std::runtime_error(std::string("cannot start a rank: ") + std::strerror(errno));
    if (pid == 0) {
      setpgid(0, 0);                     // a terminal's Ctrl-C reaches the launcher, which passes it on once
      prctl(PR_SET_PDEATHSIG, SIGTERM);  // and a launcher that dies takes its ranks along
      setenv("RANK", std::to_string(rank).c_str(), 1);
      setenv("LOCAL_RANK", std::to_string(rank).c_str(), 1);
      setenv("WORLD_SIZE", std::to_string(nproc).c_str(), 1);
      setenv("MASTER_ADDR", addr.c_str(), 1);
      setenv("MASTER_PORT", port.c_str(), 1);
      std::vector<char*> argv;
      for (auto& a : args) argv.push_back(a.data());
      argv.push_back(nullptr);
      execv(argv[0], argv.data());
      fmt::print(stderr, "zoo: error: cannot start rank {}: {}\n", static_cast<long long>(rank), std::strerror(errno));
      _exit(127);
    }
    children[rank] = pid;
    child_count.store(static_cast<int>(rank + 1));
  }
  struct sigaction action {};
  action.sa_handler = forward_signal;
  sigemptyset(&action.sa_mask);
  sigaction(SIGINT, &action, nullptr);
  sigaction(SIGTERM, &action, nullptr);

  std::vector<int> status(static_cast<size_t>(nproc), -1);
  int64_t running = nproc, first_failed = -1;
  auto failed_since = std::chrono::steady_clock::now();
  bool killed = false;
  while (running > 0) {
    int st = 0;
    const pid_t pid = waitpid(-1, &st, first_failed >= 0 ? WNOHANG : 0);
    if (pid < 0) {
      if (errno == EINTR) continue;
      break;
    }
    if (pid == 0) {  // a rank failed and others still run: they should fail too; past the timeout, end them
      if (!killed && std::chrono::steady_clock::now() - failed_since > std::chrono::duration<double>(timeout_s)) {
        for (int64_t r = 0; r < nproc; ++r)
          if (status[static_cast<size_t>(r)] < 0) kill(children[r], SIGKILL);
        killed = true;
      }
      std::this_thread::sleep_for(std::chrono::milliseconds(50));
      continue;
    }
    for (int64_t r = 0; r < nproc; ++r) {
      if (children[r] != pid) continue;
      status[static_cast<size_t>(r)] = st;
      --running;
      const bool ok = WIFEXITED(st) && WEXITSTATUS(st) == 0;
      if (!ok && first_failed < 0) {
        first_failed = r;
        failed_since = std::chrono::steady_clock::now();
      }
    }
  }
  child_count.store(0);
  if (first_failed < 0) return 0;
  const int st = status[static_cast<size_t>(first_failed)];
  // Every rank stopped by the same signal (Ctrl-C, kill): each has said so; pass its exit code on.
  if (WIFEXITED(st) && WEXITSTATUS(st) > 128) {
    bool same = true;
    for (int s : status) same = same && s == st;
    if (same) return WEXITSTATUS(st);
  }
  fmt::print(stderr,
             "zoo: error: rank {} of {} {}; the other ranks were stopped (the last checkpoint is intact; "
             "continue with --resume)\n",
             static_cast<long long>(first_failed), static_cast<long long>(nproc), describe(st));
  return 1;
}

}  // namespace zoo::cli
