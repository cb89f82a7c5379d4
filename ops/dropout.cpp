#include "ops/dropout.h"

#include "ops/simd.h"

#include <ATen/CPUGeneratorImpl.h>
#include <ATen/core/MT19937RNGEngine.h>
#include <c10/util/Exception.h>
#include <torch/csrc/jit/frontend/tracer.h>

#include <algorithm>
#include <array>
#include <cmath>
#include <cstring>
#include <mutex>

namespace zoo::ops {

namespace {

using torch::Tensor;

constexpr int kWords = at::MERSENNE_STATE_N;  // 624 words of state, renewed together
constexpr int kShift = at::MERSENNE_STATE_M;  // 397
constexpr uint64_t kLow53 = (uint64_t{1} << 53) - 1;

// mt19937's output function (at::mt19937::operator()).
inline uint32_t temper(uint32_t y) {
  y ^= y >> 11;
  y ^= (y << 7) & 0x9d2c5680U;
  y ^= (y << 15) & 0xefc60000U;
  return y ^ (y >> 18);
}

// One new state word from word u, the next one v and the word kShift ahead (at::mt19937's twist: v's low bit).
inline uint32_t twisted(uint32_t u, uint32_t v, uint32_t far) {
  const uint32_t y = (u & at::UMASK) | (v & at::LMASK);
  return far ^ (y >> 1) ^ ((v & 1U) != 0 ? at::MATRIX_A : 0U);
}

// at::mt19937's next_state: words 0 .. 226 from the old words 397 ahead, 227 .. 622 from the new words 227 behind,
// the last from the new word 0.
void twist_plain(uint32_t* s) {
  for (int i = 0; i < kWords - kShift; ++i) s[i] = twisted(s[i], s[i + 1], s[i + kShift]);
  for (int i = kWords - kShift; i < kWords - 1; ++i) s[i] = twisted(s[i], s[i + 1], s[i + kShift - kWords]);
  s[kWords - 1] = twisted(s[kWords - 1], s[0], s[kShift - 1]);
}

// One element from its two words (the first the high half): `one` where bernoulli_distribution<double> draws 1,
// (((hi << 32) | lo) & (2^53 - 1)) 2^-53 < p, i.e. where the 53-bit integer is below threshold = ceil(p 2^53); else 0.
template <typename T>
inline T element(uint32_t hi, uint32_t lo, uint64_t threshold, T one) {
  return ((((uint64_t{hi} << 32) | lo) & kLow53) < threshold) ? one : static_cast<T>(0);
}

// Four elements' values for each 4-bit pattern of comparisons (bit j: element j is `one`).
template <typename T>
using Patterns = std::array<std::array<T, 4>, 16>;

template <typename T>
Patterns<T> patterns(T one) {
  Patterns<T> t{};
  for (size_t bits = 0; bits < 16; ++bits)
    for (size_t j = 0; j < 4; ++j) t[bits][j] = ((bits >> j) & 1) != 0 ? one : static_cast<T>(0);
  return t;
}

#ifdef ZOO_X86_KERNELS
// Eight state words renewed at once (words i .. i + 7 from i .. i + 8 and far .. far + 7): valid where none of
// the words it reads is one it writes, which the loops below keep (the far words 397 ahead or 227 behind).
ZOO_AVX2_FMA inline void twist8(uint32_t* s, int i, int far) {
  const __m256i u = _mm256_loadu_si256(reinterpret_cast<const __m256i*>(s + i));
  const __m256i v = _mm256_loadu_si256(reinterpret_cast<const __m256i*>(s + i + 1));
  const __m256i f = _mm256_loadu_si256(reinterpret_cast<const __m256i*>(s + far));
  const __m256i y = _mm256_or_si256(_mm256_and_si256(u, _mm256_set1_epi32(static_cast<int>(at::UMASK))),
                                    _mm256_and_si256(v, _mm256_set1_epi32(static_cast<int>(at::LMASK))));
  const __m256i odd = _mm256_cmpeq_epi32(_mm256_and_si256(v, _mm256_set1_epi32(1)), _mm256_set1_epi32(1));
  const __m256i a = _mm256_and_si256(odd, _mm256_set1_epi32(static_cast<int>(at::MATRIX_A)));
  _mm256_storeu_si256(reinterpret_cast<__m256i*>(s + i),
                      _mm256_xor_si256(_mm256_xor_si256(f, _mm256_srli_epi32(y, 1)), a));
}

ZOO_AVX2_FMA void twist_avx2(uint32_t* s) {
  int i = 0;
  for (; i + 8 <= kWords - kShift; i += 8) twist8(s, i, i + kShift);
  for (; i < kWords - kShift; ++i) s[i] = twisted(s[i], s[i + 1], s[i + kShift]);
  for (; i + 8 <= kWords - 1; i += 8) twist8(s, i, i + kShift - kWords);
  for (; i < kWords - 1; ++i) s[i] = twisted(s[i], s[i + 1], s[i + kShift - kWords]);
  s[kWords - 1] = twisted(s[kWords - 1], s[0], s[kShift - 1]);
}

ZOO_AVX2_FMA inline __m256i temper8(__m256i y) {
  y = _mm256_xor_si256(y, _mm256_srli_epi32(y, 11));
  y = _mm256_xor_si256(y, _mm256_and_si256(_mm256_slli_epi32(y, 7), _mm256_set1_epi32(static_cast<int>(0x9d2c5680U))));
  y = _mm256_xor_si256(y, _mm256_and_si256(_mm256_slli_epi32(y, 15), _mm256_set1_epi32(static_cast<int>(0xefc60000U))));
  return _mm256_xor_si256(y, _mm256_srli_epi32(y, 18));
}

// Elements from the untempered words s (two each), four at a time; returns how many it wrote (a multiple of 4).
template <typename T>
ZOO_AVX2_FMA int64_t elements_avx2(const uint32_t* s, int64_t count, uint64_t threshold, const Patterns<T>& table,
                                   T* out) {
  const __m256i low53 = _mm256_set1_epi64x(static_cast<int64_t>(kLow53));
  const __m256i limit = _mm256_set1_epi64x(static_cast<int64_t>(threshold));  // at most 2^53: positive
  int64_t k = 0;
  for (; k + 4 <= count; k += 4) {
    __m256i y = temper8(_mm256_loadu_si256(reinterpret_cast<const __m256i*>(s + 2 * k)));
    // 64-bit lane j holds word 2j in its low half; the element takes it as its high half.
    y = _mm256_and_si256(_mm256_shuffle_epi32(y, _MM_SHUFFLE(2, 3, 0, 1)), low53);
    const int bits = _mm256_movemask_pd(_mm256_castsi256_pd(_mm256_cmpgt_epi64(limit, y)));
    std::memcpy(out + k, table[static_cast<size_t>(bits)].data(), 4 * sizeof(T));
  }
  return k;
}
#endif

// Draws n elements from the engine's state d, as n calls of bernoulli_distribution<double> on at::mt19937 would:
// the words left in the current block first, then whole blocks; an element may take the last word of one block and
// the first of the next. d's position (left_, next_) ends where the engine's would.
template <typename T>
void draw(T* out, int64_t n, uint64_t threshold, T one, at::mt19937_data_pod& d, bool avx2) {
  const auto table = patterns(one);
  int64_t e = 0;
  bool pending = false;  // an element's first word taken at the end of the last block
  uint32_t high = 0;
  while (e < n) {
    if (d.left_ == 1) {  // the engine renews its state at the next call: left_ 624 after it, next_ 1
#ifdef ZOO_X86_KERNELS
      avx2 ? twist_avx2(d.state_.data()) : twist_plain(d.state_.data());
#else
      twist_plain(d.state_.data());
#endif
      d.left_ = kWords + 1;
      d.next_ = 0;
    }
    const uint32_t* s = d.state_.data() + d.next_;
    const int64_t available = d.left_ - 1;
    int64_t w = 0;
    if (pending) {
      out[e++] = element(high, temper(s[0]), threshold, one);
      pending = false;
      w = 1;
    }
    const int64_t count = std::min((available - w) / 2, n - e);
    int64_t k = 0;
#ifdef ZOO_X86_KERNELS
    if (avx2) k = elements_avx2(s + w, count, threshold, table, out + e);
#endif
    for (; k < count; ++k) out[e + k] = element(temper(s[w + 2 * k]), temper(s[w + 2 * k + 1]), threshold, one);
    e += count;
    w += 2 * count;
    if (e < n && w < available) {  // one word left in this block: the next element's high half
      high = temper(s[w]);
      pending = true;
      ++w;
    }
    d.next_ += static_cast<uint32_t>(w);
    d.left_ -= static_cast<int>(w);
  }
}

// Whether zoo's mask generator may stand in for LibTorch's bernoulli_ on x.
bool fast_path(const Tensor& x) {
  const auto type = x.scalar_type();
  return x.device().is_cpu() && x.layout() == torch::kStrided &&
         (type == torch::kFloat32 || type == torch::kFloat64 || type == torch::kBFloat16) &&
         !torch::jit::tracer::isTracing() && detail::bernoulli_matches_libtorch();
}

}  // namespace

namespace detail {

void bernoulli_fill(Tensor& out, double p, const at::Generator& generator, const Tensor& one) {
  TORCH_CHECK(out.device().is_cpu() && out.is_contiguous(), "bernoulli_fill takes a contiguous CPU tensor");
  TORCH_CHECK(p >= 0 && p <= 1, "bernoulli_fill expects p in [0, 1], got ", p);
  auto* gen = at::check_generator<at::CPUGeneratorImpl>(generator);
  const auto threshold = static_cast<uint64_t>(std::ceil(std::ldexp(p, 53)));
  bool avx2 = false;
#ifdef ZOO_X86_KERNELS
  avx2 = cpu_has_avx2_fma();
#endif
  TORCH_CHECK(!one.defined() || (one.numel() == 1 && one.scalar_type() == out.scalar_type()),
              "bernoulli_fill's value for a draw of 1 is one element of out's type");
  const auto value = one.defined() ? one : torch::ones({}, out.options());
  const int64_t n = out.numel();
  std::lock_guard<std::mutex> lock(gen->mutex_);
  auto engine = gen->engine();
  auto state = engine.data();
  switch (out.scalar_type()) {
    case torch::kFloat32:
      draw(out.data_ptr<float>(), n, threshold, value.item<float>(), state, avx2);
      break;
    case torch::kFloat64:
      draw(out.data_ptr<double>(), n, threshold, value.item<double>(), state, avx2);
      break;
    case torch::kBFloat16:
      draw(out.data_ptr<c10::BFloat16>(), n, threshold, value.item<c10::BFloat16>(), state, avx2);
      break;
    default:
      TORCH_CHECK(false, "bernoulli_fill takes float32, float64 or bfloat16, got ", out.scalar_type());
  }
  engine.set_data(state);
  gen->set_engine(engine);
}

bool bernoulli_matches_libtorch() {
  static const bool matches = [] {
    // Both draw 1,001 elements (an odd count: the last takes a word across blocks on the next call) twice, from
    // two generators of their own seeded alike, in every type; the default generator is not touched.
    const auto a = at::detail::createCPUGenerator(20261206), b = at::detail::createCPUGenerator(20261206);
    for (const auto type : {torch::kFloat32, torch::kFloat64, torch::kBFloat16}) {
      for (const double p : {0.75, 0.1}) {
        auto theirs = torch::empty({1001}, torch::dtype(type));
        theirs.bernoulli_(p, a);
        auto ours = torch::empty({1001}, torch::dtype(type));
        bernoulli_fill(ours, p, b);
        if (!torch::equal(theirs, ours)) return false;
      }
    }
    return true;
  }();
  return matches;
}

}  // namespace detail

Tensor dropout(const Tensor& x, double p, bool train) {
  if (!fast_path(x)) return torch::dropout(x, p, train);
  // ATen's _dropout_impl, with zoo's mask generator for bernoulli_.
  TORCH_CHECK(p >= 0 && p <= 1, "dropout probability has to be between 0 and 1, but got ", p);
  if (p == 0 || !train || x.numel() == 0) return x;
  if (p == 1) return x * torch::zeros({}, x.options());
  // LibTorch's noise is 1 where drawn, then divided by 1 - p (div_): written here as that quotient, computed by the
  // same div_ once, so no second pass over the mask.
  auto noise = torch::empty_like(x, at::MemoryFormat::Contiguous);
  detail::bernoulli_fill(noise, 1 - p, at::detail::getDefaultCPUGenerator(), torch::ones({}, x.options()).div_(1 - p));
  return x * noise;
}

}  // namespace zoo::ops
