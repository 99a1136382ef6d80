// CPU kernels over a Graph's CSR: spmm (forward; the backward of sum/mean is spmm on the reversed graph plus an
// sddmm), the max/min backward, sddmm and edge softmax. Rows are split into nnz-balanced chunks (mp_cpu.h).
#include <cmath>

#include "common/stable.h"
#include "mp/mp_cpu.h"

namespace fastlayers::mp {
namespace {

void check_index(const Tensor& t, const char* name) {
  FL_CHECK(t.is_cpu() && t.scalar_type() == dtype::kLong && t.dim() == 1,
           "fastlayers: ", name, " must be a 1-D int64 CPU tensor");
}

void check_csr(const Tensor& rowptr, const Tensor& col, const Tensor& perm, const char* op,
               const char* ptr_name = "rowptr", const char* col_name = "col", const char* perm_name = "perm") {
  check_index(rowptr, ptr_name);
  check_index(col, col_name);
  check_index(perm, perm_name);
  FL_CHECK(rowptr.numel() >= 1, op, ": ", ptr_name, " must have N + 1 >= 1 entries");
  FL_CHECK(col.numel() == perm.numel(), op, ": ", col_name, " and ", perm_name, " must have one length, got ",
           col.numel(), " and ", perm.numel());
}

void check_float(const Tensor& t, const char* name) {
  FL_CHECK(t.is_cpu() && (t.scalar_type() == dtype::kFloat || t.scalar_type() == dtype::kDouble),
           "fastlayers: ", name, " must be a float32/float64 CPU tensor");
}

int64_t weight_heads(const std::optional<Tensor>& weight, int64_t E, int64_t H, const Tensor& x) {
  if (!weight.has_value()) return 0;
  const Tensor& w = *weight;
  check_float(w, "weight");
  FL_CHECK(w.scalar_type() == x.scalar_type(), "fastlayers: weight must have x's dtype");
  FL_CHECK(w.size(0) == E && (w.dim() == 1 || (w.dim() == 2 && (w.size(1) == 1 || w.size(1) == H))),
           "fastlayers: weight must be [E] or [E, H]");
  return w.dim() == 2 ? w.size(1) : 1;
}

std::tuple<Tensor, Tensor> spmm_fwd_cpu(const Tensor& rowptr_in, const Tensor& col_in, const Tensor& perm_in,
                                        const Tensor& /*colptr*/, const Tensor& /*row*/, const Tensor& /*cperm*/,
                                        const std::optional<Tensor>& weight, const Tensor& x_in,
                                        const std::string& reduce, bool need_arg) {
  check_csr(rowptr_in, col_in, perm_in, "spmm_fwd");
  check_float(x_in, "x");
  FL_CHECK_DIM(x_in, 3);
  const Reduce red = parse_reduce(reduce);
  const Tensor rowptr = contig(rowptr_in), col = contig(col_in), perm = contig(perm_in);
  const Tensor x = contig(x_in);
  const int64_t n = rowptr.numel() - 1, E = col.numel(), H = x.size(1), F = x.size(2);
  check_rowptr(rowptr.const_data_ptr<int64_t>(), n, E, "spmm_fwd", "rowptr");
  const int64_t wH = weight_heads(weight, E, H, x);
  const Tensor w = weight.has_value() ? contig(*weight) : Tensor();
  Tensor out = empty_cached({n, H, F}, x.scalar_type(), x);
  const bool with_arg = need_arg && is_arg_reduce(red);
  Tensor arg = empty_cached({with_arg ? n : 0, H, F}, dtype::kLong, x);
  if (n == 0 || H * F == 0) return {out, arg};
  const Csr g{rowptr.const_data_ptr<int64_t>(), col.const_data_ptr<int64_t>(), perm.const_data_ptr<int64_t>()};
  const int64_t nsrc = x.size(0);
  int64_t bad = -1;
  dispatch_float_double(x.scalar_type(), "spmm_fwd_cpu", [&](auto tag) {
    using scalar_t = decltype(tag);
    bad = csr_reduce<scalar_t>(g, n, wH ? w.const_data_ptr<scalar_t>() : nullptr, std::max<int64_t>(wH, 1),
                               x.const_data_ptr<scalar_t>(), out.mutable_data_ptr<scalar_t>(),
                               with_arg ? arg.mutable_data_ptr<int64_t>() : nullptr, H, F, red, E, nsrc, E);
  });
  if (bad >= 0) raise_bad_slot("spmm_fwd", bad, g.col, "col", nsrc, g.perm, "perm", E);
  return {out, arg};
}


FL_INLINE int64_t arg_bwd_dispatch(const Csr& g, const float* w, int64_t wH, const float* x, const float* go,
                                   const int64_t* a, float* gx, float* gw, int64_t r0, int64_t r1, int64_t H,
                                   int64_t F, int64_t n, int64_t nid) {
  return kernels<float>().arg_bwd_rows(g, w, wH, x, go, a, gx, gw, r0, r1, H, F, n, nid);
}
FL_INLINE int64_t arg_bwd_dispatch(const Csr& g, const double* w, int64_t wH, const double* x, const double* go,
                                   const int64_t* a, double* gx, double* gw, int64_t r0, int64_t r1, int64_t H,
                                   int64_t F, int64_t n, int64_t nid) {
  return kernels<double>().arg_bwd_rows(g, w, wH, x, go, a, gx, gw, r0, r1, H, F, n, nid);
}

std::tuple<Tensor, Tensor> spmm_arg_bwd_cpu(const Tensor& colptr_in, const Tensor& row_in, const Tensor& cperm_in,
                                            const std::optional<Tensor>& weight, const Tensor& x_in,
                                            const Tensor& grad_in, const Tensor& arg_in, bool need_x,
                                            bool need_weight) {
  check_csr(colptr_in, row_in, cperm_in, "spmm_arg_bwd", "colptr", "row", "cperm");
  check_float(x_in, "x");
  FL_CHECK_DIM(x_in, 3);
  const Tensor colptr = contig(colptr_in), row = contig(row_in), cperm = contig(cperm_in);
  const Tensor x = contig(x_in);
  const int64_t n = colptr.numel() - 1, E = row.numel(), H = x.size(1), F = x.size(2);
  FL_CHECK(grad_in.sizes() == x.sizes() && arg_in.sizes() == x.sizes() && arg_in.scalar_type() == dtype::kLong,
           "spmm_arg_bwd: grad_out and arg must be [N, H, F] like x");
  FL_CHECK(x.size(0) == n, "spmm_arg_bwd: x must have colptr.numel() - 1 = ", n, " rows, got ", x.size(0));
  check_rowptr(colptr.const_data_ptr<int64_t>(), n, E, "spmm_arg_bwd", "colptr");
  const Tensor gout = contig(to_dtype(grad_in, x.scalar_type())), arg = contig(arg_in);
  // The forward's sentinel for an empty row is E (spmm_fwd's none_id).
  check_arg_range(arg.const_data_ptr<int64_t>(), arg.numel(), E, "spmm_arg_bwd", "an edge id");
  const int64_t wH = weight_heads(weight, E, H, x);
  const Tensor w = weight.has_value() ? contig(*weight) : Tensor();
  const bool do_w = need_weight && wH > 0;
  Tensor gx = empty_cached({need_x ? n : 0, H, F}, x.scalar_type(), x);
  Tensor gw = do_w ? empty_like_cached(w) : empty_cached({0}, x.scalar_type(), x);
  if (n == 0 || (!need_x && !do_w)) return {gx, gw};
  if (H * F == 0) {
    if (do_w) torch::stable::zero_(gw);
    return {gx, gw};
  }
  const Csr g{colptr.const_data_ptr<int64_t>(), row.const_data_ptr<int64_t>(), cperm.const_data_ptr<int64_t>()};
  BadSlot bad;
  dispatch_float_double(x.scalar_type(), "spmm_arg_bwd_cpu", [&](auto tag) {
    using scalar_t = decltype(tag);
    // Every pointer is taken before the parallel region: a tensor accessor may throw, a region body must not.
    const scalar_t* wp = wH ? w.const_data_ptr<scalar_t>() : nullptr;
    const scalar_t* xp = x.const_data_ptr<scalar_t>();
    const scalar_t* gp = gout.const_data_ptr<scalar_t>();
    const int64_t* ap = arg.const_data_ptr<int64_t>();
    scalar_t* gxp = need_x ? gx.mutable_data_ptr<scalar_t>() : nullptr;
    scalar_t* gwp = do_w ? gw.mutable_data_ptr<scalar_t>() : nullptr;
    parallel_rows(g.rowptr, n, H * F, [&](int64_t r0, int64_t r1) {
      bad.note(arg_bwd_dispatch(g, wp, std::max<int64_t>(wH, 1), xp, gp, ap, gxp, gwp, r0, r1, H, F, n, E));
    });
  });
  if (bad.any()) raise_bad_slot("spmm_arg_bwd", bad.pos.load(), g.col, "row", n, g.perm, "cperm", E);
  return {gx, gw};
}

FL_INLINE int64_t sddmm_dispatch(const Csr& g, const float* a, const float* b, float* o, int64_t r0, int64_t r1,
                                 int64_t H, int64_t F, int64_t nsrc, int64_t nid) {
  return kernels<float>().sddmm_rows(g, a, b, o, r0, r1, H, F, nsrc, nid);
}
FL_INLINE int64_t sddmm_dispatch(const Csr& g, const double* a, const double* b, double* o, int64_t r0,
                                 int64_t r1, int64_t H, int64_t F, int64_t nsrc, int64_t nid) {
  return kernels<double>().sddmm_rows(g, a, b, o, r0, r1, H, F, nsrc, nid);
}

Tensor sddmm_cpu(const Tensor& rowptr_in, const Tensor& col_in, const Tensor& perm_in, const Tensor& /*colptr*/,
                 const Tensor& /*row*/, const Tensor& /*cperm*/, const Tensor& a_in, const Tensor& b_in) {
  check_csr(rowptr_in, col_in, perm_in, "sddmm");
  check_float(a_in, "a");
  FL_CHECK_DIM(a_in, 3);
  FL_CHECK(b_in.sizes() == a_in.sizes() && b_in.scalar_type() == a_in.scalar_type(),
           "sddmm: a and b must have one shape and dtype");
  const Tensor rowptr = contig(rowptr_in), col = contig(col_in), perm = contig(perm_in);
  const Tensor a = contig(a_in), b = contig(b_in);
  const int64_t n = rowptr.numel() - 1, E = col.numel(), H = a.size(1), F = a.size(2);
  FL_CHECK(a.size(0) == n, "sddmm: a and b must have rowptr.numel() - 1 = ", n, " rows, got ", a.size(0));
  check_rowptr(rowptr.const_data_ptr<int64_t>(), n, E, "sddmm", "rowptr");
  Tensor out = empty_cached({E, H}, a.scalar_type(), a);
  if (E == 0 || H == 0) return out;
  const Csr g{rowptr.const_data_ptr<int64_t>(), col.const_data_ptr<int64_t>(), perm.const_data_ptr<int64_t>()};
  BadSlot bad;
  dispatch_float_double(a.scalar_type(), "sddmm_cpu", [&](auto tag) {
    using scalar_t = decltype(tag);
    const scalar_t* ap = a.const_data_ptr<scalar_t>();
    const scalar_t* bp = b.const_data_ptr<scalar_t>();
    scalar_t* op = out.mutable_data_ptr<scalar_t>();
    parallel_rows(g.rowptr, n, H * F, [&](int64_t r0, int64_t r1) {
      bad.note(sddmm_dispatch(g, ap, bp, op, r0, r1, H, F, n, E));
    });
  });
  if (bad.any()) raise_bad_slot("sddmm", bad.pos.load(), g.col, "col", n, g.perm, "perm", E);
  return out;
}

// Softmax over the incoming edges of each target, per head: scores and out are [E, H] in the caller's order.
Tensor edge_softmax_fwd_cpu(const Tensor& rowptr_in, const Tensor& perm_in, const Tensor& s_in) {
  check_index(rowptr_in, "rowptr");
  check_index(perm_in, "perm");
  check_float(s_in, "scores");
  FL_CHECK_DIM(s_in, 2);
  FL_CHECK(s_in.size(0) == perm_in.numel(), "edge_softmax: scores must be [E, H]");
  const Tensor rowptr = contig(rowptr_in), perm = contig(perm_in), s = contig(s_in);
  const int64_t n = rowptr.numel() - 1, H = s.size(1), E = perm.numel();
  FL_CHECK(n >= 0, "edge_softmax_fwd: rowptr must have N + 1 >= 1 entries");
  check_rowptr(rowptr.const_data_ptr<int64_t>(), n, E, "edge_softmax_fwd", "rowptr");
  Tensor out = empty_like_cached(s);
  if (s.numel() == 0) return out;
  const int64_t* rp = rowptr.const_data_ptr<int64_t>();
  const int64_t* pm = perm.const_data_ptr<int64_t>();
  BadSlot bad;
  dispatch_float_double(s.scalar_type(), "edge_softmax_fwd_cpu", [&](auto tag) {
    using scalar_t = decltype(tag);
    const scalar_t* sp = s.const_data_ptr<scalar_t>();
    scalar_t* op = out.mutable_data_ptr<scalar_t>();
    parallel_rows(rp, n, H, [&](int64_t r0, int64_t r1) {
      // All heads of an edge at once: each of the three passes walks the row's edges (through perm) once.
      std::vector<scalar_t> m(H), sum(H);
      for (int64_t v = r0; v < r1; ++v) {
        std::fill(m.begin(), m.end(), -std::numeric_limits<scalar_t>::infinity());
        std::fill(sum.begin(), sum.end(), scalar_t(0));
        // The first pass also checks the row's edge ids; a row with a bad one is left alone (the op raises).
        int64_t row_bad = -1;
        for (int64_t k = rp[v]; k < rp[v + 1]; ++k) {
          if (__builtin_expect(out_of(pm[k], E), 0)) {
            row_bad = k;
            break;
          }
          const scalar_t* se = sp + pm[k] * H;
          for (int64_t h = 0; h < H; ++h) m[h] = std::max(m[h], se[h]);
        }
        if (row_bad >= 0) {
          bad.note(row_bad);
          continue;
        }
        // A row of -inf scores has no finite maximum: shifting by 0 gives 0/0 = NaN, as torch.softmax does.
        for (int64_t h = 0; h < H; ++h) {
          if (std::isinf(m[h]) && m[h] < 0) m[h] = 0;
        }
        for (int64_t k = rp[v]; k < rp[v + 1]; ++k) {
          const scalar_t* se = sp + pm[k] * H;
          scalar_t* oe = op + pm[k] * H;
          for (int64_t h = 0; h < H; ++h) {
            oe[h] = std::exp(se[h] - m[h]);
            sum[h] += oe[h];
          }
        }
        for (int64_t h = 0; h < H; ++h) sum[h] = scalar_t(1) / sum[h];
        for (int64_t k = rp[v]; k < rp[v + 1]; ++k) {
          scalar_t* oe = op + pm[k] * H;
          for (int64_t h = 0; h < H; ++h) oe[h] *= sum[h];
        }
      }
    });
  });
  if (bad.any()) raise_bad_slot("edge_softmax_fwd", bad.pos.load(), nullptr, "", 0, pm, "perm", E);
  return out;
}

// grad_scores = y * (g - sum over the row of y * g).
Tensor edge_softmax_bwd_cpu(const Tensor& rowptr_in, const Tensor& perm_in, const Tensor& y_in, const Tensor& g_in) {
  check_index(rowptr_in, "rowptr");
  check_index(perm_in, "perm");
  check_float(y_in, "out");
  FL_CHECK_DIM(y_in, 2);
  FL_CHECK(g_in.sizes() == y_in.sizes() && y_in.size(0) == perm_in.numel(),
           "edge_softmax_bwd: out and grad_out must be [E, H]");
  const Tensor rowptr = contig(rowptr_in), perm = contig(perm_in), y = contig(y_in);
  const Tensor g = contig(to_dtype(g_in, y.scalar_type()));
  const int64_t n = rowptr.numel() - 1, H = y.size(1), E = perm.numel();
  FL_CHECK(n >= 0, "edge_softmax_bwd: rowptr must have N + 1 >= 1 entries");
  check_rowptr(rowptr.const_data_ptr<int64_t>(), n, E, "edge_softmax_bwd", "rowptr");
  Tensor gs = empty_like_cached(y);
  if (y.numel() == 0) return gs;
  const int64_t* rp = rowptr.const_data_ptr<int64_t>();
  const int64_t* pm = perm.const_data_ptr<int64_t>();
  BadSlot bad;
  dispatch_float_double(y.scalar_type(), "edge_softmax_bwd_cpu", [&](auto tag) {
    using scalar_t = decltype(tag);
    const scalar_t* yp = y.const_data_ptr<scalar_t>();
    const scalar_t* gp = g.const_data_ptr<scalar_t>();
    scalar_t* op = gs.mutable_data_ptr<scalar_t>();
    parallel_rows(rp, n, H, [&](int64_t r0, int64_t r1) {
      std::vector<scalar_t> dot(H);
      for (int64_t v = r0; v < r1; ++v) {
        std::fill(dot.begin(), dot.end(), scalar_t(0));
        int64_t row_bad = -1;
        for (int64_t k = rp[v]; k < rp[v + 1]; ++k) {
          if (__builtin_expect(out_of(pm[k], E), 0)) {
            row_bad = k;
            break;
          }
          const int64_t i = pm[k] * H;
          for (int64_t h = 0; h < H; ++h) dot[h] += yp[i + h] * gp[i + h];
        }
        if (row_bad >= 0) {
          bad.note(row_bad);
          continue;
        }
        for (int64_t k = rp[v]; k < rp[v + 1]; ++k) {
          const int64_t i = pm[k] * H;
          for (int64_t h = 0; h < H; ++h) op[i + h] = yp[i + h] * (gp[i + h] - dot[h]);
        }
      }
    });
  });
  if (bad.any()) raise_bad_slot("edge_softmax_bwd", bad.pos.load(), nullptr, "", 0, pm, "perm", E);
  return gs;
}

}  // namespace

STABLE_TORCH_LIBRARY_IMPL(fastlayers, CPU, m) {
  m.impl("spmm_fwd", TORCH_BOX(&spmm_fwd_cpu));
  m.impl("spmm_arg_bwd", TORCH_BOX(&spmm_arg_bwd_cpu));
  m.impl("sddmm", TORCH_BOX(&sddmm_cpu));
  m.impl("edge_softmax_fwd", TORCH_BOX(&edge_softmax_fwd_cpu));
  m.impl("edge_softmax_bwd", TORCH_BOX(&edge_softmax_bwd_cpu));
}

}  // namespace fastlayers::mp
