// Sinkhorn's dense half-steps on one gathered n x m block, forward and backward (sinkhorn_cpu.cpp): compiled into
// each instruction set's entry points (align_kernels.h).
#pragma once
#include <algorithm>
#include <cmath>
#include <cstdint>
#include <limits>

#include "align/fast_math.h"
#include "align/vec.h"
#include "common/cpu_simd.h"

namespace fastlayers::sinkhorn {

// ---- dense half-steps on the gathered n x m block -------------------------------------------------------------
// The state after any half-step is x0_ij - A_i - B_j, with A, B the running sums of the row and column lse vectors
// (a_t, b_t: what the published loop subtracts at half-step t). The kernels keep it in scaling form instead:
// exp(state)_ij = K_ij * u_i * v_j with K = exp(x0 - alpha - beta) for base potentials alpha, beta fixed between
// rebases, u = exp(alpha - A), v = exp(beta - B). A row step is then r = K v (one multiply-add per entry, no exp),
// a_t = log(u_i r_i) and u = 1 / r; columns alike with c = K^T u. An iteration costs two matrix-vector products
// and n + m logs, against the log domain's exp of every entry.
//
// Rebase: once some |log u_i| or |log v_j| exceeds kLogRange the current potentials become the base and K is
// recomputed (one exp pass; K <= 1 again, as a normalised state's entries are). Between rebases u, v <= e^range,
// so an entry of exp(state) above ~1e-12 (float) never sits in K below the normal range: what FTZ / vexp flush to
// zero is negligible. A line sum below kTinyLine (all of its entries near the flush threshold) is instead redone
// in the log domain from x0, followed by a rebase. Such lines only arise when a whole row (column) sits ~35
// (float) / ~570 (double) below the rest of its columns (rows) in the current scaling.
//
// Layout: K [n4, ms] row-major for the column products and KT [m4, ns] for the row products, so both are vertical
// multiply-adds of whole vectors with no horizontal sums; n4, m4 round the line counts up to 4 (zero lines) for
// four independent accumulator chains, ns, ms round them up to whole vectors (padding lanes hold kPad in x0,
// i.e. 0 in K).

using align::fast_log;
using align::kLanes;
using align::round_up;
template <typename T>
constexpr T kPad = sizeof(T) == 4 ? T(-1e30) : T(-1e300);
template <typename T>
constexpr T kLogRange = sizeof(T) == 4 ? T(30) : T(100);
// kTiny * e^kLogRange: a line sum below this may have lost a relevant share of its mass to flushed entries of K.
template <typename T>
constexpr T kTinyLine = sizeof(T) == 4 ? T(1e-28 * 1.0686474581524463e13) : T(1e-290 * 2.6881171418161356e43);

// y[0:len] = sum_{j < lines} M[j, 0:len] * s[j]; lines is a multiple of 4, len of kLanes, row stride len.
template <typename T>
FL_INLINE void vertical_matvec(const T* __restrict M, const T* __restrict s, int64_t lines, int64_t len,
                               T* __restrict y) {
  using V = typename align::Vec<T>::type;
  constexpr int64_t L = kLanes<T>;
  for (int64_t k = 0; k < len; k += L) {
    const T* p = M + k;
    V a0{}, a1{}, a2{}, a3{};
    for (int64_t j = 0; j < lines; j += 4) {
      a0 += align::vload<V>(p + j * len) * s[j];
      a1 += align::vload<V>(p + (j + 1) * len) * s[j + 1];
      a2 += align::vload<V>(p + (j + 2) * len) * s[j + 2];
      a3 += align::vload<V>(p + (j + 3) * len) * s[j + 3];
    }
    align::vstore(y + k, (a0 + a1) + (a2 + a3));
  }
}

// out[j, 0:len] = exp(X[j, 0:len] - p[0:len] - q[j]) for j < lines.
template <typename T>
FL_INLINE void exp_block(const T* __restrict X, const T* __restrict p, const T* __restrict q, int64_t lines,
                         int64_t len, T* __restrict out) {
  using V = typename align::Vec<T>::type;
  constexpr int64_t L = kLanes<T>;
  for (int64_t j = 0; j < lines; ++j)
    for (int64_t k = 0; k < len; k += L)
      align::vstore(out + j * len + k,
                    align::vexp(align::vload<V>(X + j * len + k) - align::vload<V>(p + k) - q[j]));
}

// log sum_k exp(x[k] - sh[k]) over k < count (lanes count.. hold kPad / 0).
template <typename T>
T exact_lse(const T* __restrict x, const T* __restrict sh, int64_t count) {
  T mx = -std::numeric_limits<T>::infinity();
  for (int64_t k = 0; k < count; ++k) mx = std::max(mx, x[k] - sh[k]);
  T sum = 0;
  for (int64_t k = 0; k < count; ++k) sum += std::exp(x[k] - sh[k] - mx);
  return mx + std::log(sum);
}

// One half-step over the lines of one side (rows: X = x0, own = alpha, lu, u; other side's B = beta - lv). y holds
// the line products (K v or K^T u). Writes the lse vector at[0:cnt], updates lg = log scale, sc = scale. Returns
// whether a rebase is due. X: this side's lines of x0 (stride len_other); work: len_other scratch, atw: cntp.
// The line loop runs over all cntp (whole vectors, no scalar tail): padding lines get y = 1, so their log scale
// stays 0 and their scale 1, which the zero padding lines of K turn into nothing.
template <typename T>
FL_INLINE bool half_step(T* __restrict y, int64_t cnt, int64_t cntp, const T* __restrict X, int64_t len_other,
                         int64_t cnt_other, const T* __restrict own, const T* __restrict other,
                         const T* __restrict lg_other, T* __restrict lg, T* __restrict sc, T* __restrict at,
                         T* __restrict work, T* __restrict atw) {
  for (int64_t i = cnt; i < cntp; ++i) y[i] = 1;
  T ymin = std::numeric_limits<T>::infinity(), lmax = 0;
  FL_PRAGMA(omp simd reduction(min : ymin) reduction(max : lmax))
  for (int64_t i = 0; i < cntp; ++i) {
    const T yi = y[i];
    const T l = fast_log(yi);
    // The lse increment as a difference of the potentials as floats (not lg + l): the backward sums these
    // increments back into potentials, and differences of stored floats telescope there without drift.
    atw[i] = (own[i] + l) - (own[i] - lg[i]);
    lg[i] = -l;
    sc[i] = T(1) / yi;
    ymin = std::min(ymin, yi);
    lmax = std::max(lmax, std::abs(l));
  }
  if (ymin >= kTinyLine<T>) {
    std::copy(atw, atw + cnt, at);
    return !(lmax <= kLogRange<T>);  // NaN-safe: NaN input rebases, never loops
  }
  // Some line sums lost their mass to flushed entries of K: those lines get their lse from x0 directly.
  // other potential = base - log scale
  for (int64_t j = 0; j < cnt_other; ++j) work[j] = other[j] - lg_other[j];
  for (int64_t i = 0; i < cnt; ++i) {
    if (y[i] >= kTinyLine<T>) continue;
    const T lse = exact_lse(X + i * len_other, work, cnt_other);  // the new potential of line i
    const T old = own[i] - (atw[i] + lg[i]);                      // atw + lg = the old log scale
    atw[i] = lse - old;
    lg[i] = own[i] - lse;
    sc[i] = 1;  // unused: the rebase below resets it
  }
  std::copy(atw, atw + cnt, at);
  return true;
}

// x0: [n, ms], x0T: [m, ns] (gathered logits / tau, kPad in the padding lanes); K: [n4, ms], KT: [m4, ns]
// scratch, K holds P on return; a: [iters, n], b: [iters, m] out; w: scratch of 6 (ns + ms).
template <typename T>
FL_INLINE void forward_dense_impl(const T* __restrict x0, const T* __restrict x0T, T* __restrict K,
                                  T* __restrict KT, int64_t n, int64_t m, int64_t ns, int64_t ms, int64_t iters,
                                  T* __restrict a, T* __restrict b, T* __restrict w) {
  using V = typename align::Vec<T>::type;
  constexpr int64_t L = kLanes<T>;
  const int64_t n4 = round_up(n, 4), m4 = round_up(m, 4);
  T* alpha = w;          // [ns] row base potentials
  T* lu = alpha + ns;    // [ns] log u
  T* u = lu + ns;        // [ns]
  T* r = u + ns;         // [ns] row products K v
  T* beta = r + ns;      // [ms]
  T* lv = beta + ms;     // [ms]
  T* v = lv + ms;        // [ms]
  T* c = v + ms;         // [ms] column products K^T u
  T* work = c + ms;      // [max(ns, ms)]
  T* atw = work + std::max(ns, ms);  // [max(ns, ms)]
  std::fill(w, w + 4 * (ns + ms), T(0));
  std::fill(K + n * ms, K + n4 * ms, T(0));
  std::fill(KT + m * ns, KT + m4 * ns, T(0));
  // Base alpha = row maxima, beta = 0, A = B = 0: log u = alpha, v = 1.
  for (int64_t i = 0; i < n; ++i) {
    const T* xi = x0 + i * ms;
    V vm = align::vload<V>(xi);
    for (int64_t k = L; k < ms; k += L) vm = align::vmax(vm, align::vload<V>(xi + k));
    alpha[i] = lu[i] = align::hmax(vm);
  }
  for (int64_t j = 0; j < m; ++j) v[j] = 1;
  exp_block(x0, beta, alpha, n, ms, K);
  exp_block(x0T, alpha, beta, m, ns, KT);
  auto rebase = [&] {
    for (int64_t i = 0; i < n; ++i) {
      alpha[i] -= lu[i];
      lu[i] = 0;
      u[i] = 1;
    }
    for (int64_t j = 0; j < m; ++j) {
      beta[j] -= lv[j];
      lv[j] = 0;
      v[j] = 1;
    }
    exp_block(x0, beta, alpha, n, ms, K);
    exp_block(x0T, alpha, beta, m, ns, KT);
  };
  for (int64_t t = 0; t < iters; ++t) {
    vertical_matvec(KT, v, m4, ns, r);
    if (half_step(r, n, ns, x0, ms, m, alpha, beta, lv, lu, u, a + t * n, work, atw)) rebase();
    vertical_matvec(K, u, n4, ms, c);
    if (half_step(c, m, ms, x0T, ns, n, beta, alpha, lu, lv, v, b + t * m, work, atw)) rebase();
  }
  for (int64_t i = 0; i < n; ++i) {
    const T ui = u[i];
    for (int64_t k = 0; k < ms; k += L)
      align::vstore(K + i * ms + k, align::vload<V>(K + i * ms + k) * align::vload<V>(v + k) * ui);
  }
}

// g holds dL/dP on entry and dL/dx0 on exit (stride ms, padding lanes 0). Walks the half-steps back with the
// state in the same scaling form: base potentials alpha, beta (start: the final A, B), K = exp(x0 - alpha - beta)
// and per half-step the scales u = exp(alpha - A(t)), v = exp(beta - B(t)) (n + m exps), rebasing when they leave
// e^+-kLogRange. Column step: dx = dy - E * colsum(dy), row step: dx = dy - E * rowsum(dy), E = K u v.
// w: scratch of 4 ns + 5 ms; K: [n, ms].
template <typename T>
FL_INLINE void backward_dense_impl(const T* __restrict x0, T* __restrict g, int64_t n, int64_t m, int64_t ns,
                                   int64_t ms, int64_t iters, const T* __restrict a, const T* __restrict b,
                                   T* __restrict K, T* __restrict w) {
  using V = typename align::Vec<T>::type;
  using align::vload;
  using align::vstore;
  constexpr int64_t L = kLanes<T>;
  T* A = w;             // [ns]
  T* alpha = A + ns;    // [ns]
  T* u = alpha + ns;    // [ns]
  T* rs = u + ns;       // [ns] row sums of g
  T* B = rs + ns;       // [ms]
  T* beta = B + ms;     // [ms]
  T* v = beta + ms;     // [ms]
  T* s = v + ms;        // [ms] column sums of g
  T* sw = s + ms;       // [ms] v_j * s_j
  std::fill(w, w + 4 * ns + 5 * ms, T(0));
  for (int64_t t = 0; t < iters; ++t) {
    for (int64_t i = 0; i < n; ++i) A[i] += a[t * n + i];
    for (int64_t j = 0; j < m; ++j) B[j] += b[t * m + j];
  }
  std::copy(A, A + ns, alpha);
  std::copy(B, B + ms, beta);
  auto rebase = [&] {
    std::copy(A, A + ns, alpha);
    std::copy(B, B + ms, beta);
    exp_block(x0, beta, alpha, n, ms, K);
  };
  // Scales of the current A, B against the base; false when some leaves the range (the caller rebases).
  auto scales = [&]() -> bool {
    T worst = 0;
    for (int64_t k = 0; k < ns; k += L) {
      const V d = vload<V>(alpha + k) - vload<V>(A + k);
      vstore(u + k, align::vexp(d));
      worst = std::max(worst, align::hmax(align::vmax(d, -d)));
    }
    for (int64_t k = 0; k < ms; k += L) {
      const V d = vload<V>(beta + k) - vload<V>(B + k);
      vstore(v + k, align::vexp(d));
      worst = std::max(worst, align::hmax(align::vmax(d, -d)));
    }
    return worst <= kLogRange<T>;
  };
  exp_block(x0, beta, alpha, n, ms, K);
  for (int64_t i = 0; i < n; ++i) {  // through P = exp(x_final) = K
    T* gi = g + i * ms;
    for (int64_t k = 0; k < ms; k += L) {
      const V gv = vload<V>(gi + k) * vload<V>(K + i * ms + k);
      vstore(gi + k, gv);
      vstore(s + k, vload<V>(s + k) + gv);
    }
  }
  for (int64_t t = iters - 1; t >= 0; --t) {
    // Column step t (its output state is A(t+1), B(t+1)), then the row sums for row step t.
    if (!scales()) {
      rebase();
      scales();
    }
    for (int64_t k = 0; k < ms; k += L) vstore(sw + k, vload<V>(v + k) * vload<V>(s + k));
    for (int64_t i = 0; i < n; ++i) {
      T* gi = g + i * ms;
      const T* Ki = K + i * ms;
      const T ui = u[i];
      V acc{};
      for (int64_t k = 0; k < ms; k += L) {
        const V gv = vload<V>(gi + k) - vload<V>(Ki + k) * vload<V>(sw + k) * ui;
        vstore(gi + k, gv);
        acc += gv;
      }
      rs[i] = align::hsum(acc);
    }
    // Row step t: output state A(t+1), B(t).
    for (int64_t j = 0; j < m; ++j) B[j] -= b[t * m + j];
    if (!scales()) {
      rebase();
      scales();
    }
    for (int64_t i = 0; i < n; ++i) rs[i] *= u[i];
    for (int64_t k = 0; k < ms; k += L) {
      const V vk = vload<V>(v + k);
      V acc{};
      for (int64_t i = 0; i < n; ++i) {
        T* gik = g + i * ms + k;
        const V gv = vload<V>(gik) - vload<V>(K + i * ms + k) * vk * rs[i];
        vstore(gik, gv);
        acc += gv;
      }
      vstore(s + k, acc);
    }
    for (int64_t i = 0; i < n; ++i) A[i] -= a[t * n + i];
  }
}

}  // namespace fastlayers::sinkhorn
