// ops/simd.h: the kernels' bfloat16 loads and stores against c10::BFloat16's conversions, bit for bit (round to
// nearest even, ties, NaN, infinities, subnormals, the largest finite values).
#include "ops/simd.h"

#include <catch2/catch.hpp>

#include <cmath>
#include <cstring>
#include <limits>
#include <vector>

namespace {

float from_bits(uint32_t u) {
  float f;
  std::memcpy(&f, &u, sizeof f);
  return f;
}

#ifdef ZOO_X86_KERNELS
/// n elements (a multiple of 8) from `in` to `out` through load8 and store8.
template <typename In, typename Out>
ZOO_AVX2_FMA void copy(const std::vector<In>& in, std::vector<Out>& out) {
  for (size_t i = 0; i < in.size(); i += 8) zoo::ops::store8(out.data() + i, zoo::ops::load8(in.data() + i));
}
#endif

}  // namespace

TEST_CASE("simd: store8 to bfloat16 rounds as c10::BFloat16(float), load8 widens exactly", "[kernels]") {
  if (!zoo::ops::cpu_has_avx2_fma()) {
    WARN("this CPU has no AVX2 + FMA: the kernels' loads and stores are not used, nor tested");
    return;
  }
#ifdef ZOO_X86_KERNELS
  std::vector<float> values = {0.0f,
                               -0.0f,
                               1.0f,
                               from_bits(0x3F808000),  // a tie between 1 and the next bfloat16: to even (1)
                               from_bits(0x3F818000),  // a tie whose lower neighbour is odd: up
                               from_bits(0x3F808001),  // just above a tie: up
                               from_bits(0x3F807FFF),  // just below: down
                               from_bits(0x7F7FFFFF),  // the largest float: rounds to infinity
                               -from_bits(0x7F7FFFFF),
                               std::numeric_limits<float>::infinity(),
                               -std::numeric_limits<float>::infinity(),
                               std::numeric_limits<float>::quiet_NaN(),
                               from_bits(0xFFC12345),  // a negative NaN with a payload
                               from_bits(0x7F800001),  // a signalling NaN: adding the bias must not make it inf
                               from_bits(0x00000001),  // subnormals
                               from_bits(0x00018000),
                               3.14159265f,
                               -2.71828182f};
  for (int i = 0; i < 1000; ++i) values.push_back(std::ldexp(std::sin(i * 0.37f), (i % 60) - 30));
  while (values.size() % 8 != 0) values.push_back(0.5f);
  std::vector<c10::BFloat16> stored(values.size());
  copy(values, stored);
  for (size_t i = 0; i < values.size(); ++i) {
    INFO("value " << values[i] << " (element " << i << ")");
    CHECK(stored[i].x == c10::BFloat16(values[i]).x);
  }
  // Widening is exact: every stored value comes back as the float c10 gives.
  std::vector<float> widened(values.size());
  copy(stored, widened);
  for (size_t i = 0; i < values.size(); ++i) {
    const float expected = static_cast<float>(stored[i]);
    CHECK((std::memcmp(&widened[i], &expected, sizeof expected) == 0));
  }
#endif
}
