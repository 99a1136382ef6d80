// 64-byte vectors through GCC's vector extensions: explicit registers (no lane arrays bouncing through memory)
// that each instruction-set path (common/cpu_isa.h) lowers to its own ISA (one zmm, two ymm or four xmm per vector).
#pragma once
#include <cstdint>
#include <cstring>

#include "common/cpu_simd.h"

namespace fastlayers::align {

typedef float vf __attribute__((vector_size(64)));
typedef int32_t vfi __attribute__((vector_size(64)));
typedef float vf8 __attribute__((vector_size(32)));
typedef float vf4 __attribute__((vector_size(16)));
typedef double vd __attribute__((vector_size(64)));
typedef int64_t vdi __attribute__((vector_size(64)));
typedef double vd4 __attribute__((vector_size(32)));
typedef double vd2 __attribute__((vector_size(16)));

template <typename T>
struct Vec;
template <>
struct Vec<float> {
  using type = vf;
};
template <>
struct Vec<double> {
  using type = vd;
};

template <typename T>
constexpr int64_t kLanes = 64 / sizeof(T);  // elements of one Vec<T>

// x rounded up to a multiple of k: padded line widths and counts of the align kernels.
inline int64_t round_up(int64_t x, int64_t k) { return (x + k - 1) / k * k; }

template <typename V, typename T>
FL_INLINE V vload(const T* p) {
  V v;
  std::memcpy(&v, p, sizeof v);
  return v;
}

template <typename V, typename T>
FL_INLINE void vstore(T* p, V v) {
  std::memcpy(p, &v, sizeof v);
}

template <typename V, typename T>
FL_INLINE V vsplat(T s) {
  return V{} + s;
}

FL_INLINE float hsum(vf v) {
  vf8 a = __builtin_shufflevector(v, v, 0, 1, 2, 3, 4, 5, 6, 7) +
          __builtin_shufflevector(v, v, 8, 9, 10, 11, 12, 13, 14, 15);
  vf4 b = __builtin_shufflevector(a, a, 0, 1, 2, 3) + __builtin_shufflevector(a, a, 4, 5, 6, 7);
  return (b[0] + b[2]) + (b[1] + b[3]);
}

FL_INLINE double hsum(vd v) {
  vd4 a = __builtin_shufflevector(v, v, 0, 1, 2, 3) + __builtin_shufflevector(v, v, 4, 5, 6, 7);
  vd2 b = __builtin_shufflevector(a, a, 0, 1) + __builtin_shufflevector(a, a, 2, 3);
  return b[0] + b[1];
}

template <typename V>
FL_INLINE V vmax(V a, V b) {
  return a > b ? a : b;
}

// max(x, 0) that keeps NaN (vmax(x, 0) turns it into 0, hiding a NaN input from the caller): same one compare
// and select, with the comparison the other way round.
template <typename V>
FL_INLINE V vrelu(V x) {
  return x < V{} ? V{} : x;
}

FL_INLINE float hmax(vf v) {
  vf8 a = __builtin_shufflevector(v, v, 0, 1, 2, 3, 4, 5, 6, 7);
  vf8 c = __builtin_shufflevector(v, v, 8, 9, 10, 11, 12, 13, 14, 15);
  a = a > c ? a : c;
  vf4 b = __builtin_shufflevector(a, a, 0, 1, 2, 3);
  vf4 d = __builtin_shufflevector(a, a, 4, 5, 6, 7);
  b = b > d ? b : d;
  float m = b[0];
  for (int k = 1; k < 4; ++k) m = b[k] > m ? b[k] : m;
  return m;
}

FL_INLINE double hmax(vd v) {
  vd4 a = __builtin_shufflevector(v, v, 0, 1, 2, 3);
  vd4 c = __builtin_shufflevector(v, v, 4, 5, 6, 7);
  a = a > c ? a : c;
  double m = a[0];
  for (int k = 1; k < 4; ++k) m = a[k] > m ? a[k] : m;
  return m;
}

// exp on whole vectors: range reduction x = n ln2 + r with |r| <= ln2/2, a polynomial for e^r (Cephes' for float,
// Taylor to degree 13 for double), and 2^n built from the bits of the rounding sum itself, so there is no
// float -> int conversion (AVX2 has none for int64). Inputs are clamped to the normal range, and below it the
// result is 0 rather than a denormal (denormal arithmetic takes ~100-cycle microcode assists); the values lost are
// below 1e-38 / 1e-308.
FL_INLINE vf vexp(vf x0) {
  const vf lo = vsplat<vf>(-87.0f), hi = vsplat<vf>(88.0f);
  vf x = x0 < lo ? lo : x0;
  x = x > hi ? hi : x;
  const vf shifted = x * 1.44269504088896341f + 12582912.0f;
  const vf n = shifted - 12582912.0f;
  vf r = x - n * 0.693359375f;
  r = r - n * -2.12194440e-4f;
  vf p = vsplat<vf>(1.9875691500e-4f);
  p = p * r + 1.3981999507e-3f;
  p = p * r + 8.3334519073e-3f;
  p = p * r + 4.1665795894e-2f;
  p = p * r + 1.6666665459e-1f;
  p = p * r + 5.0000001201e-1f;
  p = p * r * r + r + 1.0f;
  const vfi bits = ((vfi)shifted + 127) << 23;
  const vf e = p * (vf)bits;
  return x0 < lo ? vf{} : e;
}

FL_INLINE vd vexp(vd x0) {
  const vd lo = vsplat<vd>(-708.0), hi = vsplat<vd>(709.0);
  vd x = x0 < lo ? lo : x0;
  x = x > hi ? hi : x;
  const vd shifted = x * 1.4426950408889634074 + 6755399441055744.0;
  const vd n = shifted - 6755399441055744.0;
  const vd r = (x - n * 6.93147180369123816490e-01) - n * 1.90821492927058770002e-10;
  vd p = vsplat<vd>(1.0 / 6227020800.0);
  p = p * r + 1.0 / 479001600.0;
  p = p * r + 1.0 / 39916800.0;
  p = p * r + 1.0 / 3628800.0;
  p = p * r + 1.0 / 362880.0;
  p = p * r + 1.0 / 40320.0;
  p = p * r + 1.0 / 5040.0;
  p = p * r + 1.0 / 720.0;
  p = p * r + 1.0 / 120.0;
  p = p * r + 1.0 / 24.0;
  p = p * r + 1.0 / 6.0;
  p = p * r + 0.5;
  p = p * r + 1.0;
  p = p * r + 1.0;
  const vdi bits = ((vdi)shifted + 1023) << 52;
  const vd e = p * (vd)bits;
  return x0 < lo ? vd{} : e;
}

}  // namespace fastlayers::align
