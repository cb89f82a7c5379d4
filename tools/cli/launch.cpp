// `zoo train --nproc N [--nnodes M --node-rank R --master-addr HOST --master-port P]`: starts N copies of this
// command as ranks R*N .. R*N+N-1 of one data-parallel run of M*N ranks, with torchrun's environment (RANK,
// LOCAL_RANK, WORLD_SIZE, LOCAL_WORLD_SIZE, GROUP_RANK, MASTER_ADDR, MASTER_PORT), and watches them.
#include "tools/cli/cli.h"
#include "training/checkpoint.h"
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
#include <filesystem>
#include <fstream>
#include <iterator>
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

namespace {

/// How one attempt of the ranks ended: all succeeded (failed < 0), or the first rank that failed and how.
struct Attempt {
  int64_t failed = -1;
  int status = 0;                ///< waitpid status of the failed rank
  int code = 0;                  ///< the launcher's exit code for this outcome
  bool all_same_signal = false;  ///< every rank stopped by the same signal (Ctrl-C, kill of the group)
  int64_t stopped = -1;          ///< a rank found stopped (SIGSTOP) after another failed: the cause
};

/// Whether process `pid` is stopped (state T or t in /proc/PID/stat).
bool is_stopped(pid_t pid) {
  std::ifstream in("/proc/" + std::to_string(pid) + "/stat");
  std::string stat((std::istreambuf_iterator<char>(in)), std::istreambuf_iterator<char>());
  const auto close = stat.rfind(')');
  return close != std::string::npos && close + 2 < stat.size() && (stat[close + 2] == 'T' || stat[close + 2] == 't');
}

std::atomic<bool> launcher_signalled{false};

extern "C" void forward_and_note(int sig) {
  launcher_signalled.store(true);
  forward_signal(sig);
}

Attempt run_ranks(const LaunchOptions& o, const std::vector<std::string>& args) {
  const int64_t nproc = o.nproc;
  const double timeout_s = o.timeout_s;
  const std::string port = std::to_string(o.master_port > 0 ? o.master_port : training::free_loopback_port());
  const std::string& addr = o.master_addr;
  const int64_t first_rank = o.node_rank * nproc, world = o.nnodes * nproc;
  std::fflush(stdout);
  std::fflush(stderr);

  child_count.store(0);
  for (int64_t rank = 0; rank < nproc; ++rank) {
    const pid_t pid = fork();
    if (pid < 0) throw std::runtime_error(std::string("cannot start a rank: ") + std::strerror(errno));
    if (pid == 0) {
      setpgid(0, 0);                     // a terminal's Ctrl-C reaches the launcher, which passes it on once
      prctl(PR_SET_PDEATHSIG, SIGTERM);  // and a launcher that dies takes its ranks along
      setenv("RANK", std::to_string(first_rank + rank).c_str(), 1);
      setenv("LOCAL_RANK", std::to_string(rank).c_str(), 1);
      setenv("WORLD_SIZE", std::to_string(world).c_str(), 1);
      setenv("LOCAL_WORLD_SIZE", std::to_string(nproc).c_str(), 1);
      setenv("GROUP_RANK", std::to_string(o.node_rank).c_str(), 1);
      setenv("MASTER_ADDR", addr.c_str(), 1);
      setenv("MASTER_PORT", port.c_str(), 1);
      std::vector<std::string> own = args;
      std::vector<char*> argv;
      for (auto& a : own) argv.push_back(a.data());
      argv.push_back(nullptr);
      execv(argv[0], argv.data());
      fmt::print(stderr, "zoo: error: cannot start rank {}: {}\n", static_cast<long long>(first_rank + rank),
                 std::strerror(errno));
      _exit(127);
    }
    children[rank] = pid;
    child_count.store(static_cast<int>(rank + 1));
  }

  std::vector<int> status(static_cast<size_t>(nproc), -1);
  int64_t running = nproc, first_failed = -1, stopped_rank = -1;
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
      // A stopped rank (SIGSTOP, a debugger) never fails by itself: it is what the others timed out waiting for.
      for (int64_t r = 0; r < nproc && !killed; ++r)
        if (status[static_cast<size_t>(r)] < 0 && is_stopped(children[r])) {
          stopped_rank = r;
          for (int64_t other = 0; other < nproc; ++other)
            if (status[static_cast<size_t>(other)] < 0) kill(children[other], SIGKILL);
          killed = true;
        }
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
  Attempt out;
  if (first_failed < 0) return out;
  out.failed = first_failed;
  out.status = status[static_cast<size_t>(first_failed)];
  out.code = 1;
  out.stopped = stopped_rank;
  if (stopped_rank >= 0) return out;
  // Every rank stopped by the same signal (Ctrl-C, kill): each has said so; pass its exit code on.
  if (WIFEXITED(out.status) && WEXITSTATUS(out.status) > 128) {
    bool same = true;
    for (int s : status) same = same && s == out.status;
    if (same) {
      out.all_same_signal = true;
      out.code = WEXITSTATUS(out.status);
    }
  }
  return out;
}

/// The global step of the run's last checkpoint (-1: none yet).
int64_t checkpoint_step(const std::string& run_dir) {
  try {
    const auto path = training::checkpoint_file(run_dir, "state.json");
    if (!std::filesystem::exists(path)) return -1;
    return training::read_json_file(path).value("step", int64_t{-1});
  } catch (const std::exception&) {
    return -1;
  }
}

}  // namespace

int launch_ranks(const LaunchOptions& given, const std::vector<std::string>& extra_args) {
  LaunchOptions o = given;
  const int64_t nproc = o.nproc;
  if (nproc < 1 || (nproc < 2 && o.nnodes < 2))
    throw std::invalid_argument("--nproc must be >= 2 to start several ranks");
  if (nproc > kMaxRanks) throw std::invalid_argument("--nproc must be at most " + std::to_string(kMaxRanks));
  if (o.master_addr.empty()) {
    const char* addr_env = std::getenv("MASTER_ADDR");
    o.master_addr = addr_env && *addr_env ? addr_env : "127.0.0.1";
  }
  if (o.master_port <= 0) {
    const char* port_env = std::getenv("MASTER_PORT");
    if (port_env && *port_env) o.master_port = training::parse_port(port_env, "MASTER_PORT");
  }
  training::check_resolves(o.master_addr, "--master-addr");  // every attempt would fail the same way
  const std::string& run_dir = o.run_dir;
  const double timeout_s = o.timeout_s;
  // The children run this same command without the launcher's flags, plus what the launcher decided for all of
  // them (the environment carries their ranks and the master).
  std::vector<std::string> args{"/proc/self/exe"};
  bool quiet = false;
  for (size_t i = 1; i < command_line_.size(); ++i) {
    const std::string& a = command_line_[i];
    bool launcher_flag = false;
    for (const char* flag :
         {"--nproc", "--max-restarts", "--nnodes", "--node-rank", "--master-addr", "--master-port"}) {
      if (a == flag) {
        ++i;
        launcher_flag = true;
      } else if (a.rfind(std::string(flag) + "=", 0) == 0) {
        launcher_flag = true;
      }
    }
    if (launcher_flag) continue;
    quiet = quiet || a == "--no-progress";
    args.push_back(a);
  }
  args.insert(args.end(), extra_args.begin(), extra_args.end());
  // A restart resumes the run from its last checkpoint, with the same split of threads.
  std::vector<std::string> resume_args{"/proc/self/exe", "train",          "--resume",
                                       run_dir,          "--dist-timeout", fmt::format("{}", timeout_s)};
  if (quiet) resume_args.push_back("--no-progress");
  for (size_t i = 0; i < extra_args.size(); ++i) {
    if (extra_args[i] == "--out") {  // the run's own; a resumed run refuses it
      ++i;
      continue;
    }
    resume_args.push_back(extra_args[i]);
  }

  struct sigaction action {};
  action.sa_handler = forward_and_note;
  sigemptyset(&action.sa_mask);
  sigaction(SIGINT, &action, nullptr);
  sigaction(SIGTERM, &action, nullptr);

  int previous_status = -1;
  int64_t previous_step = -2;
  for (int64_t restart = 0;; ++restart) {
    const int64_t step_before = checkpoint_step(run_dir);
    const auto attempt = run_ranks(o, restart > 0 && step_before >= 0 ? resume_args : args);
    if (attempt.failed < 0) return 0;
    if (attempt.all_same_signal) return attempt.code;
    const int64_t first_rank = o.node_rank * nproc, world = o.nnodes * nproc;
    const auto cause =
        attempt.stopped >= 0
            ? fmt::format(
                  "rank {} of {} was stopped (SIGSTOP or a debugger) and did not answer within --dist-timeout "
                  "{} s",
                  static_cast<long long>(first_rank + attempt.stopped), static_cast<long long>(world), timeout_s)
            : fmt::format("rank {} of {} {}", static_cast<long long>(first_rank + attempt.failed),
                          static_cast<long long>(world), describe(attempt.status));
    const int64_t step_after = checkpoint_step(run_dir);
    // The same failure as the last one, with no step checkpointed in between: a restart would fail again.
    const bool repeated = step_after == step_before && step_after == previous_step && attempt.status == previous_status;
    if (restart < o.max_restarts && !launcher_signalled.load() && !repeated) {
      fmt::print(stderr, "zoo: {}; restarting all {} ranks from {} (restart {} of {})\n", cause,
                 static_cast<long long>(nproc),
                 step_after >= 0 ? fmt::format("the checkpoint at step {}", step_after) : std::string("the start"),
                 static_cast<long long>(restart + 1), static_cast<long long>(o.max_restarts));
      std::fflush(stderr);
      previous_status = attempt.status;
      previous_step = step_after;
      continue;
    }
    if (repeated)
      fmt::print(stderr,
                 "zoo: error: {} again before any new checkpoint (the same failure twice in a row: not restarted; "
                 "see the rank's message above)\n",
                 cause);
    else if (step_after >= 0)
      fmt::print(stderr,
                 "zoo: error: {}; the other ranks were stopped (the last checkpoint is intact; continue with "
                 "--resume {})\n",
                 cause, run_dir);
    else
      fmt::print(stderr,
                 "zoo: error: {}; the other ranks were stopped (no checkpoint was written: see the rank's message "
                 "above, then start the run again)\n",
                 cause);
    return 1;
  }
}

}  // namespace zoo::cli
