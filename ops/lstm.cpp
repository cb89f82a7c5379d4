#include "ops/lstm.h"
#include "ops/autocast.h"
#include "ops/packed_gemm.h"

#include <torch/csrc/jit/frontend/tracer.h>

#include <vector>

namespace zoo::ops {

using torch::Tensor;

namespace {

/// What the backward needs of each step s (steps in the order they ran): the gate activations (sigmoid(i, f),
/// tanh(g), sigmoid(o)), the states going in, tanh(c_t), p_t = o * tanh(c_t) and where the clips did not bite.
struct Saved {
  Tensor acts, c_prev, h_prev, tanh_c, p, c_ok, h_ok;
};

/// The forward loop. xs already holds the state bias. With `saved`, every step's values go there (for the
/// backward); without, the recurrent products use packed weights where the CPU has AVX2.
Tensor run(const Tensor& xs, const Tensor& w_state, const Tensor& w_proj, const Tensor& keep, LstmClip clip,
           bool go_forward, Saved* saved) {
  const int64_t N = xs.size(0), T = xs.size(1), C = xs.size(2) / 4, H = w_state.size(1);
  const bool padded = !keep.all().item<bool>(), project = w_proj.defined();
  const auto opts = xs.options();
  if (saved != nullptr) {
    saved->acts = torch::empty({T, N, 4 * C}, opts);
    saved->c_prev = torch::empty({T, N, C}, opts);
    saved->h_prev = torch::empty({T, N, H}, opts);
    saved->tanh_c = torch::empty({T, N, C}, opts);
    saved->p = torch::empty({T, N, C}, opts);
    if (clip.cell > 0) saved->c_ok = torch::empty({T, N, C}, opts.dtype(torch::kBool));
    if (clip.proj > 0) saved->h_ok = torch::empty({T, N, H}, opts.dtype(torch::kBool));
  }
  const bool packed = saved == nullptr && PackedWeight::usable(xs);
  PackedWeight packed_state, packed_proj;
  if (packed) {
    packed_state = PackedWeight(w_state);
    if (project) packed_proj = PackedWeight(w_proj);
  }
  const auto w_state_t = w_state.t();
  auto out = torch::empty({N, T, H}, opts);
  auto h = torch::zeros({N, H}, opts), c = torch::zeros({N, C}, opts);
  Tensor scratch = saved == nullptr ? torch::empty({N, 4 * C}, opts) : Tensor();  // the gates of one step
  for (int64_t s = 0; s < T; ++s) {
    const int64_t t = go_forward ? s : T - 1 - s;
    if (saved != nullptr) {
      saved->h_prev[s].copy_(h);
      saved->c_prev[s].copy_(c);
    }
    // z, then in place: sigmoid(i, f, o), tanh(g)
    Tensor a = saved != nullptr ? saved->acts[s] : scratch;
    if (packed)
      a = packed_state.addmm(xs.select(1, t), h);
    else
      torch::addmm_out(a, xs.select(1, t), h, w_state_t);
    auto candidate = a.slice(1, 2 * C, 3 * C);
    const auto g = torch::tanh(candidate);
    a.sigmoid_();
    candidate.copy_(g);
    const auto gates = a.chunk(4, 1);
    auto c_new = gates[1] * c + gates[0] * gates[2];
    if (clip.cell > 0) {
      if (saved != nullptr) {
        auto ok = saved->c_ok[s];
        torch::le_out(ok, c_new.abs(), clip.cell);
      }
      c_new.clamp_(-clip.cell, clip.cell);
    }
    Tensor tanh_c, p;
    if (saved != nullptr) {
      tanh_c = saved->tanh_c[s];
      p = saved->p[s];
      torch::tanh_out(tanh_c, c_new);
      torch::mul_out(p, gates[3], tanh_c);
    } else {
      tanh_c = torch::tanh(c_new);
      p = gates[3] * tanh_c;
    }
    // (a copy of p where it is saved: the clip below works in place)
    auto h_new =
        project ? (packed ? packed_proj.addmm({}, p) : torch::mm(p, w_proj.t())) : (saved != nullptr ? p.clone() : p);
    if (clip.proj > 0) {
      if (saved != nullptr) {
        auto ok = saved->h_ok[s];
        torch::le_out(ok, h_new.abs(), clip.proj);
      }
      h_new.clamp_(-clip.proj, clip.proj);
    }
    if (padded) {
      const auto m = keep.select(1, t).unsqueeze(1);
      c = torch::where(m, c_new, c);
      h = torch::where(m, h_new, h);
      out.select(1, t).copy_(h_new * m);
    } else {
      c = c_new;
      h = h_new;
      out.select(1, t).copy_(h_new);
    }
  }
  return out;
}

/// The recurrence as one autograd node. Inputs: xs [N, T, 4C] with the state bias added, w_state [4C, H], w_proj
/// [H, C] (empty without projection: custom autograd functions take no undefined inputs), keep [N, T] (bool).
struct LstmFunction : public torch::autograd::Function<LstmFunction> {
  static Tensor forward(torch::autograd::AutogradContext* ctx, const Tensor& xs, const Tensor& w_state,
                        const Tensor& w_proj, const Tensor& keep, double cell_clip, double proj_clip, bool go_forward) {
    Saved saved;
    const auto out =
        run(xs, w_state, w_proj.numel() > 0 ? w_proj : Tensor(), keep, {cell_clip, proj_clip}, go_forward, &saved);
    ctx->save_for_backward(
        {w_state, w_proj, keep, saved.acts, saved.c_prev, saved.tanh_c, saved.p, saved.h_prev, saved.c_ok, saved.h_ok});
    ctx->saved_data["go_forward"] = go_forward;
    return out;
  }

  // With dh, dc the gradients reaching h_t, c_t from later steps, per step in reverse:
  //   dp = P^T dh (after the projection clip's mask), dc += dp * o * (1 - tanh^2 c) (then the cell clip's mask)
  //   dz_i = dc g i(1-i),  dz_f = dc c_{t-1} f(1-f),  dz_g = dc i (1-g^2),  dz_o = dp tanh(c) o(1-o)
  //   dc_{t-1} = dc f,  dh_{t-1} = W_h^T dz;  masked steps pass dh, dc through unchanged.
  static torch::autograd::variable_list backward(torch::autograd::AutogradContext* ctx,
                                                 torch::autograd::variable_list grads) {
    const auto saved = ctx->get_saved_variables();
    const auto &w_state = saved[0], &w_proj = saved[1], &keep = saved[2], &acts = saved[3], &c_prev = saved[4],
               &tanh_c = saved[5], &p = saved[6], &h_prev = saved[7], &c_ok = saved[8], &h_ok = saved[9];
    const bool go_forward = ctx->saved_data["go_forward"].toBool();
    const bool padded = !keep.all().item<bool>(), project = w_proj.numel() > 0;
    const int64_t T = acts.size(0), N = acts.size(1), C = acts.size(2) / 4, H = w_state.size(1);
    const auto& grad_out = grads[0];
    auto dz = torch::empty({T, N, 4 * C}, acts.options());
    auto dh_all = project ? torch::empty({T, N, H}, acts.options()) : Tensor();
    auto dh = torch::zeros({N, H}, acts.options()), dc = torch::zeros({N, C}, acts.options());
    for (int64_t s = T - 1; s >= 0; --s) {
      const int64_t t = go_forward ? s : T - 1 - s;
      Tensor dh_new = grad_out.defined() ? grad_out.select(1, t) + dh : dh, dc_new = dc;
      Tensor carry_h, carry_c;
      if (padded) {
        const auto m = keep.select(1, t).unsqueeze(1);
        dh_new = torch::where(m, dh_new, torch::zeros_like(dh));
        dc_new = torch::where(m, dc, torch::zeros_like(dc));
        carry_h = torch::where(m, torch::zeros_like(dh), dh);
        carry_c = torch::where(m, torch::zeros_like(dc), dc);
      }
      if (h_ok.defined()) dh_new = dh_new * h_ok[s];
      Tensor dp = dh_new;
      if (project) {
        dh_all[s].copy_(dh_new);
        dp = torch::mm(dh_new, w_proj);
      }
      const auto gates = acts[s].chunk(4, 1);
      const auto &i = gates[0], &f = gates[1], &g = gates[2], &o = gates[3];
      const auto tc = tanh_c[s];
      auto dc_raw = dc_new + dp * o * (1 - tc * tc);
      if (c_ok.defined()) dc_raw = dc_raw * c_ok[s];
      auto d = dz[s].chunk(4, 1);
      torch::mul_out(d[0], dc_raw * g, i * (1 - i));
      torch::mul_out(d[1], dc_raw * c_prev[s], f * (1 - f));
      torch::mul_out(d[2], dc_raw * i, 1 - g * g);
      torch::mul_out(d[3], dp * tc, o * (1 - o));
      dc = dc_raw * f;
      dh = torch::mm(dz[s], w_state);
      if (padded) {
        dc = dc + carry_c;
        dh = dh + carry_h;
      }
    }
    // Rows of step s belong to position t(s); the weight gradients are sums over all rows, in any order.
    auto grad_xs = (go_forward ? dz : dz.flip(0)).transpose(0, 1);
    auto grad_w_state = torch::mm(dz.reshape({T * N, 4 * C}).t(), h_prev.reshape({T * N, H}));
    Tensor grad_w_proj;
    if (project) grad_w_proj = torch::mm(dh_all.reshape({T * N, H}).t(), p.reshape({T * N, C}));
    return {grad_xs, grad_w_state, grad_w_proj, Tensor(), Tensor(), Tensor(), Tensor()};
  }
};

void check_shapes(const Tensor& xs, const Tensor& w_state, const Tensor& b_state, const Tensor& w_proj,
                  const Tensor& mask) {
  TORCH_CHECK(xs.dim() == 3 && xs.size(2) % 4 == 0, "lstm_recurrence: xs must be [N, T, 4C], got ", xs.sizes());
  const int64_t C = xs.size(2) / 4, H = w_proj.defined() ? w_proj.size(0) : C;
  TORCH_CHECK(w_state.dim() == 2 && w_state.size(0) == 4 * C && w_state.size(1) == H,
              "lstm_recurrence: w_state must be [4C, H] = [", 4 * C, ", ", H, "], got ", w_state.sizes());
  TORCH_CHECK(b_state.dim() == 1 && b_state.size(0) == 4 * C, "lstm_recurrence: b_state must be [", 4 * C, "], got ",
              b_state.sizes());
  TORCH_CHECK(!w_proj.defined() || (w_proj.dim() == 2 && w_proj.size(1) == C),
              "lstm_recurrence: w_proj must be [H, C] with C = ", C, ", got ", w_proj.sizes());
  TORCH_CHECK(mask.sizes() == xs.sizes().slice(0, 2), "lstm_recurrence: mask must be [N, T] = ", xs.sizes().slice(0, 2),
              ", got ", mask.sizes());
}

}  // namespace

Tensor lstm_recurrence(const Tensor& xs_in, const Tensor& w_state_in, const Tensor& b_state_in, const Tensor& w_proj_in,
                       const Tensor& mask, LstmClip clip, bool go_forward) {
  check_shapes(xs_in, w_state_in, b_state_in, w_proj_in, mask);
  // In float32 under mixed precision: the cell state is a sum over all steps, which 8 bits of mantissa would round
  // away; the step's products are small next to the input projection (xs), which autocast runs in bfloat16.
  Float32Region fp32;
  const auto xs = float32(xs_in), w_state = float32(w_state_in), b_state = float32(b_state_in),
             w_proj = float32(w_proj_in);
  if (torch::jit::tracer::isTracing() || xs.size(1) == 0)
    return lstm_recurrence_reference(xs, w_state, b_state, w_proj, mask, clip, go_forward);
  const auto keep = mask != 0;
  if (torch::GradMode::is_enabled())
    return LstmFunction::apply(xs + b_state, w_state, w_proj.defined() ? w_proj : torch::empty({0}, xs.options()), keep,
                               clip.cell, clip.proj, go_forward);
  return run(xs + b_state, w_state, w_proj, keep, clip, go_forward, nullptr);
}

Tensor lstm_recurrence_reference(const Tensor& xs, const Tensor& w_state, const Tensor& b_state, const Tensor& w_proj,
                                 const Tensor& mask, LstmClip clip, bool go_forward) {
  check_shapes(xs, w_state, b_state, w_proj, mask);
  namespace F = torch::nn::functional;
  const int64_t N = xs.size(0), T = xs.size(1), C = xs.size(2) / 4, H = w_state.size(1);
  const auto keep = mask.to(xs.dtype()).unsqueeze(-1);  // [N, T, 1]
  auto h = torch::zeros({N, H}, xs.options()), c = torch::zeros({N, C}, xs.options());
  std::vector<Tensor> out(static_cast<size_t>(T));
  for (int64_t s = 0; s < T; ++s) {
    const int64_t t = go_forward ? s : T - 1 - s;
    const auto z = (xs.select(1, t) + F::linear(h, w_state, b_state)).chunk(4, 1);
    auto c_new = torch::sigmoid(z[0]) * torch::tanh(z[2]) + torch::sigmoid(z[1]) * c;
    if (clip.cell > 0) c_new = c_new.clamp(-clip.cell, clip.cell);
    auto h_new = torch::sigmoid(z[3]) * torch::tanh(c_new);
    if (w_proj.defined()) h_new = F::linear(h_new, w_proj);
    if (clip.proj > 0) h_new = h_new.clamp(-clip.proj, clip.proj);
    const auto m = keep.select(1, t);
    c = m * c_new + (1 - m) * c;
    h = m * h_new + (1 - m) * h;
    out[static_cast<size_t>(t)] = h_new * m;
  }
  return T > 0 ? torch::stack(out, 1) : torch::zeros({N, 0, H}, xs.options());
}

}  // namespace zoo::ops
