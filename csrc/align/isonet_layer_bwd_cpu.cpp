// Backward of the fused IsoNet++ node layer on the CPU (fastlayers.ops.isonet_layer): the per-node and per-edge
// part of the gradient in the forward's folded form, so the Python side is left with node-level GEMMs for the
// weight gradients and the unfolding of the folded weights.
//
// Recompute: r = relu(W1 [h, p] + b1) and a = [a_u | a_v] per node (the forward's node pass, keeping r), then per
// target v the edge sum s_v = sum_e relu(a_u[src] + a_v[v]) and the GRU gates. Gradient, given g = dL/dh':
//   GRU:   dgi = [dr, dz, dn], dgh = [dr, dz, dn * r_gate]; dh = g * z_gate + W_hh^T dgh; ds = W_g^T dgi
//   edges: de_e = ds_v * [a_u[src] + a_v[v] > 0]; da_v[v] = sum_e de_e; da_u[src] += de_e (a serial scatter:
//          one add of M1 values per edge, cheaper than any partitioning of the edges by source)
//   nodes: dx1 = (W_a^T da) * [x1 > 0]; dh += W1h^T dx1; dp = W1p^T dx1.
// Returned (rows padded to whole vectors, Python slices them): dh, dp, r, dx1, da, s, dgi, dgh; the weight
// gradients are sums over nodes of outer products of these, one GEMM each in Python.
#include <ATen/ATen.h>
#include <ATen/Parallel.h>
#include <torch/library.h>

#include <algorithm>
#include <optional>
#include <tuple>
#include <vector>

#include "align/align_isa.h"
#include "align/isonet_layer.h"
#include "align/isonet_layer_bwd.h"
#include "common/checks.h"

namespace fastlayers {
namespace {

using namespace isonet_layer;
using namespace align;


std::vector<at::Tensor> isonet_layer_bwd_cpu(
    const at::Tensor& grad_in, const at::Tensor& h_in, const std::optional<at::Tensor>& partner,
    const at::Tensor& rowptr_in, const at::Tensor& col_in, const at::Tensor& mask_in, const at::Tensor& iw1,
    const at::Tensor& ib1, const at::Tensor& iw2, const at::Tensor& ib2, const at::Tensor& mw1,
    const at::Tensor& mb1, const at::Tensor& mw2, const at::Tensor& mb2, const at::Tensor& w_ih,
    const at::Tensor& w_hh, const at::Tensor& b_ih, const at::Tensor& b_hh) {
  FL_CHECK_CPU(h_in);
  FL_CHECK_DIM(h_in, 2);
  const Dims d = layer_dims(h_in, iw1, ib1, iw2, ib2, mw1, mb1, mw2, mb2, w_ih, w_hh, b_ih, b_hh, rowptr_in, mask_in);
  TORCH_CHECK(grad_in.sizes() == h_in.sizes() && grad_in.scalar_type() == h_in.scalar_type(),
              "isonet_layer_bwd: grad must match h");
  const at::Tensor h = h_in.contiguous(), g = grad_in.contiguous(), rowptr = rowptr_in.contiguous(),
                   col = col_in.contiguous(), mask = mask_in.contiguous();
  check_graph(rowptr, col, mask, d.N, "isonet_layer_bwd");
  at::Tensor p;
  if (partner.has_value()) {
    TORCH_CHECK(partner->sizes() == h.sizes() && partner->scalar_type() == h.scalar_type(),
                "isonet_layer_bwd: partner must match h");
    p = partner->contiguous();
  }
  const int64_t DP = pad(d.D), E = col.numel();
  const auto opt = h.options();
  at::Tensor dh = at::zeros({d.N, DP}, opt), dp = at::zeros({d.N, DP}, opt), r = at::zeros({d.N, d.HP}, opt),
             dx1 = at::zeros({d.N, d.HP}, opt), da = at::zeros({d.N, d.AP}, opt), s = at::zeros({d.N, d.M1P}, opt),
             dgi = at::zeros({d.N, d.GP}, opt), dgh = at::zeros({d.N, d.GP}, opt);
  if (d.N == 0 || d.D == 0) return {dh, dp, r, dx1, da, s, dgi, dgh};
  const int64_t* rp = rowptr.const_data_ptr<int64_t>();
  const int64_t* cp = col.const_data_ptr<int64_t>();
  const bool* mp = mask.const_data_ptr<bool>();
  const std::vector<uint8_t> need = needed_nodes(d.N, rp, cp, mp);
  const int64_t grain = 256;
  AT_DISPATCH_FLOATING_TYPES(h.scalar_type(), "isonet_layer_bwd_cpu", [&] {
    using T = scalar_t;
    const Folded<T> f = fold<T>(d, iw1, ib1, iw2, ib2, mw1, mb1, mw2, mb2, w_ih, w_hh, b_ih, b_hh);
    const BackWeights<T> bw(d, f);
    const std::vector<T> zero(std::max({d.AP, d.HP, d.GP, DP}), T(0));
    const T* hp = h.const_data_ptr<T>();
    const T* pp = p.defined() ? p.const_data_ptr<T>() : nullptr;
    std::vector<T> a(size_t(d.N) * size_t(d.AP)), de(size_t(E) * size_t(d.M1P));
    BackOut<T> o{dh.mutable_data_ptr<T>(), dp.mutable_data_ptr<T>(), r.mutable_data_ptr<T>(),
                 dx1.mutable_data_ptr<T>(), da.mutable_data_ptr<T>(), s.mutable_data_ptr<T>(),
                 dgi.mutable_data_ptr<T>(), dgh.mutable_data_ptr<T>(), de.data()};
    at::parallel_for(0, d.N, grain, [&](int64_t u0, int64_t u1) {
      std::vector<T> rbuf(kGroup * d.HP);
      node_sweep_keep_r(d, f, hp, pp, need.data(), a.data(), u0, u1, rbuf.data(), o.r);
    });
    at::parallel_for(0, d.N, grain, [&](int64_t v0, int64_t v1) {
      GateBuf<T> gb(d);
      std::vector<T> ds(kGroup * d.M1P);
      grad_target_sweep(d, f, bw, hp, g.const_data_ptr<T>(), a.data(), rp, cp, mp, o, v0, v1, gb, ds.data(),
                        zero.data());
    });
    // The sources' share of the edge gradients (columns 0..M1 of da; the targets' share went to M1P..).
    for (int64_t e = 0; e < E; ++e) {
      const T* x = o.de + e * d.M1P;
      T* y = o.da + cp[e] * d.AP;
      for (int64_t c = 0; c < d.M1; ++c) y[c] += x[c];
    }
    at::parallel_for(0, d.N, grain, [&](int64_t u0, int64_t u1) {
      grad_node_sweep(d, bw, need.data(), pp != nullptr, o, u0, u1, zero.data());
    });
  });
  return {dh, dp, r, dx1, da, s, dgi, dgh};
}

}  // namespace

TORCH_LIBRARY_IMPL(fastlayers, CPU, m) { m.impl("isonet_layer_bwd", &isonet_layer_bwd_cpu); }

}  // namespace fastlayers
