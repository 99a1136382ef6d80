// Shared pieces of the CPU message-passing kernels: nnz-balanced row chunks and the CSR gather-reduce core that
// spmm, segment and scatter all run.
//
// Every kernel is "owner computes": a thread owns a range of output rows and reads whatever it needs, so there
// are no atomics, results do not depend on the thread count, and nothing of size [E, F] is ever allocated.
#pragma once
#include <algorithm>
#include <atomic>
#include <limits>
#include <string>
#include <vector>

#include "common/cpu_isa.h"
#include "common/cpu_simd.h"
#include "common/stable.h"

namespace fastlayers::mp {

enum class Reduce { Sum, Mean, Max, Min };

inline Reduce parse_reduce(const std::string& s) {
  if (s == "sum") return Reduce::Sum;
  if (s == "mean") return Reduce::Mean;
  if (s == "max") return Reduce::Max;
  if (s == "min") return Reduce::Min;
  FL_CHECK(false, "fastlayers: reduce must be sum, mean, min or max, got ", s);
  return Reduce::Sum;  // not reached
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
  const int64_t m = std::max<int64_t>(1, std::min<int64_t>({by_work, int64_t(16) * num_threads(), n}));
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
  fastlayers::parallel_for(0, std::min<int64_t>(m, num_threads()), 1, [&](int64_t, int64_t) {
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

// Index checks. The registered ops are public (torch.compile and torch.export call them with any tensors), so
// every kernel checks what it dereferences. rowptr is checked in its own O(N) pass before anything walks it (the
// chunking binary-searches it). col/perm are checked where the kernels read them, not in an extra O(E) pass over
// memory: the gather-reduce scans each chunk's slice just before gathering it (slots_in_range: the slice is hot
// in cache then) and runs an unchecked loop on clean chunks; the other kernels test each slot in their own loop
// (a compare and a well-predicted branch beside the slot's loads). A bad slot is skipped, never dereferenced,
// and the op raises after its parallel region naming the first one.

// rowptr of a CSR over E slots: rowptr[0] == 0, non-decreasing, rowptr[n] == E. Cheap next to any kernel (O(N)).
inline void check_rowptr(const int64_t* p, int64_t n, int64_t E, const char* op, const char* name) {
  FL_CHECK(p[0] == 0, op, ": ", name, "[0] must be 0, got ", p[0]);
  bool ok = true;
  for (int64_t i = 0; i < n; ++i) ok &= p[i] <= p[i + 1];
  if (!ok) {
    for (int64_t i = 0; i < n; ++i) {
      FL_CHECK(p[i] <= p[i + 1], op, ": ", name, " must be non-decreasing, got ", name, "[", i, "] = ", p[i],
               " > ", name, "[", i + 1, "] = ", p[i + 1]);
    }
  }
  FL_CHECK(p[n] == E, op, ": ", name, "[-1] must equal the number of slots (", E, "), got ", p[n]);
}

// The first bad slot any thread saw (threads finish in any order; the lowest position is reported, so the message
// does not depend on the thread count).
struct BadSlot {
  std::atomic<int64_t> pos{std::numeric_limits<int64_t>::max()};
  void note(int64_t k) {
    if (k < 0) return;
    int64_t cur = pos.load(std::memory_order_relaxed);
    while (k < cur && !pos.compare_exchange_weak(cur, k, std::memory_order_relaxed)) {
    }
  }
  bool any() const { return pos.load() != std::numeric_limits<int64_t>::max(); }
};

FL_INLINE bool out_of(int64_t v, int64_t hi) { return uint64_t(v) >= uint64_t(hi); }  // v < 0 or v >= hi

// Raises for slot k, naming whichever of col (a node id below nsrc) and perm (an edge id below nid) is bad there.
[[noreturn]] inline void raise_bad_slot(const char* op, int64_t k, const int64_t* col, const char* col_name,
                                        int64_t nsrc, const int64_t* perm, const char* perm_name, int64_t nid) {
  if (col && out_of(col[k], nsrc)) {
    FL_CHECK(false, op, ": ", col_name, "[", k, "] = ", col[k], " is out of range: expected a node id in [0, ",
             nsrc, ")");
  }
  const int64_t v = perm ? perm[k] : k;
  FL_CHECK(false, op, ": ", perm_name, "[", k, "] = ", v, " is out of range: expected an edge id in [0, ", nid,
           ")");
}

// Values of an arg tensor (the winning index of a max/min forward) must lie in [0, hi], hi being the forward's
// "no element" sentinel. The backward passes only compare arg with slot ids, so a bad value would silently drop
// gradient: one parallel streaming pass (backward of max/min only) turns that into an error.
inline void check_arg_range(const int64_t* a, int64_t numel, int64_t hi, const char* op, const char* what) {
  std::atomic<bool> bad{false};
  fastlayers::parallel_for(0, numel, int64_t(1) << 16, [&](int64_t b, int64_t e) {
    bool ok = true;
    for (int64_t i = b; i < e; ++i) ok &= uint64_t(a[i]) <= uint64_t(hi);
    if (!ok) bad.store(true);
  });
  if (!bad.load()) return;
  for (int64_t i = 0; i < numel; ++i) {
    FL_CHECK(uint64_t(a[i]) <= uint64_t(hi), op, ": arg (flat position ", i, ") = ", a[i],
             " is out of range: expected ", what, " in [0, ", hi, "), or ", hi, " for an empty row");
  }
}

// Max/min take NaN like torch's amax/amin (and scatter_reduce): once a NaN is seen it wins, and the arg is the first
// NaN. v != v is the NaN test (the build has no -ffast-math, so the compiler keeps it).
template <int KIND, typename T>
FL_INLINE bool ext_better(T v, T cur) {
  return (KIND == 1 ? v > cur : v < cur) || (v != v && cur == cur);
}
// The same value without an arg to keep, as at::vec::maximum/minimum do it: the plain max/min (one vmaxps/vminps)
// and one unordered compare that blends in a NaN when either side is NaN.
template <int KIND, typename T>
FL_INLINE T ext_pick(T v, T cur) {
  const T m = (KIND == 1 ? v > cur : v < cur) ? v : cur;
  return __builtin_isunordered(v, cur) ? std::numeric_limits<T>::quiet_NaN() : m;
}

// out[r, h, :] = reduce over slots k of row r of w[id(k), h] * x[src(k), h, :] for rows [r0, r1).
// KIND 0: sum (mean divides by the slot count), 1: max, 2: min. With ARG, arg[r, h, f] = id of the winning slot
// (the first in slot order among ties, i.e. the lowest id when ids increase along a row), none_id for empty rows.
// W: weighted, w is [*, wH] with wH 1 (shared by heads) or H; else every weight is 1 and perm is never read.
// The first valid slot of a row initialises it, so the loop over the others has no per-feature branch.
// CHECK: a slot whose source is not in [0, nsrc) or (when its id is read) whose id is not in [0, nid) is skipped;
// the first such slot is returned (-1 if none) and the caller raises: the output is then never returned.
template <typename T, int KIND, bool ARG, bool W, bool CHECK>
FL_INLINE int64_t reduce_rows_impl(const Csr& g, const T* w, int64_t wH, const T* x, T* out, int64_t* arg,
                                   int64_t r0, int64_t r1, int64_t H, int64_t F, bool mean, int64_t none_id,
                                   int64_t nsrc, int64_t nid) {
  const int64_t HF = H * F;
  const int64_t row_bytes = HF * int64_t(sizeof(T));
  const int64_t kstop = g.rowptr[r1];
  int64_t bad = -1;
  auto slot_bad = [&](int64_t k) {
    return CHECK && (out_of(g.src(k), nsrc) || ((W || ARG) && out_of(g.id(k), nid)));
  };
  for (int64_t r = r0; r < r1; ++r) {
    T* o = out + r * HF;
    int64_t* a = ARG ? arg + r * HF : nullptr;
    int64_t kb = g.rowptr[r];
    const int64_t ke = g.rowptr[r + 1];
    while (kb < ke && __builtin_expect(slot_bad(kb), 0)) {
      if (bad < 0) bad = kb;
      ++kb;
    }
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
      // Prefetches never fault, so a bad index ahead is harmless here; it is caught when its slot is reached.
      if (k + kPrefetch < kstop) {
        prefetch_row(x + g.src(k + kPrefetch) * HF, row_bytes);
        if (W) __builtin_prefetch(w + g.id(k + kPrefetch) * wH, 0, 1);
      }
      const int64_t s = g.src(k);
      const int64_t id = (W || ARG) ? g.id(k) : 0;
      if (CHECK && __builtin_expect(out_of(s, nsrc) || ((W || ARG) && out_of(id, nid)), 0)) {
        if (bad < 0) bad = k;
        continue;
      }
      const T* xs = x + s * HF;
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
            oh[f] = ext_pick<KIND>(v, oh[f]);
          }
        } else {
          int64_t* __restrict ah = a + h * F;
          FL_SIMD for (int64_t f = 0; f < F; ++f) {
            const T v = ws * xh[f];
            const bool better = ext_better<KIND>(v, oh[f]);
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
  return bad;
}

// True when every index of slots [kb, ke) that the reduce dereferences is in range. A chunk's col/perm slice is
// small (it is sized by its gather work) and is read again right after from L1/L2, so this vectorised scan costs
// far less than a compare and branch per slot inside the gather loop, which measured ~5% on spmm sum.
FL_INLINE bool slots_in_range(const Csr& g, int64_t kb, int64_t ke, int64_t nsrc, int64_t nid, bool ids) {
  uint64_t bad = 0;
  if (g.col) {
    const int64_t* c = g.col;
    FL_PRAGMA(omp simd reduction(| : bad))
    for (int64_t k = kb; k < ke; ++k) bad |= uint64_t(uint64_t(c[k]) >= uint64_t(nsrc));
  }
  if (ids && g.perm) {
    const int64_t* p = g.perm;
    FL_PRAGMA(omp simd reduction(| : bad))
    for (int64_t k = kb; k < ke; ++k) bad |= uint64_t(uint64_t(p[k]) >= uint64_t(nid));
  }
  return bad == 0;
}

// The reduce of rows [r0, r1): the unchecked loop when the chunk's indices are all in range (always, for valid
// input), else the checked one that skips and reports the bad slots.
template <typename T, int KIND, bool ARG, bool W>
FL_INLINE int64_t reduce_rows(const Csr& g, const T* w, int64_t wH, const T* x, T* out, int64_t* arg, int64_t r0,
                              int64_t r1, int64_t H, int64_t F, bool mean, int64_t none_id, int64_t nsrc,
                              int64_t nid) {
  if (slots_in_range(g, g.rowptr[r0], g.rowptr[r1], nsrc, nid, W || ARG)) {
    return reduce_rows_impl<T, KIND, ARG, W, false>(g, w, wH, x, out, arg, r0, r1, H, F, mean, none_id, nsrc, nid);
  }
  return reduce_rows_impl<T, KIND, ARG, W, true>(g, w, wH, x, out, arg, r0, r1, H, F, mean, none_id, nsrc, nid);
}

// The instruction-set entry points (mp_kernels.h, compiled by mp_avx512.cpp, mp_avx2.cpp and mp_scalar.cpp), one
// table per set, chosen once (common/cpu_isa.h). Each returns the first slot with an index out of range (-1 if
// none), except scatter_owned, which sets *bad.
template <typename T>
struct Kernels {
  int64_t (*reduce_rows_sum)(const Csr& g, const T* w, int64_t wH, const T* x, T* out, int64_t r0, int64_t r1,
                             int64_t H, int64_t F, bool mean, int64_t nsrc, int64_t nid);
  int64_t (*reduce_rows_ext)(const Csr& g, const T* w, int64_t wH, const T* x, T* out, int64_t* arg, int64_t r0,
                             int64_t r1, int64_t H, int64_t F, bool is_max, int64_t none_id, int64_t nsrc,
                             int64_t nid);
  void (*scatter_owned)(const T* src, const int64_t* idx, T* out, int64_t* arg, int64_t L, int64_t B, int64_t r0,
                        int64_t r1, int64_t* count, bool* bad, int64_t n, int kind);
  int64_t (*arg_bwd_rows)(const Csr& g, const T* w, int64_t wH, const T* x, const T* gout, const int64_t* arg,
                          T* gx, T* gw, int64_t r0, int64_t r1, int64_t H, int64_t F, int64_t n, int64_t nid);
  int64_t (*sddmm_rows)(const Csr& g, const T* a, const T* b, T* out, int64_t r0, int64_t r1, int64_t H, int64_t F,
                        int64_t nsrc, int64_t nid);
  int64_t (*block_rows)(const Csr& g, const T* B, bool diag, bool tr, const T* x, T* out, int64_t r0, int64_t r1,
                        int64_t d, int64_t F, int64_t nsrc, int64_t nid);
  int64_t (*block_grad_rows)(const Csr& g, const T* grad, const T* x, T* gB, bool diag, int64_t r0, int64_t r1,
                             int64_t d, int64_t F, int64_t nsrc, int64_t nid);
};

FL_ISA_KERNELS(Kernels)

// Runs the reduce over all rows of g (n rows, features [H, F]) into out ([n, H, F], and arg when not nullptr).
// Sources must lie in [0, nsrc) and ids in [0, nid); returns the first slot where one does not (-1 if none).
template <typename T>
int64_t csr_reduce(const Csr& g, int64_t n, const T* w, int64_t wH, const T* x, T* out, int64_t* arg, int64_t H,
                   int64_t F, Reduce red, int64_t none_id, int64_t nsrc, int64_t nid) {
  BadSlot bad;
  parallel_rows(g.rowptr, n, H * F, [&](int64_t r0, int64_t r1) {
    if (red == Reduce::Sum || red == Reduce::Mean) {
      bad.note(kernels<T>().reduce_rows_sum(g, w, wH, x, out, r0, r1, H, F, red == Reduce::Mean, nsrc, nid));
    } else {
      bad.note(kernels<T>().reduce_rows_ext(g, w, wH, x, out, arg, r0, r1, H, F, red == Reduce::Max, none_id, nsrc, nid));
    }
  });
  return bad.any() ? bad.pos.load() : -1;
}

}  // namespace fastlayers::mp
