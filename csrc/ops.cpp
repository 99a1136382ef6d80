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

  // align: batched log-domain Sinkhorn over [B, N, M] logits with bool masks [B, N], [B, M]; returns P and the
  // logsumexp vector of every half-step (row_lse [B, T, N], col_lse [B, T, M]) that the reverse sweep needs.
  m.def(
      "sinkhorn_fwd(Tensor logits, Tensor row_mask, Tensor col_mask, float tau, int num_iters, bool reference)"
      " -> (Tensor P, Tensor row_lse, Tensor col_lse)");
  m.def(
      "sinkhorn_bwd(Tensor grad_P, Tensor logits, Tensor row_mask, Tensor col_mask, Tensor row_lse,"
      " Tensor col_lse, float tau, bool reference) -> Tensor grad_logits");
  // align: s[b] = -sum ReLU(hq - P hc) and its gradients; partner transport (P hc, P^T hq) and its gradients.
  m.def("align_score_fwd(Tensor hq, Tensor hc, Tensor P) -> Tensor");
  m.def(
      "align_score_bwd(Tensor grad_s, Tensor hq, Tensor hc, Tensor P)"
      " -> (Tensor grad_hq, Tensor grad_hc, Tensor grad_P)");
  m.def("partner_fwd(Tensor P, Tensor hq, Tensor hc) -> (Tensor q_partner, Tensor c_partner)");
  m.def(
      "partner_bwd(Tensor grad_q_partner, Tensor grad_c_partner, Tensor P, Tensor hq, Tensor hc)"
      " -> (Tensor grad_P, Tensor grad_hq, Tensor grad_hc)");
}
