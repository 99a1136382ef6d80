// hyper_linear forward on the CPU: y[b, t] = W_b x[b, t] + Hb phi_b + w0 x[b, t] + b0 with
// W_b = reshape(Hm-rows phi_b, [O, I]), never materialised (see hyper_cpu.h for the two tilings).
#include <ATen/core/LegacyTypeDispatch.h>
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

// Samples per task of the T > 1 forward: enough rows for the generating GEMM to amortise packing its H slice.
constexpr int64_t kChunk = 64;

// y [B, T, O] += x_b W_b^T per sample. One parallel region over chunks of samples; each thread generates W tiles
// for its chunk (a single-threaded GEMM, since it runs inside the region) and applies them to the chunk's tokens
// with a vector loop that writes y directly. Measured on the 2-core test machine this beat generating with a
// multi-threaded GEMM per tile and applying with bmm: the bmm of [T, I] x [I, ob] slivers and the strided add into
// y cost more than the generation.
template <typename S>
void tiled_forward(const Dims& d, const at::Tensor& x, const at::Tensor& phi, const at::Tensor& hrows,
                   at::Tensor& y) {
  const auto [ob, bb] = tile_blocks(d, sizeof(S));
  const int64_t chunk = std::min<int64_t>(kChunk, std::max<int64_t>(1, bb));
  const int64_t n_chunks = (d.B + chunk - 1) / chunk;
  at::parallel_for(0, n_chunks, 1, [&](int64_t c0, int64_t c1) {
    // The dispatcher's below-autograd state is thread-local: worker threads must enter it themselves.
    at::AutoDispatchBelowADInplaceOrView below_autograd;
    at::Tensor w = at::empty({chunk, ob * d.I}, x.options());
    for (int64_t c = c0; c < c1; ++c) {
      const int64_t b0 = c * chunk, nb = std::min(chunk, d.B - b0);
      for (int64_t o0 = 0; o0 < d.O; o0 += ob) {
        const int64_t no = std::min(ob, d.O - o0);
        at::Tensor wt = w.view(-1).narrow(0, 0, nb * no * d.I).view({nb, no * d.I});
        at::mm_out(wt, phi.narrow(0, b0, nb), hrows.narrow(0, o0 * d.I, no * d.I).t());
        apply_tile(wt.const_data_ptr<S>(), x.const_data_ptr<S>() + b0 * d.T * d.I,
                   y.mutable_data_ptr<S>() + b0 * d.T * d.O + o0, nb, d.T, d.I, no, d.O);
      }
    }
  });
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
    AT_DISPATCH_FLOATING_TYPES(x.scalar_type(), "hyper_linear_fwd_cpu",
                               [&] { tiled_forward<scalar_t>(d, x, phi, weight.narrow(0, 0, d.O * d.I), y); });
  }
  return y;
}

}  // namespace
}  // namespace fastlayers::hyper

TORCH_LIBRARY_IMPL(fastlayers, CPU, m) { m.impl("hyper_linear_fwd", &fastlayers::hyper::hyper_linear_fwd_cpu); }
