// hyper_linear backward on the CPU, W-free (spec: dHm = G^T Z; V = G Hm; dx_b = V_b phi_b; dphi_b = V_b^T x_b for
// T = 1; for T > 1 the per-sample weight gradient G_b^T X_b is formed per (o-block, sample-block) tile).
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

void tiled_backward(const Dims& d, const at::Tensor& g, const at::Tensor& x, const at::Tensor& phi,
                    const at::Tensor& hrows, bool need_input, bool need_weight, Grads& out) {
  const auto [ob, bb] = tile_blocks(d, x.element_size());
  at::Tensor dw = at::empty({bb, ob * d.I}, x.options());
  at::Tensor w = need_input ? at::empty({bb, ob * d.I}, x.options()) : at::Tensor();  // (T > 1: two tiles)
  at::Tensor dhrows = out.dweight.narrow(0, 0, d.O * d.I);
  for (int64_t o0 = 0; o0 < d.O; o0 += ob) {
    const int64_t no = std::min(ob, d.O - o0);
    const at::Tensor hs = hrows.narrow(0, o0 * d.I, no * d.I);
    at::Tensor dhs = dhrows.narrow(0, o0 * d.I, no * d.I);
    for (int64_t b0 = 0; b0 < d.B; b0 += bb) {
      const int64_t nb = std::min(bb, d.B - b0);
      const at::Tensor gt = g.narrow(0, b0, nb).narrow(2, o0, no);  // [nb, T, no]
      const at::Tensor xb = x.narrow(0, b0, nb);
      const at::Tensor pb = phi.narrow(0, b0, nb);
      // Per-sample weight gradient of the tile: G_b^T X_b, [nb, no, I].
      at::Tensor dwt = dw.view(-1).narrow(0, 0, nb * no * d.I).view({nb, no, d.I});
      at::bmm_out(dwt, gt.transpose(1, 2), xb);
      const at::Tensor dw2 = dwt.view({nb, no * d.I});
      if (need_weight) {
        if (b0 == 0) {
          at::mm_out(dhs, dw2.t(), pb);
        } else {
          dhs.addmm_(dw2.t(), pb);
        }
      }
      if (need_input) {
        out.dphi.narrow(0, b0, nb).addmm_(dw2, hs);
        at::Tensor wt = w.view(-1).narrow(0, 0, nb * no * d.I).view({nb, no * d.I});
        at::mm_out(wt, pb, hs.t());
        out.dx.narrow(0, b0, nb).baddbmm_(gt, wt.view({nb, no, d.I}));
      }
    }
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
    tiled_backward(d, g, x, phi, weight.narrow(0, 0, d.O * d.I), need_input, need_weight, out);
  }
  return {out.dx, out.dphi, out.dweight, dw0, db0};
}

}  // namespace
}  // namespace fastlayers::hyper

TORCH_LIBRARY_IMPL(fastlayers, CPU, m) { m.impl("hyper_linear_bwd", &fastlayers::hyper::hyper_linear_bwd_cpu); }
