// Every op schema of the fastlayers library, in one place: compiled into fastlayers._C (the stable-ABI library,
// which loads under any torch from 2.13 on), so every op exists even where the torch-pinned _C_aten cannot load.
// Kernels register per device in csrc/<family>/ (C++, CUDA) or from Python (Triton); fake kernels and autograd
// formulas live in python/fastlayers/ops/<family>.py.
#include "common/stable.h"

STABLE_TORCH_LIBRARY(fastlayers, m) {
  // eca: y = x * sigmoid(conv1d_over_channels(mean_spatial(x), weight)); also returns the pooled means and the
  // gates ([N, C], float32 or float64) that the backward needs.
  m.def("eca_fwd(Tensor x, Tensor weight, bool circular) -> (Tensor y, Tensor pooled, Tensor gate)");
  m.def(
      "eca_bwd(Tensor grad_y, Tensor x, Tensor weight, Tensor pooled, Tensor gate, bool circular)"
      " -> (Tensor grad_x, Tensor grad_weight)");

  // ncache: NAT's per-node hashed neighbour dictionaries. Tables keys/eids [N, S] int64, times [N, S] float64,
  // values [N, S, D] float32, S = 1 + sum(sizes); last_time [1] float64. update writes them in place.
  m.def(
      "ncache_update(Tensor(a!) keys, Tensor(b!) eids, Tensor(c!) times, Tensor(d!) values, Tensor(e!) last_time,"
      " Tensor src, Tensor dst, Tensor t, Tensor eid, Tensor? edge_values, int[] sizes, float replace_prob,"
      " int seed, bool aligned=False) -> ()");
  m.def(
      "ncache_lookup(Tensor keys, Tensor eids, Tensor times, Tensor values, Tensor nodes)"
      " -> (Tensor keys, Tensor eids, Tensor times, Tensor values)");
  m.def(
      "ncache_pair_features(Tensor keys, Tensor values, Tensor u, Tensor v, int[] sizes, int seed,"
      " bool aligned=False)"
      " -> (Tensor keys, Tensor codes, Tensor feats, Tensor mask, Tensor counts)");
  // aligned (update, pair_features): the caller vouches that every key of hops >= 1 sits at its hash slot, which
  // every state written by update satisfies; the CPU kernels then skip the per-entry hash. misplaced counts the
  // entries that are not (NCache checks a state it did not write once).
  m.def("ncache_misplaced(Tensor keys, int[] sizes, int seed) -> int");

  // mp (sparse message passing). A graph is given as CSR arrays from fastlayers.Graph: rowptr [N+1], col [E]
  // (source of each slot), perm [E] (caller edge id of each slot); its reversed graph as (colptr, row, cperm).
  // x is [N, H, F]; weight is [E] or [E, H] in the caller's edge order. arg (max/min) holds the winning caller
  // edge id (E for empty rows) and is returned only when need_arg (else [0, H, F]). Ops that take both orders use
  // the reversed one only in their backward.
  m.def(
      "spmm_fwd(Tensor rowptr, Tensor col, Tensor perm, Tensor colptr, Tensor row, Tensor cperm, Tensor? weight,"
      " Tensor x, str reduce, bool need_arg) -> (Tensor out, Tensor arg)");
  m.def(
      "spmm_arg_bwd(Tensor colptr, Tensor row, Tensor cperm, Tensor? weight, Tensor x, Tensor grad_out,"
      " Tensor arg, bool need_x, bool need_weight) -> (Tensor grad_x, Tensor grad_weight)");
  // a, b [N, H, F] -> [E, H]: a[target] . b[source], in the caller's edge order.
  m.def(
      "sddmm(Tensor rowptr, Tensor col, Tensor perm, Tensor colptr, Tensor row, Tensor cperm, Tensor a, Tensor b)"
      " -> Tensor");
  // scores, out [E, H] in the caller's edge order; softmax over each target's incoming edges.
  m.def("edge_softmax_fwd(Tensor rowptr, Tensor perm, Tensor scores) -> Tensor");
  m.def("edge_softmax_bwd(Tensor rowptr, Tensor perm, Tensor out, Tensor grad_out) -> Tensor");
  // Graph building: stable sort of key [E] (values in [0, n)) -> (rowptr [n+1], perm [E]).
  m.def("csr_index(Tensor key, int n) -> (Tensor rowptr, Tensor perm)");
  // segment_csr: src [E, F], indptr [N+1] -> [N, F]; arg = position in src (E for empty segments).
  m.def("segment_fwd(Tensor src, Tensor indptr, str reduce, bool need_arg) -> (Tensor out, Tensor arg)");
  m.def("segment_bwd(Tensor grad_out, Tensor indptr, Tensor arg, int num_src, str reduce) -> Tensor");
  // scatter: src [A, L, B], index [L] in [0, dim_size) -> [A, dim_size, B]; arg = position along L (L if empty).
  m.def(
      "scatter_fwd(Tensor src, Tensor index, int dim_size, str reduce, bool need_arg)"
      " -> (Tensor out, Tensor arg)");
  m.def("scatter_bwd(Tensor grad_out, Tensor index, Tensor arg, str reduce) -> Tensor");
  // block_spmm: x [N, d, F], blocks [E, d, d] (or diagonal [E, d]) in the caller's edge order;
  // out[v] = sum over edges u -> v of B_e x[u] (B_e^T with transpose). bwd_blocks: [E, d, d] (or [E, d]) of
  // grad_out[v] x[u]^T summed over F.
  m.def(
      "block_spmm_fwd(Tensor rowptr, Tensor col, Tensor perm, Tensor colptr, Tensor row, Tensor cperm,"
      " Tensor blocks, Tensor x, bool transpose) -> Tensor");
  m.def(
      "block_spmm_bwd_blocks(Tensor rowptr, Tensor col, Tensor perm, Tensor grad_out, Tensor x, bool diag)"
      " -> Tensor");

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

  // align: one IsoNet++ node layer (fastlayers.ops.isonet_layer): z = MLP_int([h, partner]), messages
  // MLP_msg([z_u, z_v]) along the CSR of incoming edges (rowptr [N+1], col [E] = source per slot), summed at the
  // target, GRUCell(sum, h), rows of mask False set to 0. h, partner [N, D]; weights as nn.Linear / nn.GRUCell.
  // Instead of partner, P [B, n, n_o] and other [B * n_o, D] give partner = P other per pair (P^T with transpose).
  m.def(
      "isonet_layer_fwd(Tensor h, Tensor? partner, Tensor? P, Tensor? other, bool transpose, Tensor rowptr,"
      " Tensor col, Tensor mask, Tensor inter_w1, Tensor inter_b1, Tensor inter_w2, Tensor inter_b2,"
      " Tensor msg_w1, Tensor msg_b1, Tensor msg_w2, Tensor msg_b2, Tensor w_ih, Tensor w_hh, Tensor b_ih,"
      " Tensor b_hh) -> Tensor");
  // Its backward's per-node and per-edge part (CPU): the gradients of h and of the partner, and the per-node
  // factors of the weight gradients (r, dx1, da, s, dgi, dgh), rows padded to whole vectors.
  m.def(
      "isonet_layer_bwd(Tensor grad, Tensor h, Tensor? partner, Tensor rowptr, Tensor col, Tensor mask,"
      " Tensor inter_w1, Tensor inter_b1, Tensor inter_w2, Tensor inter_b2, Tensor msg_w1, Tensor msg_b1,"
      " Tensor msg_w2, Tensor msg_b2, Tensor w_ih, Tensor w_hh, Tensor b_ih, Tensor b_hh) -> Tensor[]");
}
