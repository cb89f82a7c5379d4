// Data-parallel training on c10d/Gloo: equivalence with one process, resume across world sizes, faults.
#include "training/distributed.h"
#include "helpers.h"
#include "models/registry.h"
#include "training/checkpoint.h"
#include "training/loggers.h"
#include "training/run.h"

#include <fmt/format.h>
#include <catch2/catch.hpp>

#include <arpa/inet.h>
#include <netinet/in.h>
#include <sys/socket.h>
#include <sys/wait.h>
#include <unistd.h>

#include <fcntl.h>
#include <chrono>
#include <csignal>
#include <thread>

using namespace zoo;
using nlohmann::json;
using zoo::test::TempDir;
namespace fs = std::filesystem;

namespace {

/// A socket bound to a free loopback port; listening if asked (then the port is "in use").
struct Port {
  int fd = -1;
  int number = 0;
  explicit Port(bool listening) {
    fd = socket(AF_INET, SOCK_STREAM, 0);
    sockaddr_in addr{};
    addr.sin_family = AF_INET;
    addr.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
    socklen_t len = sizeof addr;
    bind(fd, reinterpret_cast<sockaddr*>(&addr), sizeof addr);
    getsockname(fd, reinterpret_cast<sockaddr*>(&addr), &len);
    number = ntohs(addr.sin_port);
    if (listening) listen(fd, 1);
  }
  ~Port() { close(fd); }
};

int free_port() { return static_cast<int>(training::free_loopback_port()); }

double max_difference(torch::nn::Module& a, torch::nn::Module& b) {
  double worst = 0;
  const auto pa = a.named_parameters(), pb = b.named_parameters();
  for (const auto& p : pa) worst = std::max(worst, (p.value() - pb[p.key()]).abs().max().item<double>());
  return worst;
}

/// A process running the zoo binary with `args` and extra environment, output to files in `dir`.
struct Child {
  pid_t pid = -1;
  std::string out, err;
  /// `prefix`: a command that runs zoo (e.g. {"/usr/sbin/ip", "netns", "exec", "NS"}); empty: zoo itself.
  Child(const std::vector<std::string>& args, const std::vector<std::pair<std::string, std::string>>& env,
        const std::string& dir, const std::string& name, const std::vector<std::string>& prefix = {}) {
    out = dir + "/" + name + ".out";
    err = dir + "/" + name + ".err";
    pid = fork();
    if (pid == 0) {
      for (const auto& [k, v] : env) setenv(k.c_str(), v.c_str(), 1);
      const int o = open(out.c_str(), O_WRONLY | O_CREAT | O_TRUNC, 0644),
                e = open(err.c_str(), O_WRONLY | O_CREAT | O_TRUNC, 0644);
      dup2(o, 1);
      dup2(e, 2);
      std::vector<std::string> all = prefix;
      all.push_back(ZOO_BIN);
      all.insert(all.end(), args.begin(), args.end());
      std::vector<char*> argv;
      for (auto& a : all) argv.push_back(a.data());
      argv.push_back(nullptr);
      execv(all.front().c_str(), argv.data());
      _exit(127);
    }
  }
  /// Exit code (128 + signal for a signal), or -1 if it did not end within `seconds` (then it is killed).
  int wait(double seconds) {
    const auto end = std::chrono::steady_clock::now() + std::chrono::duration<double>(seconds);
    while (std::chrono::steady_clock::now() < end) {
      int status = 0;
      if (waitpid(pid, &status, WNOHANG) == pid)
        return WIFEXITED(status) ? WEXITSTATUS(status) : 128 + WTERMSIG(status);
      std::this_thread::sleep_for(std::chrono::milliseconds(50));
    }
    kill(pid, SIGKILL);
    waitpid(pid, nullptr, 0);
    return -1;
  }
  std::string error() const { return test::read_text(err); }
};

/// Process ids whose parent is `parent`.
std::vector<pid_t> children_of(pid_t parent) {
  std::vector<pid_t> out;
  for (const auto& entry : fs::directory_iterator("/proc")) {
    const std::string name = entry.path().filename().string();
    if (name.find_first_not_of("0123456789") != std::string::npos) continue;
    const std::string stat = test::read_text(entry.path() / "stat");
    const auto close_paren = stat.rfind(')');
    if (close_paren == std::string::npos) continue;
    std::istringstream rest(stat.substr(close_paren + 2));
    char state;
    pid_t ppid = 0;
    rest >> state >> ppid;
    if (ppid == parent) out.push_back(static_cast<pid_t>(std::stol(name)));
  }
  return out;
}

bool wait_for_file(const fs::path& path, double seconds) {
  const auto end = std::chrono::steady_clock::now() + std::chrono::duration<double>(seconds);
  while (std::chrono::steady_clock::now() < end) {
    if (fs::exists(path)) return true;
    std::this_thread::sleep_for(std::chrono::milliseconds(50));
  }
  return false;
}

/// A 2-rank launcher of a long mlp run into `run` (logs in `dir`), returned once training has started (the
/// epoch-0 checkpoint exists).
std::unique_ptr<Child> start_long_run(const std::string& run, const std::string& dir, const std::string& timeout) {
  auto launcher = std::make_unique<Child>(
      std::vector<std::string>{"train", "mlp", "--nproc", "2", "--epochs", "50", "--limit", "20000", "--batch-size",
                               "20", "--no-progress", "--dist-timeout", timeout, "--out", run},
      std::vector<std::pair<std::string, std::string>>{}, dir, "launcher");
  REQUIRE(wait_for_file(fs::path(run) / "state.json", 120));
  std::this_thread::sleep_for(std::chrono::milliseconds(500));
  return launcher;
}

}  // namespace

TEST_CASE("Two ranks with batch b end bit-identical, and equal to one process with batch 2b", "[distributed]") {
  REQUIRE(test::have_fashion_mnist());
  // Three trainers built one after the other from seed 0 (the global generator is not for concurrent use):
  // two ranks with batch 50 and one process with batch 100, all on the same sample order.
  datasets::DataConfig data;
  data.limit = 1000;
  const auto splits = datasets::load_splits(data);
  auto make = [&](int64_t batch) {
    torch::manual_seed(0);
    auto model = models::build_model("mlp").first;
    return std::make_unique<training::Trainer>(
        model, training::make_objective("classify"), splits,
        training::TrainOptions().progress(false).threads(1).batch_size(batch).epochs(2));
  };
  std::unique_ptr<training::Trainer> ranks[2] = {make(50), make(50)};
  auto single = make(100);
  const int port = free_port();
  std::string errors[2];
  json last[2];
  std::vector<std::thread> threads;
  for (int r = 0; r < 2; ++r) {
    threads.emplace_back([&, r] {
      try {
        training::DistributedOptions o;
        o.rank = r;
        o.world_size = 2;
        o.master_port = port;
        o.bucket_mb = 0.25;  // several buckets for the 235k parameters
        training::attach_distributed(*ranks[r], std::make_shared<training::ProcessGroup>(o));
        last[r] = ranks[r]->fit();
      } catch (const std::exception& e) {
        errors[r] = e.what();
      }
    });
  }
  for (auto& t : threads) t.join();
  REQUIRE(errors[0].empty());
  REQUIRE(errors[1].empty());
  auto& a = *ranks[0]->model().ptr();
  auto& b = *ranks[1]->model().ptr();
  CHECK(max_difference(a, b) == 0);  // bit-identical on both ranks
  const auto ref = single->fit();
  const double diff = max_difference(a, *single->model().ptr());
  INFO("max |w_parallel - w_single| = " << diff);
  // Only the order of float sums differs (two shards' mean gradients averaged, against one batch's mean), and
  // Adam's division by sqrt(v) amplifies it over 20 steps: measured 1.09e-5 with these initial weights.
  CHECK(diff < 2e-5);
  // Both ranks evaluate over the whole test split (sums all-reduced); the training loss covers both shards.
  for (int r = 0; r < 2; ++r) {
    CHECK(last[r]["test"]["items"] == 1000);
    CHECK(last[r]["test"]["accuracy"].get<double>() == Approx(ref["test"]["accuracy"].get<double>()).margin(2e-3));
    CHECK(last[r]["train"]["loss"].get<double>() == Approx(ref["train"]["loss"].get<double>()).epsilon(1e-4));
  }
}

TEST_CASE("zoo train --nproc 2, a distributed run resumes in one process and the other way round",
          "[distributed][cli]") {
  REQUIRE(test::have_fashion_mnist());
  TempDir tmp;
  const std::string run = tmp.str("run");
  auto r = test::run_zoo(
      "train mlp --nproc 2 --limit 1000 --batch-size 50 --epochs 1 --no-progress --log csv,tensorboard --out " + run);
  INFO(r.err);
  REQUIRE(r.code == 0);
  CHECK(r.out.find("batch 50 x 2 ranks") != std::string::npos);
  CHECK(test::count_lines(r.out) == 4);  // rank 0 alone prints: header, epoch, test, saved
  CHECK(training::read_json_file(run + "/state.json")["world_size"] == 2);
  auto one = test::run_zoo("train --resume " + run + " --epochs 2 --no-progress");
  INFO(one.err);
  REQUIRE(one.code == 0);
  CHECK(training::read_json_file(run + "/state.json")["epoch"] == 2);
  auto two = test::run_zoo("train --resume " + run + " --epochs 3 --nproc 2 --no-progress");
  INFO(two.err);
  REQUIRE(two.code == 0);
  const auto state = training::read_json_file(run + "/state.json");
  CHECK(state["epoch"] == 3);
  CHECK(state["world_size"] == 2);
  const auto log = test::read_text(fs::path(run) / "metrics.jsonl");
  CHECK(test::count_lines(log) == 3);
  // Validation: both ranks' shares summed (100 held-out items each epoch); rank 0 wrote the best weights, and the
  // one test of them covers the whole test split.
  CHECK(nlohmann::json::parse(test::last_line(log))["val"]["items"] == 100);
  CHECK(fs::exists(fs::path(run) / "best.pt"));
  // Rank 0 alone logs: every step once (9 per epoch with two ranks, 18 with one), one event file per session.
  const auto steps = training::read_csv(run + "/steps.csv");
  REQUIRE(steps.rows.size() == 36);
  for (size_t i = 0; i < steps.rows.size(); ++i) CHECK(steps.rows[i][0] == std::to_string(i + 1));
  if (training::tensorboard_available()) {
    size_t files = 0;
    for ([[maybe_unused]] const auto& e : fs::directory_iterator(fs::path(run) / "tb")) ++files;
    CHECK(files == 3);
  }
  const auto final = training::read_json_file(run + "/test.json");
  CHECK(final["epoch"] == state["best_epoch"]);
  CHECK(final["test"]["items"] == 1000);
}

TEST_CASE("A rank killed mid-training: the others fail with a clear message instead of hanging",
          "[distributed][faults]") {
  REQUIRE(test::have_fashion_mnist());
  TempDir tmp;
  const std::string run = tmp.str("run");
  auto started = start_long_run(run, tmp.str(), "20");
  auto& launcher = *started;
  const auto ranks = children_of(launcher.pid);
  REQUIRE(ranks.size() == 2);
  kill(ranks.back(), SIGKILL);
  const auto start = std::chrono::steady_clock::now();
  const int code = launcher.wait(60);
  const double seconds = std::chrono::duration<double>(std::chrono::steady_clock::now() - start).count();
  INFO(launcher.error());
  CHECK(code == 1);
  CHECK(seconds < 30);
  CHECK(launcher.error().find("was killed by signal 9") != std::string::npos);
  CHECK(launcher.error().find("another rank has probably died") != std::string::npos);  // the surviving rank
  CHECK(children_of(launcher.pid).empty());
  // The checkpoint is intact: the run evaluates (and would resume).
  auto eval = test::run_zoo("eval " + run + " --limit 200 --json");
  INFO(eval.err);
  CHECK(eval.code == 0);
}

TEST_CASE("Distributed set-up errors: port in use, rank out of range, disagreeing world sizes, missing ranks",
          "[distributed][faults]") {
  REQUIRE(test::have_fashion_mnist());
  TempDir tmp;
  const std::vector<std::string> train{"train", "mlp",           "--limit",        "200", "--epochs",
                                       "1",     "--no-progress", "--dist-timeout", "5"};
  auto with_out = [&](const std::string& name) {
    auto args = train;
    args.insert(args.end(), {"--out", tmp.str(name)});
    return args;
  };
  {
    Port busy(/*listening=*/true);
    Child rank0(with_out("busy"), {{"WORLD_SIZE", "2"}, {"RANK", "0"}, {"MASTER_PORT", std::to_string(busy.number)}},
                tmp.str(), "busy");
    CHECK(rank0.wait(30) == 1);
    CHECK(rank0.error().find("the port is probably in use: choose another MASTER_PORT") != std::string::npos);
  }
  {
    Child bad(with_out("range"), {{"WORLD_SIZE", "2"}, {"RANK", "2"}, {"MASTER_PORT", std::to_string(free_port())}},
              tmp.str(), "range");
    CHECK(bad.wait(30) == 1);
    CHECK(bad.error().find("RANK 2 is out of range for WORLD_SIZE 2") != std::string::npos);
  }
  {
    const std::string port = std::to_string(free_port());
    Child rank0(with_out("mismatch"), {{"WORLD_SIZE", "2"}, {"RANK", "0"}, {"MASTER_PORT", port}}, tmp.str(), "m0");
    Child rank1(with_out("mismatch"), {{"WORLD_SIZE", "3"}, {"RANK", "1"}, {"MASTER_PORT", port}}, tmp.str(), "m1");
    CHECK(rank0.wait(30) == 1);
    CHECK(rank1.wait(30) == 1);
    CHECK(rank0.error().find("was started with WORLD_SIZE 3 but rank 0 with 2") != std::string::npos);
    // The rank with the wrong WORLD_SIZE says so too (it once said "Broken pipe").
    CHECK(rank1.error().find("rank 0 was started with WORLD_SIZE 2 but rank 1 with 3") != std::string::npos);
  }
  {
    Child alone(with_out("alone"), {{"WORLD_SIZE", "2"}, {"RANK", "0"}, {"MASTER_PORT", std::to_string(free_port())}},
                tmp.str(), "alone");
    CHECK(alone.wait(30) == 1);
    CHECK(alone.error().find("only 1 of 2 ranks joined") != std::string::npos);
  }
  auto bad_env =
      test::run_command("WORLD_SIZE=two " + std::string(ZOO_BIN) + " train mlp --limit 100 --out " + tmp.str("env"));
  CHECK(bad_env.code == 1);
  CHECK(bad_env.err.find("WORLD_SIZE must be a whole number") != std::string::npos);
}

TEST_CASE("Ctrl-C during a --nproc run: every rank stops at the same step, the run resumes with two ranks",
          "[distributed][faults]") {
  REQUIRE(test::have_fashion_mnist());
  TempDir tmp;
  const std::string run = tmp.str("run");
  Child launcher({"train", "mlp", "--nproc", "2", "--epochs", "2", "--limit", "20000", "--batch-size", "10",
                  "--no-progress", "--out", run},
                 {}, tmp.str(), "launcher");
  REQUIRE(wait_for_file(fs::path(run) / "state.json", 120));
  std::this_thread::sleep_for(std::chrono::milliseconds(800));
  kill(launcher.pid, SIGINT);  // as a terminal's Ctrl-C reaches the launcher
  const int code = launcher.wait(60);
  INFO(launcher.error());
  CHECK(code == 130);
  CHECK(launcher.error().find("checkpoint saved in " + run) != std::string::npos);  // rank 0 says so
  const auto state = training::read_json_file(run + "/state.json");
  CHECK(state["epoch"] == 0);
  CHECK(state["epoch_step"].get<int64_t>() > 0);  // stopped mid-epoch, both ranks at the same step
  CHECK(state["world_size"] == 2);
  // Mid-epoch, only the same number of ranks may continue; with two it finishes.
  auto one = test::run_zoo("train --resume " + run + " --no-progress");
  CHECK(one.code == 1);
  CHECK(one.err.find("resume it with --nproc 2") != std::string::npos);
  auto two = test::run_zoo("train --resume " + run + " --nproc 2 --no-progress");
  INFO(two.err);
  CHECK(two.code == 0);
  CHECK(training::read_json_file(run + "/state.json")["epoch"] == 2);
}

namespace {
/// The child of `parent` that runs as rank `rank` (its RANK in /proc/PID/environ), or 0.
pid_t rank_process(pid_t parent, int rank) {
  for (const pid_t pid : children_of(parent)) {
    std::istringstream environ(test::read_text("/proc/" + std::to_string(pid) + "/environ"));
    for (std::string entry; std::getline(environ, entry, '\0');)
      if (entry == "RANK=" + std::to_string(rank)) return pid;
  }
  return 0;
}
bool same_weight_files(const std::string& a, const std::string& b) {
  auto ta = training::read_tensors(a), tb = training::read_tensors(b);
  if (ta.size() != tb.size()) return false;
  for (const auto& [k, v] : ta)
    if (!tb.count(k) || !torch::equal(v, tb[k])) return false;
  return true;
}
bool periodic_checkpoint_exists(const std::string& run) {
  try {
    return training::read_json_file(run + "/state.json").value("epoch_step", int64_t{0}) > 0;
  } catch (const std::exception&) {
    return false;  // between the commit's moves
  }
}
}  // namespace

TEST_CASE(
    "Restarts (--max-restarts): a rank killed between periodic checkpoints, all ranks restarted, weights as unkilled",
    "[distributed][faults][checkpoint]") {
  REQUIRE(test::have_fashion_mnist());
  TempDir tmp;
  const std::vector<std::string> common{"train",
                                        "mlp",
                                        "--nproc",
                                        "2",
                                        "--epochs",
                                        "2",
                                        "--limit",
                                        "20000",
                                        "--batch-size",
                                        "20",
                                        "--threads",
                                        "1",
                                        "--seed",
                                        "3",
                                        "--no-progress",
                                        "--dist-timeout",
                                        "20"};
  auto straight_args = common;
  straight_args.insert(straight_args.end(), {"--out", tmp.str("straight")});
  Child straight(straight_args, {}, tmp.str(), "straight");
  REQUIRE(straight.wait(300) == 0);

  const std::string run = tmp.str("run");
  auto args = common;
  args.insert(args.end(), {"--checkpoint-every", "40", "--max-restarts", "1", "--out", run});
  Child launcher(args, {}, tmp.str(), "launcher");
  const auto end = std::chrono::steady_clock::now() + std::chrono::seconds(120);
  while (!periodic_checkpoint_exists(run) && std::chrono::steady_clock::now() < end)
    std::this_thread::sleep_for(std::chrono::milliseconds(10));
  REQUIRE(periodic_checkpoint_exists(run));
  std::this_thread::sleep_for(std::chrono::milliseconds(150));  // between two periodic checkpoints
  const pid_t rank1 = rank_process(launcher.pid, 1);
  REQUIRE(rank1 > 0);
  kill(rank1, SIGKILL);
  const int code = launcher.wait(300);
  INFO(launcher.error());
  REQUIRE(code == 0);
  CHECK(launcher.error().find("zoo: rank 1 of 2 was killed by signal 9 (Killed); restarting all 2 ranks from the "
                              "checkpoint at step ") != std::string::npos);
  CHECK(launcher.error().find("(restart 1 of 1)") != std::string::npos);
  CHECK(same_weight_files(tmp.str("straight/model.pt"), run + "/model.pt"));
  const auto a = test::read_text(tmp.path() / "straight" / "metrics.jsonl");
  const auto b = test::read_text(fs::path(run) / "metrics.jsonl");
  REQUIRE(test::count_lines(b) == 2);
  std::istringstream la(a), lb(b);
  for (std::string x, y; std::getline(la, x) && std::getline(lb, y);) {
    auto ja = nlohmann::json::parse(x), jb = nlohmann::json::parse(y);
    CHECK(ja["train"]["loss"].get<double>() == Approx(jb["train"]["loss"].get<double>()).epsilon(1e-12));
    CHECK(ja["val"] == jb["val"]);
  }
}

TEST_CASE(
    "Restarts (--max-restarts): the same failure twice before any checkpoint ends the job, without --nproc refused",
    "[distributed][faults]") {
  REQUIRE(test::have_fashion_mnist());
  TempDir tmp;
  // Each rank fails when it loads the data: restarted once from the start, then the same failure ends the job.
  Child launcher({"train", "mlp", "--nproc", "2", "--max-restarts", "3", "--data-dir", tmp.str("nowhere"),
                  "--no-progress", "--dist-timeout", "10", "--out", tmp.str("run")},
                 {}, tmp.str(), "launcher");
  const int code = launcher.wait(120);
  INFO(launcher.error());
  CHECK(code == 1);
  CHECK(launcher.error().find("restarting all 2 ranks from the start (restart 1 of 3)") != std::string::npos);
  CHECK(launcher.error().find("(restart 2 of 3)") == std::string::npos);
  CHECK(launcher.error().find("the same failure twice in a row") != std::string::npos);
  const auto r = test::run_zoo("train mlp --max-restarts 2 --out " + tmp.str("x"));
  INFO(r.err);
  CHECK(r.code == 1);
  CHECK(r.err.find("--max-restarts restarts the ranks of a --nproc run") != std::string::npos);
  CHECK(test::count_lines(r.err) == 1);
}

namespace {
/// Two network namespaces joined by a veth pair, each a "host" with an address of its own in 192.0.2.0/24
/// (TEST-NET-1: documentation addresses, routed nowhere; they exist only inside these namespaces).
struct TwoHosts {
  std::string ns[2], dev[2];
  std::string addr[2] = {"192.0.2.1", "192.0.2.2"};
  bool ok = false;
  std::string why;
  TwoHosts() {
    const auto id = std::to_string(getpid() % 100000);
    ns[0] = "zoo-a-" + id;
    ns[1] = "zoo-b-" + id;
    dev[0] = "zva" + id;
    dev[1] = "zvb" + id;
    const std::vector<std::string> steps = {"ip netns add " + ns[0],
                                            "ip netns add " + ns[1],
                                            "ip link add " + dev[0] + " type veth peer name " + dev[1],
                                            "ip link set " + dev[0] + " netns " + ns[0],
                                            "ip link set " + dev[1] + " netns " + ns[1],
                                            "ip -n " + ns[0] + " addr add " + addr[0] + "/24 dev " + dev[0],
                                            "ip -n " + ns[1] + " addr add " + addr[1] + "/24 dev " + dev[1],
                                            "ip -n " + ns[0] + " link set lo up",
                                            "ip -n " + ns[1] + " link set lo up",
                                            "ip -n " + ns[0] + " link set " + dev[0] + " up",
                                            "ip -n " + ns[1] + " link set " + dev[1] + " up"};
    for (const auto& step : steps) {
      const auto r = test::run_command(step);
      if (r.code != 0) {
        why = step + ": " + r.err;
        return;
      }
    }
    ok = true;
  }
  ~TwoHosts() {
    for (const auto& n : ns) test::run_command("ip netns del " + n);  // the veth pair goes with them
  }
  /// `zoo train` as host `node` of 2 (1 rank each), its rendezvous on host 0.
  std::unique_ptr<Child> start(int node, std::vector<std::string> args, const std::string& dir,
                               const std::string& name) const {
    args.insert(args.end(), {"--nnodes", "2", "--node-rank", std::to_string(node), "--nproc", "1", "--master-addr",
                             addr[0], "--master-port", "29500"});
    return std::make_unique<Child>(args,
                                   std::vector<std::pair<std::string, std::string>>{{"GLOO_SOCKET_IFNAME", dev[node]}},
                                   dir, name, std::vector<std::string>{"/usr/sbin/ip", "netns", "exec", ns[node]});
  }
};
}  // namespace

TEST_CASE(
    "Two hosts in network namespaces: 2 hosts x 1 rank equal 1 host x 2 ranks bit for bit, a cut link fails both "
    "within --dist-timeout naming the peer, and the run resumes",
    "[distributed][multinode]") {
  REQUIRE(test::have_fashion_mnist());
  TwoHosts hosts;
  if (!hosts.ok) {
    WARN("skipped: cannot create network namespaces here (needs root and CAP_SYS_ADMIN): " << hosts.why);
    return;
  }
  TempDir tmp;
  const std::vector<std::string> common{
      "train", "mlp",    "--limit", "2000",          "--epochs",       "2", "--batch-size", "50", "--threads",
      "1",     "--seed", "3",       "--no-progress", "--dist-timeout", "20"};
  auto with_out = [&](std::vector<std::string> args, const std::string& out) {
    args.insert(args.end(), {"--out", out});
    return args;
  };
  auto one_host = with_out(common, tmp.str("one"));
  one_host.insert(one_host.end(), {"--nproc", "2"});
  Child reference(one_host, {}, tmp.str(), "one");
  REQUIRE(reference.wait(300) == 0);
  {
    const std::string run = tmp.str("two");
    auto node0 = hosts.start(0, with_out(common, run), tmp.str(), "node0");
    auto node1 = hosts.start(1, with_out(common, run), tmp.str(), "node1");
    const int code1 = node1->wait(300), code0 = node0->wait(300);
    INFO(node0->error() << node1->error());
    REQUIRE(code0 == 0);
    REQUIRE(code1 == 0);
    CHECK(training::read_json_file(run + "/state.json")["world_size"] == 2);
    CHECK(same_weight_files(tmp.str("one/model.pt"), run + "/model.pt"));
    CHECK(test::read_text(fs::path(run) / "metrics.jsonl").size() > 0);
  }
  {  // A long run; the link is cut mid-epoch: both hosts fail within the timeout, each naming the other.
    const std::string run = tmp.str("cut");
    auto args = common;
    args[3] = "20000";  // --limit
    args[5] = "1";      // --epochs
    args[7] = "10";     // --batch-size
    args[14] = "8";     // --dist-timeout
    args = with_out(args, run);
    args.insert(args.end(), {"--checkpoint-every", "100"});
    auto node0 = hosts.start(0, args, tmp.str(), "cut0");
    auto node1 = hosts.start(1, args, tmp.str(), "cut1");
    const auto end = std::chrono::steady_clock::now() + std::chrono::seconds(120);
    while (!periodic_checkpoint_exists(run) && std::chrono::steady_clock::now() < end)
      std::this_thread::sleep_for(std::chrono::milliseconds(20));
    REQUIRE(periodic_checkpoint_exists(run));
    REQUIRE(test::run_command("ip -n " + hosts.ns[0] + " link set " + hosts.dev[0] + " down").code == 0);
    const auto cut = std::chrono::steady_clock::now();
    const int code0 = node0->wait(60), code1 = node1->wait(60);
    const double seconds = std::chrono::duration<double>(std::chrono::steady_clock::now() - cut).count();
    INFO(node0->error() << node1->error());
    CHECK(code0 == 1);
    CHECK(code1 == 1);
    CHECK(seconds < 8 + 4);  // --dist-timeout 8, plus the step in flight
    CHECK(node0->error().find("rank 1 on " + hosts.addr[1]) != std::string::npos);
    CHECK(node1->error().find("rank 0 on " + hosts.addr[0]) != std::string::npos);
    REQUIRE(test::run_command("ip -n " + hosts.ns[0] + " link set " + hosts.dev[0] + " up").code == 0);
    const int64_t step = training::read_json_file(run + "/state.json")["step"].get<int64_t>();
    CHECK(step > 0);
    const std::vector<std::string> resume{"train", "--resume", run, "--no-progress", "--dist-timeout", "20"};
    auto again0 = hosts.start(0, resume, tmp.str(), "again0");
    auto again1 = hosts.start(1, resume, tmp.str(), "again1");
    const int r1 = again1->wait(300), r0 = again0->wait(300);
    INFO(again0->error() << again1->error());
    CHECK(r0 == 0);
    CHECK(r1 == 0);
    CHECK(training::read_json_file(run + "/state.json")["epoch"] == 1);
  }
}

TEST_CASE("Launcher flags for several hosts, absurd world sizes and unresolvable masters are one line each",
          "[distributed][faults]") {
  TempDir tmp;
  const std::string train = "train mlp --limit 200 --epochs 1 --no-progress --out " + tmp.str("run") + " ";
  const std::vector<std::pair<std::string, std::string>> cases = {
      {"--nnodes 2 --node-rank 2 --master-addr 127.0.0.1 --master-port 29500",
       "--node-rank 2 is out of range for --nnodes 2 (nodes are 0..1)"},
      {"--nnodes 2 --node-rank 1 --master-port 29500", "--nnodes 2 needs --node-rank R"},
      {"--node-rank 1", "--node-rank 1 is out of range for --nnodes 1"},
      {"--master-addr 127.0.0.1", "--master-addr and --master-port belong to a launcher"},
      {"--nnodes 2 --node-rank 0 --master-addr 127.0.0.1 --master-port 29500 --max-restarts 1",
       "--max-restarts restarts the ranks of one host"},
      {"--nproc 2 --master-addr nosuch.invalid", "--master-addr nosuch.invalid does not resolve"},
      {"--nnodes 0", "--nnodes"}};
  for (const auto& [flags, message] : cases) {
    const auto r = test::run_zoo(train + flags);
    INFO(flags << "\n" << r.err);
    CHECK((r.code == 1 || r.code == 2));  // 2: a value the flag parser refuses
    CHECK(test::count_lines(r.err) == 1);
    CHECK(r.err.find(message) != std::string::npos);
  }
  const auto no_out = test::run_zoo("train mlp --nnodes 2 --node-rank 0 --master-addr 127.0.0.1 --master-port 29500");
  CHECK(no_out.err.find("--nnodes 2 needs --out RUN") != std::string::npos);
  if (test::have_fashion_mnist()) {  // two launchers that disagree on --nnodes: each host's rank says so at once
    const std::string port = std::to_string(free_port());
    auto host = [&](const std::string& nnodes, const std::string& node) {
      return std::vector<std::string>{
          "train",       "mlp",   "--limit",       "200",       "--no-progress", "--nnodes", nnodes,
          "--node-rank", node,    "--master-addr", "127.0.0.1", "--master-port", port,       "--dist-timeout",
          "10",          "--out", tmp.str("nodes")};
    };
    Child node0(host("2", "0"), {}, tmp.str(), "n0");
    Child node1(host("3", "1"), {}, tmp.str(), "n1");
    const int c0 = node0.wait(60), c1 = node1.wait(60);
    INFO(node0.error() << node1.error());
    CHECK(c0 == 1);
    CHECK(c1 == 1);
    CHECK(node1.error().find("rank 0 was started with WORLD_SIZE 2 but rank 1 with 3; start every rank with the same "
                             "WORLD_SIZE (hosts x ranks per host: the same --nnodes and --nproc everywhere)") !=
          std::string::npos);
  }
  // An absurd WORLD_SIZE is refused at once, before the rendezvous (it once grew rank 0 to 5.4 GB).
  const auto start = std::chrono::steady_clock::now();
  const auto huge = test::run_command("WORLD_SIZE=1000000000 RANK=0 MASTER_PORT=" + std::to_string(free_port()) + " " +
                                      ZOO_BIN + " " + train + "--dist-timeout 8");
  CHECK(std::chrono::steady_clock::now() - start < std::chrono::seconds(8));
  CHECK(huge.code == 1);
  CHECK(huge.err.find("WORLD_SIZE 1000000000 is more than the 4096 ranks") != std::string::npos);
  const auto unresolved =
      test::run_command("WORLD_SIZE=2 RANK=1 MASTER_ADDR=nosuch.invalid " + std::string(ZOO_BIN) + " " + train);
  CHECK(unresolved.code == 1);
  CHECK(unresolved.err.find("MASTER_ADDR nosuch.invalid does not resolve") != std::string::npos);
}

TEST_CASE("A stopped rank (SIGSTOP) ends the job within --dist-timeout, named by the launcher",
          "[distributed][faults]") {
  REQUIRE(test::have_fashion_mnist());
  TempDir tmp;
  const std::string run = tmp.str("run");
  auto started = start_long_run(run, tmp.str(), "8");
  auto& launcher = *started;
  const pid_t rank1 = rank_process(launcher.pid, 1);
  REQUIRE(rank1 > 0);
  kill(rank1, SIGSTOP);
  const auto start = std::chrono::steady_clock::now();
  const int code = launcher.wait(60);
  const double seconds = std::chrono::duration<double>(std::chrono::steady_clock::now() - start).count();
  INFO(launcher.error());
  CHECK(code == 1);
  CHECK(seconds < 8 + 4);  // once the timeout (it was twice), plus the step in flight
  CHECK(launcher.error().find("rank 1 of 2 was stopped (SIGSTOP or a debugger) and did not answer within "
                              "--dist-timeout 8 s") != std::string::npos);
  CHECK(launcher.error().find("continue with --resume " + run) != std::string::npos);
  CHECK(children_of(launcher.pid).empty());
}

TEST_CASE("A launcher whose ranks fail before any checkpoint does not advise --resume", "[distributed][faults]") {
  REQUIRE(test::have_fashion_mnist());
  TempDir tmp;
  Port busy(/*listening=*/true);
  const auto r =
      test::run_command("MASTER_PORT=" + std::to_string(busy.number) + " " + ZOO_BIN +
                        " train mlp --nproc 2 --limit 200 --no-progress --dist-timeout 5 --out " + tmp.str("run"));
  INFO(r.err);
  CHECK(r.code == 1);
  CHECK(r.err.find("the port is probably in use") != std::string::npos);
  CHECK(r.err.find("no checkpoint was written") != std::string::npos);
  CHECK(r.err.find("--resume") == std::string::npos);
}

TEST_CASE("Resuming ranks read the checkpoint rank 0 names, and only rank 0 writes the run directory",
          "[distributed][faults]") {
  REQUIRE(test::have_fashion_mnist());
  TempDir tmp;
  const std::string run = tmp.str("run"), stale = tmp.str("stale");
  REQUIRE(test::run_zoo("train mlp --limit 400 --epochs 1 --threads 1 --no-progress --out " + run).code == 0);
  fs::copy(run, stale, fs::copy_options::recursive);
  REQUIRE(test::run_zoo("train --resume " + run + " --epochs 2 --no-progress").code == 0);
  {  // rank 1 reads another copy of the run (a host whose copy is stale): every rank stops, each says why
    const std::string port = std::to_string(free_port());
    Child rank0({"train", "--resume", run, "--epochs", "3", "--no-progress", "--dist-timeout", "20"},
                {{"WORLD_SIZE", "2"}, {"RANK", "0"}, {"MASTER_PORT", port}}, tmp.str(), "r0");
    Child rank1({"train", "--resume", stale, "--epochs", "3", "--no-progress", "--dist-timeout", "20"},
                {{"WORLD_SIZE", "2"}, {"RANK", "1"}, {"MASTER_PORT", port}}, tmp.str(), "r1");
    const int c0 = rank0.wait(60), c1 = rank1.wait(60);
    INFO(rank0.error() << rank1.error());
    CHECK(c0 == 1);
    CHECK(c1 == 1);
    const int64_t step1 = training::read_json_file(stale + "/state.json")["step"],
                  step0 = training::read_json_file(run + "/state.json")["step"];
    CHECK(rank1.error().find(fmt::format("rank 1 reads the checkpoint at step {} (epoch 1) in {}, but rank 0 resumes "
                                         "from step {} (epoch 2)",
                                         step1, stale, step0)) != std::string::npos);
    CHECK(rank0.error().find("1 of 2 ranks read another checkpoint than rank 0") != std::string::npos);
    CHECK(training::read_json_file(run + "/state.json")["epoch"] == 2);
  }
  // Rank 1 runs as a user to whom the run directory is read-only (root ignores permissions: 'nobody' then): it
  // resumes and trains beside rank 0, so it never writes there.
  const bool root = geteuid() == 0;
  for (const auto& entry : fs::recursive_directory_iterator(tmp.path()))
    fs::permissions(entry.path(), fs::perms::others_read | fs::perms::others_exec, fs::perm_options::add);
  fs::permissions(tmp.path(), fs::perms::others_read | fs::perms::others_exec, fs::perm_options::add);
  const std::string port = std::to_string(free_port());
  Child rank0({"train", "--resume", run, "--epochs", "3", "--threads", "1", "--no-progress", "--dist-timeout", "30"},
              {{"WORLD_SIZE", "2"}, {"RANK", "0"}, {"MASTER_PORT", port}}, tmp.str(), "w0");
  std::vector<std::string> prefix;
  if (root) prefix = {"/usr/bin/setpriv", "--reuid=65534", "--regid=65534", "--clear-groups"};
  Child rank1({"train", "--resume", run, "--epochs", "3", "--threads", "1", "--no-progress", "--dist-timeout", "30"},
              {{"WORLD_SIZE", "2"}, {"RANK", "1"}, {"MASTER_PORT", port}}, tmp.str(), "w1", prefix);
  const int c0 = rank0.wait(120), c1 = rank1.wait(120);
  INFO(rank0.error() << rank1.error());
  CHECK(c0 == 0);
  CHECK(c1 == 0);
  CHECK(training::read_json_file(run + "/state.json")["epoch"] == 3);
}
