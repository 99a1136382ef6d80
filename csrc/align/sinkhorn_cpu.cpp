// Batched log-domain Sinkhorn on the CPU: forward and its reverse sweep.
//
// One task per pair. The pair's real rows and columns (mode "masked") or all of them with padded logits 0 (mode
// "reference") are gathered into a dense n x m buffer that stays in L1 for all 2 * num_iters half-steps, which
// run on explicit vectors (vec.h) with a vectorised exp and log. The forward keeps every half-step's
// logsumexp vector (row_lse [B, T, N], col_lse [B, T, M]); the backward never materialises the intermediate
// matrices: the state after any half-step is x0 - A_i - B_j with A, B running sums of those vectors, so it
// recomputes exp(state) on the fly while it walks the half-steps in reverse
// (row step y = x - lse_row(x): dx = dy - exp(y) * rowsum(dy); columns alike).
#include <ATen/ATen.h>
#include <ATen/Parallel.h>
#include <torch/library.h>

#include <algorithm>
#include <cmath>
#include <limits>
#include <vector>

#include "align/fast_math.h"
#include "align/vec.h"
#include "common/checks.h"
#define FASTLAYERS_WITH_TORCH_API
#include "common/cpu_cache.h"
#include "common/cpu_simd.h"

namespace fastlayers {
namespace {

using align::fast_log;

// ---- dense half-steps on the gathered n x m block -------------------------------------------------------------
// Rows have stride ms, a multiple of kLanes (one vector of vec.h), so inner loops are whole vectors with no
// scalar tail; padding columns hold kPad, whose exp is negligible in row sums, and get
// column shift 0.
//
// The state after any half-step is x0 - A_i - B_j, with A, B the running sums of the row and column lse vectors
// (a_t, b_t: what the published loop subtracts at half-step t). Row step: with y = x0 - B, e = exp(y - max_j y)
// and s = sum_j e, the new A is max y + log s (the old A cancels) and the row-normalised matrix is p = e / s
// (<= 1). Column step: b = log sum_i p. So an iteration costs one exp per entry (the log-domain loop costs two)
// and one vectorised log per row and per column. p can lose entries to underflow only where a whole column is
// below ~1e-30 (float) / 1e-300 (double) of its row maxima; such a column step is redone in the log domain.

template <typename T>
constexpr int64_t kLanes = 64 / sizeof(T);  // one align::Vec<T>
template <typename T>
constexpr T kPad = sizeof(T) == 4 ? T(-1e30) : T(-1e300);
template <typename T>
constexpr T kTinySum = sizeof(T) == 4 ? T(1e-30) : T(1e-290);

// Log-domain column step for the rare underflow case: b_j = lse_i(x0_ij - A_i) - B_j.
template <typename T>
FL_INLINE void exact_col_lse(const T* __restrict x0, int64_t n, int64_t m, int64_t ms, const T* __restrict A,
                             const T* __restrict B, T* __restrict bt) {
  for (int64_t j = 0; j < m; ++j) {
    T mx = -std::numeric_limits<T>::infinity();
    for (int64_t i = 0; i < n; ++i) mx = std::max(mx, x0[i * ms + j] - A[i]);
    T sum = 0;
    for (int64_t i = 0; i < n; ++i) sum += std::exp(x0[i * ms + j] - A[i] - mx);
    bt[j] = mx + std::log(sum) - B[j];
  }
}

// x0: [n, ms]; a: [iters, n], b: [iters, m]; P: [n, ms] out; w: scratch of 2n + 2ms.
template <typename T>
FL_INLINE void forward_dense_impl(const T* __restrict x0, T* __restrict P, int64_t n, int64_t m, int64_t ms,
                                  int64_t iters, T* __restrict a, T* __restrict b, T* __restrict w) {
  using V = typename align::Vec<T>::type;
  constexpr int64_t L = kLanes<T>;
  const int64_t nv = ms / L;
  T* A = w;          // [n]
  T* inv_s = A + n;  // [n]
  T* B = inv_s + n;  // [ms]
  T* cs = B + ms;    // [ms]
  T* E = P;          // row exps live in P's buffer until the final exp
  for (int64_t i = 0; i < n; ++i) A[i] = 0;
  for (int64_t j = 0; j < ms; ++j) B[j] = 0;
  for (int64_t t = 0; t < iters; ++t) {
    T* at = a + t * n;
    T* bt = b + t * m;
    for (int64_t i = 0; i < n; ++i) {
      const T* x0i = x0 + i * ms;
      T* ei = E + i * ms;
      // After a column step every entry of the state x0 - A - B is <= 0, so A_i is a safe shift (no overflow)
      // and saves the max pass; the row's exp-sum then only underflows if the whole row is below ~1e-30, in
      // which case the row is redone with its true max.
      T mx = A[i], sum = 0;
      for (int pass = t == 0 ? 1 : 0; pass < 2; ++pass) {
        if (pass == 1) {
          V vm = align::vload<V>(x0i) - align::vload<V>(B);
          for (int64_t k = 1; k < nv; ++k)
            vm = align::vmax(vm, align::vload<V>(x0i + k * L) - align::vload<V>(B + k * L));
          mx = align::hmax(vm);
        }
        V acc{};
        for (int64_t k = 0; k < nv; ++k) {
          const V e = align::vexp(align::vload<V>(x0i + k * L) - align::vload<V>(B + k * L) - mx);
          align::vstore(ei + k * L, e);
          acc += e;
        }
        sum = align::hsum(acc);
        if (sum >= kTinySum<T>) break;
      }
      at[i] = mx;  // finished to max + log(sum) - A_old below, in a vector pass
      inv_s[i] = sum;
    }
    FL_SIMD for (int64_t i = 0; i < n; ++i) {
      const T lse = at[i] + fast_log(inv_s[i]);
      at[i] = lse - A[i];
      A[i] = lse;
      inv_s[i] = T(1) / inv_s[i];
    }
    for (int64_t k = 0; k < nv; ++k) {
      V acc{};
      for (int64_t i = 0; i < n; ++i) acc += align::vload<V>(E + i * ms + k * L) * inv_s[i];
      align::vstore(cs + k * L, acc);
    }
    bool tiny = false;
    for (int64_t j = 0; j < m; ++j) tiny |= !(cs[j] >= kTinySum<T>);
    if (tiny) {
      exact_col_lse(x0, n, m, ms, A, B, bt);
    } else {
      FL_SIMD for (int64_t j = 0; j < m; ++j) bt[j] = fast_log(cs[j]);
    }
    for (int64_t j = 0; j < m; ++j) B[j] += bt[j];
  }
  for (int64_t i = 0; i < n; ++i) {
    const T* x0i = x0 + i * ms;
    T* pi = P + i * ms;
    const T Ai = A[i];
    for (int64_t k = 0; k < nv; ++k)
      align::vstore(pi + k * L, align::vexp(align::vload<V>(x0i + k * L) - align::vload<V>(B + k * L) - Ai));
  }
}

// g holds dL/dP on entry and dL/dx0 on exit (stride ms, padding columns 0). Walking the half-steps back: column
// step t's output is E = exp(x0 - A(t) - B(t)), one exp per entry; row step t's output is E * exp(b_t) (a factor
// <= n per column, so entries flushed to 0 in E stay negligible). Each pass also accumulates the line sums of g
// the next (earlier) half-step needs. w: scratch of 2n + 3ms; E: [n, ms].
template <typename T>
FL_INLINE void backward_dense_impl(const T* __restrict x0, T* __restrict g, int64_t n, int64_t m, int64_t ms,
                                   int64_t iters, const T* __restrict a, const T* __restrict b, T* __restrict E,
                                   T* __restrict w) {
  using V = typename align::Vec<T>::type;
  using align::vload;
  using align::vstore;
  constexpr int64_t L = kLanes<T>;
  const int64_t nv = ms / L;
  T* A = w;        // [n]
  T* r = A + n;    // [n] row sums of g
  T* B = r + n;    // [ms]
  T* s = B + ms;   // [ms] column sums of g
  T* eb = s + ms;  // [ms] exp(b_t)
  for (int64_t i = 0; i < n; ++i) A[i] = 0;
  for (int64_t j = 0; j < ms; ++j) B[j] = 0;
  for (int64_t t = 0; t < iters; ++t) {
    for (int64_t i = 0; i < n; ++i) A[i] += a[t * n + i];
    for (int64_t j = 0; j < m; ++j) B[j] += b[t * m + j];
  }
  for (int64_t j = 0; j < ms; ++j) s[j] = 0;
  for (int64_t i = 0; i < n; ++i) {  // through P = exp(x_final)
    const T* x0i = x0 + i * ms;
    T* gi = g + i * ms;
    const T Ai = A[i];
    for (int64_t k = 0; k < nv; ++k) {
      const V gv = vload<V>(gi + k * L) * align::vexp(vload<V>(x0i + k * L) - vload<V>(B + k * L) - Ai);
      vstore(gi + k * L, gv);
      vstore(s + k * L, vload<V>(s + k * L) + gv);
    }
  }
  for (int64_t t = iters - 1; t >= 0; --t) {
    // Column step t, then the row sums for row step t.
    for (int64_t i = 0; i < n; ++i) {
      const T* x0i = x0 + i * ms;
      T* gi = g + i * ms;
      T* ei = E + i * ms;
      const T Ai = A[i];
      V acc{};
      for (int64_t k = 0; k < nv; ++k) {
        const V e = align::vexp(vload<V>(x0i + k * L) - vload<V>(B + k * L) - Ai);
        vstore(ei + k * L, e);
        const V gv = vload<V>(gi + k * L) - e * vload<V>(s + k * L);
        vstore(gi + k * L, gv);
        acc += gv;
      }
      r[i] = align::hsum(acc);
    }
    for (int64_t j = 0; j < m; ++j) {
      B[j] -= b[t * m + j];
      eb[j] = std::exp(b[t * m + j]);
    }
    for (int64_t j = m; j < ms; ++j) eb[j] = 0;
    // Row step t, then the column sums for column step t - 1.
    for (int64_t k = 0; k < nv; ++k) {
      const V ebv = vload<V>(eb + k * L);
      V acc{};
      for (int64_t i = 0; i < n; ++i) {
        T* gik = g + i * ms + k * L;
        const V gv = vload<V>(gik) - vload<V>(E + i * ms + k * L) * ebv * r[i];
        vstore(gik, gv);
        acc += gv;
      }
      vstore(s + k * L, acc);
    }
    for (int64_t i = 0; i < n; ++i) A[i] -= a[t * n + i];
  }
}

// Non-template entry points so each gets AVX-512 / AVX2 / baseline clones.
#define FL_SINKHORN_DRIVERS(T)                                                                                  \
  FL_MULTIVERSION void forward_dense(const T* x0, T* P, int64_t n, int64_t m, int64_t ms, int64_t iters, T* a,   \
                                     T* b, T* w) {                                                              \
    forward_dense_impl<T>(x0, P, n, m, ms, iters, a, b, w);                                                     \
  }                                                                                                             \
  FL_MULTIVERSION void backward_dense(const T* x0, T* g, int64_t n, int64_t m, int64_t ms, int64_t iters,       \
                                      const T* a, const T* b, T* E, T* w) {                                     \
    backward_dense_impl<T>(x0, g, n, m, ms, iters, a, b, E, w);                                                 \
  }
FL_SINKHORN_DRIVERS(float)
FL_SINKHORN_DRIVERS(double)
#undef FL_SINKHORN_DRIVERS

// ---- per-pair gather / scatter -------------------------------------------------------------------------------

struct Index {
  std::vector<int64_t> rows, cols;
};

// Rows and columns the iteration runs over: the real ones (masked) or all of them (reference).
void select(const bool* rm, const bool* cm, int64_t N, int64_t M, bool reference, Index& ix) {
  ix.rows.clear();
  ix.cols.clear();
  for (int64_t i = 0; i < N; ++i)
    if (reference || rm[i]) ix.rows.push_back(i);
  for (int64_t j = 0; j < M; ++j)
    if (reference || cm[j]) ix.cols.push_back(j);
}

// x0 = logits / tau on the selected block, rows of stride ms with kPad beyond column m; reference mode zeroes
// padded entries (the published padding).
template <typename T>
void gather_x0(const T* L, const bool* rm, const bool* cm, int64_t M, const Index& ix, bool reference, double tau,
               int64_t ms, T* x0) {
  const int64_t n = ix.rows.size(), m = ix.cols.size();
  const T t = T(tau);
  for (int64_t i = 0; i < n; ++i) {
    const int64_t r = ix.rows[i];
    for (int64_t j = 0; j < m; ++j) {
      const int64_t c = ix.cols[j];
      const bool real = !reference || (rm[r] && cm[c]);
      x0[i * ms + j] = real ? L[r * M + c] / t : T(0);
    }
    for (int64_t j = m; j < ms; ++j) x0[i * ms + j] = kPad<T>;
  }
}

template <typename T>
int64_t padded(int64_t m) {
  return (m + kLanes<T> - 1) / kLanes<T> * kLanes<T>;
}

struct Sizes {
  int64_t B, N, M;
};

void check_inputs(const at::Tensor& logits, const at::Tensor& row_mask, const at::Tensor& col_mask, int64_t iters,
                  double tau) {
  FL_CHECK_CPU(logits);
  FL_CHECK_DIM(logits, 3);
  TORCH_CHECK(logits.scalar_type() == at::kFloat || logits.scalar_type() == at::kDouble,
              "sinkhorn: logits must be float32/float64 on CPU");
  TORCH_CHECK(row_mask.scalar_type() == at::kBool && col_mask.scalar_type() == at::kBool,
              "sinkhorn: masks must be bool");
  TORCH_CHECK(row_mask.dim() == 2 && row_mask.size(0) == logits.size(0) && row_mask.size(1) == logits.size(1),
              "sinkhorn: row_mask must be [B, N]");
  TORCH_CHECK(col_mask.dim() == 2 && col_mask.size(0) == logits.size(0) && col_mask.size(1) == logits.size(2),
              "sinkhorn: col_mask must be [B, M]");
  TORCH_CHECK(iters >= 1, "sinkhorn: num_iters must be >= 1");
  TORCH_CHECK(tau > 0, "sinkhorn: tau must be > 0");
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
      const int64_t MS = padded<scalar_t>(z.M);
      std::vector<scalar_t> x(z.N * MS), pd(z.N * MS), a(iters * z.N), bb(iters * z.M), w(2 * z.N + 2 * MS);
      for (int64_t p = b0; p < b1; ++p) {
        const bool* rm = RM + p * z.N;
        const bool* cm = CM + p * z.M;
        select(rm, cm, z.N, z.M, reference, ix);
        const int64_t n = ix.rows.size(), m = ix.cols.size();
        scalar_t* out = Pp + p * z.N * z.M;
        scalar_t* rl = RL + p * iters * z.N;
        scalar_t* cl = CL + p * iters * z.M;
        std::fill(out, out + z.N * z.M, scalar_t(0));
        std::fill(rl, rl + iters * z.N, scalar_t(0));
        std::fill(cl, cl + iters * z.M, scalar_t(0));
        if (n == 0 || m == 0) continue;  // nothing real to normalise: P stays 0
        const int64_t ms = padded<scalar_t>(m);
        gather_x0(L + p * z.N * z.M, rm, cm, z.M, ix, reference, tau, ms, x.data());
        forward_dense(x.data(), pd.data(), n, m, ms, iters, a.data(), bb.data(), w.data());
        for (int64_t i = 0; i < n; ++i)
          for (int64_t j = 0; j < m; ++j) out[ix.rows[i] * z.M + ix.cols[j]] = pd[i * ms + j];
        for (int64_t t = 0; t < iters; ++t) {
          for (int64_t i = 0; i < n; ++i) rl[t * z.N + ix.rows[i]] = a[t * n + i];
          for (int64_t j = 0; j < m; ++j) cl[t * z.M + ix.cols[j]] = bb[t * m + j];
        }
      }
    });
  });
  return {P, row_lse, col_lse};
}

at::Tensor sinkhorn_bwd_cpu(const at::Tensor& grad_P_in, const at::Tensor& logits_in, const at::Tensor& row_mask_in,
                            const at::Tensor& col_mask_in, const at::Tensor& row_lse_in,
                            const at::Tensor& col_lse_in, double tau, bool reference) {
  const int64_t iters = row_lse_in.dim() == 3 ? row_lse_in.size(1) : 0;
  check_inputs(logits_in, row_mask_in, col_mask_in, iters, tau);
  TORCH_CHECK(grad_P_in.sizes() == logits_in.sizes(), "sinkhorn_bwd: grad_P must have logits' shape");
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
      const int64_t MS = padded<scalar_t>(z.M);
      std::vector<scalar_t> x0(z.N * MS), g(z.N * MS), e(z.N * MS), a(iters * z.N), bb(iters * z.M),
          w(2 * z.N + 3 * MS);
      for (int64_t p = b0; p < b1; ++p) {
        const bool* rm = RM + p * z.N;
        const bool* cm = CM + p * z.M;
        select(rm, cm, z.N, z.M, reference, ix);
        const int64_t n = ix.rows.size(), m = ix.cols.size();
        scalar_t* out = out_all + p * NM;
        std::fill(out, out + NM, scalar_t(0));
        if (n == 0 || m == 0) continue;
        const int64_t ms = padded<scalar_t>(m);
        gather_x0(L + p * NM, rm, cm, z.M, ix, reference, tau, ms, x0.data());
        const scalar_t* gp = G + p * NM;
        for (int64_t i = 0; i < n; ++i) {
          for (int64_t j = 0; j < m; ++j) g[i * ms + j] = gp[ix.rows[i] * z.M + ix.cols[j]];
          for (int64_t j = m; j < ms; ++j) g[i * ms + j] = 0;
        }
        for (int64_t t = 0; t < iters; ++t) {
          for (int64_t i = 0; i < n; ++i) a[t * n + i] = RL[(p * iters + t) * z.N + ix.rows[i]];
          for (int64_t j = 0; j < m; ++j) bb[t * m + j] = CL[(p * iters + t) * z.M + ix.cols[j]];
        }
        backward_dense(x0.data(), g.data(), n, m, ms, iters, a.data(), bb.data(), e.data(), w.data());
        const scalar_t inv_tau = scalar_t(1) / scalar_t(tau);
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
