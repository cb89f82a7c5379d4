#include "training/distributed.h"

#include "training/messages.h"

#include <torch/csrc/distributed/c10d/PrefixStore.hpp>
#include <torch/csrc/distributed/c10d/ProcessGroupGloo.hpp>
#include <torch/csrc/distributed/c10d/TCPStore.hpp>
#ifdef USE_C10D_NCCL
#include <torch/csrc/distributed/c10d/ProcessGroupNCCL.hpp>
#endif

#include <arpa/inet.h>
#include <netinet/in.h>
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
  o.master_port = env_int("MASTER_PORT", 29500);
  if (o.master_port < 1 || o.master_port > 65535)
    throw std::invalid_argument("MASTER_PORT must be a port number (1-65535), got " + std::to_string(o.master_port));
  return o;
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
  if (!(o.timeout_s > 0)) throw std::invalid_argument("the distributed timeout must be > 0 seconds");
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
    store.set("zoo/world/" + std::to_string(o.rank), std::vector<uint8_t>(mine.begin(), mine.end()));
    std::vector<std::string> keys;
    for (int64_t r = 0; r < o.world_size; ++r) keys.push_back("zoo/world/" + std::to_string(r));
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
    for (int64_t r = 0; r < o.world_size; ++r) {
      const auto theirs = store.get(keys[static_cast<size_t>(r)]);
      const std::string value(theirs.begin(), theirs.end());
      if (value != mine)
        throw std::runtime_error("rank " + std::to_string(r) + " was started with WORLD_SIZE " + value + " but rank " +
                                 std::to_string(o.rank) + " with " + mine +
                                 "; start every rank with the same WORLD_SIZE");
    }
  } catch (const std::runtime_error&) {
    throw;
  } catch (const std::exception& e) {
    throw std::runtime_error("rendezvous at " + where + " failed: " + error_text(e));
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

template <typename F>
void ProcessGroup::guarded(const char* what, F&& f) {
  try {
    f();
  } catch (const std::exception& e) {
    throw std::runtime_error("rank " + std::to_string(options_.rank) + " of " + std::to_string(options_.world_size) +
                             ": " + what + " failed, another rank has probably died or hangs (" + error_text(e) +
                             "); the last checkpoint is intact, continue with --resume");
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
