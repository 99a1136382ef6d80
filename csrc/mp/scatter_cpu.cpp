// CPU segment (torch_scatter.segment_csr) and scatter (torch_scatter.scatter with a 1-D index) kernels.
//
// scatter streams src in order, each thread reducing the rows of its own output block (up to kStreamMaxThreads
// threads); with more threads it sorts its index into a CSR (a threaded counting sort) and runs the same
// owner-computes gather-reduce as spmm. Neither needs atomics or per-thread copies of the output.
#include <atomic>

#include "common/stable.h"
#include "mp/mp_cpu.h"

namespace fastlayers::mp {
namespace {

void check_float(const Tensor& t, const char* name) {
  FL_CHECK(t.is_cpu() && (t.scalar_type() == dtype::kFloat || t.scalar_type() == dtype::kDouble),
           "fastlayers: ", name, " must be a float32/float64 CPU tensor");
}

// segment_csr's indptr may start above 0 and end below num_src (rows outside every segment are skipped), so this
// is looser than check_rowptr: 0 <= indptr[0] <= ... <= indptr[-1] <= num_src.
Tensor checked_indptr(const Tensor& indptr_in, int64_t num_src, const char* op) {
  FL_CHECK(indptr_in.is_cpu() && indptr_in.scalar_type() == dtype::kLong && indptr_in.dim() == 1 &&
               indptr_in.numel() >= 1,
           op, ": indptr must be a non-empty 1-D int64 CPU tensor");
  Tensor indptr = contig(indptr_in);
  const int64_t* p = indptr.const_data_ptr<int64_t>();
  const int64_t n = indptr.numel() - 1;
  FL_CHECK(p[0] >= 0 && p[n] <= num_src, op, ": indptr must lie in [0, ", num_src, "], got indptr[0] = ", p[0],
           " and indptr[-1] = ", p[n]);
  for (int64_t i = 0; i < n; ++i) {
    FL_CHECK(p[i] <= p[i + 1], op, ": indptr must be non-decreasing, got indptr[", i, "] = ", p[i],
             " > indptr[", i + 1, "] = ", p[i + 1]);
  }
  return indptr;
}

std::tuple<Tensor, Tensor> segment_fwd_cpu(const Tensor& src_in, const Tensor& indptr_in, const std::string& reduce,
                                           bool need_arg) {
  check_float(src_in, "src");
  FL_CHECK_DIM(src_in, 2);
  const Reduce red = parse_reduce(reduce);
  const Tensor src = contig(src_in);
  const int64_t E = src.size(0), B = src.size(1);
  const Tensor indptr = checked_indptr(indptr_in, E, "segment_fwd");
  const int64_t n = indptr.numel() - 1;
  Tensor out = empty_cached({n, B}, src.scalar_type(), src);
  const bool with_arg = need_arg && is_arg_reduce(red);
  Tensor arg = empty_cached({with_arg ? n : 0, B}, dtype::kLong, src);
  if (n == 0 || B == 0) return {out, arg};
  const Csr g{indptr.const_data_ptr<int64_t>(), nullptr, nullptr};
  dispatch_float_double(src.scalar_type(), "segment_fwd_cpu", [&](auto tag) {
    using scalar_t = decltype(tag);
    // Slots are the src rows themselves, inside [0, E] by checked_indptr: the kernel's range test never fails.
    csr_reduce<scalar_t>(g, n, nullptr, 1, src.const_data_ptr<scalar_t>(), out.mutable_data_ptr<scalar_t>(),
                         with_arg ? arg.mutable_data_ptr<int64_t>() : nullptr, 1, B, red, E, E, E);
  });
  return {out, arg};
}

// grad_src[k] = grad_out[r] (divided by the segment length for mean; for max/min only where arg == k) for the
// slots k of segment r; rows of src outside every segment get 0.
Tensor segment_bwd_cpu(const Tensor& grad_in, const Tensor& indptr_in, const Tensor& arg_in, int64_t num_src,
                       const std::string& reduce) {
  check_float(grad_in, "grad_out");
  FL_CHECK_DIM(grad_in, 2);
  const Reduce red = parse_reduce(reduce);
  const Tensor g = contig(grad_in);
  FL_CHECK(num_src >= 0, "segment_bwd: num_src must be >= 0, got ", num_src);
  const Tensor indptr = checked_indptr(indptr_in, num_src, "segment_bwd");
  const int64_t n = indptr.numel() - 1, B = g.size(1);
  FL_CHECK(g.size(0) == n, "segment_bwd: grad_out must have one row per segment");
  const bool use_arg = is_arg_reduce(red);
  FL_CHECK(!use_arg || (arg_in.sizes() == g.sizes() && arg_in.scalar_type() == dtype::kLong),
           "segment_bwd: arg must be int64 [N, F] for max/min");
  const Tensor arg = use_arg ? contig(arg_in) : arg_in;
  // arg is only compared with slot positions, never dereferenced: a value past num_src would silently drop its
  // gradient. num_src itself is the forward's sentinel for an empty segment.
  if (use_arg) check_arg_range(arg.const_data_ptr<int64_t>(), arg.numel(), num_src, "segment_bwd", "a position in src");
  Tensor gs = empty_cached({num_src, B}, g.scalar_type(), g);
  if (num_src == 0 || B == 0) return gs;
  const int64_t* p = indptr.const_data_ptr<int64_t>();
  dispatch_float_double(g.scalar_type(), "segment_bwd_cpu", [&](auto tag) {
    using scalar_t = decltype(tag);
    scalar_t* o = gs.mutable_data_ptr<scalar_t>();
    const scalar_t* gp = g.const_data_ptr<scalar_t>();
    const int64_t* ap = use_arg ? arg.const_data_ptr<int64_t>() : nullptr;
    std::fill(o, o + p[0] * B, scalar_t(0));
    std::fill(o + p[n] * B, o + num_src * B, scalar_t(0));
    parallel_rows(p, n, B, [&](int64_t r0, int64_t r1) {
      for (int64_t r = r0; r < r1; ++r) {
        const scalar_t* gr = gp + r * B;
        const scalar_t scale = red == Reduce::Mean && p[r + 1] > p[r] ? scalar_t(1) / scalar_t(p[r + 1] - p[r])
                                                                        : scalar_t(1);
        for (int64_t k = p[r]; k < p[r + 1]; ++k) {
          scalar_t* ok = o + k * B;
          if (use_arg) {
            const int64_t* ar = ap + r * B;
            FL_SIMD for (int64_t f = 0; f < B; ++f) ok[f] = ar[f] == k ? gr[f] : scalar_t(0);
          } else {
            FL_SIMD for (int64_t f = 0; f < B; ++f) ok[f] = gr[f] * scale;
          }
        }
      }
    });
  });
  return gs;
}

// Counting sort of index [L] (values in [0, n)) into rowptr [n+1] and order [L], stable (positions increase
// within a row, so max/min ties go to the lowest position). Each thread counts and then places one contiguous
// slice of the index; a thread's slots in a row follow those of the threads before it.
void counting_sort(const int64_t* idx, int64_t L, int64_t n, int64_t* rowptr, int64_t* order, const char* op,
                   const char* name) {
  const int64_t T = std::max<int64_t>(1, std::min<int64_t>(num_threads(), L / (int64_t(1) << 16)));
  std::vector<int64_t> hist(T * n, 0);
  BadSlot bad;
  fastlayers::parallel_for(0, T, 1, [&](int64_t t0, int64_t t1) {
    for (int64_t t = t0; t < t1; ++t) {
      int64_t* h = hist.data() + t * n;
      for (int64_t i = L * t / T; i < L * (t + 1) / T; ++i) {
        const int64_t v = idx[i];
        if (out_of(v, n)) {
          bad.note(i);
          return;
        }
        ++h[v];
      }
    }
  });
  if (bad.any()) {
    const int64_t i = bad.pos.load();
    FL_CHECK(false, op, ": ", name, "[", i, "] = ", idx[i], " is out of range: expected a value in [0, ", n, ")");
  }
  rowptr[0] = 0;
  for (int64_t r = 0; r < n; ++r) {
    int64_t start = rowptr[r];
    for (int64_t t = 0; t < T; ++t) {  // hist becomes each thread's next slot in row r
      const int64_t c = hist[t * n + r];
      hist[t * n + r] = start;
      start += c;
    }
    rowptr[r + 1] = start;
  }
  fastlayers::parallel_for(0, T, 1, [&](int64_t t0, int64_t t1) {
    for (int64_t t = t0; t < t1; ++t) {
      int64_t* h = hist.data() + t * n;
      for (int64_t i = L * t / T; i < L * (t + 1) / T; ++i) order[h[idx[i]]++] = i;
    }
  });
}

Tensor checked_index(const Tensor& index_in, int64_t L) {
  FL_CHECK(index_in.is_cpu() && index_in.scalar_type() == dtype::kLong && index_in.dim() == 1 &&
               index_in.numel() == L,
           "scatter: index must be a 1-D int64 CPU tensor of src.size(1) values");
  return contig(index_in);
}

// The streaming path: each thread owns a range of output rows, scans the whole index in order and reduces the
// src rows that land in its range, out[index[p]] op= src[p]. src is read in increasing order (prefetchers follow
// it) and each thread's output block stays in cache, where the sorted path gathers src rows at random; the
// index is read once per thread, cheap for the few threads of a CPU socket. Rows are reduced in increasing p,
// the same order as the sorted path, so both give the same numbers.
constexpr int64_t kStreamMaxThreads = 8;

FL_INLINE void scatter_owned_dispatch(const float* s, const int64_t* i, float* o, int64_t* a, int64_t L, int64_t B,
                                      int64_t r0, int64_t r1, int64_t* c, bool* bad, int64_t n, int kind) {
  kernels<float>().scatter_owned(s, i, o, a, L, B, r0, r1, c, bad, n, kind);
}
FL_INLINE void scatter_owned_dispatch(const double* s, const int64_t* i, double* o, int64_t* a, int64_t L,
                                      int64_t B, int64_t r0, int64_t r1, int64_t* c, bool* bad, int64_t n, int kind) {
  kernels<double>().scatter_owned(s, i, o, a, L, B, r0, r1, c, bad, n, kind);
}

template <typename T>
void scatter_stream(const T* src, const int64_t* idx, T* out, int64_t* arg, int64_t L, int64_t n, int64_t B,
                    Reduce red, int64_t threads) {
  const int kind = red == Reduce::Max ? 1 : red == Reduce::Min ? 2 : 0;
  std::vector<int64_t> count(n, 0);
  std::atomic<bool> failed{false};
  fastlayers::parallel_for(0, threads, 1, [&](int64_t t0, int64_t t1) {
    for (int64_t t = t0; t < t1; ++t) {
      const int64_t r0 = n * t / threads, r1 = n * (t + 1) / threads;
      bool bad = false;
      scatter_owned_dispatch(src, idx, out, arg, L, B, r0, r1, count.data() + r0, &bad, n, kind);
      if (bad) failed.store(true);
      for (int64_t r = r0; r < r1; ++r) {
        if (red == Reduce::Mean && count[r] > 1) {
          const T inv = T(1) / T(count[r]);  // as the sorted path scales, for identical results
          for (int64_t f = 0; f < B; ++f) out[r * B + f] *= inv;
        }
        if (arg && count[r] == 0) std::fill(arg + r * B, arg + (r + 1) * B, L);
      }
    }
  });
  if (failed.load()) {
    for (int64_t p = 0; p < L; ++p) {
      FL_CHECK(!out_of(idx[p], n), "scatter_fwd: index[", p, "] = ", idx[p],
               " is out of range: expected a value in [0, dim_size = ", n, ")");
    }
  }
}

// src [A, L, B] reduced along dim 1 into [A, n, B].
std::tuple<Tensor, Tensor> scatter_fwd_cpu(const Tensor& src_in, const Tensor& index_in, int64_t n,
                                           const std::string& reduce, bool need_arg) {
  check_float(src_in, "src");
  FL_CHECK_DIM(src_in, 3);
  FL_CHECK(n >= 0, "scatter_fwd: dim_size must be >= 0, got ", n);
  const Reduce red = parse_reduce(reduce);
  const Tensor src = contig(src_in);
  const int64_t A = src.size(0), L = src.size(1), B = src.size(2);
  const Tensor index = checked_index(index_in, L);
  Tensor out = empty_cached({A, n, B}, src.scalar_type(), src);
  const bool with_arg = need_arg && is_arg_reduce(red);
  Tensor arg = empty_cached({with_arg ? A : 0, n, B}, dtype::kLong, src);
  // dim_size: the kernels index with int64 throughout (CPU and CUDA), so no dim_size overflows them and none is
  // refused; an output too large to allocate fails in the allocator with a RuntimeError. What is avoided is
  // scratch that grows with dim_size rather than with src: with nothing to reduce (L == 0) or nothing to write
  // (A * n * B == 0) the output is filled directly, with no per-row counts, histogram or rowptr of n entries.
  if (L == 0 || A * n * B == 0) {
    const int64_t* ip = index.const_data_ptr<int64_t>();
    for (int64_t p = 0; p < L; ++p) {
      FL_CHECK(!out_of(ip[p], n), "scatter_fwd: index[", p, "] = ", ip[p],
               " is out of range: expected a value in [0, dim_size = ", n, ")");
    }
    torch::stable::zero_(out);
    // fill_ takes a double: exact, since arg holds elements only when L == 0 (else A * n * B == 0).
    if (with_arg) torch::stable::fill_(arg, double(L));
    return {out, arg};
  }
  // Threads that would each stream the whole index: few enough on one socket. Small inputs run on one.
  const int64_t threads =
      std::max<int64_t>(1, std::min<int64_t>(num_threads(), (L * std::max<int64_t>(B, 1)) / kChunkWork));
  if (threads <= kStreamMaxThreads && A * n * B > 0) {
    dispatch_float_double(src.scalar_type(), "scatter_stream_cpu", [&](auto tag) {
      using scalar_t = decltype(tag);
      for (int64_t a = 0; a < A; ++a) {
        scatter_stream<scalar_t>(src.const_data_ptr<scalar_t>() + a * L * B, index.const_data_ptr<int64_t>(),
                                 out.mutable_data_ptr<scalar_t>() + a * n * B,
                                 with_arg ? arg.mutable_data_ptr<int64_t>() + a * n * B : nullptr, L, n, B, red,
                                 std::min<int64_t>(threads, n));
      }
    });
    return {out, arg};
  }
  std::vector<int64_t> rowptr(n + 1), order(L);
  counting_sort(index.const_data_ptr<int64_t>(), L, n, rowptr.data(), order.data(), "scatter_fwd", "index");
  const Csr g{rowptr.data(), order.data(), order.data()};
  dispatch_float_double(src.scalar_type(), "scatter_fwd_cpu", [&](auto tag) {
    using scalar_t = decltype(tag);
    for (int64_t a = 0; a < A; ++a) {
      // order is a permutation of [0, L) built here: the kernel's range test never fails.
      csr_reduce<scalar_t>(g, n, nullptr, 1, src.const_data_ptr<scalar_t>() + a * L * B,
                           out.mutable_data_ptr<scalar_t>() + a * n * B,
                           with_arg ? arg.mutable_data_ptr<int64_t>() + a * n * B : nullptr, 1, B, red, L, L, L);
    }
  });
  return {out, arg};
}

// grad_src[a, p] = grad_out[a, index[p]] (divided by the count for mean; for max/min only where arg == p).
Tensor scatter_bwd_cpu(const Tensor& grad_in, const Tensor& index_in, const Tensor& arg_in,
                       const std::string& reduce) {
  check_float(grad_in, "grad_out");
  FL_CHECK_DIM(grad_in, 3);
  const Reduce red = parse_reduce(reduce);
  const Tensor g = contig(grad_in);
  const int64_t A = g.size(0), n = g.size(1), B = g.size(2), L = index_in.numel();
  const Tensor index = checked_index(index_in, L);
  const bool use_arg = is_arg_reduce(red);
  FL_CHECK(!use_arg || (arg_in.sizes() == g.sizes() && arg_in.scalar_type() == dtype::kLong),
           "scatter_bwd: arg must be int64 like grad_out for max/min");
  const Tensor arg = use_arg ? contig(arg_in) : arg_in;
  // Compared, not dereferenced: a value past L would silently drop gradient. L is the forward's empty-row sentinel.
  if (use_arg) check_arg_range(arg.const_data_ptr<int64_t>(), arg.numel(), L, "scatter_bwd", "a position in src");
  Tensor gs = empty_cached({A, L, B}, g.scalar_type(), g);
  if (A * L * B == 0) return gs;
  const int64_t* ip = index.const_data_ptr<int64_t>();
  std::vector<int64_t> count;
  if (red == Reduce::Mean) {
    count.assign(n, 0);
    for (int64_t i = 0; i < L; ++i) {
      FL_CHECK(!out_of(ip[i], n), "scatter_bwd: index[", i, "] = ", ip[i],
               " is out of range: expected a value in [0, ", n, ")");
      ++count[ip[i]];
    }
  }
  dispatch_float_double(g.scalar_type(), "scatter_bwd_cpu", [&](auto tag) {
    using scalar_t = decltype(tag);
    const scalar_t* gp = g.const_data_ptr<scalar_t>();
    const int64_t* ap = use_arg ? arg.const_data_ptr<int64_t>() : nullptr;
    scalar_t* o = gs.mutable_data_ptr<scalar_t>();
    const int64_t grain = std::max<int64_t>(1, kChunkWork / std::max<int64_t>(B, 1));
    for (int64_t a = 0; a < A; ++a) {
      // A bad index is skipped and noted (never raised inside the region); the op raises after it, naming the
      // first bad position.
      BadSlot bad;
      fastlayers::parallel_for(0, L, grain, [&](int64_t p0, int64_t p1) {
        for (int64_t p = p0; p < p1; ++p) {
          const int64_t t = ip[p];
          if (out_of(t, n)) {
            bad.note(p);
            continue;
          }
          const scalar_t* gr = gp + (a * n + t) * B;
          scalar_t* op = o + (a * L + p) * B;
          if (use_arg) {
            const int64_t* ar = ap + (a * n + t) * B;
            FL_SIMD for (int64_t f = 0; f < B; ++f) op[f] = ar[f] == p ? gr[f] : scalar_t(0);
          } else {
            const scalar_t s = red == Reduce::Mean ? scalar_t(1) / scalar_t(count[t]) : scalar_t(1);
            FL_SIMD for (int64_t f = 0; f < B; ++f) op[f] = gr[f] * s;
          }
        }
      });
      if (bad.any()) {
        const int64_t p = bad.pos.load();
        FL_CHECK(false, "scatter_bwd: index[", p, "] = ", ip[p], " is out of range: expected a value in [0, ", n,
                 ")");
      }
    }
  });
  return gs;
}

// Graph building: a stable sort of key [E] (values in [0, n)) as (rowptr [n+1], perm [E]), in O(E + n).
std::tuple<Tensor, Tensor> csr_index_cpu(const Tensor& key_in, int64_t n) {
  FL_CHECK(key_in.is_cpu() && key_in.scalar_type() == dtype::kLong && key_in.dim() == 1,
           "csr_index: key must be a 1-D int64 CPU tensor");
  FL_CHECK(n >= 0, "csr_index: n must be >= 0");
  const Tensor key = contig(key_in);
  const int64_t L = key.numel();
  Tensor rowptr = empty_cached({n + 1}, dtype::kLong, key);
  Tensor perm = empty_cached({L}, dtype::kLong, key);
  counting_sort(key.const_data_ptr<int64_t>(), L, n, rowptr.mutable_data_ptr<int64_t>(),
                perm.mutable_data_ptr<int64_t>(), "csr_index", "key");
  return {rowptr, perm};
}

}  // namespace

STABLE_TORCH_LIBRARY_IMPL(fastlayers, CPU, m) {
  m.impl("csr_index", TORCH_BOX(&csr_index_cpu));
  m.impl("segment_fwd", TORCH_BOX(&segment_fwd_cpu));
  m.impl("segment_bwd", TORCH_BOX(&segment_bwd_cpu));
  m.impl("scatter_fwd", TORCH_BOX(&scatter_fwd_cpu));
  m.impl("scatter_bwd", TORCH_BOX(&scatter_bwd_cpu));
}

}  // namespace fastlayers::mp
