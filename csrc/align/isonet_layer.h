// The building blocks of the fused IsoNet++ node layer on the CPU, shared by its forward
// (isonet_layer_fwd_cpu.cpp) and backward (isonet_layer_bwd_cpu.cpp) kernels: folded weights, register-blocked
// matrix-vector products, the per-node interaction pass and the per-target edge-sum + GRU pass.
#pragma once

#include <ATen/ATen.h>

#include <algorithm>
#include <vector>

#include "align/vec.h"
#include "common/cpu_simd.h"

namespace fastlayers {
namespace isonet_layer {


using align::vexp;
using align::vload;
using align::vsplat;
using align::vstore;

constexpr int64_t kPad = 16;  // every padded width is a multiple of one float vector (and of two double ones)
constexpr int64_t kBlock = 32;  // nodes per GRU gate batch: the gate buffers stay in L1

inline int64_t pad(int64_t n) { return align::round_up(n, kPad); }

// out[0:W] = bias[0:W] + sum_k x1[k] w1[k, 0:W] + sum_k x2[k] w2[k, 0:W], W a compile-time multiple of 16, so
// the accumulators are W / lanes whole registers. With one or two output vectors a single accumulator per vector
// would chain every multiply-add on the previous one (4-cycle latency each); R partial sums over k keep about
// eight independent chains in flight, enough to feed both FMA pipes.
// acc[r] += sum over k = r (mod R) of x[k] w[k, 0:W] (the tail on chain 0: a runtime chain index would put acc
// in memory). A helper and not a lambda: a lambda here is a separate function of the baseline target, not inlined
// into the per-ISA entry points (this header is included before their `#pragma GCC target`).
template <typename T, typename V, int W, int L, int R, int NV>
FL_INLINE void matvec_sweep(V (&acc)[R][NV], const T* w, const T* x, int64_t kn) {
  int64_t k = 0;
  for (; k + R <= kn; k += R)
    for (int r = 0; r < R; ++r) {
      const V xk = vsplat<V>(x[k + r]);
      for (int j = 0; j < NV; ++j) acc[r][j] += xk * vload<V>(w + (k + r) * W + j * L);
    }
  for (; k < kn; ++k) {
    const V xk = vsplat<V>(x[k]);
    for (int j = 0; j < NV; ++j) acc[0][j] += xk * vload<V>(w + k * W + j * L);
  }
}

template <typename T, int W>
FL_INLINE void matvec_w(T* out, const T* bias, const T* w1, const T* x1, int64_t k1, const T* w2, const T* x2,
                        int64_t k2) {
  using V = typename align::Vec<T>::type;
  constexpr int L = 64 / sizeof(T), NV = W / L, R = NV >= 8 ? 1 : 8 / NV;
  V acc[R][NV];
  for (int r = 0; r < R; ++r)
    for (int j = 0; j < NV; ++j) acc[r][j] = V{};
  matvec_sweep<T, V, W, L, R, NV>(acc, w1, x1, k1);
  matvec_sweep<T, V, W, L, R, NV>(acc, w2, x2, k2);
  for (int j = 0; j < NV; ++j) {
    V t = vload<V>(bias + j * L);
    for (int r = 0; r < R; ++r) t += acc[r][j];
    vstore(out + j * L, t);
  }
}

// Any padded width: the common ones in registers, wider ones through memory.
template <typename T>
FL_INLINE void matvec(T* out, int64_t w, const T* bias, const T* w1, const T* x1, int64_t k1, const T* w2,
                      const T* x2, int64_t k2) {
  switch (w) {
    case 16: return matvec_w<T, 16>(out, bias, w1, x1, k1, w2, x2, k2);
    case 32: return matvec_w<T, 32>(out, bias, w1, x1, k1, w2, x2, k2);
    case 48: return matvec_w<T, 48>(out, bias, w1, x1, k1, w2, x2, k2);
    case 64: return matvec_w<T, 64>(out, bias, w1, x1, k1, w2, x2, k2);
    default: break;
  }
  for (int64_t o = 0; o < w; ++o) out[o] = bias[o];
  for (int64_t k = 0; k < k1; ++k) FL_SIMD for (int64_t o = 0; o < w; ++o) out[o] += x1[k] * w1[k * w + o];
  for (int64_t k = 0; k < k2; ++k) FL_SIMD for (int64_t o = 0; o < w; ++o) out[o] += x2[k] * w2[k * w + o];
}

// The same product for NB nodes at once: each weight row is loaded once for all of them and the NB x NV
// accumulators are independent chains. out[n], bias[n], x1[n], x2[n] per node (x2 may be null when k2 = 0).
template <typename T, int W, int NB>
FL_INLINE void matvec_nb_w(T* const* out, const T* const* bias, const T* w1, const T* const* x1, int64_t k1,
                           const T* w2, const T* const* x2, int64_t k2) {
  using V = typename align::Vec<T>::type;
  constexpr int L = 64 / sizeof(T), NV = W / L;
  V acc[NB][NV];
  for (int n = 0; n < NB; ++n)
    for (int j = 0; j < NV; ++j) acc[n][j] = vload<V>(bias[n] + j * L);
  for (int64_t k = 0; k < k1; ++k) {
    V wv[NV];
    for (int j = 0; j < NV; ++j) wv[j] = vload<V>(w1 + k * W + j * L);
    for (int n = 0; n < NB; ++n) {
      const V xk = vsplat<V>(x1[n][k]);
      for (int j = 0; j < NV; ++j) acc[n][j] += xk * wv[j];
    }
  }
  for (int64_t k = 0; k < k2; ++k) {
    V wv[NV];
    for (int j = 0; j < NV; ++j) wv[j] = vload<V>(w2 + k * W + j * L);
    for (int n = 0; n < NB; ++n) {
      const V xk = vsplat<V>(x2[n][k]);
      for (int j = 0; j < NV; ++j) acc[n][j] += xk * wv[j];
    }
  }
  for (int n = 0; n < NB; ++n)
    for (int j = 0; j < NV; ++j) vstore(out[n] + j * L, acc[n][j]);
}

constexpr int kGroup = 4;  // nodes per multi-node product: 4 x 4 accumulators + 4 weight vectors fit in 32 zmm

template <typename T>
FL_INLINE void matvec_group(T* const* out, int64_t w, const T* const* bias, const T* w1, const T* const* x1,
                            int64_t k1, const T* w2, const T* const* x2, int64_t k2) {
  switch (w) {
    case 16: return matvec_nb_w<T, 16, kGroup>(out, bias, w1, x1, k1, w2, x2, k2);
    case 32: return matvec_nb_w<T, 32, kGroup>(out, bias, w1, x1, k1, w2, x2, k2);
    case 48: return matvec_nb_w<T, 48, kGroup>(out, bias, w1, x1, k1, w2, x2, k2);
    case 64: return matvec_nb_w<T, 64, kGroup>(out, bias, w1, x1, k1, w2, x2, k2);
    default: break;
  }
  for (int n = 0; n < kGroup; ++n) matvec(out[n], w, bias[n], w1, x1[n], k1, w2, x2 ? x2[n] : nullptr, k2);
}

// In place on n elements (n a multiple of 16): x <- sigmoid(x), or tanh(x) = 2 sigmoid(2x) - 1.
template <typename T>
FL_INLINE void sigmoid_inplace(T* x, int64_t n, bool tanh) {
  using V = typename align::Vec<T>::type;
  constexpr int L = 64 / sizeof(T);
  const T scale = tanh ? T(-2) : T(-1);
  for (int64_t i = 0; i < n; i += L) {
    const V s = T(1) / (T(1) + vexp(vload<V>(x + i) * scale));
    vstore(x + i, tanh ? s * T(2) - T(1) : s);
  }
}

struct Dims {
  int64_t N, D, H, Z, M1, M;
  int64_t HP, AP, M1P, GP;  // padded widths: interaction hidden, [a_u | a_v], one half of it, GRU gates
};

// The folded, transposed, zero-padded weights (row k of a block holds input k's weights over the padded outputs).
template <typename T>
struct Folded {
  std::vector<T> w1h, w1p, b1;  // interaction first Linear: [D, HP] for h, [D, HP] for the partner, [HP]
  std::vector<T> wa, ba;        // [H, AP], [AP]: a = [a_u | a_v] from the interaction's hidden layer
  std::vector<T> wg, bg, bdeg;  // [M1, GP], [GP], [GP]: GRU input gates from the edge sum s_v (and the degree)
  // [GP]: the input gates of a node with no incoming edge, b_ih + W_ih 0 as the reference computes them: the
  // folded form would give NaN there for a NaN in msg_w2 / msg_b2 (0 * NaN), which never reach such a node.
  std::vector<T> bg0;
  std::vector<T> wh, bh;        // [D, GP], [GP]: GRU hidden gates
};

template <typename T>
Folded<T> fold(const Dims& d, const at::Tensor& iw1_, const at::Tensor& ib1_, const at::Tensor& iw2_,
               const at::Tensor& ib2_, const at::Tensor& mw1_, const at::Tensor& mb1_, const at::Tensor& mw2_,
               const at::Tensor& mb2_, const at::Tensor& wih_, const at::Tensor& whh_, const at::Tensor& bih_,
               const at::Tensor& bhh_) {
  const at::Tensor c[] = {iw1_.contiguous(), ib1_.contiguous(), iw2_.contiguous(), ib2_.contiguous(),
                          mw1_.contiguous(), mb1_.contiguous(), mw2_.contiguous(), mb2_.contiguous(),
                          wih_.contiguous(), whh_.contiguous(), bih_.contiguous(), bhh_.contiguous()};
  const T *iw1 = c[0].const_data_ptr<T>(), *ib1 = c[1].const_data_ptr<T>(), *iw2 = c[2].const_data_ptr<T>(),
          *ib2 = c[3].const_data_ptr<T>(), *mw1 = c[4].const_data_ptr<T>(), *mb1 = c[5].const_data_ptr<T>(),
          *mw2 = c[6].const_data_ptr<T>(), *mb2 = c[7].const_data_ptr<T>(), *wih = c[8].const_data_ptr<T>(),
          *whh = c[9].const_data_ptr<T>(), *bih = c[10].const_data_ptr<T>(), *bhh = c[11].const_data_ptr<T>();
  const int64_t D = d.D, H = d.H, Z = d.Z, M1 = d.M1, M = d.M, G = 3 * D;
  Folded<T> f;
  f.w1h.assign(D * d.HP, T(0));
  f.w1p.assign(D * d.HP, T(0));
  f.b1.assign(d.HP, T(0));
  for (int64_t o = 0; o < H; ++o) {
    f.b1[o] = ib1[o];
    for (int64_t k = 0; k < D; ++k) {
      f.w1h[k * d.HP + o] = iw1[o * 2 * D + k];
      f.w1p[k * d.HP + o] = iw1[o * 2 * D + D + k];
    }
  }
  // a_u (columns 0..M1) and a_v (M1P..M1P+M1): mw1's source half / target half times the interaction's output map.
  f.wa.assign(H * d.AP, T(0));
  f.ba.assign(d.AP, T(0));
  for (int64_t half = 0; half < 2; ++half) {
    for (int64_t o = 0; o < M1; ++o) {
      const T* row = mw1 + o * 2 * Z + half * Z;
      T b = half ? mb1[o] : T(0);
      for (int64_t j = 0; j < Z; ++j) b += row[j] * ib2[j];
      f.ba[half * d.M1P + o] = b;
      for (int64_t k = 0; k < H; ++k) {
        T s = 0;
        for (int64_t j = 0; j < Z; ++j) s += row[j] * iw2[j * H + k];
        f.wa[k * d.AP + half * d.M1P + o] = s;
      }
    }
  }
  f.wg.assign(M1 * d.GP, T(0));
  f.bg.assign(d.GP, T(0));
  f.bdeg.assign(d.GP, T(0));
  f.bg0.assign(d.GP, T(0));
  f.wh.assign(D * d.GP, T(0));
  f.bh.assign(d.GP, T(0));
  for (int64_t o = 0; o < G; ++o) {
    const T* row = wih + o * M;
    f.bg[o] = bih[o];
    f.bh[o] = bhh[o];
    T b = 0;
    for (int64_t j = 0; j < M; ++j) b += row[j] * mb2[j];
    f.bdeg[o] = b;
    T z = 0;
    for (int64_t j = 0; j < M; ++j) z += row[j] * T(0);  // not folded away: inf / NaN weights give NaN
    f.bg0[o] = bih[o] + z;
    for (int64_t k = 0; k < M1; ++k) {
      T s = 0;
      for (int64_t j = 0; j < M; ++j) s += row[j] * mw2[j * M1 + k];
      f.wg[k * d.GP + o] = s;
    }
    for (int64_t k = 0; k < D; ++k) f.wh[k * d.GP + o] = whh[o * D + k];
  }
  return f;
}

// The layer's sizes from its weights, checked (the Python wrapper checks them too, with argument names).
inline Dims layer_dims(const at::Tensor& h_in, const at::Tensor& iw1, const at::Tensor& ib1, const at::Tensor& iw2,
                       const at::Tensor& ib2, const at::Tensor& mw1, const at::Tensor& mb1, const at::Tensor& mw2,
                       const at::Tensor& mb2, const at::Tensor& w_ih, const at::Tensor& w_hh,
                       const at::Tensor& b_ih, const at::Tensor& b_hh, const at::Tensor& rowptr_in,
                       const at::Tensor& mask_in) {
  Dims d{};
  d.N = h_in.size(0);
  d.D = h_in.size(1);
  d.H = iw1.size(0);
  d.Z = iw2.size(0);
  d.M1 = mw1.size(0);
  d.M = mw2.size(0);
  TORCH_CHECK(iw1.dim() == 2 && iw1.size(1) == 2 * d.D, "isonet_layer: inter_w1 must be [H, 2D]");
  TORCH_CHECK(iw2.dim() == 2 && iw2.size(1) == d.H, "isonet_layer: inter_w2 must be [Z, H]");
  TORCH_CHECK(mw1.dim() == 2 && mw1.size(1) == 2 * d.Z, "isonet_layer: msg_w1 must be [M1, 2Z]");
  TORCH_CHECK(mw2.dim() == 2 && mw2.size(1) == d.M1, "isonet_layer: msg_w2 must be [M, M1]");
  TORCH_CHECK(w_ih.dim() == 2 && w_ih.size(0) == 3 * d.D && w_ih.size(1) == d.M, "isonet_layer: w_ih must be [3D, M]");
  TORCH_CHECK(w_hh.dim() == 2 && w_hh.size(0) == 3 * d.D && w_hh.size(1) == d.D, "isonet_layer: w_hh must be [3D, D]");
  TORCH_CHECK(ib1.numel() == d.H && ib2.numel() == d.Z && mb1.numel() == d.M1 && mb2.numel() == d.M &&
                  b_ih.numel() == 3 * d.D && b_hh.numel() == 3 * d.D,
              "isonet_layer: bias sizes do not match the weights");
  TORCH_CHECK(rowptr_in.numel() == d.N + 1 && mask_in.numel() == d.N && mask_in.scalar_type() == at::kBool,
              "isonet_layer: rowptr must be [N+1] and mask bool [N]");
  TORCH_CHECK(h_in.scalar_type() == at::kFloat || h_in.scalar_type() == at::kDouble,
              "isonet_layer: float32/float64 on CPU");
  d.HP = pad(d.H);
  d.M1P = pad(d.M1);
  d.AP = 2 * d.M1P;
  d.GP = pad(3 * d.D);
  return d;
}

// The CSR graph is dereferenced (rowptr[v], col[e], need[col[e]]) with no other guard: torch.ops callers may pass
// any tensors, so it is checked in full (one pass over N + E, small next to the layer's work per edge).
inline void check_graph(const at::Tensor& rowptr, const at::Tensor& col, const at::Tensor& mask, int64_t n,
                        const char* op) {
  TORCH_CHECK_TYPE(rowptr.scalar_type() == at::kLong && col.scalar_type() == at::kLong, op,
                   ": rowptr and col must be int64, got ", rowptr.scalar_type(), " and ", col.scalar_type());
  TORCH_CHECK_VALUE(rowptr.dim() == 1 && rowptr.size(0) == n + 1, op, ": rowptr must be [N + 1] = [", n + 1,
                    "], got shape ", rowptr.sizes());
  TORCH_CHECK_VALUE(col.dim() == 1, op, ": col must be 1-D [E], got shape ", col.sizes());
  TORCH_CHECK_VALUE(mask.dim() == 1 && mask.size(0) == n, op, ": mask must be [N] = [", n, "], got shape ",
                    mask.sizes());
  TORCH_CHECK_VALUE(rowptr.is_cpu() && col.is_cpu() && mask.is_cpu(), op, ": rowptr, col and mask must be CPU tensors");
  const int64_t* rp = rowptr.const_data_ptr<int64_t>();
  const int64_t* cp = col.const_data_ptr<int64_t>();
  const int64_t E = col.size(0);
  TORCH_CHECK_VALUE(rp[0] == 0 && rp[n] == E, op, ": rowptr must run from 0 to E = ", E, ", got rowptr[0] = ", rp[0],
                    ", rowptr[N] = ", rp[n]);
  for (int64_t v = 0; v < n; ++v)
    TORCH_CHECK_VALUE(rp[v] <= rp[v + 1], op, ": rowptr must be non-decreasing, rowptr[", v + 1, "] = ", rp[v + 1],
                      " < rowptr[", v, "] = ", rp[v]);
  for (int64_t e = 0; e < E; ++e)
    TORCH_CHECK_INDEX(cp[e] >= 0 && cp[e] < n, op, ": col[", e, "] = ", cp[e], " is out of range [0, ", n, ")");
}

// Real nodes and the sources of the edges into them: the nodes whose [a_u | a_v] the layer reads.
inline std::vector<uint8_t> needed_nodes(int64_t n, const int64_t* rp, const int64_t* cp, const bool* mp) {
  std::vector<uint8_t> need(n, 0);
  for (int64_t v = 0; v < n; ++v) {
    if (!mp[v]) continue;
    need[v] = 1;
    for (int64_t e = rp[v]; e < rp[v + 1]; ++e) need[cp[e]] = 1;
  }
  return need;
}

// The partner term given as a transport: partner_u = sum_m P[b, i, m] o_{b, m} for node u = b * n + i (P's rows;
// with transpose, its columns), o the other graph's states. Its product with the interaction's partner weights is
// taken per other-side node first, Q_m = W_p o_m (one row of HP), so a node adds sum_m P[b, i, m] Q_{b, m}.
template <typename T>
struct Transport {
  const T* P = nullptr;  // [B, n, n_o] (or [B, n_o, n] with transpose), contiguous
  const T* Q = nullptr;  // [B * n_o, HP]
  int64_t n = 0, n_o = 0;
  bool transpose = false;
};

// The next kGroup marked nodes from u (advanced past them) into ids; a short last group repeats its last node, so
// a product over the group writes that node twice with the same value. Returns how many were found.
template <typename Flag>
FL_INLINE int next_group(const Flag* marked, int64_t& u, int64_t u1, int64_t (&ids)[kGroup]) {
  int cnt = 0;
  for (; u < u1 && cnt < kGroup; ++u)
    if (marked[u]) ids[cnt++] = u;
  for (int n = cnt; cnt > 0 && n < kGroup; ++n) ids[n] = ids[cnt - 1];
  return cnt;
}

// a[u] for the nodes in [u0, u1) that are marked needed (real nodes and the sources of their incoming edges),
// kGroup nodes per product; a short last group is padded by repeating its last node (written twice, same value).
template <typename T>
FL_INLINE void node_pass(const Dims& d, const Folded<T>& f, const T* h, const T* p, const Transport<T>& tr,
                         const uint8_t* need, T* a, int64_t u0, int64_t u1, T* rbuf, T* coef,
                         T* rstore) {
  int64_t u = u0;
  while (u < u1) {
    int64_t ids[kGroup];
    if (next_group(need, u, u1, ids) == 0) break;
    const T *xh[kGroup], *xp[kGroup], *b1[kGroup], *rin[kGroup], *ba[kGroup];
    T *r[kGroup], *out[kGroup];
    for (int n = 0; n < kGroup; ++n) {
      xh[n] = h + ids[n] * d.D;
      xp[n] = p ? p + ids[n] * d.D : nullptr;
      b1[n] = f.b1.data();
      ba[n] = f.ba.data();
      r[n] = rbuf + n * d.HP;
      rin[n] = r[n];
      out[n] = a + ids[n] * d.AP;
    }
    matvec_group(r, d.HP, b1, f.w1h.data(), xh, d.D, f.w1p.data(), p ? xp : nullptr, p ? d.D : 0);
    if (tr.P) {
      for (int n = 0; n < kGroup; ++n) {
        const int64_t b = ids[n] / tr.n, i = ids[n] % tr.n;
        const T* c = tr.P + (b * tr.n + i) * tr.n_o;
        if (tr.transpose) {
          for (int64_t m = 0; m < tr.n_o; ++m) coef[m] = tr.P[(b * tr.n_o + m) * tr.n + i];
          c = coef;
        }
        matvec(r[n], d.HP, (const T*)r[n], tr.Q + b * tr.n_o * d.HP, c, tr.n_o, (const T*)nullptr,
               (const T*)nullptr, 0);
      }
    }
    for (int64_t o = 0; o < kGroup * d.HP; ++o) rbuf[o] = std::max(rbuf[o], T(0));
    // The backward keeps r (its ReLU mask and the input of the folded map's weight gradient).
    if (rstore)
      for (int n = 0; n < kGroup; ++n) std::copy_n(rbuf + n * d.HP, d.HP, rstore + ids[n] * d.HP);
    matvec_group(out, d.AP, ba, f.wa.data(), rin, d.H, (const T*)nullptr, (const T* const*)nullptr, 0);
  }
}

// Q[j] = W_p o_j for the other graph's nodes j in [j0, j1) (kGroup at a time; the short last group repeats).
template <typename T>
FL_INLINE void other_pass(const Dims& d, const Folded<T>& f, const T* o, const T* zero, T* Q, int64_t j0,
                          int64_t j1) {
  for (int64_t j = j0; j < j1; j += kGroup) {
    const T *x[kGroup], *b[kGroup];
    T* out[kGroup];
    for (int n = 0; n < kGroup; ++n) {
      const int64_t k = std::min(j + n, j1 - 1);
      x[n] = o + k * d.D;
      b[n] = zero;
      out[n] = Q + k * d.HP;
    }
    matvec_group(out, d.HP, b, f.w1p.data(), x, d.D, (const T*)nullptr, (const T* const*)nullptr, 0);
  }
}

// s[0:M1P] = sum over the edges into v of relu(a_u[src] + a_v[v]).
template <typename T, int W>
FL_INLINE void edge_sum_w(T* s, const T* a, int64_t ap, const T* av, const int64_t* col, int64_t e0, int64_t e1) {
  using V = typename align::Vec<T>::type;
  constexpr int L = 64 / sizeof(T), NV = W / L;
  V acc[NV], b[NV];
  for (int j = 0; j < NV; ++j) {
    acc[j] = V{};
    b[j] = vload<V>(av + j * L);
  }
  for (int64_t e = e0; e < e1; ++e) {
    const T* au = a + col[e] * ap;
    for (int j = 0; j < NV; ++j) acc[j] += align::vrelu(vload<V>(au + j * L) + b[j]);  // keeps NaN
  }
  for (int j = 0; j < NV; ++j) vstore(s + j * L, acc[j]);
}

template <typename T>
FL_INLINE void edge_sum(T* s, int64_t w, const T* a, int64_t ap, const T* av, const int64_t* col, int64_t e0,
                        int64_t e1) {
  switch (w) {
    case 16: return edge_sum_w<T, 16>(s, a, ap, av, col, e0, e1);
    case 32: return edge_sum_w<T, 32>(s, a, ap, av, col, e0, e1);
    case 48: return edge_sum_w<T, 48>(s, a, ap, av, col, e0, e1);
    case 64: return edge_sum_w<T, 64>(s, a, ap, av, col, e0, e1);
    default: break;
  }
  for (int64_t o = 0; o < w; ++o) s[o] = 0;
  for (int64_t e = e0; e < e1; ++e)
    FL_SIMD for (int64_t o = 0; o < w; ++o) s[o] += std::max(a[col[e] * ap + o] + av[o], T(0));
}

// Scratch of one block of kBlock target nodes: the GRU pre-activations, one [kBlock * D] (+ slack) run each, so
// the sigmoid/tanh sweeps are whole vectors; and the per-group edge sums and products.
template <typename T>
struct GateBuf {
  std::vector<T> s, gb, gi, gh, r, z, n, nh;
  explicit GateBuf(const Dims& d) {
    // One vector of slack past every run and product row: the gate copies move whole vectors.
    const int64_t run = pad(kBlock * d.D) + kPad;
    s.assign(kGroup * std::max<int64_t>(d.M1P, 1), T(0));
    gb.assign(kGroup * d.GP, T(0));
    gi.assign(kGroup * d.GP + kPad, T(0));
    gh.assign(kGroup * d.GP + kPad, T(0));
    r.assign(run, T(0));
    z.assign(run, T(0));
    n.assign(run, T(0));
    nh.assign(run, T(0));
  }
};

// Targets [v0, v1) (at most kBlock): edge sums s_v, GRU pre-activations, and the gates r, z, n (and W_hn h + b_hn)
// in g's runs, node u at (u - v0) * D. s_keep, when given, receives s_v at row u (stride M1P) for the backward.
template <typename T>
FL_INLINE void gate_pass(const Dims& d, const Folded<T>& f, const T* h, const T* a, const int64_t* rowptr,
                         const int64_t* col, const bool* mask, int64_t v0, int64_t v1, GateBuf<T>& g, T* s_keep) {
  using V = typename align::Vec<T>::type;
  constexpr int64_t L = 64 / sizeof(T);
  const int64_t D = d.D, run = pad((v1 - v0) * D);
  // Padding rows get finite placeholders (their outputs are overwritten with 0, their gradients skipped).
  std::fill_n(g.r.data(), run, T(0));
  std::fill_n(g.z.data(), run, T(0));
  std::fill_n(g.n.data(), run, T(0));
  std::fill_n(g.nh.data(), run, T(0));
  int64_t v = v0;
  while (v < v1) {
    int64_t ids[kGroup];
    const int cnt = next_group(mask, v, v1, ids);
    if (cnt == 0) break;
    const T *sx[kGroup], *bgi[kGroup], *bh[kGroup], *hx[kGroup];
    T *gi[kGroup], *gh[kGroup];
    for (int q = 0; q < kGroup; ++q) {
      const int64_t u = ids[q], e0 = rowptr[u], e1 = rowptr[u + 1];
      T* s = s_keep ? s_keep + u * d.M1P : g.s.data() + q * d.M1P;
      edge_sum(s, d.M1P, a, d.AP, a + u * d.AP + d.M1P, col, e0, e1);
      T* gb = g.gb.data() + q * d.GP;
      const T deg = T(e1 - e0);
      for (int64_t o = 0; o < d.GP; ++o) gb[o] = f.bg[o] + deg * f.bdeg[o];
      sx[q] = s;
      bgi[q] = gb;
      bh[q] = f.bh.data();
      hx[q] = h + u * D;
      gi[q] = g.gi.data() + q * d.GP;
      gh[q] = g.gh.data() + q * d.GP;
    }
    matvec_group(gi, d.GP, bgi, f.wg.data(), sx, d.M1, (const T*)nullptr, (const T* const*)nullptr, 0);
    for (int q = 0; q < cnt; ++q)
      if (rowptr[ids[q] + 1] == rowptr[ids[q]]) std::copy_n(f.bg0.data(), d.GP, gi[q]);
    matvec_group(gh, d.GP, bh, f.wh.data(), hx, D, (const T*)nullptr, (const T* const*)nullptr, 0);
    // Whole-vector copies into the gate runs: each may spill up to one vector past the node's D entries, into
    // the next node's slot (rewritten next, ids ascend), a padding node's (zeroed at the end) or the slack.
    for (int q = 0; q < cnt; ++q) {
      const int64_t i = (ids[q] - v0) * D;
      const T *x = gi[q], *y = gh[q];
      for (int64_t c = 0; c < D; c += L) {
        vstore(g.r.data() + i + c, vload<V>(x + c) + vload<V>(y + c));
        vstore(g.z.data() + i + c, vload<V>(x + D + c) + vload<V>(y + D + c));
        vstore(g.n.data() + i + c, vload<V>(x + 2 * D + c));
        vstore(g.nh.data() + i + c, vload<V>(y + 2 * D + c));
      }
    }
  }
  sigmoid_inplace(g.r.data(), run, false);
  sigmoid_inplace(g.z.data(), run, false);
  for (int64_t i = 0; i < run; ++i) g.n[i] += g.r[i] * g.nh[i];
  sigmoid_inplace(g.n.data(), run, true);
}

// Targets [v0, v1): the GRU gates (gate_pass), then h' = (1 - z) n + z h, padding rows 0.
template <typename T>
FL_INLINE void target_pass(const Dims& d, const Folded<T>& f, const T* h, const T* a, const int64_t* rowptr,
                           const int64_t* col, const bool* mask, T* out, int64_t v0, int64_t v1, GateBuf<T>& g) {
  gate_pass(d, f, h, a, rowptr, col, mask, v0, v1, g, (T*)nullptr);
  const int64_t D = d.D;
  const T* hb = h + v0 * D;
  T* ob = out + v0 * D;
  for (int64_t i = 0; i < (v1 - v0) * D; ++i) ob[i] = (T(1) - g.z[i]) * g.n[i] + g.z[i] * hb[i];
  for (int64_t u = v0; u < v1; ++u)
    if (!mask[u]) std::fill_n(out + u * D, D, T(0));
}

}  // namespace isonet_layer
}  // namespace fastlayers
