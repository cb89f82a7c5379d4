// Data-parallel training on torch.distributed's C++ core, c10d: a TCPStore for the rendezvous and
// ProcessGroupGloo for the collectives (LibTorch has no DistributedDataParallel in C++; this is its job here).
//
//   rank 0 broadcasts parameters and buffers -> every rank trains on its shard of each epoch (datasets::epoch_order
//   with rank/world) -> after backward, gradients are averaged over ranks in buckets of at most bucket_mb (one
//   flat all-reduce per bucket, as DDP's bucket_cap_mb) and rank 0's buffers are broadcast -> every rank takes the
//   same optimizer step, so all ranks hold bit-identical weights; evaluation sums are all-reduced; a stop request
//   on any rank stops every rank at the same step; only rank 0 writes files.
//
// With per-rank batch b and W ranks this computes the same steps as one process with batch W*b on the same sample
// order, for models whose loss is a mean over the batch and that have no batch statistics (BatchNorm sees b items
// per rank) or per-rank randomness.
#pragma once

#include "training/trainer.h"

#include <torch/torch.h>

#include <chrono>
#include <memory>
#include <optional>
#include <string>
#include <vector>

namespace zoo::training {

/// The most ranks one run may have: each joins the rendezvous served by rank 0 and waits for every other one, so
/// an absurd WORLD_SIZE (1,000,000,000 once grew rank 0 to 5.4 GB) is refused at once.
constexpr int64_t max_world_size = 4096;

struct DistributedOptions {
  int64_t rank = 0;
  int64_t world_size = 1;
  int64_t local_rank = 0;
  std::string master_addr = "127.0.0.1";
  int64_t master_port = 29500;
  /// Seconds to wait for the other ranks: at the rendezvous and in every collective.
  double timeout_s = 60;
  /// Gradient bucket size in MiB.
  double bucket_mb = 25;
  /// gloo (CPU and CUDA tensors), or nccl (CUDA; only in a LibTorch built with NCCL, where --device cuda picks it).
  std::string backend = "gloo";
};

/// torchrun's environment: RANK, WORLD_SIZE, LOCAL_RANK (default RANK), MASTER_ADDR (default 127.0.0.1),
/// MASTER_PORT (default 29500). Empty when WORLD_SIZE is not set. Malformed values are errors.
std::optional<DistributedOptions> distributed_options_from_env();

/// A port number from text ("29500"): a whole number 1..65535, else an error naming `what` (e.g. "MASTER_PORT").
int64_t parse_port(const std::string& text, const std::string& what);
/// Checks that `host` resolves to an address (getaddrinfo); else "WHAT HOST does not resolve (REASON)".
void check_resolves(const std::string& host, const std::string& what);

/// A TCP port on 127.0.0.1 that is free now (the kernel's choice), e.g. for MASTER_PORT of a local run.
int64_t free_loopback_port();

/// Whether this LibTorch was built with NCCL (then data-parallel runs on CUDA use it).
bool nccl_available();

/// One process's membership in the group. Construction is the rendezvous; it fails with one clear line for a
/// port in use, a rank out of range, ranks that disagree on the world size, and ranks that do not all arrive
/// within the timeout. A collective that fails (a rank died) throws std::runtime_error naming the rank.
class ProcessGroup {
 public:
  explicit ProcessGroup(const DistributedOptions& options);
  ~ProcessGroup();
  ProcessGroup(const ProcessGroup&) = delete;
  ProcessGroup& operator=(const ProcessGroup&) = delete;

  int64_t rank() const { return options_.rank; }
  int64_t world_size() const { return options_.world_size; }
  const DistributedOptions& options() const { return options_; }

  /// Sums `t` over ranks, in place.
  void all_reduce_sum(torch::Tensor& t);
  /// Copies rank 0's `t` into every rank's, in place.
  void broadcast(torch::Tensor& t);
  /// Rank 0's parameters and buffers to every rank.
  void broadcast_module(torch::nn::Module& module);
  /// Rank 0's buffers (e.g. batch-norm statistics) to every rank.
  void broadcast_buffers(torch::nn::Module& module);
  /// Replaces every gradient by its mean over ranks, bucketed. A parameter without a gradient on some rank (a
  /// layer it did not use, e.g. an unselected expert) counts as zero there, so every rank sends the same layout.
  /// Returns the number of buckets.
  int64_t average_gradients(torch::nn::Module& module);
  /// Waits until every rank got here.
  void barrier();

 private:
  struct Impl;  // the c10d store and process group, kept out of this header
  template <typename F>
  void guarded(const char* what, F&& f);
  /// "the others: rank 1 on HOST, ..." for messages.
  std::string peers() const;
  DistributedOptions options_;
  std::vector<std::string> hosts_;  ///< where each rank runs (its GLOO_SOCKET_IFNAME address, or host name)
  std::unique_ptr<Impl> impl_;
};

/// Makes a trainer data-parallel over `group`: sharded epochs, reduced evaluation, averaged gradients and
/// broadcast buffers after every backward, agreed stops, files from rank 0 only. Broadcasts rank 0's parameters
/// and buffers first.
void attach_distributed(Trainer& trainer, const std::shared_ptr<ProcessGroup>& group);

}  // namespace zoo::training
