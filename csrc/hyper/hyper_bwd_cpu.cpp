// hyper_linear backward on the CPU, W-free (spec: dHm = G^T Z; V = G Hm; dx_b = V_b phi_b; dphi_b = V_b^T x_b for
// T = 1; for T > 1 the per-sample weight gradient G_b^T X_b is formed per (o-block, sample-block) tile).
#include <ATen/core/LegacyTypeDispatch.h>
#include <torch/library.h>

#define FASTLAYERS_WITH_TORCH_API
#include "common/cpu_cache.h"
#include "hyper/hyper_cpu.h"

namespace fastlayers::hyper {
namespace {

struct Grads {
  at::Tensor dx, dphi, dweight;  // dx [B, T, I], dphi [B, h], dweight [O*I + O, h]
};

template <typename S>
void outer_backward(const Dims& d, const at::Tensor& g, const at::Tensor& x, const at::Tensor& phi,
                    const at::Tensor& hm, bool need_input, bool need_weight, Grads& out) {
  const auto [bb, ib] = outer_blocks(d, sizeof(S));
  // One buffer serves both tiles in turn (Z for the weight gradient, then V for the input gradients).
  at::Tensor z = at::empty({bb, ib * d.h}, x.options());
  at::Tensor& v = z;
  at::Tensor dhm = out.dweight.narrow(0, 0, d.O * d.I).view({d.O, d.I * d.h});
  for (int64_t i0 = 0; i0 < d.I; i0 += ib) {
    const int64_t ni = std::min(ib, d.I - i0), k = ni * d.h;
    for (int64_t b0 = 0; b0 < d.B; b0 += bb) {
      const int64_t nb = std::min(bb, d.B - b0);
      const at::Tensor gb = g.narrow(0, b0, nb);
      if (need_weight) {
        outer_tile(x.const_data_ptr<S>() + b0 * d.I, phi.const_data_ptr<S>() + b0 * d.h, z.mutable_data_ptr<S>(),
                   nb, d.I, i0, ni, d.h);
        const at::Tensor zt = z.view(-1).narrow(0, 0, nb * k).view({nb, k});
        at::Tensor dst = dhm.narrow(1, i0 * d.h, k);
        if (b0 == 0) {
          at::mm_out(dst, gb.t(), zt);
        } else {
          dst.addmm_(gb.t(), zt);
        }
      }
      if (need_input) {
        at::Tensor vt = v.view(-1).narrow(0, 0, nb * k).view({nb, k});
        at::mm_out(vt, gb, hm.narrow(1, i0 * d.h, k));
        contract_tile(vt.const_data_ptr<S>(), x.const_data_ptr<S>() + b0 * d.I, phi.const_data_ptr<S>() + b0 * d.h,
                      out.dx.mutable_data_ptr<S>() + b0 * d.I, out.dphi.mutable_data_ptr<S>() + b0 * d.h, nb, d.I,
                      i0, ni, d.h);
      }
    }
  }
}

// T > 1, in two parallel regions without races (see tiled_forward for why single-threaded GEMMs inside one region):
// (1) over chunks of samples: regenerate W tiles, dx_b += G_b W_b, and dphi_b += dW_b Hs with dW_b = G_b^T X_b;
// (2) over blocks of output rows, each thread owning its rows of dH: dH_rows += dW^T phi, dW recomputed (it costs
// 2*B*T*O*I against the 2*B*O*I*h of the GEMM, and storing it would be the B*O*I tensor this op avoids).
template <typename S>
void tiled_backward(const Dims& d, const at::Tensor& g, const at::Tensor& x, const at::Tensor& phi,
                    const at::Tensor& hrows, bool need_input, bool need_weight, Grads& out) {
  const auto [ob, bb] = tile_blocks(d, sizeof(S));
  const int64_t chunk = std::min<int64_t>(64, std::max<int64_t>(1, bb));
  const int64_t n_chunks = (d.B + chunk - 1) / chunk;
  const S* gp = g.const_data_ptr<S>();
  const S* xp = x.const_data_ptr<S>();
  if (need_input) {
    at::parallel_for(0, n_chunks, 1, [&](int64_t c0, int64_t c1) {
      at::AutoDispatchBelowADInplaceOrView below_autograd;  // thread-local: set in every worker
      at::Tensor w = at::empty({chunk, ob * d.I}, x.options());
      at::Tensor dw = at::empty({chunk, ob * d.I}, x.options());
      for (int64_t c = c0; c < c1; ++c) {
        const int64_t b0 = c * chunk, nb = std::min(chunk, d.B - b0);
        at::Tensor dphi_c = out.dphi.narrow(0, b0, nb);
        for (int64_t o0 = 0; o0 < d.O; o0 += ob) {
          const int64_t no = std::min(ob, d.O - o0);
          const at::Tensor hs = hrows.narrow(0, o0 * d.I, no * d.I);
          at::Tensor wt = w.view(-1).narrow(0, 0, nb * no * d.I).view({nb, no * d.I});
          at::mm_out(wt, phi.narrow(0, b0, nb), hs.t());
          apply_tile_t(wt.const_data_ptr<S>(), gp + b0 * d.T * d.O + o0,
                       out.dx.mutable_data_ptr<S>() + b0 * d.T * d.I, nb, d.T, d.I, no, d.O);
          at::Tensor dwt = dw.view(-1).narrow(0, 0, nb * no * d.I).view({nb, no * d.I});
          sample_grad_tile(gp + b0 * d.T * d.O + o0, xp + b0 * d.T * d.I, dwt.mutable_data_ptr<S>(), nb, d.T, d.I,
                           no, d.O);
          dphi_c.addmm_(dwt, hs);
        }
      }
    });
  }
  if (need_weight) {
    const int64_t n_oblocks = (d.O + ob - 1) / ob;
    at::Tensor dhrows = out.dweight.narrow(0, 0, d.O * d.I);
    at::parallel_for(0, n_oblocks, 1, [&](int64_t k0, int64_t k1) {
      at::AutoDispatchBelowADInplaceOrView below_autograd;
      at::Tensor dw = at::empty({chunk, ob * d.I}, x.options());
      for (int64_t k = k0; k < k1; ++k) {
        const int64_t o0 = k * ob, no = std::min(ob, d.O - o0);
        at::Tensor dhs = dhrows.narrow(0, o0 * d.I, no * d.I);
        for (int64_t b0 = 0; b0 < d.B; b0 += chunk) {
          const int64_t nb = std::min(chunk, d.B - b0);
          at::Tensor dwt = dw.view(-1).narrow(0, 0, nb * no * d.I).view({nb, no * d.I});
          sample_grad_tile(gp + b0 * d.T * d.O + o0, xp + b0 * d.T * d.I, dwt.mutable_data_ptr<S>(), nb, d.T, d.I,
                           no, d.O);
          if (b0 == 0) {
            at::mm_out(dhs, dwt.t(), phi.narrow(0, b0, nb));
          } else {
            dhs.addmm_(dwt.t(), phi.narrow(0, b0, nb));
          }
        }
      }
    });
  }
}

std::tuple<at::Tensor, at::Tensor, at::Tensor, at::Tensor, at::Tensor> hyper_linear_bwd_cpu(
    const at::Tensor& grad_y, const at::Tensor& x_in, const at::Tensor& phi_in, const at::Tensor& weight_in,
    const c10::optional<at::Tensor>& w0, bool need_input, bool need_weight) {
  FL_CHECK_CPU(grad_y);
  FL_CHECK_CPU(x_in);
  FL_CHECK_CPU(phi_in);
  FL_CHECK_CPU(weight_in);
  const Dims d = dims_of(x_in, phi_in, weight_in);
  check_static(w0, c10::nullopt, d, x_in);
  TORCH_CHECK(grad_y.dim() == 3 && grad_y.size(0) == d.B && grad_y.size(1) == d.T && grad_y.size(2) == d.O,
              "hyper_linear_bwd: grad_y must be [B, T, O]");
  const auto opts = x_in.options();
  Grads out{empty_cached({d.B, d.T, d.I}, opts), empty_cached({d.B, d.h}, opts),
            empty_cached({d.O * d.I + d.O, d.h}, opts)};
  at::Tensor dw0 = empty_cached({d.O, d.I}, opts);
  at::Tensor db0 = empty_cached({d.O}, opts);
  const at::Tensor g = grad_y.to(x_in.scalar_type()).contiguous();
  const at::Tensor x = x_in.contiguous(), phi = phi_in.contiguous(), weight = weight_in.contiguous();
  const at::Tensor g2 = g.view({d.B * d.T, d.O}), x2 = x.view({d.B * d.T, d.I});
  // Static parts: gradients of w0 and b0, and the output-bias rows Hb; gs = sum over tokens of G, [B, O].
  at::sum_out(db0, g2, {0});
  at::mm_out(dw0, g2.t(), x2);
  const at::Tensor gs = d.T == 1 ? g.view({d.B, d.O}) : g.sum(1);
  at::Tensor dhb = out.dweight.narrow(0, d.O * d.I, d.O);
  at::mm_out(dhb, gs.t(), phi);
  at::mm_out(out.dphi, gs, weight.narrow(0, d.O * d.I, d.O));
  if (w0) {
    at::Tensor dx2 = out.dx.view({d.B * d.T, d.I});
    at::mm_out(dx2, g2, *w0);
  } else {
    out.dx.zero_();
  }
  if (!need_weight) out.dweight.narrow(0, 0, d.O * d.I).zero_();
  if (d.B * d.T * d.I * d.O * d.h == 0) {
    // Nothing was contracted: the hypernetwork rows' gradient is zero (also when B = 0, where mm_out wrote none).
    out.dweight.narrow(0, 0, d.O * d.I).zero_();
    return {out.dx, out.dphi, out.dweight, dw0, db0};
  }
  if (!need_input && !need_weight) return {out.dx, out.dphi, out.dweight, dw0, db0};
  if (d.T == 1) {
    const at::Tensor hm = weight.narrow(0, 0, d.O * d.I).view({d.O, d.I * d.h});
    AT_DISPATCH_FLOATING_TYPES(x.scalar_type(), "hyper_linear_bwd_cpu", [&] {
      outer_backward<scalar_t>(d, g.view({d.B, d.O}), x, phi, hm, need_input, need_weight, out);
    });
  } else {
    AT_DISPATCH_FLOATING_TYPES(x.scalar_type(), "hyper_linear_bwd_cpu", [&] {
      tiled_backward<scalar_t>(d, g, x, phi, weight.narrow(0, 0, d.O * d.I), need_input, need_weight, out);
    });
  }
  return {out.dx, out.dphi, out.dweight, dw0, db0};
}

}  // namespace
}  // namespace fastlayers::hyper

TORCH_LIBRARY_IMPL(fastlayers, CPU, m) { m.impl("hyper_linear_bwd", &fastlayers::hyper::hyper_linear_bwd_cpu); }
