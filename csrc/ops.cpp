// Every op schema of the fastlayers library, in one place. Kernels register per device in csrc/<family>/ (C++,
// CUDA) or from Python (Triton); fake kernels and autograd formulas live in python/fastlayers/ops/<family>.py.
#include <torch/library.h>

TORCH_LIBRARY(fastlayers, m) {
  // eca: y = x * sigmoid(conv1d_over_channels(mean_spatial(x), weight)); also returns the pooled means and the
  // gates ([N, C], float32 or float64) that the backward needs.
  m.def("eca_fwd(Tensor x, Tensor weight, bool circular) -> (Tensor y, Tensor pooled, Tensor gate)");
  m.def(
      "eca_bwd(Tensor grad_y, Tensor x, Tensor weight, Tensor pooled, Tensor gate, bool circular)"
      " -> (Tensor grad_x, Tensor grad_weight)");
  // hyper: fused generate-and-apply of a hypernetwork's linear layer (x [B, T, I], phi [B, h], weight [O*I + O, h],
  // w0 [O, I] and b0 [O] the static weight and bias). y [B, T, O]; the per-sample weights are never materialised.
  m.def("hyper_linear_fwd(Tensor x, Tensor phi, Tensor weight, Tensor? w0, Tensor? b0) -> Tensor");
  m.def(
      "hyper_linear_bwd(Tensor grad_y, Tensor x, Tensor phi, Tensor weight, Tensor? w0, bool need_input,"
      " bool need_weight) -> (Tensor grad_x, Tensor grad_phi, Tensor grad_weight, Tensor grad_w0, Tensor grad_b0)");
  // y[b, t] = |reshape(weight phi_b, [O, I]) + w0| x[b, t] with weight [O*I, h]: the |W_c| x_r term of interval
  // propagation through a generated layer (interval_hyper_linear).
  m.def("hyper_abs_linear_fwd(Tensor x, Tensor phi, Tensor weight, Tensor? w0) -> Tensor");
  m.def(
      "hyper_abs_linear_bwd(Tensor grad_y, Tensor x, Tensor phi, Tensor weight, Tensor? w0)"
      " -> (Tensor grad_x, Tensor grad_phi, Tensor grad_weight, Tensor grad_w0)");
}
