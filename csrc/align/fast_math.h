// Branch-free log for the Sinkhorn kernels, written so GCC vectorises it inside `omp simd` loops (std::log does
// not vectorise without -ffast-math and libmvec), and a guard that flushes denormals. The exp is in vec.h.
#pragma once
#include <cstdint>
#include <cstring>

#include "common/cpu_simd.h"

#if defined(__x86_64__) || defined(_M_X64)
#include <xmmintrin.h>
#endif

namespace fastlayers::align {

// Flushes denormal results and operands to zero for the lifetime of the object (this thread only), restoring
// the caller's mode after: products of tiny probabilities would otherwise fall into slow denormal arithmetic.
class FlushDenormals {
 public:
#if defined(__x86_64__) || defined(_M_X64)
  FlushDenormals() : saved_(_mm_getcsr()) { _mm_setcsr(saved_ | 0x8040); }  // FTZ | DAZ
  ~FlushDenormals() { _mm_setcsr(saved_); }

 private:
  unsigned saved_;
#endif
};

// log(x) for x >= 1 (the kernels take it of sums that include exp(0) = 1): x = 2^e * m with m in
// [sqrt(1/2), sqrt(2)), log m = 2 atanh(s), s = (m - 1) / (m + 1), |s| <= 0.172, by its odd series. The exponent
// is read from the bits and turned into a double by the 2^52 trick, again without an int -> float conversion.
FL_INLINE double fast_log(double x) {
  uint64_t bits;
  std::memcpy(&bits, &x, sizeof bits);
  uint64_t ebits = (bits >> 52) | 0x4330000000000000ull;
  double e;
  std::memcpy(&e, &ebits, sizeof e);
  e = e - 4503599627370496.0 - 1023.0;
  bits = (bits & 0x000fffffffffffffull) | 0x3ff0000000000000ull;
  double m;
  std::memcpy(&m, &bits, sizeof m);
  const bool big = m > 1.4142135623730951;
  m = big ? m * 0.5 : m;
  e = big ? e + 1.0 : e;
  const double s = (m - 1.0) / (m + 1.0), s2 = s * s;
  double p = 1.0 / 25;  // s^2 = 0.0295 at most: 12 terms reach 1e-19
  p = p * s2 + 1.0 / 23;
  p = p * s2 + 1.0 / 21;
  p = p * s2 + 1.0 / 19;
  p = p * s2 + 1.0 / 17;
  p = p * s2 + 1.0 / 15;
  p = p * s2 + 1.0 / 13;
  p = p * s2 + 1.0 / 11;
  p = p * s2 + 1.0 / 9;
  p = p * s2 + 1.0 / 7;
  p = p * s2 + 1.0 / 5;
  p = p * s2 + 1.0 / 3;
  p = p * s2 + 1.0;
  return e * 6.93147180369123816490e-01 + (2.0 * s * p + e * 1.90821492927058770002e-10);
}

FL_INLINE float fast_log(float x) {
  uint32_t bits;
  std::memcpy(&bits, &x, sizeof bits);
  uint32_t ebits = (bits >> 23) | 0x4B000000u;  // 2^23 + biased exponent
  float e;
  std::memcpy(&e, &ebits, sizeof e);
  e = e - 8388608.0f - 127.0f;
  bits = (bits & 0x007fffffu) | 0x3f800000u;
  float m;
  std::memcpy(&m, &bits, sizeof m);
  const bool big = m > 1.41421356f;
  m = big ? m * 0.5f : m;
  e = big ? e + 1.0f : e;
  const float s = (m - 1.0f) / (m + 1.0f), s2 = s * s;
  float p = 1.0f / 9;  // 5 terms: below float rounding
  p = p * s2 + 1.0f / 7;
  p = p * s2 + 1.0f / 5;
  p = p * s2 + 1.0f / 3;
  p = p * s2 + 1.0f;
  return e * 0.693147182f + 2.0f * s * p;
}

}  // namespace fastlayers::align
