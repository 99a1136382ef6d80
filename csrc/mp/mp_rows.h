// The row loops of the CPU message-passing ops other than the CSR reduce (mp_cpu.h): scatter's owner pass,
// spmm's max/min backward, SDDMM and the block SpMM with its block gradient. Always-inline templates compiled
// into each instruction set's entry points (mp_kernels.h); the op files call those through mp::kernels<T>().
#pragma once
#include "mp/mp_cpu.h"

namespace fastlayers::mp {

template <typename T, int KIND>
FL_INLINE void scatter_owned(const T* src, const int64_t* idx, T* out, int64_t* arg, int64_t L, int64_t B,
                             int64_t r0, int64_t r1, int64_t* count, bool* bad, int64_t n) {
  std::fill(out + r0 * B, out + r1 * B, T(0));
  for (int64_t p = 0; p < L; ++p) {
    const int64_t t = idx[p];
    if (t < r0 || t >= r1) {
      if (t < 0 || t >= n) *bad = true;
      continue;
    }
    T* __restrict o = out + t * B;
    const T* __restrict x = src + p * B;
    if (KIND == 0) {
      FL_SIMD for (int64_t f = 0; f < B; ++f) o[f] += x[f];
    } else if (count[t - r0] == 0) {
      FL_SIMD for (int64_t f = 0; f < B; ++f) o[f] = x[f];
      if (arg) std::fill(arg + t * B, arg + (t + 1) * B, p);
    } else if (arg) {
      int64_t* __restrict a = arg + t * B;
      FL_SIMD for (int64_t f = 0; f < B; ++f) {
        const bool better = ext_better<KIND>(x[f], o[f]);
        o[f] = better ? x[f] : o[f];
        a[f] = better ? p : a[f];
      }
    } else {
      FL_SIMD for (int64_t f = 0; f < B; ++f) o[f] = ext_pick<KIND>(x[f], o[f]);
    }
    ++count[t - r0];
  }
}

// Max/min backward over the CSC (the slots of source u are its outgoing edges): an edge e = u -> v receives the
// gradient of out[v, h, f] where arg[v, h, f] == e. Each thread owns source rows, so grad_x needs no atomics, and
// grad_weight[e] is written by the one thread that owns e's source.
template <typename T>
FL_INLINE int64_t arg_bwd_rows(const Csr& g, const T* w, int64_t wH, const T* x, const T* gout,
                               const int64_t* arg, T* gx, T* gw, int64_t r0, int64_t r1, int64_t H, int64_t F,
                               int64_t n, int64_t nid) {
  const int64_t HF = H * F;
  const int64_t kstop = g.rowptr[r1];
  int64_t bad = -1;  // first slot whose target (row) or edge id (cperm) is out of range: skipped, then raised
  for (int64_t u = r0; u < r1; ++u) {
    T* gxu = gx ? gx + u * HF : nullptr;
    if (gxu) FL_SIMD for (int64_t i = 0; i < HF; ++i) gxu[i] = T(0);
    const T* xu = x + u * HF;
    for (int64_t k = g.rowptr[u]; k < g.rowptr[u + 1]; ++k) {
      if (k + kPrefetch < kstop) {
        prefetch_row(gout + g.src(k + kPrefetch) * HF, HF * int64_t(sizeof(T)));
        prefetch_row(arg + g.src(k + kPrefetch) * HF, HF * int64_t(sizeof(int64_t)));
      }
      const int64_t v = g.src(k), e = g.id(k);
      if (__builtin_expect(out_of(v, n) || out_of(e, nid), 0)) {
        if (bad < 0) bad = k;
        continue;
      }
      T dw_all = 0;
      for (int64_t h = 0; h < H; ++h) {
        const int64_t* __restrict av = arg + v * HF + h * F;
        const T* __restrict gv = gout + v * HF + h * F;
        const T ws = w ? w[e * wH + (wH == 1 ? 0 : h)] : T(1);
        if (gxu) {
          T* __restrict o = gxu + h * F;
          FL_SIMD for (int64_t f = 0; f < F; ++f) o[f] += av[f] == e ? ws * gv[f] : T(0);
        }
        if (gw) {
          const T* __restrict xh = xu + h * F;
          T acc = 0;
          FL_SIMD_SUM(acc) for (int64_t f = 0; f < F; ++f) acc += av[f] == e ? gv[f] * xh[f] : T(0);
          if (wH == 1) dw_all += acc; else gw[e * wH + h] = acc;
        }
      }
      if (gw && wH == 1) gw[e] = dw_all;
    }
  }
  return bad;
}

// out[perm[k], h] = a[v, h, :] . b[col[k], h, :] for the slots k of target v: one owner per edge.
template <typename T>
FL_INLINE int64_t sddmm_rows(const Csr& g, const T* a, const T* b, T* out, int64_t r0, int64_t r1, int64_t H,
                             int64_t F, int64_t nsrc, int64_t nid) {
  const int64_t HF = H * F;
  const int64_t kstop = g.rowptr[r1];
  int64_t bad = -1;  // first slot with a source (col) or edge id (perm) out of range: skipped, then raised
  for (int64_t v = r0; v < r1; ++v) {
    const T* av = a + v * HF;
    for (int64_t k = g.rowptr[v]; k < g.rowptr[v + 1]; ++k) {
      if (k + kPrefetch < kstop) prefetch_row(b + g.src(k + kPrefetch) * HF, HF * int64_t(sizeof(T)));
      const int64_t u = g.src(k), e = g.id(k);
      if (__builtin_expect(out_of(u, nsrc) || out_of(e, nid), 0)) {
        if (bad < 0) bad = k;
        continue;
      }
      const T* bu = b + u * HF;
      for (int64_t h = 0; h < H; ++h) {
        const T* __restrict ah = av + h * F;
        const T* __restrict bh = bu + h * F;
        T acc = 0;
        FL_SIMD_SUM(acc) for (int64_t f = 0; f < F; ++f) acc += ah[f] * bh[f];
        out[e * H + h] = acc;
      }
    }
  }
  return bad;
}

// transpose: use B_e^T (the backward for x runs over the reversed graph with the transposed blocks).
template <typename T>
FL_INLINE int64_t block_rows(const Csr& g, const T* B, bool diag, bool transpose, const T* x, T* out, int64_t r0,
                             int64_t r1, int64_t d, int64_t F, int64_t nsrc, int64_t nid) {
  const int64_t dF = d * F, bs = diag ? d : d * d;
  const int64_t kstop = g.rowptr[r1];
  int64_t bad = -1;  // first slot with a source (col) or edge id (perm) out of range: skipped, then raised
  for (int64_t v = r0; v < r1; ++v) {
    T* o = out + v * dF;
    FL_SIMD for (int64_t i = 0; i < dF; ++i) o[i] = T(0);
    for (int64_t k = g.rowptr[v]; k < g.rowptr[v + 1]; ++k) {
      if (k + kPrefetch < kstop) prefetch_row(x + g.src(k + kPrefetch) * dF, dF * int64_t(sizeof(T)));
      const int64_t u = g.src(k), e = g.id(k);
      if (__builtin_expect(out_of(u, nsrc) || out_of(e, nid), 0)) {
        if (bad < 0) bad = k;
        continue;
      }
      const T* xu = x + u * dF;
      const T* b = B + e * bs;
      for (int64_t i = 0; i < d; ++i) {
        T* __restrict oi = o + i * F;
        if (diag) {
          const T w = b[i];
          const T* __restrict xi = xu + i * F;
          FL_SIMD for (int64_t f = 0; f < F; ++f) oi[f] += w * xi[f];
          continue;
        }
        for (int64_t j = 0; j < d; ++j) {
          const T w = transpose ? b[j * d + i] : b[i * d + j];
          const T* __restrict xj = xu + j * F;
          FL_SIMD for (int64_t f = 0; f < F; ++f) oi[f] += w * xj[f];
        }
      }
    }
  }
  return bad;
}

// gB[perm[k]][i, j] = grad[v, i, :] . x[col[k], j, :] (diag: i == j only).
template <typename T>
FL_INLINE int64_t block_grad_rows(const Csr& g, const T* grad, const T* x, T* gB, bool diag, int64_t r0,
                                  int64_t r1, int64_t d, int64_t F, int64_t nsrc, int64_t nid) {
  const int64_t dF = d * F, bs = diag ? d : d * d;
  int64_t bad = -1;  // a bad perm here would write outside gB: such slots are skipped, then raised
  for (int64_t v = r0; v < r1; ++v) {
    const T* gv = grad + v * dF;
    for (int64_t k = g.rowptr[v]; k < g.rowptr[v + 1]; ++k) {
      const int64_t u = g.src(k), e = g.id(k);
      if (__builtin_expect(out_of(u, nsrc) || out_of(e, nid), 0)) {
        if (bad < 0) bad = k;
        continue;
      }
      const T* xu = x + u * dF;
      T* out = gB + e * bs;
      for (int64_t i = 0; i < d; ++i) {
        for (int64_t j = diag ? i : 0; j < (diag ? i + 1 : d); ++j) {
          const T* __restrict a = gv + i * F;
          const T* __restrict b = xu + j * F;
          T acc = 0;
          FL_SIMD_SUM(acc) for (int64_t f = 0; f < F; ++f) acc += a[f] * b[f];
          out[diag ? i : i * d + j] = acc;
        }
      }
    }
  }
  return bad;
}

}  // namespace fastlayers::mp
