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

#include "align/propagate.h"
#include "common/checks.h"

namespace fastlayers {
namespace {

using namespace propagate;

// The folded weights transposed back (row k = input k of the backward product, outputs padded to vectors).
template <typename T>
struct BackWeights {
  int64_t DP;
  std::vector<T> whT;   // [3D, DP]: dh from dgh
  std::vector<T> wgT;   // [3D, M1P]: ds from dgi
  std::vector<T> waT;   // [AP, HP]: dr from da
  std::vector<T> w1hT;  // [H, DP]: dh from dx1
  std::vector<T> w1pT;  // [H, DP]: dp from dx1
  BackWeights(const Dims& d, const Folded<T>& f) : DP(pad(d.D)) {
    const int64_t G = 3 * d.D;
    whT.assign(G * DP, T(0));
    wgT.assign(G * d.M1P, T(0));
    for (int64_t k = 0; k < G; ++k) {
      for (int64_t o = 0; o < d.D; ++o) whT[k * DP + o] = f.wh[o * d.GP + k];
      for (int64_t o = 0; o < d.M1; ++o) wgT[k * d.M1P + o] = f.wg[o * d.GP + k];
    }
    waT.assign(d.AP * d.HP, T(0));
    for (int64_t k = 0; k < d.AP; ++k)
      for (int64_t o = 0; o < d.H; ++o) waT[k * d.HP + o] = f.wa[o * d.AP + k];
    w1hT.assign(d.H * DP, T(0));
    w1pT.assign(d.H * DP, T(0));
    for (int64_t k = 0; k < d.H; ++k)
      for (int64_t o = 0; o < d.D; ++o) {
        w1hT[k * DP + o] = f.w1h[o * d.HP + k];
        w1pT[k * DP + o] = f.w1p[o * d.HP + k];
      }
  }
};

template <typename T>
struct BackOut {
  T *dh, *dp, *r, *dx1, *da, *s, *dgi, *dgh, *de;
};

// Targets [v0, v1) (one block of at most kBlock): edge sums, GRU gates, the GRU's backward, ds, and the edges' de.
template <typename T>
FL_INLINE void grad_target_pass(const Dims& d, const Folded<T>& f, const BackWeights<T>& bw, const T* h,
                                const T* g, const T* a, const int64_t* rowptr, const int64_t* col, const bool* mask,
                                const BackOut<T>& o, int64_t v0, int64_t v1, GateBuf<T>& gb, T* ds,
                                const T* zero) {
  const int64_t D = d.D, DP = bw.DP;
  gate_pass(d, f, h, a, rowptr, col, mask, v0, v1, gb, o.s);
  // The GRU's backward per real target: h' = n + z (h - n), n = tanh(i_n + r h_n).
  for (int64_t u = v0; u < v1; ++u) {
    if (!mask[u]) continue;
    const int64_t i = (u - v0) * D;
    const T *gu = g + u * D, *hu = h + u * D;
    T *dgi = o.dgi + u * d.GP, *dgh = o.dgh + u * d.GP, *dh = o.dh + u * DP;
    for (int64_t c = 0; c < D; ++c) {
      const T r = gb.r[i + c], z = gb.z[i + c], n = gb.n[i + c], hn = gb.nh[i + c], gc = gu[c];
      const T dn = gc * (T(1) - z) * (T(1) - n * n);
      const T dz = gc * (hu[c] - n) * z * (T(1) - z);
      const T dr = dn * hn * r * (T(1) - r);
      dgi[c] = dr;
      dgi[D + c] = dz;
      dgi[2 * D + c] = dn;
      dgh[c] = dr;
      dgh[D + c] = dz;
      dgh[2 * D + c] = dn * r;
      dh[c] = gc * z;
    }
  }
  // ds = W_g^T dgi and dh += W_hh^T dgh, a group at a time; then the edges of each real target.
  int64_t v = v0;
  while (v < v1) {
    int64_t ids[kGroup];
    const int cnt = next_group(mask, v, v1, ids);
    if (cnt == 0) break;
    const T *xi[kGroup], *xh[kGroup], *bz[kGroup], *bd[kGroup];
    T *outs[kGroup], *outh[kGroup];
    for (int q = 0; q < kGroup; ++q) {
      xi[q] = o.dgi + ids[q] * d.GP;
      xh[q] = o.dgh + ids[q] * d.GP;
      bz[q] = zero;
      outs[q] = ds + q * d.M1P;
      outh[q] = o.dh + ids[q] * DP;
      bd[q] = outh[q];  // in place: the product reads its bias before it stores (a repeated node gets one value)
    }
    matvec_group(outs, d.M1P, bz, bw.wgT.data(), xi, 3 * D, (const T*)nullptr, (const T* const*)nullptr, 0);
    matvec_group(outh, DP, bd, bw.whT.data(), xh, 3 * D, (const T*)nullptr, (const T* const*)nullptr, 0);
    for (int q = 0; q < cnt; ++q) {
      const int64_t u = ids[q];
      const T *dsu = ds + q * d.M1P, *av = a + u * d.AP + d.M1P;
      T* dav = o.da + u * d.AP + d.M1P;
      for (int64_t e = rowptr[u]; e < rowptr[u + 1]; ++e) {
        const T* au = a + col[e] * d.AP;
        T* dee = o.de + e * d.M1P;
        for (int64_t c = 0; c < d.M1; ++c) {
          const T x = au[c] + av[c] > T(0) ? dsu[c] : T(0);
          dee[c] = x;
          dav[c] += x;
        }
      }
    }
  }
}

// Nodes [u0, u1) that are needed: dx1 = (W_a^T da) * [r > 0], dh += W1h^T dx1, dp = W1p^T dx1.
template <typename T>
FL_INLINE void grad_node_pass(const Dims& d, const BackWeights<T>& bw, const uint8_t* need, bool with_partner,
                              const BackOut<T>& o, int64_t u0, int64_t u1, const T* zero) {
  int64_t u = u0;
  while (u < u1) {
    int64_t ids[kGroup];
    if (next_group(need, u, u1, ids) == 0) break;
    const T *xa[kGroup], *bz[kGroup], *xr[kGroup], *bd[kGroup];
    T *outr[kGroup], *outh[kGroup], *outp[kGroup];
    for (int q = 0; q < kGroup; ++q) {
      xa[q] = o.da + ids[q] * d.AP;
      bz[q] = zero;
      outr[q] = o.dx1 + ids[q] * d.HP;
      xr[q] = outr[q];
      outh[q] = o.dh + ids[q] * bw.DP;
      bd[q] = outh[q];
      outp[q] = o.dp + ids[q] * bw.DP;
    }
    matvec_group(outr, d.HP, bz, bw.waT.data(), xa, d.AP, (const T*)nullptr, (const T* const*)nullptr, 0);
    for (int q = 0; q < kGroup; ++q) {
      const T* r = o.r + ids[q] * d.HP;
      T* x = outr[q];
      for (int64_t c = 0; c < d.HP; ++c) x[c] = r[c] > T(0) ? x[c] : T(0);
    }
    matvec_group(outh, bw.DP, bd, bw.w1hT.data(), xr, d.H, (const T*)nullptr, (const T* const*)nullptr, 0);
    if (with_partner)
      matvec_group(outp, bw.DP, bz, bw.w1pT.data(), xr, d.H, (const T*)nullptr, (const T* const*)nullptr, 0);
  }
}

#define FL_PROPAGATE_BACKWARD_DRIVERS(T)                                                                          \
  FL_MULTIVERSION void node_sweep_keep_r(const Dims& d, const Folded<T>& f, const T* h, const T* p,              \
                                         const uint8_t* need, T* a, int64_t u0, int64_t u1, T* rbuf, T* r) {     \
    node_pass<T>(d, f, h, p, Transport<T>{}, need, a, u0, u1, rbuf, nullptr, r);                                \
  }                                                                                                              \
  FL_MULTIVERSION void grad_target_sweep(const Dims& d, const Folded<T>& f, const BackWeights<T>& bw,            \
                                         const T* h, const T* g, const T* a, const int64_t* rowptr,              \
                                         const int64_t* col, const bool* mask, const BackOut<T>& o, int64_t v0,  \
                                         int64_t v1, GateBuf<T>& gb, T* ds, const T* zero) {                     \
    for (int64_t b = v0; b < v1; b += kBlock)                                                                    \
      grad_target_pass<T>(d, f, bw, h, g, a, rowptr, col, mask, o, b, std::min(v1, b + kBlock), gb, ds, zero);   \
  }                                                                                                              \
  FL_MULTIVERSION void grad_node_sweep(const Dims& d, const BackWeights<T>& bw, const uint8_t* need,             \
                                       bool with_partner, const BackOut<T>& o, int64_t u0, int64_t u1,           \
                                       const T* zero) {                                                          \
    grad_node_pass<T>(d, bw, need, with_partner, o, u0, u1, zero);                                               \
  }
FL_PROPAGATE_BACKWARD_DRIVERS(float)
FL_PROPAGATE_BACKWARD_DRIVERS(double)
#undef FL_PROPAGATE_BACKWARD_DRIVERS

std::vector<at::Tensor> isonet_layer_backward_cpu(
    const at::Tensor& grad_in, const at::Tensor& h_in, const std::optional<at::Tensor>& partner,
    const at::Tensor& rowptr_in, const at::Tensor& col_in, const at::Tensor& mask_in, const at::Tensor& iw1,
    const at::Tensor& ib1, const at::Tensor& iw2, const at::Tensor& ib2, const at::Tensor& mw1,
    const at::Tensor& mb1, const at::Tensor& mw2, const at::Tensor& mb2, const at::Tensor& w_ih,
    const at::Tensor& w_hh, const at::Tensor& b_ih, const at::Tensor& b_hh) {
  FL_CHECK_CPU(h_in);
  FL_CHECK_DIM(h_in, 2);
  const Dims d = layer_dims(h_in, iw1, ib1, iw2, ib2, mw1, mb1, mw2, mb2, w_ih, w_hh, b_ih, b_hh, rowptr_in, mask_in);
  TORCH_CHECK(grad_in.sizes() == h_in.sizes() && grad_in.scalar_type() == h_in.scalar_type(),
              "isonet_layer_backward: grad must match h");
  const at::Tensor h = h_in.contiguous(), g = grad_in.contiguous(), rowptr = rowptr_in.contiguous(),
                   col = col_in.contiguous(), mask = mask_in.contiguous();
  check_graph(rowptr, col, mask, d.N, "isonet_layer_backward");
  at::Tensor p;
  if (partner.has_value()) {
    TORCH_CHECK(partner->sizes() == h.sizes() && partner->scalar_type() == h.scalar_type(),
                "isonet_layer_backward: partner must match h");
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
  AT_DISPATCH_FLOATING_TYPES(h.scalar_type(), "isonet_layer_backward_cpu", [&] {
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

TORCH_LIBRARY_IMPL(fastlayers, CPU, m) { m.impl("isonet_layer_backward", &isonet_layer_backward_cpu); }

}  // namespace fastlayers
