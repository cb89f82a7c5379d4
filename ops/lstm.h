// The recurrence of an LSTM with a projected, clipped state (Hochreiter & Schmidhuber 1997; the projection of Sak
// et al. 2014; the clipping of AllenNLP's LstmCellWithProjection) over all steps of a batch:
//     z_t = xs_t + W_h h_{t-1} + b                    (xs_t = W_x input_t, computed for all steps at once)
//     i, f, o = sigmoid(z_i, z_f, z_o),  g = tanh(z_g)   (gate order i, f, g, o along the 4C axis, as AllenNLP)
//     c_t = clip(f * c_{t-1} + i * g, cell_clip)
//     h_t = clip(P (o * tanh(c_t)), proj_clip)        (P = 1 without projection; clip <= 0 means none)
// A step whose mask is false carries (h, c) over unchanged and outputs 0. go_forward false runs from the last step
// to the first.
//
// lstm_recurrence is the fast path: with gradients, one autograd node whose hand-written backward through time
// gathers dL/dz of every step, so that each weight gradient is one matrix product over all N * T rows; without
// gradients, the same loop on weights packed once for all steps (ops/packed_gemm.h) where the CPU has AVX2.
// lstm_recurrence_reference is the plain loop in tensor operations, recorded by autograd: what the fast path is
// tested against, and what runs while tracing (a trace records torch operations only).
#pragma once

#include <torch/torch.h>

namespace zoo::ops {

struct LstmClip {
  double cell = 0;  ///< |c| <= cell (0: no clipping)
  double proj = 0;  ///< |h| <= proj (0: no clipping)
};

/// xs [N, T, 4C], w_state [4C, H], b_state [4C], w_proj [H, C] (undefined: no projection, then H = C),
/// mask [N, T] (bool or 0/1). Returns the outputs h_t, [N, T, H] (0 at masked steps).
torch::Tensor lstm_recurrence(const torch::Tensor& xs, const torch::Tensor& w_state, const torch::Tensor& b_state,
                              const torch::Tensor& w_proj, const torch::Tensor& mask, LstmClip clip, bool go_forward);

torch::Tensor lstm_recurrence_reference(const torch::Tensor& xs, const torch::Tensor& w_state,
                                        const torch::Tensor& b_state, const torch::Tensor& w_proj,
                                        const torch::Tensor& mask, LstmClip clip, bool go_forward);

}  // namespace zoo::ops
