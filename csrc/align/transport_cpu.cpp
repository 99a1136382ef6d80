// Transport by an alignment P on the CPU: the asymmetric hinge score s = -sum ReLU(hq - P hc) and the partner
// features (P hc, P^T hq) of the early-interaction layers, with their gradients.
//
// The products are batches of tiny GEMMs (N, M ~ 20, D ~ 10) that ATen's batched GEMM already runs near peak;
// a hand loop over D = 10 loses to it (the vector length is not a multiple of the lanes). So the products go to
// at::bmm_out into pooled outputs, and what this file fuses is the elementwise part: the hinge and its sum in one
// pass over P hc (no ReLU tensor, no separate reduction), and the ReLU mask straight into the gradient.
#include <ATen/ATen.h>
#include <ATen/Parallel.h>
#include <torch/library.h>

#include <algorithm>

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
  TORCH_CHECK(hq.size(0) == d.B && hq.size(1) == d.N, op, ": hq must be [B, N, D]");
  TORCH_CHECK(hc.size(0) == d.B && hc.size(1) == d.M && hc.size(2) == d.D, op, ": hc must be [B, M, D]");
  TORCH_CHECK(hq.scalar_type() == P.scalar_type() && hc.scalar_type() == P.scalar_type(), op,
              ": hq, hc and P must share a dtype");
  TORCH_CHECK(P.scalar_type() == at::kFloat || P.scalar_type() == at::kDouble, op, ": float32/float64 on CPU");
  return d;
}

// out = a @ b (batched) into a pooled tensor; an empty inner dimension gives zeros.
at::Tensor bmm_cached(const at::Tensor& a, const at::Tensor& b) {
  at::Tensor out = empty_cached({a.size(0), a.size(1), b.size(2)}, a.options());
  if (a.size(2) == 0) return out.zero_();
  at::bmm_out(out, a, b);
  return out;
}

at::Tensor align_score_fwd_cpu(const at::Tensor& hq_in, const at::Tensor& hc_in, const at::Tensor& P) {
  const Dims d = check(hq_in, hc_in, P, "align_score");
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

std::tuple<at::Tensor, at::Tensor, at::Tensor> align_score_bwd_cpu(const at::Tensor& gs_in, const at::Tensor& hq_in,
                                                                   const at::Tensor& hc, const at::Tensor& P) {
  const Dims d = check(hq_in, hc, P, "align_score_bwd");
  TORCH_CHECK(gs_in.dim() == 1 && gs_in.size(0) == d.B, "align_score_bwd: grad_s must be [B]");
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
