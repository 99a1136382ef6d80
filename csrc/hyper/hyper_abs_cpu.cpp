// hyper_abs_linear on the CPU: y[b, t] = |W_b| x[b, t] with W_b = reshape(weight phi_b, [O, I]) + w0, the
// |W_c| x_r term of interval propagation through a generated layer (spec, HyperInterval). |.| is not linear in
// phi, so the outer-product form does not apply: W_b is generated in (o-block, sample-block) tiles for every T,
// as in the T > 1 path of hyper_linear, and dropped after use.
#include <torch/library.h>

#define FASTLAYERS_WITH_TORCH_API
#include "common/cpu_cache.h"
#include "hyper/hyper_cpu.h"

namespace fastlayers::hyper {
namespace {

// Dims of the abs op: weight has O*I rows (no output-bias rows).
Dims abs_dims(const at::Tensor& x, const at::Tensor& phi, const at::Tensor& weight,
              const c10::optional<at::Tensor>& w0) {
  TORCH_CHECK(x.dim() == 3 && phi.dim() == 2 && weight.dim() == 2, "hyper_abs_linear: x [B, T, I], phi [B, h], "
              "weight [O*I, h]");
  const int64_t B = x.size(0), T = x.size(1), I = x.size(2), h = phi.size(1);
  TORCH_CHECK(phi.size(0) == B && weight.size(1) == h, "hyper_abs_linear: phi/weight shapes do not match x");
  // weight [O*I, h] cannot tell O when I = 0; interval_hyper_linear does not call this op then (the term is 0).
  TORCH_CHECK_VALUE(I > 0, "hyper_abs_linear: x must have I >= 1 input features, got shape ", x.sizes());
  TORCH_CHECK_VALUE(weight.size(0) % I == 0, "hyper_abs_linear: weight rows must be O*I with I = ", I, ", got ",
                    weight.size(0));
  TORCH_CHECK(x.scalar_type() == phi.scalar_type() && x.scalar_type() == weight.scalar_type() &&
                  (x.scalar_type() == at::kFloat || x.scalar_type() == at::kDouble),
              "hyper_abs_linear: x, phi, weight must share a float32/float64 dtype");
  const Dims d{B, T, I, weight.size(0) / I, h};
  if (w0) {
    TORCH_CHECK(w0->dim() == 2 && w0->size(0) == d.O && w0->size(1) == I && w0->scalar_type() == x.scalar_type(),
                "hyper_abs_linear: w0 must be [O, I] in x's dtype");
  }
  return d;
}

// The generated tile W[b0 : b0 + nb, o0 : o0 + no, :] (plus w0's rows), into wt [nb, no * I].
void generate(const Dims& d, const at::Tensor& phi, const at::Tensor& weight, const c10::optional<at::Tensor>& w0,
              int64_t b0, int64_t nb, int64_t o0, int64_t no, at::Tensor& wt) {
  at::mm_out(wt, phi.narrow(0, b0, nb), weight.narrow(0, o0 * d.I, no * d.I).t());
  if (w0) wt.add_(w0->narrow(0, o0, no).reshape({1, no * d.I}));
}

at::Tensor hyper_abs_linear_fwd_cpu(const at::Tensor& x_in, const at::Tensor& phi_in, const at::Tensor& weight_in,
                                    const c10::optional<at::Tensor>& w0_in) {
  FL_CHECK_CPU(x_in);
  FL_CHECK_CPU(phi_in);
  FL_CHECK_CPU(weight_in);
  const Dims d = abs_dims(x_in, phi_in, weight_in, w0_in);
  at::Tensor y = empty_cached({d.B, d.T, d.O}, x_in.options());
  if (y.numel() == 0) return y;
  const at::Tensor x = x_in.contiguous(), phi = phi_in.contiguous(), weight = weight_in.contiguous();
  const c10::optional<at::Tensor> w0 = w0_in ? c10::optional<at::Tensor>(w0_in->contiguous()) : c10::nullopt;
  const auto [ob, bb] = tile_blocks(d, x.element_size());
  at::Tensor w = at::empty({bb, ob * d.I}, x.options());
  at::Tensor r = at::empty({bb, d.T, ob}, x.options());
  for (int64_t o0 = 0; o0 < d.O; o0 += ob) {
    const int64_t no = std::min(ob, d.O - o0);
    for (int64_t b0 = 0; b0 < d.B; b0 += bb) {
      const int64_t nb = std::min(bb, d.B - b0);
      at::Tensor wt = w.view(-1).narrow(0, 0, nb * no * d.I).view({nb, no * d.I});
      generate(d, phi, weight, w0, b0, nb, o0, no, wt);
      wt.abs_();
      at::Tensor rt = r.view(-1).narrow(0, 0, nb * d.T * no).view({nb, d.T, no});
      at::bmm_out(rt, x.narrow(0, b0, nb), wt.view({nb, no, d.I}).transpose(1, 2));
      y.narrow(0, b0, nb).narrow(2, o0, no).copy_(rt);  // each (sample, output) block is written once
    }
  }
  return y;
}

std::tuple<at::Tensor, at::Tensor, at::Tensor, at::Tensor> hyper_abs_linear_bwd_cpu(
    const at::Tensor& grad_y, const at::Tensor& x_in, const at::Tensor& phi_in, const at::Tensor& weight_in,
    const c10::optional<at::Tensor>& w0_in) {
  FL_CHECK_CPU(grad_y);
  FL_CHECK_CPU(x_in);
  FL_CHECK_CPU(phi_in);
  FL_CHECK_CPU(weight_in);
  const Dims d = abs_dims(x_in, phi_in, weight_in, w0_in);
  TORCH_CHECK(grad_y.dim() == 3 && grad_y.size(0) == d.B && grad_y.size(1) == d.T && grad_y.size(2) == d.O,
              "hyper_abs_linear_bwd: grad_y must be [B, T, O]");
  const auto opts = x_in.options();
  at::Tensor dx = empty_cached({d.B, d.T, d.I}, opts), dphi = empty_cached({d.B, d.h}, opts);
  at::Tensor dweight = empty_cached({d.O * d.I, d.h}, opts), dw0 = empty_cached({d.O, d.I}, opts);
  dx.zero_();
  dphi.zero_();
  dweight.zero_();
  dw0.zero_();
  if (d.B * d.T * d.O * d.I == 0) return {dx, dphi, dweight, dw0};
  const at::Tensor g = grad_y.to(x_in.scalar_type()).contiguous();
  const at::Tensor x = x_in.contiguous(), phi = phi_in.contiguous(), weight = weight_in.contiguous();
  const c10::optional<at::Tensor> w0 = w0_in ? c10::optional<at::Tensor>(w0_in->contiguous()) : c10::nullopt;
  const auto [ob, bb] = tile_blocks(d, x.element_size());
  at::Tensor w = at::empty({bb, ob * d.I}, x.options());
  at::Tensor dw = at::empty({bb, ob * d.I}, x.options());
  for (int64_t o0 = 0; o0 < d.O; o0 += ob) {
    const int64_t no = std::min(ob, d.O - o0);
    const at::Tensor hs = weight.narrow(0, o0 * d.I, no * d.I);
    at::Tensor dhs = dweight.narrow(0, o0 * d.I, no * d.I);
    for (int64_t b0 = 0; b0 < d.B; b0 += bb) {
      const int64_t nb = std::min(bb, d.B - b0);
      const at::Tensor gt = g.narrow(0, b0, nb).narrow(2, o0, no);  // [nb, T, no]
      const at::Tensor pb = phi.narrow(0, b0, nb);
      at::Tensor wt = w.view(-1).narrow(0, 0, nb * no * d.I).view({nb, no * d.I});
      generate(d, phi, weight, w0, b0, nb, o0, no, wt);
      // dy/dW_b = sign(W_b) * (G_b^T X_b); dx_b = |W_b|^T G_b. wt becomes sign(W) after |W| has been used.
      at::Tensor dwt = dw.view(-1).narrow(0, 0, nb * no * d.I).view({nb, no, d.I});
      at::bmm_out(dwt, gt.transpose(1, 2), x.narrow(0, b0, nb));
      dx.narrow(0, b0, nb).baddbmm_(gt, wt.abs().view({nb, no, d.I}));
      dwt.mul_(wt.sign_().view({nb, no, d.I}));
      const at::Tensor dw2 = dwt.view({nb, no * d.I});
      dhs.addmm_(dw2.t(), pb);
      dphi.narrow(0, b0, nb).addmm_(dw2, hs);
      dw0.narrow(0, o0, no).add_(dwt.sum(0));
    }
  }
  return {dx, dphi, dweight, dw0};
}

}  // namespace
}  // namespace fastlayers::hyper

TORCH_LIBRARY_IMPL(fastlayers, CPU, m) {
  m.impl("hyper_abs_linear_fwd", &fastlayers::hyper::hyper_abs_linear_fwd_cpu);
  m.impl("hyper_abs_linear_bwd", &fastlayers::hyper::hyper_abs_linear_bwd_cpu);
}
