// The fused hinge score and its backward for a range of pairs (transport_cpu.cpp): always-inline, compiled into
// each instruction set's entry points (align_kernels.h).
#pragma once
#include <algorithm>
#include <cstdint>

#include "align/vec.h"
#include "common/cpu_simd.h"

namespace fastlayers::transport {

using align::kLanes;
using align::round_up;

// C[r, 0:len] = sum_{k < K} a[r * ars + k * aks] * Bm[k * bs : k * bs + len] for r < rows (C: row stride len, a
// multiple of the lanes). a is read through strides, so P and P^T are both plain arguments; Bm's rows may overlap
// (bs < len: lanes past a row's end hold the next row, which the caller masks). Blocks of eight (then four) rows:
// independent accumulator chains hide the multiply-add latency.
template <int R, typename T>
FL_INLINE void rows_block(const T* __restrict a, int64_t ars, int64_t aks, int64_t K, const T* __restrict Bm,
                          int64_t bs, int64_t len, T* __restrict C) {
  using V = typename align::Vec<T>::type;
  constexpr int64_t L = kLanes<T>;
  for (int64_t c = 0; c < len; c += L) {
    V acc[R] = {};
    for (int64_t k = 0; k < K; ++k) {
      const V bv = align::vload<V>(Bm + k * bs + c);
      const T* ak = a + k * aks;
      for (int q = 0; q < R; ++q) acc[q] += bv * ak[q * ars];
    }
    for (int q = 0; q < R; ++q) align::vstore(C + q * len + c, acc[q]);
  }
}

template <typename T>
FL_INLINE void rows_times(const T* __restrict a, int64_t ars, int64_t aks, int64_t rows, int64_t K,
                          const T* __restrict Bm, int64_t bs, int64_t len, T* __restrict C) {
  int64_t r = 0;
  for (; r + 8 <= rows; r += 8) rows_block<8>(a + r * ars, ars, aks, K, Bm, bs, len, C + r * len);
  for (; r + 4 <= rows; r += 4) rows_block<4>(a + r * ars, ars, aks, K, Bm, bs, len, C + r * len);
  for (; r < rows; ++r) rows_block<1>(a + r * ars, ars, aks, K, Bm, bs, len, C + r * len);
}

// Per-pair scratch. Q, H: the pair's hq [n, d] and hc [m, d] copied whole, plus a vector of zero slack, so a vector
// load at row start reads d values and then the next row's (masked where it matters). R = hq - P hc [n, dp];
// HT = hc^T [d, mp]; C: products [max(n, m), max(dp, mp)]; O: rows repacked to stride d.
template <typename T>
struct ScoreScratch {
  std::vector<T> Q, H, R, HT, C, O;
  ScoreScratch(int64_t n, int64_t m, int64_t d, int64_t dp, int64_t mp, bool backward)
      : Q(n * d + dp), H(m * d + dp), R(n * dp), HT(backward ? d * mp : 0),
        C(backward ? std::max(n, m) * std::max(dp, mp) : 0),
        O(backward ? std::max(n, m) * std::max(d, m) + std::max(dp, mp) : 0) {}
};

// Lanes c.. of a row of d values that are real: 1 where c + lane < d.
template <typename T>
FL_INLINE typename align::Vec<T>::type lane_ok(int64_t c, int64_t d) {
  using V = typename align::Vec<T>::type;
  V lane;
  for (int64_t k = 0; k < kLanes<T>; ++k) lane[k] = T(c + k);
  return lane < align::vsplat<V>(T(d)) ? align::vsplat<V>(T(1)) : V{};
}

// R = hq - P hc for one pair (padding lanes 0); returns sum ReLU(R).
template <typename T>
FL_INLINE T score_pair(const T* hq, const T* hc, const T* P, int64_t n, int64_t m, int64_t d, int64_t dp,
                       ScoreScratch<T>& w) {
  using V = typename align::Vec<T>::type;
  constexpr int64_t L = kLanes<T>;
  std::copy(hq, hq + n * d, w.Q.data());
  std::copy(hc, hc + m * d, w.H.data());
  T* R = w.R.data();
  rows_times(P, m, int64_t(1), n, m, w.H.data(), d, dp, R);
  V acc{};
  for (int64_t c = 0; c < dp; c += L) {
    const V ok = lane_ok<T>(c, d);
    for (int64_t i = 0; i < n; ++i) {
      const V r = align::vload<V>(w.Q.data() + i * d + c) - align::vload<V>(R + i * dp + c);
      const V rm = ok > V{} ? r : V{};  // a select, not a product: the next row's lanes may hold inf
      align::vstore(R + i * dp + c, rm);
      acc += align::vrelu(rm);  // NaN-keeping, as torch.relu
    }
  }
  return align::hsum(acc);
}

// dst[r * d : r * d + d] = sign * src[r, 0:d] (stride dp) for r < rows, through O: whole-vector stores overlap the next
// row, which the next store overwrites, and only the last d values of the block go out by copy.
template <typename T>
FL_INLINE void unpad_rows(const T* __restrict src, int64_t rows, int64_t d, int64_t dp, T sign, T* __restrict O,
                          T* __restrict dst) {
  using V = typename align::Vec<T>::type;
  constexpr int64_t L = kLanes<T>;
  for (int64_t r = 0; r < rows; ++r)
    for (int64_t c = 0; c < dp; c += L) align::vstore(O + r * d + c, align::vload<V>(src + r * dp + c) * sign);
  std::copy(O, O + rows * d, dst);
}

template <typename T>
FL_INLINE void score_fwd_impl(const T* hq, const T* hc, const T* P, T* s, int64_t b0, int64_t b1, int64_t n,
                              int64_t m, int64_t d) {
  const int64_t dp = round_up(std::max<int64_t>(d, 1), kLanes<T>);
  ScoreScratch<T> w(n, m, d, dp, 0, false);
  for (int64_t b = b0; b < b1; ++b)
    s[b] = -score_pair(hq + b * n * d, hc + b * m * d, P + b * n * m, n, m, d, dp, w);
}

// With e = g * [R > 0]: grad_hq = -e, grad_P = e hc^T, grad_hc = P^T e (ReLU passes no gradient at 0, as torch).
template <typename T>
FL_INLINE void score_bwd_impl(const T* gs, const T* hq, const T* hc, const T* P, T* gq, T* gc, T* gP, int64_t b0,
                              int64_t b1, int64_t n, int64_t m, int64_t d) {
  using V = typename align::Vec<T>::type;
  constexpr int64_t L = kLanes<T>;
  const int64_t dp = round_up(std::max<int64_t>(d, 1), L), mp = round_up(m, L);
  ScoreScratch<T> w(n, m, d, dp, mp, true);
  T* E = w.R.data();
  for (int64_t b = b0; b < b1; ++b) {
    const T* hcb = hc + b * m * d;
    const T* Pb = P + b * n * m;
    score_pair(hq + b * n * d, hcb, Pb, n, m, d, dp, w);
    const V gv = align::vsplat<V>(gs[b]);
    for (int64_t k = 0; k < n * dp; k += L) {
      const V r = align::vload<V>(E + k);
      align::vstore(E + k, r > V{} ? gv : V{});
    }
    unpad_rows(E, n, d, dp, T(-1), w.O.data(), gq + b * n * d);
    for (int64_t c = 0; c < d; ++c) {
      for (int64_t j = 0; j < m; ++j) w.HT[c * mp + j] = hcb[j * d + c];
      for (int64_t j = m; j < mp; ++j) w.HT[c * mp + j] = 0;
    }
    rows_times(E, dp, int64_t(1), n, d, w.HT.data(), mp, mp, w.C.data());
    unpad_rows(w.C.data(), n, m, mp, T(1), w.O.data(), gP + b * n * m);
    rows_times(Pb, int64_t(1), m, m, n, E, dp, dp, w.C.data());
    unpad_rows(w.C.data(), m, d, dp, T(1), w.O.data(), gc + b * m * d);
  }
}

}  // namespace fastlayers::transport
