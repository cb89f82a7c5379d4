#include "training/distributed.h"

#include "training/messages.h"

#include <fmt/format.h>

#include <torch/csrc/distributed/c10d/PrefixStore.hpp>
#include <torch/csrc/distributed/c10d/ProcessGroupGloo.hpp>
#include <torch/csrc/distributed/c10d/TCPStore.hpp>
#ifdef USE_C10D_NCCL
#include <torch/csrc/distributed/c10d/ProcessGroupNCCL.hpp>
#endif

#include <arpa/inet.h>
#include <ifaddrs.h>
#include <netdb.h>
#include <netinet/in.h>
#include <sys/resource.h>
#include <sys/socket.h>
#include <unistd.h>

#include <cerrno>
#include <cstdlib>
#include <cstring>
#include <stdexcept>
#include <string>
#include <vector>

namespace zoo::training {

namespace {

std::string error_text(const std::exception& e) {
  if (const auto* c10_error = dynamic_cast<const c10::Error*>(&e))
    return first_line(c10_error->what_without_backtrace());
  return first_line(e.what());
}

int64_t env_int(const char* name, int64_t fallback) {
  const char* text = std::getenv(name);
  if (!text || !*text) return fallback;
  char* end = nullptr;
  const long long value = std::strtoll(text, &end, 10);
  if (*end != '\0' || value < 0)
    throw std::invalid_argument(std::string("environment variable ") + name + " must be a whole number >= 0, got '" +
                                text + "'");
  return value;
}

/// Where this process runs, as its peers should read it: the IPv4 address of GLOO_SOCKET_IFNAME when that is set
/// (hosts in network namespaces share a host name), else the host name.
std::string this_host() {
  if (const char* ifname = std::getenv("GLOO_SOCKET_IFNAME"); ifname && *ifname) {
    ifaddrs* list = nullptr;
    std::string found;
    if (getifaddrs(&list) == 0) {
      for (ifaddrs* a = list; a && found.empty(); a = a->ifa_next)
        if (a->ifa_addr && a->ifa_addr->sa_family == AF_INET && std::strcmp(a->ifa_name, ifname) == 0) {
          char text[INET_ADDRSTRLEN] = {};
          inet_ntop(AF_INET, &reinterpret_cast<sockaddr_in*>(a->ifa_addr)->sin_addr, text, sizeof text);
          found = text;
        }
      freeifaddrs(list);
    }
    if (!found.empty()) return found;
  }
  char name[256] = {};
  gethostname(name, sizeof name - 1);
  return name;
}

std::chrono::milliseconds millis(double seconds) {
  return std::chrono::milliseconds(static_cast<int64_t>(seconds * 1000));
}

}  // namespace

std::optional<DistributedOptions> distributed_options_from_env() {
  const char* world = std::getenv("WORLD_SIZE");
  if (!world || !*world) return std::nullopt;
  DistributedOptions o;
  o.world_size = env_int("WORLD_SIZE", 1);
  o.rank = env_int("RANK", 0);
  o.local_rank = env_int("LOCAL_RANK", o.rank);
  if (const char* addr = std::getenv("MASTER_ADDR"); addr && *addr) o.master_addr = addr;
  if (const char* port = std::getenv("MASTER_PORT"); port && *port) o.master_port = parse_port(port, "MASTER_PORT");
  return o;
}

int64_t parse_port(const std::string& text, const std::string& what) {
  char* end = nullptr;
  errno = 0;
  const long long value = std::strtoll(text.c_str(), &end, 10);
  if (text.empty() || *end != '\0' || errno == ERANGE || value < 1 || value > 65535)
    throw std::invalid_argument(what + " must be a port number (1-65535), got '" + text + "'");
  return value;
}

void check_resolves(const std::string& host, const std::string& what) {
  addrinfo hints{};
  hints.ai_socktype = SOCK_STREAM;
  addrinfo* found = nullptr;
  const int code = getaddrinfo(host.c_str(), nullptr, &hints, &found);
  if (found) freeaddrinfo(found);
  if (code != 0)
    throw std::invalid_argument(what + " " + host + " does not resolve (" + gai_strerror(code) +
                                "); give the address or host name of node 0 (the host of rank 0)");
}

int64_t free_loopback_port() {
  const int fd = socket(AF_INET, SOCK_STREAM, 0);
  if (fd < 0) throw std::runtime_error(std::string("cannot open a socket: ") + std::strerror(errno));
  sockaddr_in addr{};
  addr.sin_family = AF_INET;
  addr.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
  socklen_t len = sizeof addr;
  if (bind(fd, reinterpret_cast<sockaddr*>(&addr), sizeof addr) != 0 ||
      getsockname(fd, reinterpret_cast<sockaddr*>(&addr), &len) != 0) {
    close(fd);
    throw std::runtime_error(std::string("cannot find a free port: ") + std::strerror(errno));
  }
  close(fd);
  return ntohs(addr.sin_port);
}

bool nccl_available() {
#ifdef USE_C10D_NCCL
  return true;
#else
  return false;
#endif
}

struct ProcessGroup::Impl {
  c10::intrusive_ptr<c10d::Store> store;
  c10::intrusive_ptr<c10d::ProcessGroupGloo> group;
#ifdef USE_C10D_NCCL
  c10::intrusive_ptr<c10d::ProcessGroupNCCL> nccl;  // backend "nccl": CUDA tensors, on a CUDA build of LibTorch
#endif
  /// Runs a collective on the process group in use; NCCL gets the tensors on its GPU and back.
  template <typename F>
  void run(std::vector<torch::Tensor>& tensors, F&& collective) {
#ifdef USE_C10D_NCCL
    if (nccl) {
      std::vector<torch::Tensor> on_gpu;
      for (auto& t : tensors) on_gpu.push_back(t.is_cuda() ? t : t.to(torch::kCUDA));
      collective(*nccl, on_gpu)->wait();
      for (size_t i = 0; i < tensors.size(); ++i)
        if (!tensors[i].is_cuda()) tensors[i].copy_(on_gpu[i]);
      return;
    }
#endif
    collective(*group, tensors)->wait();
  }
};

ProcessGroup::ProcessGroup(const DistributedOptions& options) : options_(options), impl_(std::make_unique<Impl>()) {
  const auto& o = options_;
  if (o.world_size < 1) throw std::invalid_argument("WORLD_SIZE must be >= 1, got " + std::to_string(o.world_size));
  if (o.rank < 0 || o.rank >= o.world_size)
    throw std::invalid_argument("RANK " + std::to_string(o.rank) + " is out of range for WORLD_SIZE " +
                                std::to_string(o.world_size) + " (ranks are 0.." + std::to_string(o.world_size - 1) +
                                ")");
  if (o.world_size > max_world_size)
    throw std::invalid_argument("WORLD_SIZE " + std::to_string(o.world_size) + " is more than the " +
                                std::to_string(max_world_size) +
                                " ranks zoo's rendezvous serves; start fewer ranks (WORLD_SIZE = hosts x ranks per "
                                "host)");
  if (o.rank == 0) {  // rank 0 serves the rendezvous: one connection (a file descriptor) per rank
    rlimit files{};
    if (getrlimit(RLIMIT_NOFILE, &files) == 0 && files.rlim_cur != RLIM_INFINITY &&
        static_cast<int64_t>(files.rlim_cur) < o.world_size + 64)
      throw std::invalid_argument("rank 0 may open " + std::to_string(files.rlim_cur) +
                                  " files (ulimit -n), too few to serve WORLD_SIZE " + std::to_string(o.world_size) +
                                  " ranks; raise it (ulimit -n " + std::to_string(o.world_size + 64) +
                                  ") or start fewer ranks");
  }
  if (!(o.timeout_s > 0)) throw std::invalid_argument("the distributed timeout must be > 0 seconds");
  check_resolves(o.master_addr, "MASTER_ADDR");
  const std::string where = o.master_addr + ":" + std::to_string(o.master_port);
  c10d::TCPStoreOptions store_options;
  store_options.port = static_cast<std::uint16_t>(o.master_port);
  store_options.isServer = o.rank == 0;
  store_options.waitWorkers = false;  // the handshake below waits, with a message that says who is missing
  store_options.timeout = millis(o.timeout_s);
  try {
    impl_->store = c10::make_intrusive<c10d::TCPStore>(o.master_addr, store_options);
  } catch (const std::exception& e) {
    const std::string why = error_text(e);
    if (o.rank == 0)
      throw std::runtime_error("rank 0 cannot listen on " + where + " (" + why +
                               "); the port is probably in use: choose another MASTER_PORT");
    throw std::runtime_error("rank " + std::to_string(o.rank) + " could not reach rank 0 at " + where + " within " +
                             std::to_string(static_cast<int64_t>(o.timeout_s)) + " s (" + why +
                             "); start rank 0, or check MASTER_ADDR/MASTER_PORT");
  }
  // Handshake: every rank says its world size; all must agree, and all must arrive.
  auto& store = *impl_->store;
  try {
    const std::string mine = std::to_string(o.world_size);
    if (store.add("zoo/rank/" + std::to_string(o.rank), 1) > 1)
      throw std::runtime_error("two processes were started as rank " + std::to_string(o.rank) +
                               "; give each its own RANK");
    const std::string host = this_host();
    store.set("zoo/host/" + std::to_string(o.rank), std::vector<uint8_t>(host.begin(), host.end()));
    std::vector<std::string> keys;
    for (int64_t r = 0; r < o.world_size; ++r) keys.push_back("zoo/world/" + std::to_string(r));
    auto world_of = [&](int64_t r) {
      const auto theirs = store.get(keys[static_cast<size_t>(r)]);
      return std::string(theirs.begin(), theirs.end());
    };
    auto check_world = [&](int64_t r, const std::string& value) {
      if (value != mine)
        throw std::runtime_error("rank " + std::to_string(r) + " was started with WORLD_SIZE " + value + " but rank " +
                                 std::to_string(o.rank) + " with " + mine +
                                 "; start every rank with the same WORLD_SIZE (hosts x ranks per host: the same "
                                 "--nnodes and --nproc everywhere)");
    };
    // Rank 0 is in every run: the others read its WORLD_SIZE before they publish their own, so a wrong one is
    // named at once on both sides (rank 0 stops, closing the store, as soon as it sees another's).
    std::string rank0_world = mine;
    if (o.rank != 0) {
      try {
        store.wait({keys[0]}, millis(o.timeout_s));
      } catch (const std::exception&) {
        throw std::runtime_error("rank 0 did not join at " + where + " within " +
                                 std::to_string(static_cast<int64_t>(o.timeout_s)) + " s; start rank 0");
      }
      rank0_world = world_of(0);
    }
    store.set(keys[static_cast<size_t>(o.rank)], std::vector<uint8_t>(mine.begin(), mine.end()));
    check_world(0, rank0_world);
    try {
      store.wait(keys, millis(o.timeout_s));
    } catch (const std::exception&) {
      int64_t arrived = 0;
      for (const auto& k : keys) arrived += store.check({k}) ? 1 : 0;
      throw std::runtime_error("only " + std::to_string(arrived) + " of " + std::to_string(o.world_size) +
                               " ranks joined at " + where + " within " +
                               std::to_string(static_cast<int64_t>(o.timeout_s)) +
                               " s: start WORLD_SIZE processes, or fix WORLD_SIZE");
    }
    for (int64_t r = 0; r < o.world_size; ++r) {  // where each rank runs, for messages that name a peer
      const auto host = store.get("zoo/host/" + std::to_string(r));
      hosts_.emplace_back(host.begin(), host.end());
    }
    for (int64_t r = 0; r < o.world_size; ++r) check_world(r, world_of(r));
  } catch (const std::runtime_error&) {
    throw;
  } catch (const std::exception& e) {
    throw std::runtime_error(
        "rendezvous at " + where + " failed (" + error_text(e) +
        (o.rank == 0 ? std::string(")") : std::string("): rank 0 has probably stopped; see its message")));
  }
  if (o.backend != "gloo" && o.backend != "nccl")
    throw std::invalid_argument("unknown distributed backend '" + o.backend + "'; valid: gloo, nccl");
  if (o.backend == "nccl") {
#ifdef USE_C10D_NCCL
    try {
      auto nccl_options = c10d::ProcessGroupNCCL::Options::create();
      nccl_options->timeout = millis(o.timeout_s);
      impl_->nccl = c10::make_intrusive<c10d::ProcessGroupNCCL>(
          c10::make_intrusive<c10d::PrefixStore>("zoo/nccl", impl_->store), static_cast<int>(o.rank),
          static_cast<int>(o.world_size), nccl_options);
    } catch (const std::exception& e) {
      throw std::runtime_error("rank " + std::to_string(o.rank) + " could not set up NCCL: " + error_text(e));
    }
    return;
#else
    throw std::invalid_argument(
        "this LibTorch was built without NCCL: use the gloo backend (--device cpu, or "
        "CUDA tensors through Gloo)");
#endif
  }
  try {
    auto gloo_options = c10d::ProcessGroupGloo::Options::create(millis(o.timeout_s));
    // Where this rank listens for its peers, as torch.distributed chooses: GLOO_SOCKET_IFNAME if set; the loopback
    // interface when the master is on this machine's loopback (single-machine runs); else this host's address.
    const char* ifname = std::getenv("GLOO_SOCKET_IFNAME");
    const bool loopback = o.master_addr == "localhost" || o.master_addr.rfind("127.", 0) == 0 || o.master_addr == "::1";
    gloo_options->devices.push_back(ifname && *ifname ? c10d::ProcessGroupGloo::createDeviceForInterface(ifname)
                                    : loopback        ? c10d::ProcessGroupGloo::createDeviceForHostname(o.master_addr)
                                                      : c10d::ProcessGroupGloo::createDefaultDevice());
    impl_->group = c10::make_intrusive<c10d::ProcessGroupGloo>(
        c10::make_intrusive<c10d::PrefixStore>("zoo/gloo", impl_->store), static_cast<int>(o.rank),
        static_cast<int>(o.world_size), gloo_options);
  } catch (const std::exception& e) {
    throw std::runtime_error("rank " + std::to_string(o.rank) +
                             " could not connect to the other ranks: " + error_text(e));
  }
}

ProcessGroup::~ProcessGroup() = default;

std::string ProcessGroup::peers() const {
  std::string text;
  int64_t listed = 0;
  for (int64_t r = 0; r < static_cast<int64_t>(hosts_.size()); ++r) {
    if (r == options_.rank) continue;
    if (++listed > 4) {
      text += fmt::format(" and {} more", static_cast<int64_t>(hosts_.size()) - 1 - 4);
      break;
    }
    text += fmt::format("{}rank {} on {}", listed > 1 ? ", " : "", r, hosts_[static_cast<size_t>(r)]);
  }
  return "the others: " + text;
}

template <typename F>
void ProcessGroup::guarded(const char* what, F&& f) {
  try {
    f();
  } catch (const std::exception& e) {
    throw std::runtime_error(
        "rank " + std::to_string(options_.rank) + " of " + std::to_string(options_.world_size) + ": " + what +
        " failed, another rank has probably died or hangs, or the network between "
        "them is down (" +
        peers() + "; " + error_text(e) + "); the last checkpoint is intact, continue with --resume");
  }
}

void ProcessGroup::all_reduce_sum(torch::Tensor& t) {
  guarded("all-reduce", [&] {
    std::vector<torch::Tensor> tensors{t};
    impl_->run(tensors, [](auto& group, std::vector<torch::Tensor>& ts) { return group.allreduce(ts); });
  });
}

void ProcessGroup::broadcast(torch::Tensor& t) {
  guarded("broadcast", [&] {
    std::vector<torch::Tensor> tensors{t};
    impl_->run(tensors, [](auto& group, std::vector<torch::Tensor>& ts) { return group.broadcast(ts); });
  });
}

void ProcessGroup::barrier() {
  guarded("barrier", [&] {
    // A one-element all-reduce: a barrier that works the same on every backend.
    auto token = torch::zeros({1});
    all_reduce_sum(token);
  });
}

namespace {
/// Flattens `tensors` into one buffer per bucket of at most `bucket_bytes` (in order), runs `reduce` on each
/// buffer, and calls `write_back` with each tensor's reduced slice.
template <typename Reduce, typename WriteBack>
int64_t bucketed(const std::vector<torch::Tensor>& tensors, double bucket_bytes, Reduce reduce, WriteBack write_back) {
  int64_t buckets = 0;
  size_t first = 0;
  while (first < tensors.size()) {
    size_t last = first;
    double bytes = 0;
    while (last < tensors.size() &&
           (last == first || bytes + static_cast<double>(tensors[last].nbytes()) <= bucket_bytes) &&
           tensors[last].scalar_type() == tensors[first].scalar_type()) {
      bytes += static_cast<double>(tensors[last].nbytes());
      ++last;
    }
    std::vector<torch::Tensor> flat;
    for (size_t i = first; i < last; ++i) flat.push_back(tensors[i].reshape({-1}));
    auto buffer = torch::cat(flat);
    reduce(buffer);
    int64_t offset = 0;
    for (size_t i = first; i < last; ++i) {
      const int64_t n = tensors[i].numel();
      write_back(i, buffer.slice(0, offset, offset + n).view(tensors[i].sizes()));
      offset += n;
    }
    first = last;
    ++buckets;
  }
  return buckets;
}
}  // namespace

int64_t ProcessGroup::average_gradients(torch::nn::Module& module) {
  std::vector<torch::Tensor> params, grads;
  for (auto& p : module.parameters()) {
    if (!p.requires_grad()) continue;
    params.push_back(p);
    grads.push_back(p.grad().defined() ? p.grad() : torch::zeros_like(p));
  }
  const double world = static_cast<double>(options_.world_size);
  return bucketed(
      grads, options_.bucket_mb * 1024 * 1024, [&](torch::Tensor& buffer) { all_reduce_sum(buffer); },
      [&](size_t i, const torch::Tensor& reduced) {
        auto& grad = params[i].mutable_grad();
        if (grad.defined())
          grad.copy_(reduced).div_(world);
        else
          grad = reduced.div(world);
      });
}

void ProcessGroup::broadcast_buffers(torch::nn::Module& module) {
  std::vector<torch::Tensor> buffers;
  for (auto& b : module.buffers())
    if (b.defined() && b.numel() > 0) buffers.push_back(b);
  if (buffers.empty()) return;
  torch::NoGradGuard no_grad;
  bucketed(
      buffers, options_.bucket_mb * 1024 * 1024, [&](torch::Tensor& buffer) { broadcast(buffer); },
      [&](size_t i, const torch::Tensor& value) { buffers[i].copy_(value); });
}

void ProcessGroup::broadcast_module(torch::nn::Module& module) {
  torch::NoGradGuard no_grad;
  std::vector<torch::Tensor> params;
  for (auto& p : module.parameters()) params.push_back(p);
  bucketed(
      params, options_.bucket_mb * 1024 * 1024, [&](torch::Tensor& buffer) { broadcast(buffer); },
      [&](size_t i, const torch::Tensor& value) { params[i].copy_(value); });
  broadcast_buffers(module);
}

namespace {
/// Data-parallel SGD: after every backward the gradients are averaged over ranks and rank 0's buffers
/// (batch-norm statistics) are broadcast, so every rank takes the same optimizer step.
class GradientAllReduceCallback : public Callback {
 public:
  explicit GradientAllReduceCallback(std::shared_ptr<ProcessGroup> group) : group_(std::move(group)) {}
  void after_backward(Trainer& trainer) override {
    group_->average_gradients(*trainer.model().ptr());
    group_->broadcast_buffers(*trainer.model().ptr());
  }

 private:
  std::shared_ptr<ProcessGroup> group_;
};
}  // namespace

void attach_distributed(Trainer& trainer, const std::shared_ptr<ProcessGroup>& group) {
  if (!group || group->world_size() == 1) return;
  trainer.set_parallel(group->rank(), group->world_size(), [group](torch::Tensor& t) { group->all_reduce_sum(t); });
  group->broadcast_module(*trainer.model().ptr());
  trainer.add_callback(std::make_shared<GradientAllReduceCallback>(group));
}

}  // namespace zoo::training
