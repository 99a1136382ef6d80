// Transport by an alignment P on the CPU: the asymmetric hinge score s = -sum ReLU(hq - P hc) and the partner
// features (P hc, P^T hq) of the early-interaction layers, with their gradients. One task per pair; a pair's
// P (N x M) and features (N x D, M x D) are a few KiB, so each is read from cache after its first touch and the
// residual R = hq - P hc is recomputed in the backward rather than stored.
#include <ATen/ATen.h>
#include <ATen/Parallel.h>
#include <torch/library.h>

#include <vector>

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

// out[u, :] = sum_v P[u, v] h[v, :] (trans = false) or sum_v P[v, u] h[v, :] (trans = true).
template <typename T>
void transport(const T* P, const T* h, T* out, int64_t N, int64_t M, int64_t D, bool trans) {
  const int64_t rows = trans ? M : N, inner = trans ? N : M;
  for (int64_t u = 0; u < rows; ++u) {
    T* o = out + u * D;
    FL_SIMD for (int64_t k = 0; k < D; ++k) o[k] = 0;
    for (int64_t v = 0; v < inner; ++v) {
      const T w = trans ? P[v * M + u] : P[u * M + v];
      const T* hv = h + v * D;
      FL_SIMD for (int64_t k = 0; k < D; ++k) o[k] += w * hv[k];
    }
  }
}

at::Tensor align_score_fwd_cpu(const at::Tensor& hq_in, const at::Tensor& hc_in, const at::Tensor& P_in) {
  const Dims d = check(hq_in, hc_in, P_in, "align_score");
  const at::Tensor hq = hq_in.contiguous(), hc = hc_in.contiguous(), P = P_in.contiguous();
  at::Tensor s = empty_cached({d.B}, P.options());
  AT_DISPATCH_FLOATING_TYPES(P.scalar_type(), "align_score_fwd_cpu", [&] {
    const scalar_t *q = hq.const_data_ptr<scalar_t>(), *c = hc.const_data_ptr<scalar_t>(),
                   *p = P.const_data_ptr<scalar_t>();
    scalar_t* out = s.mutable_data_ptr<scalar_t>();
    at::parallel_for(0, d.B, 16, [&](int64_t b0, int64_t b1) {
      std::vector<scalar_t> t(d.N * d.D);
      for (int64_t b = b0; b < b1; ++b) {
        transport(p + b * d.N * d.M, c + b * d.M * d.D, t.data(), d.N, d.M, d.D, false);
        const scalar_t* qb = q + b * d.N * d.D;
        scalar_t acc = 0;
        for (int64_t k = 0; k < d.N * d.D; ++k) acc += std::max(qb[k] - t[k], scalar_t(0));
        out[b] = -acc;
      }
    });
  });
  return s;
}

std::tuple<at::Tensor, at::Tensor, at::Tensor> align_score_bwd_cpu(const at::Tensor& gs_in, const at::Tensor& hq_in,
                                                                   const at::Tensor& hc_in, const at::Tensor& P_in) {
  const Dims d = check(hq_in, hc_in, P_in, "align_score_bwd");
  TORCH_CHECK(gs_in.dim() == 1 && gs_in.size(0) == d.B, "align_score_bwd: grad_s must be [B]");
  const at::Tensor hq = hq_in.contiguous(), hc = hc_in.contiguous(), P = P_in.contiguous();
  const at::Tensor gs = gs_in.to(P.scalar_type()).contiguous();
  at::Tensor gq = empty_cached({d.B, d.N, d.D}, P.options());
  at::Tensor gc = empty_cached({d.B, d.M, d.D}, P.options());
  at::Tensor gP = empty_cached({d.B, d.N, d.M}, P.options());
  AT_DISPATCH_FLOATING_TYPES(P.scalar_type(), "align_score_bwd_cpu", [&] {
    const scalar_t *q = hq.const_data_ptr<scalar_t>(), *c = hc.const_data_ptr<scalar_t>(),
                   *p = P.const_data_ptr<scalar_t>(), *g = gs.const_data_ptr<scalar_t>();
    scalar_t *oq = gq.mutable_data_ptr<scalar_t>(), *oc = gc.mutable_data_ptr<scalar_t>(),
             *oP = gP.mutable_data_ptr<scalar_t>();
    at::parallel_for(0, d.B, 16, [&](int64_t b0, int64_t b1) {
      std::vector<scalar_t> t(d.N * d.D);
      for (int64_t b = b0; b < b1; ++b) {
        const scalar_t* pb = p + b * d.N * d.M;
        const scalar_t* cb = c + b * d.M * d.D;
        const scalar_t* qb = q + b * d.N * d.D;
        transport(pb, cb, t.data(), d.N, d.M, d.D, false);
        // dR = -g * [R > 0] (ReLU's gradient is 0 at 0, as in torch); grad_hq = dR.
        scalar_t* dR = oq + b * d.N * d.D;
        for (int64_t k = 0; k < d.N * d.D; ++k) dR[k] = (qb[k] - t[k]) > 0 ? -g[b] : scalar_t(0);
        // grad_P[u, v] = -<dR[u], hc[v]>; grad_hc = -P^T dR.
        scalar_t* gpb = oP + b * d.N * d.M;
        for (int64_t u = 0; u < d.N; ++u) {
          for (int64_t v = 0; v < d.M; ++v) {
            scalar_t acc = 0;
            FL_SIMD_SUM(acc) for (int64_t k = 0; k < d.D; ++k) acc += dR[u * d.D + k] * cb[v * d.D + k];
            gpb[u * d.M + v] = -acc;
          }
        }
        scalar_t* gcb = oc + b * d.M * d.D;
        transport(pb, dR, gcb, d.N, d.M, d.D, true);
        for (int64_t k = 0; k < d.M * d.D; ++k) gcb[k] = -gcb[k];
      }
    });
  });
  return {gq, gc, gP};
}

std::tuple<at::Tensor, at::Tensor> partner_fwd_cpu(const at::Tensor& P_in, const at::Tensor& hq_in,
                                                   const at::Tensor& hc_in) {
  const Dims d = check(hq_in, hc_in, P_in, "partner");
  const at::Tensor hq = hq_in.contiguous(), hc = hc_in.contiguous(), P = P_in.contiguous();
  at::Tensor qp = empty_cached({d.B, d.N, d.D}, P.options());
  at::Tensor cp = empty_cached({d.B, d.M, d.D}, P.options());
  AT_DISPATCH_FLOATING_TYPES(P.scalar_type(), "partner_fwd_cpu", [&] {
    const scalar_t *q = hq.const_data_ptr<scalar_t>(), *c = hc.const_data_ptr<scalar_t>(),
                   *p = P.const_data_ptr<scalar_t>();
    scalar_t *oq = qp.mutable_data_ptr<scalar_t>(), *oc = cp.mutable_data_ptr<scalar_t>();
    at::parallel_for(0, d.B, 16, [&](int64_t b0, int64_t b1) {
      for (int64_t b = b0; b < b1; ++b) {
        const scalar_t* pb = p + b * d.N * d.M;
        transport(pb, c + b * d.M * d.D, oq + b * d.N * d.D, d.N, d.M, d.D, false);
        transport(pb, q + b * d.N * d.D, oc + b * d.M * d.D, d.N, d.M, d.D, true);
      }
    });
  });
  return {qp, cp};
}

std::tuple<at::Tensor, at::Tensor, at::Tensor> partner_bwd_cpu(const at::Tensor& gqp_in, const at::Tensor& gcp_in,
                                                               const at::Tensor& P_in, const at::Tensor& hq_in,
                                                               const at::Tensor& hc_in) {
  const Dims d = check(hq_in, hc_in, P_in, "partner_bwd");
  TORCH_CHECK(gqp_in.sizes() == hq_in.sizes() && gcp_in.sizes() == hc_in.sizes(),
              "partner_bwd: gradients must have the shapes of hq and hc");
  const at::Tensor hq = hq_in.contiguous(), hc = hc_in.contiguous(), P = P_in.contiguous();
  const at::Tensor gqp = gqp_in.to(P.scalar_type()).contiguous(), gcp = gcp_in.to(P.scalar_type()).contiguous();
  at::Tensor gP = empty_cached({d.B, d.N, d.M}, P.options());
  at::Tensor gq = empty_cached({d.B, d.N, d.D}, P.options());
  at::Tensor gc = empty_cached({d.B, d.M, d.D}, P.options());
  AT_DISPATCH_FLOATING_TYPES(P.scalar_type(), "partner_bwd_cpu", [&] {
    const scalar_t *q = hq.const_data_ptr<scalar_t>(), *c = hc.const_data_ptr<scalar_t>(),
                   *p = P.const_data_ptr<scalar_t>(), *a = gqp.const_data_ptr<scalar_t>(),
                   *e = gcp.const_data_ptr<scalar_t>();
    scalar_t *oP = gP.mutable_data_ptr<scalar_t>(), *oq = gq.mutable_data_ptr<scalar_t>(),
             *oc = gc.mutable_data_ptr<scalar_t>();
    at::parallel_for(0, d.B, 16, [&](int64_t b0, int64_t b1) {
      for (int64_t b = b0; b < b1; ++b) {
        const scalar_t* pb = p + b * d.N * d.M;
        const scalar_t *qb = q + b * d.N * d.D, *cb = c + b * d.M * d.D;
        const scalar_t *ab = a + b * d.N * d.D, *eb = e + b * d.M * d.D;
        // grad_P[u, v] = <g_qp[u], hc[v]> + <hq[u], g_cp[v]>
        for (int64_t u = 0; u < d.N; ++u) {
          for (int64_t v = 0; v < d.M; ++v) {
            scalar_t acc = 0;
            FL_SIMD_SUM(acc)
            for (int64_t k = 0; k < d.D; ++k) acc += ab[u * d.D + k] * cb[v * d.D + k] + qb[u * d.D + k] * eb[v * d.D + k];
            oP[b * d.N * d.M + u * d.M + v] = acc;
          }
        }
        transport(pb, eb, oq + b * d.N * d.D, d.N, d.M, d.D, false);  // grad_hq = P g_cp
        transport(pb, ab, oc + b * d.M * d.D, d.N, d.M, d.D, true);   // grad_hc = P^T g_qp
      }
    });
  });
  return {gP, gq, gc};
}

}  // namespace

TORCH_LIBRARY_IMPL(fastlayers, CPU, m) {
  m.impl("align_score_fwd", &align_score_fwd_cpu);
  m.impl("align_score_bwd", &align_score_bwd_cpu);
  m.impl("partner_fwd", &partner_fwd_cpu);
  m.impl("partner_bwd", &partner_bwd_cpu);
}

}  // namespace fastlayers
