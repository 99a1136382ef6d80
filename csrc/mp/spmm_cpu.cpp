// CPU kernels over a Graph's CSR: spmm (forward; the backward of sum/mean is spmm on the reversed graph plus an
// sddmm), the max/min backward, sddmm and edge softmax. Rows are split into nnz-balanced chunks (mp_cpu.h).
#include <ATen/ATen.h>
#include <torch/library.h>

#include <cmath>

#include "common/checks.h"
#define FASTLAYERS_WITH_TORCH_API
#include "common/cpu_cache.h"
#include "mp/mp_cpu.h"

namespace fastlayers::mp {
namespace {

void check_index(const at::Tensor& t, const char* name) {
  TORCH_CHECK(t.device().is_cpu() && t.scalar_type() == at::kLong && t.dim() == 1,
              "fastlayers: ", name, " must be a 1-D int64 CPU tensor");
}

void check_csr(const at::Tensor& rowptr, const at::Tensor& col, const at::Tensor& perm, const char* op,
               const char* ptr_name = "rowptr", const char* col_name = "col", const char* perm_name = "perm") {
  check_index(rowptr, ptr_name);
  check_index(col, col_name);
  check_index(perm, perm_name);
  TORCH_CHECK(rowptr.numel() >= 1, op, ": ", ptr_name, " must have N + 1 >= 1 entries");
  TORCH_CHECK(col.numel() == perm.numel(), op, ": ", col_name, " and ", perm_name, " must have one length, got ",
              col.numel(), " and ", perm.numel());
}

void check_float(const at::Tensor& t, const char* name) {
  TORCH_CHECK(t.device().is_cpu() && (t.scalar_type() == at::kFloat || t.scalar_type() == at::kDouble),
              "fastlayers: ", name, " must be a float32/float64 CPU tensor");
}

int64_t weight_heads(const c10::optional<at::Tensor>& weight, int64_t E, int64_t H, const at::Tensor& x) {
  if (!weight.has_value()) return 0;
  const at::Tensor& w = *weight;
  check_float(w, "weight");
  TORCH_CHECK(w.scalar_type() == x.scalar_type(), "fastlayers: weight must have x's dtype");
  TORCH_CHECK(w.size(0) == E && (w.dim() == 1 || (w.dim() == 2 && (w.size(1) == 1 || w.size(1) == H))),
              "fastlayers: weight must be [E] or [E, H]");
  return w.dim() == 2 ? w.size(1) : 1;
}

std::tuple<at::Tensor, at::Tensor> spmm_fwd_cpu(const at::Tensor& rowptr_in, const at::Tensor& col_in,
                                                const at::Tensor& perm_in, const at::Tensor& /*colptr*/,
                                                const at::Tensor& /*row*/, const at::Tensor& /*cperm*/,
                                                const c10::optional<at::Tensor>& weight,
                                                const at::Tensor& x_in, c10::string_view reduce, bool need_arg) {
  check_csr(rowptr_in, col_in, perm_in, "spmm_fwd");
  check_float(x_in, "x");
  FL_CHECK_DIM(x_in, 3);
  const Reduce red = parse_reduce(reduce);
  const at::Tensor rowptr = rowptr_in.contiguous(), col = col_in.contiguous(), perm = perm_in.contiguous();
  const at::Tensor x = x_in.contiguous();
  const int64_t n = rowptr.numel() - 1, E = col.numel(), H = x.size(1), F = x.size(2);
  check_rowptr(rowptr.const_data_ptr<int64_t>(), n, E, "spmm_fwd", "rowptr");
  const int64_t wH = weight_heads(weight, E, H, x);
  const at::Tensor w = weight.has_value() ? weight->contiguous() : at::Tensor();
  at::Tensor out = empty_cached({n, H, F}, x.options());
  const bool with_arg = need_arg && is_arg_reduce(red);
  at::Tensor arg = empty_cached({with_arg ? n : 0, H, F}, x.options().dtype(at::kLong));
  if (n == 0 || H * F == 0) return {out, arg};
  const Csr g{rowptr.const_data_ptr<int64_t>(), col.const_data_ptr<int64_t>(), perm.const_data_ptr<int64_t>()};
  int64_t bad = -1;
  AT_DISPATCH_FLOATING_TYPES(x.scalar_type(), "spmm_fwd_cpu", [&] {
    bad = csr_reduce<scalar_t>(g, n, wH ? w.const_data_ptr<scalar_t>() : nullptr, std::max<int64_t>(wH, 1),
                               x.const_data_ptr<scalar_t>(), out.mutable_data_ptr<scalar_t>(),
                               with_arg ? arg.mutable_data_ptr<int64_t>() : nullptr, H, F, red, E, x.size(0), E);
  });
  if (bad >= 0) raise_bad_slot("spmm_fwd", bad, g.col, "col", x.size(0), g.perm, "perm", E);
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

std::tuple<at::Tensor, at::Tensor> spmm_arg_bwd_cpu(const at::Tensor& colptr_in, const at::Tensor& row_in,
                                                    const at::Tensor& cperm_in,
                                                    const c10::optional<at::Tensor>& weight, const at::Tensor& x_in,
                                                    const at::Tensor& grad_in, const at::Tensor& arg_in, bool need_x,
                                                    bool need_weight) {
  check_csr(colptr_in, row_in, cperm_in, "spmm_arg_bwd", "colptr", "row", "cperm");
  check_float(x_in, "x");
  FL_CHECK_DIM(x_in, 3);
  const at::Tensor colptr = colptr_in.contiguous(), row = row_in.contiguous(), cperm = cperm_in.contiguous();
  const at::Tensor x = x_in.contiguous();
  const int64_t n = colptr.numel() - 1, E = row.numel(), H = x.size(1), F = x.size(2);
  TORCH_CHECK(grad_in.sizes() == x.sizes() && arg_in.sizes() == x.sizes() && arg_in.scalar_type() == at::kLong,
              "spmm_arg_bwd: grad_out and arg must be [N, H, F] like x");
  TORCH_CHECK(x.size(0) == n, "spmm_arg_bwd: x must have colptr.numel() - 1 = ", n, " rows, got ", x.size(0));
  check_rowptr(colptr.const_data_ptr<int64_t>(), n, E, "spmm_arg_bwd", "colptr");
  const at::Tensor gout = grad_in.to(x.scalar_type()).contiguous(), arg = arg_in.contiguous();
  // The forward's sentinel for an empty row is E (spmm_fwd's none_id).
  check_arg_range(arg.const_data_ptr<int64_t>(), arg.numel(), E, "spmm_arg_bwd", "an edge id");
  const int64_t wH = weight_heads(weight, E, H, x);
  const at::Tensor w = weight.has_value() ? weight->contiguous() : at::Tensor();
  const bool do_w = need_weight && wH > 0;
  at::Tensor gx = empty_cached({need_x ? n : 0, H, F}, x.options());
  at::Tensor gw = do_w ? empty_like_cached(w) : empty_cached({0}, x.options());
  if (n == 0 || (!need_x && !do_w)) return {gx, gw};
  if (H * F == 0) {
    if (do_w) gw.zero_();
    return {gx, gw};
  }
  const Csr g{colptr.const_data_ptr<int64_t>(), row.const_data_ptr<int64_t>(), cperm.const_data_ptr<int64_t>()};
  BadSlot bad;
  AT_DISPATCH_FLOATING_TYPES(x.scalar_type(), "spmm_arg_bwd_cpu", [&] {
    const scalar_t* wp = wH ? w.const_data_ptr<scalar_t>() : nullptr;
    parallel_rows(g.rowptr, n, H * F, [&](int64_t r0, int64_t r1) {
      bad.note(arg_bwd_dispatch(g, wp, std::max<int64_t>(wH, 1), x.const_data_ptr<scalar_t>(),
                                gout.const_data_ptr<scalar_t>(), arg.const_data_ptr<int64_t>(),
                                need_x ? gx.mutable_data_ptr<scalar_t>() : nullptr,
                                do_w ? gw.mutable_data_ptr<scalar_t>() : nullptr, r0, r1, H, F, n, E));
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

at::Tensor sddmm_cpu(const at::Tensor& rowptr_in, const at::Tensor& col_in, const at::Tensor& perm_in,
                     const at::Tensor& /*colptr*/, const at::Tensor& /*row*/, const at::Tensor& /*cperm*/,
                     const at::Tensor& a_in, const at::Tensor& b_in) {
  check_csr(rowptr_in, col_in, perm_in, "sddmm");
  check_float(a_in, "a");
  FL_CHECK_DIM(a_in, 3);
  TORCH_CHECK(b_in.sizes() == a_in.sizes() && b_in.scalar_type() == a_in.scalar_type(),
              "sddmm: a and b must have one shape and dtype");
  const at::Tensor rowptr = rowptr_in.contiguous(), col = col_in.contiguous(), perm = perm_in.contiguous();
  const at::Tensor a = a_in.contiguous(), b = b_in.contiguous();
  const int64_t n = rowptr.numel() - 1, E = col.numel(), H = a.size(1), F = a.size(2);
  TORCH_CHECK(a.size(0) == n, "sddmm: a and b must have rowptr.numel() - 1 = ", n, " rows, got ", a.size(0));
  check_rowptr(rowptr.const_data_ptr<int64_t>(), n, E, "sddmm", "rowptr");
  at::Tensor out = empty_cached({E, H}, a.options());
  if (E == 0 || H == 0) return out;
  const Csr g{rowptr.const_data_ptr<int64_t>(), col.const_data_ptr<int64_t>(), perm.const_data_ptr<int64_t>()};
  BadSlot bad;
  AT_DISPATCH_FLOATING_TYPES(a.scalar_type(), "sddmm_cpu", [&] {
    parallel_rows(g.rowptr, n, H * F, [&](int64_t r0, int64_t r1) {
      bad.note(sddmm_dispatch(g, a.const_data_ptr<scalar_t>(), b.const_data_ptr<scalar_t>(),
                              out.mutable_data_ptr<scalar_t>(), r0, r1, H, F, n, E));
    });
  });
  if (bad.any()) raise_bad_slot("sddmm", bad.pos.load(), g.col, "col", n, g.perm, "perm", E);
  return out;
}

// Softmax over the incoming edges of each target, per head: scores and out are [E, H] in the caller's order.
at::Tensor edge_softmax_fwd_cpu(const at::Tensor& rowptr_in, const at::Tensor& perm_in, const at::Tensor& s_in) {
  check_index(rowptr_in, "rowptr");
  check_index(perm_in, "perm");
  check_float(s_in, "scores");
  FL_CHECK_DIM(s_in, 2);
  TORCH_CHECK(s_in.size(0) == perm_in.numel(), "edge_softmax: scores must be [E, H]");
  const at::Tensor rowptr = rowptr_in.contiguous(), perm = perm_in.contiguous(), s = s_in.contiguous();
  const int64_t n = rowptr.numel() - 1, H = s.size(1), E = perm.numel();
  TORCH_CHECK(n >= 0, "edge_softmax_fwd: rowptr must have N + 1 >= 1 entries");
  check_rowptr(rowptr.const_data_ptr<int64_t>(), n, E, "edge_softmax_fwd", "rowptr");
  at::Tensor out = empty_like_cached(s);
  if (s.numel() == 0) return out;
  const int64_t* rp = rowptr.const_data_ptr<int64_t>();
  const int64_t* pm = perm.const_data_ptr<int64_t>();
  BadSlot bad;
  AT_DISPATCH_FLOATING_TYPES(s.scalar_type(), "edge_softmax_fwd_cpu", [&] {
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
at::Tensor edge_softmax_bwd_cpu(const at::Tensor& rowptr_in, const at::Tensor& perm_in, const at::Tensor& y_in,
                                const at::Tensor& g_in) {
  check_index(rowptr_in, "rowptr");
  check_index(perm_in, "perm");
  check_float(y_in, "out");
  FL_CHECK_DIM(y_in, 2);
  TORCH_CHECK(g_in.sizes() == y_in.sizes() && y_in.size(0) == perm_in.numel(),
              "edge_softmax_bwd: out and grad_out must be [E, H]");
  const at::Tensor rowptr = rowptr_in.contiguous(), perm = perm_in.contiguous(), y = y_in.contiguous();
  const at::Tensor g = g_in.to(y.scalar_type()).contiguous();
  const int64_t n = rowptr.numel() - 1, H = y.size(1), E = perm.numel();
  TORCH_CHECK(n >= 0, "edge_softmax_bwd: rowptr must have N + 1 >= 1 entries");
  check_rowptr(rowptr.const_data_ptr<int64_t>(), n, E, "edge_softmax_bwd", "rowptr");
  at::Tensor gs = empty_like_cached(y);
  if (y.numel() == 0) return gs;
  const int64_t* rp = rowptr.const_data_ptr<int64_t>();
  const int64_t* pm = perm.const_data_ptr<int64_t>();
  BadSlot bad;
  AT_DISPATCH_FLOATING_TYPES(y.scalar_type(), "edge_softmax_bwd_cpu", [&] {
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

TORCH_LIBRARY_IMPL(fastlayers, CPU, m) {
  m.impl("spmm_fwd", &spmm_fwd_cpu);
  m.impl("spmm_arg_bwd", &spmm_arg_bwd_cpu);
  m.impl("sddmm", &sddmm_cpu);
  m.impl("edge_softmax_fwd", &edge_softmax_fwd_cpu);
  m.impl("edge_softmax_bwd", &edge_softmax_bwd_cpu);
}

}  // namespace fastlayers::mp
