// hyper_linear forward on the CPU: y[b, t] = W_b x[b, t] + Hb phi_b + w0 x[b, t] + b0 with
// W_b = reshape(Hm-rows phi_b, [O, I]), never materialised (see hyper_cpu.h for the two tilings).
#include <torch/library.h>

#define FASTLAYERS_WITH_TORCH_API
#include "common/cpu_cache.h"
#include "hyper/hyper_cpu.h"

namespace fastlayers::hyper {
namespace {

// y [B, O] += Z Hm^T, Z = x (outer) phi formed tile by tile.
template <typename S>
void outer_forward(const Dims& d, const at::Tensor& x, const at::Tensor& phi, const at::Tensor& hm, at::Tensor& y) {
  const auto [bb, ib] = outer_blocks(d, sizeof(S));
  at::Tensor z = at::empty({bb, ib * d.h}, x.options());
  for (int64_t b0 = 0; b0 < d.B; b0 += bb) {
    const int64_t nb = std::min(bb, d.B - b0);
    at::Tensor yb = y.narrow(0, b0, nb);
    for (int64_t i0 = 0; i0 < d.I; i0 += ib) {
      const int64_t ni = std::min(ib, d.I - i0);
      outer_tile(x.const_data_ptr<S>() + b0 * d.I, phi.const_data_ptr<S>() + b0 * d.h, z.mutable_data_ptr<S>(), nb,
                 d.I, i0, ni, d.h);
      // The tile is packed with rows of ni*h (shorter than the buffer's for the last input block).
      const at::Tensor zt = z.view(-1).narrow(0, 0, nb * ni * d.h).view({nb, ni * d.h});
      yb.addmm_(zt, hm.narrow(1, i0 * d.h, ni * d.h).t());
    }
  }
}

// y [B, T, O] += x_b W_b^T per sample, W generated for (o-block, sample-block) tiles.
void tiled_forward(const Dims& d, const at::Tensor& x, const at::Tensor& phi, const at::Tensor& hrows,
                   at::Tensor& y) {
  const auto [ob, bb] = tile_blocks(d, x.element_size());
  at::Tensor w = at::empty({bb, ob * d.I}, x.options());
  at::Tensor r = at::empty({bb, d.T, ob}, x.options());
  for (int64_t o0 = 0; o0 < d.O; o0 += ob) {
    const int64_t no = std::min(ob, d.O - o0);
    const at::Tensor hs = hrows.narrow(0, o0 * d.I, no * d.I);
    for (int64_t b0 = 0; b0 < d.B; b0 += bb) {
      const int64_t nb = std::min(bb, d.B - b0);
      at::Tensor wt = w.view(-1).narrow(0, 0, nb * no * d.I).view({nb, no * d.I});
      at::mm_out(wt, phi.narrow(0, b0, nb), hs.t());
      at::Tensor rt = r.view(-1).narrow(0, 0, nb * d.T * no).view({nb, d.T, no});
      at::bmm_out(rt, x.narrow(0, b0, nb), wt.view({nb, no, d.I}).transpose(1, 2));
      y.narrow(0, b0, nb).narrow(2, o0, no).add_(rt);
    }
  }
}

at::Tensor hyper_linear_fwd_cpu(const at::Tensor& x_in, const at::Tensor& phi_in, const at::Tensor& weight_in,
                                const c10::optional<at::Tensor>& w0_in, const c10::optional<at::Tensor>& b0_in) {
  FL_CHECK_CPU(x_in);
  FL_CHECK_CPU(phi_in);
  FL_CHECK_CPU(weight_in);
  const Dims d = dims_of(x_in, phi_in, weight_in);
  check_static(w0_in, b0_in, d, x_in);
  at::Tensor y = empty_cached({d.B, d.T, d.O}, x_in.options());
  if (y.numel() == 0) return y;
  const at::Tensor x = x_in.contiguous(), phi = phi_in.contiguous(), weight = weight_in.contiguous();
  const at::Tensor hb = weight.narrow(0, d.O * d.I, d.O);
  // The static and output-bias parts, per sample: ys = Hb phi_b (+ b0), [B, O].
  at::Tensor ys = at::mm(phi, hb.t());
  if (b0_in) ys.add_(*b0_in);
  if (w0_in) {
    at::Tensor y2 = y.view({d.B * d.T, d.O});
    at::mm_out(y2, x.view({d.B * d.T, d.I}), w0_in->t());
    y.add_(ys.unsqueeze(1));
  } else {
    y.copy_(ys.unsqueeze(1));
  }
  if (d.I == 0 || d.h == 0) return y;
  if (d.T == 1) {
    at::Tensor y2 = y.view({d.B, d.O});
    const at::Tensor hm = weight.narrow(0, 0, d.O * d.I).view({d.O, d.I * d.h});
    AT_DISPATCH_FLOATING_TYPES(x.scalar_type(), "hyper_linear_fwd_cpu",
                               [&] { outer_forward<scalar_t>(d, x, phi, hm, y2); });
  } else {
    tiled_forward(d, x, phi, weight.narrow(0, 0, d.O * d.I), y);
  }
  return y;
}

}  // namespace
}  // namespace fastlayers::hyper

TORCH_LIBRARY_IMPL(fastlayers, CPU, m) { m.impl("hyper_linear_fwd", &fastlayers::hyper::hyper_linear_fwd_cpu); }
