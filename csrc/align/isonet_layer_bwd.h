// The IsoNet++ node layer's backward passes over one block of targets / nodes (isonet_layer_bwd_cpu.cpp):
// always-inline, compiled into each instruction set's entry points (align_kernels.h).
#pragma once
#include <ATen/ATen.h>

#include <algorithm>
#include <vector>

#include "align/isonet_layer.h"

namespace fastlayers::isonet_layer {

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

}  // namespace fastlayers::isonet_layer
