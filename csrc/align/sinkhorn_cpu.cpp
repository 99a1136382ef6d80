// Batched log-domain Sinkhorn on the CPU: forward and its reverse sweep.
//
// One task per pair. The pair's real rows and columns (mode "masked") or all of them with padded logits 0 (mode
// "reference") are gathered into a dense n x m buffer that stays in L1 for all 2 * num_iters half-steps. The
// iteration is the published log-domain loop, computed in scaling form (see "dense half-steps" below): matrix-
// vector products and per-line logs instead of an exp per entry and half-step. The forward keeps every
// half-step's logsumexp vector (row_lse [B, T, N], col_lse [B, T, M]); the backward never materialises the
// intermediate matrices: the state after any half-step is x0 - A_i - B_j with A, B running sums of those vectors,
// and it walks the half-steps in reverse with that state in the same scaling form
// (row step y = x - lse_row(x): dx = dy - exp(y) * rowsum(dy); columns alike).
#include <ATen/ATen.h>
#include <ATen/Parallel.h>
#include <torch/library.h>

#include <algorithm>
#include <cmath>
#include <limits>
#include <vector>

#include "align/align_isa.h"
#include "align/fast_math.h"
#include "align/sinkhorn_dense.h"
#include "align/vec.h"
#include "common/checks.h"
#define FASTLAYERS_WITH_TORCH_API
#include "common/cpu_cache.h"
#include "common/cpu_simd.h"

namespace fastlayers {
namespace {

using align::fast_log;

using namespace sinkhorn;
using align::backward_dense;
using align::forward_dense;

// ---- per-pair gather / scatter -------------------------------------------------------------------------------

struct Index {
  std::vector<int64_t> rows, cols;
  bool plain_cols;  // cols are 0..m-1: rows copy as contiguous runs
  bool all_real;    // reference mode: every selected entry is real (no logit to overwrite with 0)
  bool full;        // every row and column selected: the block covers the whole pair
};

// Rows and columns the iteration runs over: the real ones (masked) or all of them (reference).
void select(const bool* rm, const bool* cm, int64_t N, int64_t M, bool reference, Index& ix) {
  ix.rows.clear();
  ix.cols.clear();
  bool rows_real = true, cols_real = true;
  for (int64_t i = 0; i < N; ++i) {
    if (reference || rm[i]) ix.rows.push_back(i);
    rows_real &= rm[i];
  }
  for (int64_t j = 0; j < M; ++j) {
    if (reference || cm[j]) ix.cols.push_back(j);
    cols_real &= cm[j];
  }
  const int64_t m = ix.cols.size();
  ix.plain_cols = m == 0 || ix.cols[m - 1] == m - 1;
  ix.all_real = !reference || (rows_real && cols_real);
  ix.full = static_cast<int64_t>(ix.rows.size()) == N && m == M;
}

// x0 = logits / tau on the selected block, rows of stride ms with kPad beyond column m; reference mode zeroes
// padded entries (the published padding). Division, not a reciprocal multiply: the reference divides. Returns
// whether the block holds a NaN (checked in the same pass): the scaled iteration's maxima and clamped exps would
// hide it, where the log-domain reference turns the whole block into NaN after one row and one column step.
template <typename T>
bool gather_x0(const T* L, const bool* rm, const bool* cm, int64_t M, const Index& ix, bool reference, double tau,
               int64_t ms, T* x0) {
  const int64_t n = ix.rows.size(), m = ix.cols.size();
  const T t = T(tau);
  int nan = 0;
  for (int64_t i = 0; i < n; ++i) {
    const int64_t r = ix.rows[i];
    const T* src = L + r * M;
    T* dst = x0 + i * ms;
    if (ix.plain_cols && ix.all_real) {
      FL_PRAGMA(omp simd reduction(| : nan))
      for (int64_t j = 0; j < m; ++j) {
        const T v = src[j] / t;
        dst[j] = v;
        nan |= v != v;
      }
    } else {
      for (int64_t j = 0; j < m; ++j) {
        const int64_t c = ix.cols[j];
        const bool real = !reference || (rm[r] && cm[c]);
        dst[j] = real ? src[c] / t : T(0);
        nan |= dst[j] != dst[j];
      }
    }
    for (int64_t j = m; j < ms; ++j) dst[j] = kPad<T>;
  }
  return nan != 0;
}

// out[rows[i], cols[j]] = v over the selected block; with gate, padded entries get 0 instead (reference mode's padding
// in the backward, which gets no gradient).
template <typename T>
void fill_block(T* out, const Index& ix, int64_t M, T v, const bool* rm, const bool* cm, bool gate) {
  for (const int64_t r : ix.rows)
    for (const int64_t c : ix.cols) out[r * M + c] = (!gate || (rm[r] && cm[c])) ? v : T(0);
}

// x0T [m, ns] from x0 [n, ms], kPad in the padding lanes. Blocks of 8 x 8 keep both sides in cache lines.
template <typename T>
void transpose_x0(const T* __restrict x0, int64_t n, int64_t m, int64_t ns, int64_t ms, T* __restrict x0T) {
  for (int64_t i0 = 0; i0 < n; i0 += 8)
    for (int64_t j0 = 0; j0 < m; j0 += 8)
      for (int64_t j = j0; j < std::min(m, j0 + 8); ++j)
        for (int64_t i = i0; i < std::min(n, i0 + 8); ++i) x0T[j * ns + i] = x0[i * ms + j];
  for (int64_t j = 0; j < m; ++j)
    for (int64_t i = n; i < ns; ++i) x0T[j * ns + i] = kPad<T>;
}

// out[rows[i], cols[j]] = blk[i, j] (stride ms).
template <typename T>
void scatter_block(const T* blk, int64_t ms, const Index& ix, int64_t M, T* out) {
  const int64_t n = ix.rows.size(), m = ix.cols.size();
  for (int64_t i = 0; i < n; ++i) {
    T* o = out + ix.rows[i] * M;
    const T* src = blk + i * ms;
    if (ix.plain_cols) {
      std::copy(src, src + m, o);
    } else {
      for (int64_t j = 0; j < m; ++j) o[ix.cols[j]] = src[j];
    }
  }
}

template <typename T>
int64_t padded(int64_t m) {
  return round_up(m, kLanes<T>);
}

struct Sizes {
  int64_t B, N, M;
};

void check_inputs(const at::Tensor& logits, const at::Tensor& row_mask, const at::Tensor& col_mask, int64_t iters,
                  double tau) {
  FL_CHECK_CPU(logits);
  FL_CHECK_CPU(row_mask);
  FL_CHECK_CPU(col_mask);
  TORCH_CHECK_VALUE(logits.dim() == 3, "sinkhorn: logits must be 3-D [B, N, M], got shape ", logits.sizes());
  TORCH_CHECK(logits.scalar_type() == at::kFloat || logits.scalar_type() == at::kDouble,
              "sinkhorn: logits must be float32/float64 on CPU");
  TORCH_CHECK(row_mask.scalar_type() == at::kBool && col_mask.scalar_type() == at::kBool,
              "sinkhorn: masks must be bool");
  TORCH_CHECK_VALUE(
      row_mask.dim() == 2 && row_mask.size(0) == logits.size(0) && row_mask.size(1) == logits.size(1),
      "sinkhorn: row_mask must be [B, N] = [", logits.size(0), ", ", logits.size(1), "], got shape ", row_mask.sizes());
  TORCH_CHECK_VALUE(
      col_mask.dim() == 2 && col_mask.size(0) == logits.size(0) && col_mask.size(1) == logits.size(2),
      "sinkhorn: col_mask must be [B, M] = [", logits.size(0), ", ", logits.size(2), "], got shape ", col_mask.sizes());
  // The lse outputs are [B, num_iters, N]: a huge count would overflow their sizes (fastlayers.ops.sinkhorn's cap).
  TORCH_CHECK_VALUE(iters >= 1 && iters <= (int64_t(1) << 24), "sinkhorn: num_iters must be in [1, 2^24], got ",
                    iters);
  TORCH_CHECK_VALUE(tau > 0 && std::isfinite(tau), "sinkhorn: tau must be finite and > 0, got ", tau);
}

std::tuple<at::Tensor, at::Tensor, at::Tensor> sinkhorn_fwd_cpu(const at::Tensor& logits_in,
                                                                const at::Tensor& row_mask_in,
                                                                const at::Tensor& col_mask_in, double tau,
                                                                int64_t iters, bool reference) {
  check_inputs(logits_in, row_mask_in, col_mask_in, iters, tau);
  const at::Tensor logits = logits_in.contiguous();
  const at::Tensor row_mask = row_mask_in.contiguous(), col_mask = col_mask_in.contiguous();
  const Sizes z{logits.size(0), logits.size(1), logits.size(2)};
  at::Tensor P = empty_cached({z.B, z.N, z.M}, logits.options());
  at::Tensor row_lse = empty_cached({z.B, iters, z.N}, logits.options());
  at::Tensor col_lse = empty_cached({z.B, iters, z.M}, logits.options());
  AT_DISPATCH_FLOATING_TYPES(logits.scalar_type(), "sinkhorn_fwd_cpu", [&] {
    const scalar_t* L = logits.const_data_ptr<scalar_t>();
    const bool* RM = row_mask.const_data_ptr<bool>();
    const bool* CM = col_mask.const_data_ptr<bool>();
    scalar_t* Pp = P.mutable_data_ptr<scalar_t>();
    scalar_t* RL = row_lse.mutable_data_ptr<scalar_t>();
    scalar_t* CL = col_lse.mutable_data_ptr<scalar_t>();
    at::parallel_for(0, z.B, 1, [&](int64_t b0, int64_t b1) {
      align::FlushDenormals ftz;
      Index ix;
      const int64_t MS = padded<scalar_t>(z.M), NS = padded<scalar_t>(z.N);
      std::vector<scalar_t> x(z.N * MS), xt(z.M * NS), K(round_up(z.N, 4) * MS),
          KT(round_up(z.M, 4) * NS), a(iters * z.N), bb(iters * z.M), w(6 * (NS + MS));
      for (int64_t p = b0; p < b1; ++p) {
        const bool* rm = RM + p * z.N;
        const bool* cm = CM + p * z.M;
        select(rm, cm, z.N, z.M, reference, ix);
        const int64_t n = ix.rows.size(), m = ix.cols.size();
        scalar_t* out = Pp + p * z.N * z.M;
        scalar_t* rl = RL + p * iters * z.N;
        scalar_t* cl = CL + p * iters * z.M;
        // With no row or no column the pair has nothing to normalise, and a block covering the whole pair (an
        // empty side in reference mode) would otherwise leave the other side's lse unwritten.
        if (!ix.full || n == 0 || m == 0) {
          std::fill(out, out + z.N * z.M, scalar_t(0));
          std::fill(rl, rl + iters * z.N, scalar_t(0));
          std::fill(cl, cl + iters * z.M, scalar_t(0));
        }
        if (n == 0 || m == 0) continue;  // nothing real to normalise: P stays 0
        const int64_t ms = padded<scalar_t>(m), ns = padded<scalar_t>(n);
        if (gather_x0(L + p * z.N * z.M, rm, cm, z.M, ix, reference, tau, ms, x.data())) {
          const scalar_t nan = std::numeric_limits<scalar_t>::quiet_NaN();
          fill_block(out, ix, z.M, nan, rm, cm, false);
          for (int64_t t = 0; t < iters; ++t) {
            for (const int64_t r : ix.rows) rl[t * z.N + r] = nan;
            for (const int64_t c : ix.cols) cl[t * z.M + c] = nan;
          }
          continue;
        }
        transpose_x0(x.data(), n, m, ns, ms, xt.data());
        // A block covering the whole pair has the outputs' lse layout: the kernel writes them in place.
        forward_dense(x.data(), xt.data(), K.data(), KT.data(), n, m, ns, ms, iters, ix.full ? rl : a.data(),
                      ix.full ? cl : bb.data(), w.data());
        scatter_block(K.data(), ms, ix, z.M, out);  // K holds P on return
        if (!ix.full) {
          for (int64_t t = 0; t < iters; ++t) {
            for (int64_t i = 0; i < n; ++i) rl[t * z.N + ix.rows[i]] = a[t * n + i];
            for (int64_t j = 0; j < m; ++j) cl[t * z.M + ix.cols[j]] = bb[t * m + j];
          }
        }
      }
    });
  });
  return {P, row_lse, col_lse};
}

at::Tensor sinkhorn_bwd_cpu(const at::Tensor& grad_P_in, const at::Tensor& logits_in, const at::Tensor& row_mask_in,
                            const at::Tensor& col_mask_in, const at::Tensor& row_lse_in,
                            const at::Tensor& col_lse_in, double tau, bool reference) {
  TORCH_CHECK_VALUE(row_lse_in.dim() == 3, "sinkhorn_bwd: row_lse must be [B, T, N], got shape ", row_lse_in.sizes());
  const int64_t iters = row_lse_in.size(1);
  check_inputs(logits_in, row_mask_in, col_mask_in, iters, tau);
  TORCH_CHECK_VALUE(grad_P_in.sizes() == logits_in.sizes(), "sinkhorn_bwd: grad_P must have logits' shape ",
                    logits_in.sizes(), ", got ", grad_P_in.sizes());
  FL_CHECK_CPU(grad_P_in);
  FL_CHECK_CPU(row_lse_in);
  FL_CHECK_CPU(col_lse_in);
  const Sizes z{logits_in.size(0), logits_in.size(1), logits_in.size(2)};
  TORCH_CHECK(row_lse_in.size(0) == z.B && row_lse_in.size(2) == z.N, "sinkhorn_bwd: row_lse must be [B, T, N]");
  TORCH_CHECK(col_lse_in.dim() == 3 && col_lse_in.size(0) == z.B && col_lse_in.size(1) == iters &&
                  col_lse_in.size(2) == z.M,
              "sinkhorn_bwd: col_lse must be [B, T, M]");
  const at::Tensor logits = logits_in.contiguous();
  const at::Tensor gP = grad_P_in.to(logits.scalar_type()).contiguous();
  const at::Tensor row_mask = row_mask_in.contiguous(), col_mask = col_mask_in.contiguous();
  const at::Tensor row_lse = row_lse_in.to(logits.scalar_type()).contiguous();
  const at::Tensor col_lse = col_lse_in.to(logits.scalar_type()).contiguous();
  at::Tensor grad = empty_cached({z.B, z.N, z.M}, logits.options());
  AT_DISPATCH_FLOATING_TYPES(logits.scalar_type(), "sinkhorn_bwd_cpu", [&] {
    const scalar_t* L = logits.const_data_ptr<scalar_t>();
    const scalar_t* G = gP.const_data_ptr<scalar_t>();
    const bool* RM = row_mask.const_data_ptr<bool>();
    const bool* CM = col_mask.const_data_ptr<bool>();
    const scalar_t* RL = row_lse.const_data_ptr<scalar_t>();
    const scalar_t* CL = col_lse.const_data_ptr<scalar_t>();
    scalar_t* out_all = grad.mutable_data_ptr<scalar_t>();
    at::parallel_for(0, z.B, 1, [&](int64_t b0, int64_t b1) {
      align::FlushDenormals ftz;
      Index ix;
      const int64_t NM = z.N * z.M;
      const int64_t MS = padded<scalar_t>(z.M), NS = padded<scalar_t>(z.N);
      std::vector<scalar_t> x0(z.N * MS), g(z.N * MS), K(z.N * MS), a(iters * z.N), bb(iters * z.M),
          w(4 * NS + 5 * MS);
      for (int64_t p = b0; p < b1; ++p) {
        const bool* rm = RM + p * z.N;
        const bool* cm = CM + p * z.M;
        select(rm, cm, z.N, z.M, reference, ix);
        const int64_t n = ix.rows.size(), m = ix.cols.size();
        scalar_t* out = out_all + p * NM;
        if (!ix.full || n == 0 || m == 0) std::fill(out, out + NM, scalar_t(0));
        if (n == 0 || m == 0) continue;
        const int64_t ms = padded<scalar_t>(m), ns = padded<scalar_t>(n);
        if (gather_x0(L + p * NM, rm, cm, z.M, ix, reference, tau, ms, x0.data())) {
          fill_block(out, ix, z.M, std::numeric_limits<scalar_t>::quiet_NaN(), rm, cm, reference);
          continue;
        }
        const scalar_t* gp = G + p * NM;
        for (int64_t i = 0; i < n; ++i) {
          const scalar_t* src = gp + ix.rows[i] * z.M;
          scalar_t* dst = g.data() + i * ms;
          if (ix.plain_cols) {
            std::copy(src, src + m, dst);
          } else {
            for (int64_t j = 0; j < m; ++j) dst[j] = src[ix.cols[j]];
          }
          std::fill(dst + m, dst + ms, scalar_t(0));
        }
        const scalar_t* ap = RL + p * iters * z.N;
        const scalar_t* bp = CL + p * iters * z.M;
        if (!ix.full) {
          for (int64_t t = 0; t < iters; ++t) {
            for (int64_t i = 0; i < n; ++i) a[t * n + i] = ap[t * z.N + ix.rows[i]];
            for (int64_t j = 0; j < m; ++j) bb[t * m + j] = bp[t * z.M + ix.cols[j]];
          }
          ap = a.data();
          bp = bb.data();
        }
        backward_dense(x0.data(), g.data(), n, m, ns, ms, iters, ap, bp, K.data(), w.data());
        const scalar_t inv_tau = scalar_t(1) / scalar_t(tau);
        if (ix.full && ix.all_real) {
          for (int64_t i = 0; i < n; ++i) {
            const scalar_t* gi = g.data() + i * ms;
            scalar_t* oi = out + i * z.M;
            FL_SIMD for (int64_t j = 0; j < m; ++j) oi[j] = gi[j] * inv_tau;
          }
          continue;
        }
        for (int64_t i = 0; i < n; ++i) {
          const int64_t r = ix.rows[i];
          for (int64_t j = 0; j < m; ++j) {
            const int64_t c = ix.cols[j];
            // Reference mode overwrites padded logits with 0, so they get no gradient.
            const bool real = !reference || (rm[r] && cm[c]);
            out[r * z.M + c] = real ? g[i * ms + j] * inv_tau : scalar_t(0);
          }
        }
      }
    });
  });
  return grad;
}

}  // namespace

TORCH_LIBRARY_IMPL(fastlayers, CPU, m) {
  m.impl("sinkhorn_fwd", &sinkhorn_fwd_cpu);
  m.impl("sinkhorn_bwd", &sinkhorn_bwd_cpu);
}

}  // namespace fastlayers
