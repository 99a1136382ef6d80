// ECA's vector primitives, compiled once per instruction set: included by eca_avx512.cpp, eca_avx2.cpp and
// eca_scalar.cpp after their `#pragma GCC target`, with FL_ISA_NS naming the set (see common/cpu_isa.h).
// Only code defined here gets that set's instructions; no #include below this line.
#ifndef FL_ISA_NS
#error "include eca_kernels.h only from eca_<isa>.cpp, after defining FL_ISA_NS"
#endif

namespace fastlayers::eca::FL_ISA_NS {
namespace {

constexpr int64_t kChunk = 1024;  // values summed in the input dtype before joining a double total

/* Reductions sum chunks of kChunk values in T (full-width vector adds), then the chunk sums in double. */
template <typename T>
double plane_sum(const T* x, int64_t n) {
  double total = 0;
  for (int64_t i0 = 0; i0 < n; i0 += kChunk) {
    const int64_t i1 = std::min(n, i0 + kChunk);
    T acc = 0;
    FL_SIMD_SUM(acc) for (int64_t i = i0; i < i1; ++i) acc += x[i];
    total += acc;
  }
  return total;
}
template <typename T>
double plane_dot(const T* a, const T* b, int64_t n) {
  double total = 0;
  for (int64_t i0 = 0; i0 < n; i0 += kChunk) {
    const int64_t i1 = std::min(n, i0 + kChunk);
    T acc = 0;
    FL_SIMD_SUM(acc) for (int64_t i = i0; i < i1; ++i) acc += a[i] * b[i];
    total += acc;
  }
  return total;
}
template <typename T>
void plane_scale(const T* __restrict x, T* __restrict y, T s, int64_t n) {
  FL_SIMD for (int64_t i = 0; i < n; ++i) y[i] = x[i] * s;
}
template <typename T>
void plane_affine(const T* __restrict g, T* __restrict dx, T s, T c, int64_t n) {
  FL_SIMD for (int64_t i = 0; i < n; ++i) dx[i] = g[i] * s + c;
}
template <typename T>
void rows_sum(const T* __restrict x, double* __restrict acc, int64_t rows, int64_t C) {
  /* Sums of up to 64 rows in T (four rows per sweep, a quarter of the accumulator traffic), then into */
  /* the double accumulator: vector adds at full width with error bounded by the 64-row partials. */
  T part[256];
  for (int64_t c0 = 0; c0 < C; c0 += 256) {
    const int64_t w = std::min<int64_t>(256, C - c0);
    for (int64_t r0 = 0; r0 < rows; r0 += 64) {
      const int64_t r1 = std::min<int64_t>(rows, r0 + 64);
      const T* xr = x + r0 * C + c0;
      FL_SIMD for (int64_t c = 0; c < w; ++c) part[c] = 0;
      int64_t r = r0;
      for (; r + 4 <= r1; r += 4, xr += 4 * C) {
        FL_SIMD for (int64_t c = 0; c < w; ++c) part[c] += (xr[c] + xr[C + c]) + (xr[2 * C + c] + xr[3 * C + c]);
      }
      for (; r < r1; ++r, xr += C) {
        FL_SIMD for (int64_t c = 0; c < w; ++c) part[c] += xr[c];
      }
      FL_SIMD for (int64_t c = 0; c < w; ++c) acc[c0 + c] += part[c];
    }
  }
}
template <typename T>
void rows_dot(const T* __restrict a, const T* __restrict b, double* __restrict acc,
                              int64_t rows, int64_t C) {
  T part[256];
  for (int64_t c0 = 0; c0 < C; c0 += 256) {
    const int64_t w = std::min<int64_t>(256, C - c0);
    for (int64_t r0 = 0; r0 < rows; r0 += 64) {
      const int64_t r1 = std::min<int64_t>(rows, r0 + 64);
      const T* ar = a + r0 * C + c0;
      const T* br = b + r0 * C + c0;
      FL_SIMD for (int64_t c = 0; c < w; ++c) part[c] = 0;
      int64_t r = r0;
      for (; r + 2 <= r1; r += 2, ar += 2 * C, br += 2 * C) {
        FL_SIMD for (int64_t c = 0; c < w; ++c) part[c] += ar[c] * br[c] + ar[C + c] * br[C + c];
      }
      for (; r < r1; ++r, ar += C, br += C) {
        FL_SIMD for (int64_t c = 0; c < w; ++c) part[c] += ar[c] * br[c];
      }
      FL_SIMD for (int64_t c = 0; c < w; ++c) acc[c0 + c] += part[c];
    }
  }
}
template <typename T>
void rows_scale(const T* __restrict x, T* __restrict y, const T* __restrict s, int64_t rows,
                                int64_t C) {
  for (int64_t r = 0; r < rows; ++r, x += C, y += C) {
    FL_SIMD for (int64_t c = 0; c < C; ++c) y[c] = x[c] * s[c];
  }
}
template <typename T>
void rows_affine(const T* __restrict g, T* __restrict dx, const T* __restrict s,
                                 const T* __restrict c0, int64_t rows, int64_t C) {
  for (int64_t r = 0; r < rows; ++r, g += C, dx += C) {
    FL_SIMD for (int64_t c = 0; c < C; ++c) dx[c] = g[c] * s[c] + c0[c];
  }
}

template <typename T>
constexpr Kernels<T> make() {
  return {&plane_sum<T>, &plane_dot<T>, &plane_scale<T>, &plane_affine<T>,
          &rows_sum<T>,  &rows_dot<T>,  &rows_scale<T>,  &rows_affine<T>};
}

}  // namespace

const Table& table() {
  static constexpr Table t{make<float>(), make<double>()};
  return t;
}

}  // namespace fastlayers::eca::FL_ISA_NS
