// Sinkhorn-Knopp in log space (Sinkhorn & Knopp 1967; as mHC, arXiv 2512.24880, projects its residual mixing onto
// the doubly stochastic matrices): `iterations` rounds of
//     L -= logsumexp over columns;  L -= logsumexp over rows;   result exp(L)
// The fused CPU kernel runs every matrix's iterations in double in one pass, and its backward recomputes them
// (memory independent of the number of iterations); the plain path is the same loop in tensor operations,
// recorded by autograd, and is what the kernel is tested against.
#pragma once

#include <torch/torch.h>

namespace zoo::ops {

/// logits: [..., n, n]. Rows of the result sum to 1 (to rounding), columns converge geometrically. On CPU
/// (float, double) and not tracing, the fused kernel; elsewhere, or with `fused` false, the plain path.
torch::Tensor sinkhorn_knopp(const torch::Tensor& logits, int64_t iterations = 20, bool fused = true);

}  // namespace zoo::ops
