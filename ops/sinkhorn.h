// Sinkhorn-Knopp in log space (Sinkhorn & Knopp 1967; as mHC, arXiv 2512.24880, projects its residual mixing onto
// the doubly stochastic matrices): `iterations` rounds of
//     L -= logsumexp over columns;  L -= logsumexp over rows;   result exp(L)
// The fused CPU kernel runs every matrix's iterations in double in one pass, and its backward recomputes them
// (memory independent of the number of iterations); the plain path is the same loop in tensor operations,
// recorded by autograd, and is what the kernel is tested against. For finite logits spread by at most 64 (largest
// minus smallest, per matrix) the kernel iterates on P = exp(L - max L) instead, dividing each line by its sum:
// exp(L - logsumexp L) = exp(L) / sum exp(L), the same iterates without an exponential or a logarithm per step
// (the log-scalings stay within the logits' spread, so no entry comes near double's underflow); wider or infinite
// logits keep log space.
#pragma once

#include <torch/torch.h>

namespace zoo::ops {

/// logits: [..., n, n]. Rows of the result sum to 1 (to rounding), columns converge geometrically. On CPU
/// (float, double) and not tracing, the fused kernel; elsewhere, or with `fused` false, the plain path.
torch::Tensor sinkhorn_knopp(const torch::Tensor& logits, int64_t iterations = 20, bool fused = true);

/// While one lives, the fused kernel started from this thread runs every matrix in log space (the linear path's
/// reference in tests).
class SinkhornLogSpaceOnly {
 public:
  SinkhornLogSpaceOnly() : previous_(on()) { on() = true; }
  ~SinkhornLogSpaceOnly() { on() = previous_; }
  SinkhornLogSpaceOnly(const SinkhornLogSpaceOnly&) = delete;
  SinkhornLogSpaceOnly& operator=(const SinkhornLogSpaceOnly&) = delete;
  static bool& on();

 private:
  bool previous_;
};

}  // namespace zoo::ops
