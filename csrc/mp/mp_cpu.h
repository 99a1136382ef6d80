// Shared pieces of the CPU message-passing kernels: nnz-balanced row chunks and the CSR gather-reduce core that
// spmm, segment and scatter all run.
//
// Every kernel is "owner computes": a thread owns a range of output rows and reads whatever it needs, so there
// are no atomics, results do not depend on the thread count, and nothing of size [E, F] is ever allocated.
#pragma once
#include <ATen/ATen.h>
#include <ATen/Parallel.h>

#include <algorithm>
#include <atomic>
#include <limits>
#include <string>
#include <vector>

#include "common/cpu_simd.h"

namespace fastlayers::mp {

enum class Reduce { Sum, Mean, Max, Min };

inline Reduce parse_reduce(c10::string_view s) {
  if (s == "sum") return Reduce::Sum;
  if (s == "mean") return Reduce::Mean;
  if (s == "max") return Reduce::Max;
  if (s == "min") return Reduce::Min;
  TORCH_CHECK(false, "fastlayers: reduce must be sum, mean, min or max, got ", std::string(s));
}

inline bool is_arg_reduce(Reduce r) { return r == Reduce::Max || r == Reduce::Min; }

// Work of a row range, in units of one gathered element: its slots times the row width, plus a per-row cost.
constexpr int64_t kChunkWork = int64_t(1) << 16;
// Slots ahead whose source row is prefetched: the gathers are random, so hardware prefetchers cannot help.
constexpr int64_t kPrefetch = 8;

// Row boundaries [b_0 = 0, ..., b_m = n] splitting the rows into chunks of about equal nnz + rows, enough for
// several per thread (load balance on skewed degree distributions) but no smaller than kChunkWork.
inline std::vector<int64_t> balanced_chunks(const int64_t* rowptr, int64_t n, int64_t width) {
  const int64_t nnz = rowptr[n] - rowptr[0];
  const int64_t total = nnz + n;
  const int64_t by_work = (total * std::max<int64_t>(width, 1)) / kChunkWork + 1;
  const int64_t m = std::max<int64_t>(1, std::min<int64_t>({by_work, int64_t(16) * at::get_num_threads(), n}));
  std::vector<int64_t> b(m + 1);
  b[0] = 0;
  b[m] = n;
  for (int64_t i = 1; i < m; ++i) {
    const int64_t want = total * i / m;
    int64_t lo = b[i - 1], hi = n;  // first r with (rowptr[r] - rowptr[0]) + r >= want
    while (lo < hi) {
      const int64_t mid = lo + (hi - lo) / 2;
      if (rowptr[mid] - rowptr[0] + mid >= want) hi = mid; else lo = mid + 1;
    }
    b[i] = lo;
  }
  return b;
}

// Runs fn(r0, r1) over the chunks. Threads claim chunks from a shared counter rather than a fixed share, so a
// thread slowed by another process on a shared machine does not hold up the rest. The result does not depend on
// which thread runs a chunk: each chunk writes only its own rows.
template <typename F>
void parallel_rows(const int64_t* rowptr, int64_t n, int64_t width, const F& fn) {
  if (n <= 0) return;
  const std::vector<int64_t> b = balanced_chunks(rowptr, n, width);
  const int64_t m = int64_t(b.size()) - 1;
  if (m == 1) {
    fn(b[0], b[1]);
    return;
  }
  std::atomic<int64_t> next{0};
  at::parallel_for(0, std::min<int64_t>(m, at::get_num_threads()), 1, [&](int64_t, int64_t) {
    for (int64_t c = next.fetch_add(1); c < m; c = next.fetch_add(1)) fn(b[c], b[c + 1]);
  });
}

FL_INLINE void prefetch_row(const void* p, int64_t bytes) {
  const char* c = static_cast<const char*>(p);
  for (int64_t off = 0; off < bytes; off += 64) __builtin_prefetch(c + off, 0, 1);
}

// The CSR a reduce walks: slot k of row r (rowptr[r] <= k < rowptr[r+1]) reads source row src(k) and carries the
// id id(k) (the weight index and the value recorded as arg). nullptr means the identity (segment_csr).
struct Csr {
  const int64_t* rowptr;
  const int64_t* col;
  const int64_t* perm;
  FL_INLINE int64_t src(int64_t k) const { return col ? col[k] : k; }
  FL_INLINE int64_t id(int64_t k) const { return perm ? perm[k] : k; }
};

// out[r, h, :] = reduce over slots k of row r of w[id(k), h] * x[src(k), h, :] for rows [r0, r1).
// KIND 0: sum (mean divides by the slot count), 1: max, 2: min. With ARG, arg[r, h, f] = id of the winning slot
// (the first in slot order among ties, i.e. the lowest id when ids increase along a row), none_id for empty rows.
// W: weighted, w is [*, wH] with wH 1 (shared by heads) or H; else every weight is 1 and perm is never read.
// The first slot of a row initialises it, so the loop over the others has no per-slot branch.
template <typename T, int KIND, bool ARG, bool W>
FL_INLINE void reduce_rows(const Csr& g, const T* w, int64_t wH, const T* x, T* out, int64_t* arg, int64_t r0,
                           int64_t r1, int64_t H, int64_t F, bool mean, int64_t none_id) {
  const int64_t HF = H * F;
  const int64_t row_bytes = HF * int64_t(sizeof(T));
  const int64_t kstop = g.rowptr[r1];
  for (int64_t r = r0; r < r1; ++r) {
    T* o = out + r * HF;
    int64_t* a = ARG ? arg + r * HF : nullptr;
    const int64_t kb = g.rowptr[r], ke = g.rowptr[r + 1];
    if (kb == ke) {
      FL_SIMD for (int64_t i = 0; i < HF; ++i) o[i] = T(0);
      if (ARG) for (int64_t i = 0; i < HF; ++i) a[i] = none_id;
      continue;
    }
    {
      const int64_t id = (W || ARG) ? g.id(kb) : 0;
      const T* xs = x + g.src(kb) * HF;
      for (int64_t h = 0; h < H; ++h) {
        const T ws = W ? w[id * wH + (wH == 1 ? 0 : h)] : T(1);
        T* __restrict oh = o + h * F;
        const T* __restrict xh = xs + h * F;
        FL_SIMD for (int64_t f = 0; f < F; ++f) oh[f] = ws * xh[f];
        if (ARG) {
          int64_t* ah = a + h * F;
          for (int64_t f = 0; f < F; ++f) ah[f] = id;
        }
      }
    }
    for (int64_t k = kb + 1; k < ke; ++k) {
      if (k + kPrefetch < kstop) {
        prefetch_row(x + g.src(k + kPrefetch) * HF, row_bytes);
        if (W) __builtin_prefetch(w + g.id(k + kPrefetch) * wH, 0, 1);
      }
      const int64_t id = (W || ARG) ? g.id(k) : 0;
      const T* xs = x + g.src(k) * HF;
      for (int64_t h = 0; h < H; ++h) {
        const T ws = W ? w[id * wH + (wH == 1 ? 0 : h)] : T(1);
        T* __restrict oh = o + h * F;
        const T* __restrict xh = xs + h * F;
        if (KIND == 0) {
          if (W) {
            FL_SIMD for (int64_t f = 0; f < F; ++f) oh[f] += ws * xh[f];
          } else {
            FL_SIMD for (int64_t f = 0; f < F; ++f) oh[f] += xh[f];
          }
        } else if (!ARG) {
          FL_SIMD for (int64_t f = 0; f < F; ++f) {
            const T v = ws * xh[f];
            oh[f] = (KIND == 1 ? v > oh[f] : v < oh[f]) ? v : oh[f];
          }
        } else {
          int64_t* __restrict ah = a + h * F;
          FL_SIMD for (int64_t f = 0; f < F; ++f) {
            const T v = ws * xh[f];
            const bool better = KIND == 1 ? v > oh[f] : v < oh[f];
            oh[f] = better ? v : oh[f];
            ah[f] = better ? id : ah[f];
          }
        }
      }
    }
    if (KIND == 0 && mean) {
      const T inv = T(1) / T(ke - kb);
      FL_SIMD for (int64_t i = 0; i < HF; ++i) o[i] *= inv;
    }
  }
}

// Multiversioned entry points (AVX-512 / AVX2 / baseline), one per dtype and reduce kind, defined in csr_reduce.cpp.
#define FL_MP_DECL(T)                                                                                           \
  void reduce_rows_sum(const Csr& g, const T* w, int64_t wH, const T* x, T* out, int64_t r0, int64_t r1,       \
                       int64_t H, int64_t F, bool mean);                                                        \
  void reduce_rows_ext(const Csr& g, const T* w, int64_t wH, const T* x, T* out, int64_t* arg, int64_t r0,     \
                       int64_t r1, int64_t H, int64_t F, bool is_max, int64_t none_id);
FL_MP_DECL(float)
FL_MP_DECL(double)
#undef FL_MP_DECL

// Runs the reduce over all rows of g (n rows, features [H, F]) into out ([n, H, F], and arg when not nullptr).
template <typename T>
void csr_reduce(const Csr& g, int64_t n, const T* w, int64_t wH, const T* x, T* out, int64_t* arg, int64_t H,
                int64_t F, Reduce red, int64_t none_id) {
  parallel_rows(g.rowptr, n, H * F, [&](int64_t r0, int64_t r1) {
    if (red == Reduce::Sum || red == Reduce::Mean) {
      reduce_rows_sum(g, w, wH, x, out, r0, r1, H, F, red == Reduce::Mean);
    } else {
      reduce_rows_ext(g, w, wH, x, out, arg, r0, r1, H, F, red == Reduce::Max, none_id);
    }
  });
}

}  // namespace fastlayers::mp
