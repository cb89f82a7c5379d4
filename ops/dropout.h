// Dropout (Srivastava et al., "Dropout: A Simple Way to Prevent Neural Networks from Overfitting", JMLR 2014) with
// LibTorch's masks, drawn faster:
//
//   y = x * m / (1 - p),   m_i ~ Bernoulli(1 - p) independently, in training; y = x otherwise.
//
// LibTorch 1.13's CPU dropout draws m with bernoulli_(1 - p): per element one 64-bit word from the default
// generator's mt19937 (two 32-bit outputs, the first as the high half), its low 53 bits scaled to [0, 1) and compared
// with 1 - p, one element at a time under the generator's lock: ~10 ns an element here, 2 ms of the MoE classifier's
// training step ([64, 3136]). zoo draws the same outputs in blocks of 624 (the twist and the tempering eight words at
// a time in AVX2) and compares the 53-bit integers with ceil((1 - p) 2^53), which is the same comparison, so the
// masks and the generator's state after them are LibTorch's bit for bit: a Python twin seeded alike drops the same
// units, and `torch::manual_seed` runs repeat. The mask holds 1 / (1 - p) as LibTorch's div_ computes it, written
// with the draws (no second pass), and the product is LibTorch's, so the output and the gradient are LibTorch's too.
// The plain reference is torch::dropout.
#pragma once

#include <torch/torch.h>

namespace zoo::ops {

/// torch::dropout(x, p, train), the same values, gradients and generator state. zoo's mask generator runs for a
/// CPU tensor of float32, float64 or bfloat16 outside a trace, once a first call has checked (on a generator of its
/// own) that it draws what this LibTorch's bernoulli_ draws (another build, e.g. one whose bernoulli_ uses MKL on
/// an Intel CPU, keeps LibTorch's); otherwise it is torch::dropout. p must be in [0, 1].
torch::Tensor dropout(const torch::Tensor& x, double p, bool train);

namespace detail {
/// Fills `out` (contiguous, CPU, float32, float64 or bfloat16) with 1 (or `one`, a one-element tensor of out's type)
/// where the draw is below p and 0 elsewhere, drawing from `generator` (its lock held) as LibTorch's
/// out.bernoulli_(p, generator) does. AVX2 where the CPU has it (ops::ScalarOnly turns it off), else a plain loop.
void bernoulli_fill(torch::Tensor& out, double p, const at::Generator& generator,
                    const torch::Tensor& one = torch::Tensor());

/// Whether bernoulli_fill draws what this LibTorch's bernoulli_ draws, checked once on generators of its own.
bool bernoulli_matches_libtorch();
}  // namespace detail

}  // namespace zoo::ops
