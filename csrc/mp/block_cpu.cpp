// block_spmm on the CPU: out[v] = sum over edges e = u -> v of B_e x[u], x [N, d, F], B_e a d x d block (or its
// diagonal [d]) per edge; the backward for the blocks is a per-edge [d, d] (or [d]) product of grad_out[v] and
// x[u] over F. Same owner-computes row chunks as spmm: no atomics, no [E, F] temporaries.
#include <ATen/ATen.h>
#include <torch/library.h>

#include "common/checks.h"
#define FASTLAYERS_WITH_TORCH_API
#include "common/cpu_cache.h"
#include "mp/mp_cpu.h"

namespace fastlayers::mp {
namespace {


FL_INLINE int64_t block_dispatch(const Csr& g, const float* B, bool diag, bool tr, const float* x, float* out,
                                 int64_t r0, int64_t r1, int64_t d, int64_t F, int64_t nsrc, int64_t nid) {
  return kernels<float>().block_rows(g, B, diag, tr, x, out, r0, r1, d, F, nsrc, nid);
}
FL_INLINE int64_t block_dispatch(const Csr& g, const double* B, bool diag, bool tr, const double* x, double* out,
                                 int64_t r0, int64_t r1, int64_t d, int64_t F, int64_t nsrc, int64_t nid) {
  return kernels<double>().block_rows(g, B, diag, tr, x, out, r0, r1, d, F, nsrc, nid);
}
FL_INLINE int64_t block_grad_dispatch(const Csr& g, const float* gr, const float* x, float* gB, bool diag,
                                      int64_t r0, int64_t r1, int64_t d, int64_t F, int64_t nsrc, int64_t nid) {
  return kernels<float>().block_grad_rows(g, gr, x, gB, diag, r0, r1, d, F, nsrc, nid);
}
FL_INLINE int64_t block_grad_dispatch(const Csr& g, const double* gr, const double* x, double* gB, bool diag,
                                      int64_t r0, int64_t r1, int64_t d, int64_t F, int64_t nsrc, int64_t nid) {
  return kernels<double>().block_grad_rows(g, gr, x, gB, diag, r0, r1, d, F, nsrc, nid);
}

void check_csr(const at::Tensor& rowptr, const at::Tensor& col, const at::Tensor& perm, const char* op) {
  for (const at::Tensor* t : {&rowptr, &col, &perm}) {
    TORCH_CHECK(t->device().is_cpu() && t->scalar_type() == at::kLong && t->dim() == 1,
                op, ": rowptr, col and perm must be 1-D int64 CPU tensors");
  }
  TORCH_CHECK(rowptr.numel() >= 1, op, ": rowptr must have N + 1 >= 1 entries");
  TORCH_CHECK(col.numel() == perm.numel(), op, ": col and perm must have one length, got ", col.numel(), " and ",
              perm.numel());
}

bool check_blocks(const at::Tensor& blocks, const at::Tensor& x, int64_t E) {
  TORCH_CHECK(x.device().is_cpu() && (x.scalar_type() == at::kFloat || x.scalar_type() == at::kDouble) &&
                  x.dim() == 3,
              "block_spmm: x must be a float32/float64 CPU tensor [N, d, F]");
  TORCH_CHECK(blocks.scalar_type() == x.scalar_type(), "block_spmm: blocks must have x's dtype");
  const int64_t d = x.size(1);
  const bool diag = blocks.dim() == 2;
  TORCH_CHECK(blocks.size(0) == E && (diag ? blocks.size(1) == d : (blocks.dim() == 3 && blocks.size(1) == d &&
                                                                     blocks.size(2) == d)),
              "block_spmm: blocks must be [E, d, d] or [E, d]");
  return diag;
}

at::Tensor block_spmm_fwd_cpu(const at::Tensor& rowptr_in, const at::Tensor& col_in, const at::Tensor& perm_in,
                              const at::Tensor&, const at::Tensor&, const at::Tensor&, const at::Tensor& blocks_in,
                              const at::Tensor& x_in, bool transpose) {
  check_csr(rowptr_in, col_in, perm_in, "block_spmm_fwd");
  const bool diag = check_blocks(blocks_in, x_in, col_in.numel());
  const at::Tensor rowptr = rowptr_in.contiguous(), col = col_in.contiguous(), perm = perm_in.contiguous();
  const at::Tensor x = x_in.contiguous(), B = blocks_in.contiguous();
  const int64_t n = rowptr.numel() - 1, d = x.size(1), F = x.size(2), E = col.numel();
  check_rowptr(rowptr.const_data_ptr<int64_t>(), n, E, "block_spmm_fwd", "rowptr");
  at::Tensor out = empty_cached({n, d, F}, x.options());
  if (n == 0 || d * F == 0) return out;
  const Csr g{rowptr.const_data_ptr<int64_t>(), col.const_data_ptr<int64_t>(), perm.const_data_ptr<int64_t>()};
  BadSlot bad;
  AT_DISPATCH_FLOATING_TYPES(x.scalar_type(), "block_spmm_fwd_cpu", [&] {
    parallel_rows(g.rowptr, n, d * F * (diag ? 1 : d), [&](int64_t r0, int64_t r1) {
      bad.note(block_dispatch(g, B.const_data_ptr<scalar_t>(), diag, transpose, x.const_data_ptr<scalar_t>(),
                              out.mutable_data_ptr<scalar_t>(), r0, r1, d, F, x.size(0), E));
    });
  });
  if (bad.any()) raise_bad_slot("block_spmm_fwd", bad.pos.load(), g.col, "col", x.size(0), g.perm, "perm", E);
  return out;
}

at::Tensor block_spmm_bwd_blocks_cpu(const at::Tensor& rowptr_in, const at::Tensor& col_in,
                                     const at::Tensor& perm_in, const at::Tensor& grad_in, const at::Tensor& x_in,
                                     bool diag) {
  check_csr(rowptr_in, col_in, perm_in, "block_spmm_bwd_blocks");
  TORCH_CHECK(x_in.device().is_cpu() && (x_in.scalar_type() == at::kFloat || x_in.scalar_type() == at::kDouble) &&
                  x_in.dim() == 3 && grad_in.dim() == 3 && grad_in.size(1) == x_in.size(1) &&
                  grad_in.size(2) == x_in.size(2) && grad_in.size(0) == rowptr_in.numel() - 1,
              "block_spmm_bwd_blocks: grad_out [N, d, F] and x [N, d, F] expected");
  const at::Tensor rowptr = rowptr_in.contiguous(), col = col_in.contiguous(), perm = perm_in.contiguous();
  const at::Tensor x = x_in.contiguous(), grad = grad_in.to(x.scalar_type()).contiguous();
  const int64_t n = rowptr.numel() - 1, E = col.numel(), d = x.size(1), F = x.size(2);
  check_rowptr(rowptr.const_data_ptr<int64_t>(), n, E, "block_spmm_bwd_blocks", "rowptr");
  at::Tensor gB = diag ? empty_cached({E, d}, x.options()) : empty_cached({E, d, d}, x.options());
  if (E == 0 || d == 0) return gB;
  const Csr g{rowptr.const_data_ptr<int64_t>(), col.const_data_ptr<int64_t>(), perm.const_data_ptr<int64_t>()};
  BadSlot bad;
  AT_DISPATCH_FLOATING_TYPES(x.scalar_type(), "block_spmm_bwd_blocks_cpu", [&] {
    parallel_rows(g.rowptr, n, d * F, [&](int64_t r0, int64_t r1) {
      bad.note(block_grad_dispatch(g, grad.const_data_ptr<scalar_t>(), x.const_data_ptr<scalar_t>(),
                                   gB.mutable_data_ptr<scalar_t>(), diag, r0, r1, d, F, x.size(0), E));
    });
  });
  if (bad.any()) {
    raise_bad_slot("block_spmm_bwd_blocks", bad.pos.load(), g.col, "col", x.size(0), g.perm, "perm", E);
  }
  return gB;
}

}  // namespace

TORCH_LIBRARY_IMPL(fastlayers, CPU, m) {
  m.impl("block_spmm_fwd", &block_spmm_fwd_cpu);
  m.impl("block_spmm_bwd_blocks", &block_spmm_bwd_blocks_cpu);
}

}  // namespace fastlayers::mp
