// Transport by an alignment P on the CPU: the asymmetric hinge score s = -sum ReLU(hq - P hc) and the partner
// features (P hc, P^T hq) of the early-interaction layers, with their gradients.
//
// The hinge score runs one fused task per pair: its products are tiny (N, M ~ 20, D ~ 10), where ATen's batched
// GEMM pays a library call per matrix (about 1 us each, far more than the 4000 multiply-adds). The pair's hc is
// copied into an L1 buffer with D padded to whole vectors, so every product is a broadcast-scalar multiply-add of
// whole vectors, four output rows at a time (four independent accumulator chains). The backward recomputes
// P hc rather than storing it: it costs less than writing and reading [B, N, D] back. Large problems keep
// at::bmm (blocked GEMM wins there); the partner products always do.
#include <ATen/ATen.h>
#include <ATen/Parallel.h>
#include <torch/library.h>

#include <algorithm>
#include <vector>

#include "align/vec.h"
#include "common/checks.h"
#define FASTLAYERS_WITH_TORCH_API
#include "common/cpu_cache.h"
#include "common/cpu_simd.h"

namespace fastlayers {
namespace {

struct Dims {
  int64_t B, N, M, D;
};

Dims check(const at::Tensor& hq, const at::Tensor& hc, const at::Tensor& P, const char* op) {
  FL_CHECK_CPU(hq);
  FL_CHECK_CPU(hc);
  FL_CHECK_CPU(P);
  FL_CHECK_DIM(hq, 3);
  FL_CHECK_DIM(hc, 3);
  FL_CHECK_DIM(P, 3);
  const Dims d{P.size(0), P.size(1), P.size(2), hq.size(2)};
  TORCH_CHECK_VALUE(hq.size(0) == d.B && hq.size(1) == d.N, op, ": hq must be [B, N, D] to match P [B, N, M] = ",
                    P.sizes(), ", got hq ", hq.sizes());
  TORCH_CHECK_VALUE(hc.size(0) == d.B && hc.size(1) == d.M && hc.size(2) == d.D, op,
                    ": hc must be [B, M, D] = [", d.B, ", ", d.M, ", ", d.D, "] from P ", P.sizes(), " and hq ",
                    hq.sizes(), ", got ", hc.sizes());
  TORCH_CHECK_TYPE(hq.scalar_type() == P.scalar_type() && hc.scalar_type() == P.scalar_type(), op,
                   ": hq, hc and P must share a dtype, got ", hq.scalar_type(), ", ", hc.scalar_type(), ", ",
                   P.scalar_type());
  TORCH_CHECK_TYPE(P.scalar_type() == at::kFloat || P.scalar_type() == at::kDouble, op,
                   ": hq, hc and P must be float32/float64 on CPU, got ", P.scalar_type());
  return d;
}

// out = a @ b (batched) into a pooled tensor; an empty inner dimension gives zeros.
at::Tensor bmm_cached(const at::Tensor& a, const at::Tensor& b) {
  at::Tensor out = empty_cached({a.size(0), a.size(1), b.size(2)}, a.options());
  if (a.size(2) == 0) return out.zero_();
  at::bmm_out(out, a, b);
  return out;
}

// Large pairs: ATen GEMM for the product, the hinge and its sum fused into one pass.
at::Tensor align_score_fwd_bmm(const at::Tensor& hq_in, const at::Tensor& hc_in, const at::Tensor& P, const Dims& d) {
  const at::Tensor hq = hq_in.contiguous();
  const at::Tensor t = bmm_cached(P, hc_in);
  at::Tensor s = empty_cached({d.B}, P.options());
  const int64_t nd = d.N * d.D;
  AT_DISPATCH_FLOATING_TYPES(P.scalar_type(), "align_score_fwd_cpu", [&] {
    const scalar_t *q = hq.const_data_ptr<scalar_t>(), *tp = t.const_data_ptr<scalar_t>();
    scalar_t* out = s.mutable_data_ptr<scalar_t>();
    at::parallel_for(0, d.B, std::max<int64_t>(1, 4096 / std::max<int64_t>(1, nd)), [&](int64_t b0, int64_t b1) {
      for (int64_t b = b0; b < b1; ++b) {
        const scalar_t *qb = q + b * nd, *tb = tp + b * nd;
        scalar_t acc = 0;
        FL_SIMD_SUM(acc) for (int64_t k = 0; k < nd; ++k) acc += std::max(qb[k] - tb[k], scalar_t(0));
        out[b] = -acc;
      }
    });
  });
  return s;
}

std::tuple<at::Tensor, at::Tensor, at::Tensor> align_score_bwd_bmm(const at::Tensor& gs_in, const at::Tensor& hq_in,
                                                                   const at::Tensor& hc, const at::Tensor& P,
                                                                   const Dims& d) {
  const at::Tensor hq = hq_in.contiguous();
  const at::Tensor gs = gs_in.to(P.scalar_type()).contiguous();
  const at::Tensor t = bmm_cached(P, hc);
  // grad_hq = dR = -g * [hq - P hc > 0] (ReLU's gradient is 0 at 0, as in torch)
  at::Tensor gq = empty_cached({d.B, d.N, d.D}, P.options());
  const int64_t nd = d.N * d.D;
  AT_DISPATCH_FLOATING_TYPES(P.scalar_type(), "align_score_bwd_cpu", [&] {
    const scalar_t *q = hq.const_data_ptr<scalar_t>(), *tp = t.const_data_ptr<scalar_t>(),
                   *g = gs.const_data_ptr<scalar_t>();
    scalar_t* dR = gq.mutable_data_ptr<scalar_t>();
    at::parallel_for(0, d.B, std::max<int64_t>(1, 4096 / std::max<int64_t>(1, nd)), [&](int64_t b0, int64_t b1) {
      for (int64_t b = b0; b < b1; ++b) {
        const scalar_t gb = -g[b];
        FL_SIMD for (int64_t k = b * nd; k < (b + 1) * nd; ++k) dR[k] = (q[k] - tp[k]) > 0 ? gb : scalar_t(0);
      }
    });
  });
  // grad_P = -dR hc^T, grad_hc = -P^T dR
  at::Tensor gP = bmm_cached(gq, hc.transpose(1, 2)).neg_();
  at::Tensor gc = bmm_cached(P.transpose(1, 2), gq).neg_();
  return {gq, gc, gP};
}

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

#define FL_SCORE_DRIVERS(T)                                                                                      \
  FL_MULTIVERSION void score_fwd(const T* hq, const T* hc, const T* P, T* s, int64_t b0, int64_t b1, int64_t n,  \
                                 int64_t m, int64_t d) {                                                         \
    score_fwd_impl<T>(hq, hc, P, s, b0, b1, n, m, d);                                                            \
  }                                                                                                              \
  FL_MULTIVERSION void score_bwd(const T* gs, const T* hq, const T* hc, const T* P, T* gq, T* gc, T* gP,          \
                                 int64_t b0, int64_t b1, int64_t n, int64_t m, int64_t d) {                      \
    score_bwd_impl<T>(gs, hq, hc, P, gq, gc, gP, b0, b1, n, m, d);                                               \
  }
FL_SCORE_DRIVERS(float)
FL_SCORE_DRIVERS(double)
#undef FL_SCORE_DRIVERS

// The fused kernel keeps a pair's buffers in L1 and has no blocking: beyond these sizes ATen's GEMM takes over.
bool fused_fits(const Dims& z) { return z.N <= 128 && z.M <= 128 && z.D <= 64; }

// Pairs per task: below ~2^20 multiply-adds in all the call runs on the calling thread. A parallel region costs
// a few microseconds even on an idle machine, and a whole B = 128 score is tens of microseconds.
int64_t score_grain(const Dims& z) {
  const int64_t per_pair = std::max<int64_t>(1, z.N * z.M * std::max<int64_t>(z.D, 1));
  return std::max<int64_t>(1, (int64_t(1) << 20) / per_pair);
}

at::Tensor align_score_fwd_cpu(const at::Tensor& hq_in, const at::Tensor& hc_in, const at::Tensor& P_in) {
  const Dims z = check(hq_in, hc_in, P_in, "align_score");
  if (!fused_fits(z)) return align_score_fwd_bmm(hq_in, hc_in, P_in, z);
  const at::Tensor hq = hq_in.contiguous(), hc = hc_in.contiguous(), P = P_in.contiguous();
  at::Tensor s = empty_cached({z.B}, P.options());
  AT_DISPATCH_FLOATING_TYPES(P.scalar_type(), "align_score_fwd_cpu", [&] {
    const scalar_t *q = hq.const_data_ptr<scalar_t>(), *c = hc.const_data_ptr<scalar_t>(),
                   *p = P.const_data_ptr<scalar_t>();
    scalar_t* out = s.mutable_data_ptr<scalar_t>();
    at::parallel_for(0, z.B, score_grain(z),
                     [&](int64_t b0, int64_t b1) { score_fwd(q, c, p, out, b0, b1, z.N, z.M, z.D); });
  });
  return s;
}

std::tuple<at::Tensor, at::Tensor, at::Tensor> align_score_bwd_cpu(const at::Tensor& gs_in, const at::Tensor& hq_in,
                                                                   const at::Tensor& hc_in, const at::Tensor& P_in) {
  const Dims z = check(hq_in, hc_in, P_in, "align_score_bwd");
  TORCH_CHECK_VALUE(gs_in.dim() == 1 && gs_in.size(0) == z.B, "align_score_bwd: grad_s must be [B] = [", z.B,
                    "], got ", gs_in.sizes());
  if (!fused_fits(z)) return align_score_bwd_bmm(gs_in, hq_in, hc_in, P_in, z);
  const at::Tensor hq = hq_in.contiguous(), hc = hc_in.contiguous(), P = P_in.contiguous();
  const at::Tensor gs = gs_in.to(P.scalar_type()).contiguous();
  at::Tensor gq = empty_cached({z.B, z.N, z.D}, P.options());
  at::Tensor gc = empty_cached({z.B, z.M, z.D}, P.options());
  at::Tensor gP = empty_cached({z.B, z.N, z.M}, P.options());
  AT_DISPATCH_FLOATING_TYPES(P.scalar_type(), "align_score_bwd_cpu", [&] {
    const scalar_t *q = hq.const_data_ptr<scalar_t>(), *c = hc.const_data_ptr<scalar_t>(),
                   *p = P.const_data_ptr<scalar_t>(), *g = gs.const_data_ptr<scalar_t>();
    scalar_t *oq = gq.mutable_data_ptr<scalar_t>(), *oc = gc.mutable_data_ptr<scalar_t>(),
             *op = gP.mutable_data_ptr<scalar_t>();
    at::parallel_for(0, z.B, score_grain(z), [&](int64_t b0, int64_t b1) {
      score_bwd(g, q, c, p, oq, oc, op, b0, b1, z.N, z.M, z.D);
    });
  });
  return {gq, gc, gP};
}

std::tuple<at::Tensor, at::Tensor> partner_fwd_cpu(const at::Tensor& P, const at::Tensor& hq, const at::Tensor& hc) {
  check(hq, hc, P, "partner");
  return {bmm_cached(P, hc), bmm_cached(P.transpose(1, 2), hq)};
}

std::tuple<at::Tensor, at::Tensor, at::Tensor> partner_bwd_cpu(const at::Tensor& gqp_in, const at::Tensor& gcp_in,
                                                               const at::Tensor& P, const at::Tensor& hq,
                                                               const at::Tensor& hc) {
  check(hq, hc, P, "partner_bwd");
  TORCH_CHECK(gqp_in.sizes() == hq.sizes() && gcp_in.sizes() == hc.sizes(),
              "partner_bwd: gradients must have the shapes of hq and hc");
  const at::Tensor gqp = gqp_in.to(P.scalar_type()), gcp = gcp_in.to(P.scalar_type());
  // grad_P = g_qp hc^T + hq g_cp^T; grad_hq = P g_cp; grad_hc = P^T g_qp
  at::Tensor gP = bmm_cached(gqp, hc.transpose(1, 2));
  if (hq.size(2) > 0) gP.baddbmm_(hq, gcp.transpose(1, 2));
  return {gP, bmm_cached(P, gcp), bmm_cached(P.transpose(1, 2), gqp)};
}

}  // namespace

TORCH_LIBRARY_IMPL(fastlayers, CPU, m) {
  m.impl("align_score_fwd", &align_score_fwd_cpu);
  m.impl("align_score_bwd", &align_score_bwd_cpu);
  m.impl("partner_fwd", &partner_fwd_cpu);
  m.impl("partner_bwd", &partner_bwd_cpu);
}

}  // namespace fastlayers
