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

#include "align/align_isa.h"
#include "common/checks.h"
#define FASTLAYERS_WITH_TORCH_API
#include "common/cpu_cache.h"
#include "common/cpu_simd.h"

namespace fastlayers {
namespace {

using align::score_bwd;
using align::score_fwd;

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
