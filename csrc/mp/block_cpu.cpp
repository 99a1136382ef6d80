// block_spmm on the CPU: out[v] = sum over edges e = u -> v of B_e x[u], x [N, d, F], B_e a d x d block (or its
// diagonal [d]) per edge; the backward for the blocks is a per-edge [d, d] (or [d]) product of grad_out[v] and
// x[u] over F. Same owner-computes row chunks as spmm: no atomics, no [E, F] temporaries.
#include "common/stable.h"
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

void check_csr(const Tensor& rowptr, const Tensor& col, const Tensor& perm, const char* op) {
  for (const Tensor* t : {&rowptr, &col, &perm}) {
    FL_CHECK(t->is_cpu() && t->scalar_type() == dtype::kLong && t->dim() == 1,
             op, ": rowptr, col and perm must be 1-D int64 CPU tensors");
  }
  FL_CHECK(rowptr.numel() >= 1, op, ": rowptr must have N + 1 >= 1 entries");
  FL_CHECK(col.numel() == perm.numel(), op, ": col and perm must have one length, got ", col.numel(), " and ",
           perm.numel());
}

bool check_blocks(const Tensor& blocks, const Tensor& x, int64_t E) {
  FL_CHECK(x.is_cpu() && (x.scalar_type() == dtype::kFloat || x.scalar_type() == dtype::kDouble) && x.dim() == 3,
           "block_spmm: x must be a float32/float64 CPU tensor [N, d, F]");
  FL_CHECK(blocks.scalar_type() == x.scalar_type(), "block_spmm: blocks must have x's dtype");
  const int64_t d = x.size(1);
  const bool diag = blocks.dim() == 2;
  FL_CHECK(blocks.size(0) == E && (diag ? blocks.size(1) == d : (blocks.dim() == 3 && blocks.size(1) == d &&
                                                                  blocks.size(2) == d)),
           "block_spmm: blocks must be [E, d, d] or [E, d]");
  return diag;
}

Tensor block_spmm_fwd_cpu(const Tensor& rowptr_in, const Tensor& col_in, const Tensor& perm_in, const Tensor&,
                          const Tensor&, const Tensor&, const Tensor& blocks_in, const Tensor& x_in, bool transpose) {
  check_csr(rowptr_in, col_in, perm_in, "block_spmm_fwd");
  const bool diag = check_blocks(blocks_in, x_in, col_in.numel());
  const Tensor rowptr = contig(rowptr_in), col = contig(col_in), perm = contig(perm_in);
  const Tensor x = contig(x_in), B = contig(blocks_in);
  const int64_t n = rowptr.numel() - 1, d = x.size(1), F = x.size(2), E = col.numel();
  check_rowptr(rowptr.const_data_ptr<int64_t>(), n, E, "block_spmm_fwd", "rowptr");
  Tensor out = empty_cached({n, d, F}, x.scalar_type(), x);
  if (n == 0 || d * F == 0) return out;
  const Csr g{rowptr.const_data_ptr<int64_t>(), col.const_data_ptr<int64_t>(), perm.const_data_ptr<int64_t>()};
  const int64_t nsrc = x.size(0);
  BadSlot bad;
  dispatch_float_double(x.scalar_type(), "block_spmm_fwd_cpu", [&](auto tag) {
    using scalar_t = decltype(tag);
    // Every pointer is taken before the parallel region: a tensor accessor may throw, a region body must not.
    const scalar_t* bp = B.const_data_ptr<scalar_t>();
    const scalar_t* xp = x.const_data_ptr<scalar_t>();
    scalar_t* op = out.mutable_data_ptr<scalar_t>();
    parallel_rows(g.rowptr, n, d * F * (diag ? 1 : d), [&](int64_t r0, int64_t r1) {
      bad.note(block_dispatch(g, bp, diag, transpose, xp, op, r0, r1, d, F, nsrc, E));
    });
  });
  if (bad.any()) raise_bad_slot("block_spmm_fwd", bad.pos.load(), g.col, "col", nsrc, g.perm, "perm", E);
  return out;
}

Tensor block_spmm_bwd_blocks_cpu(const Tensor& rowptr_in, const Tensor& col_in, const Tensor& perm_in,
                                 const Tensor& grad_in, const Tensor& x_in, bool diag) {
  check_csr(rowptr_in, col_in, perm_in, "block_spmm_bwd_blocks");
  FL_CHECK(x_in.is_cpu() && (x_in.scalar_type() == dtype::kFloat || x_in.scalar_type() == dtype::kDouble) &&
               x_in.dim() == 3 && grad_in.dim() == 3 && grad_in.size(1) == x_in.size(1) &&
               grad_in.size(2) == x_in.size(2) && grad_in.size(0) == rowptr_in.numel() - 1,
           "block_spmm_bwd_blocks: grad_out [N, d, F] and x [N, d, F] expected");
  const Tensor rowptr = contig(rowptr_in), col = contig(col_in), perm = contig(perm_in);
  const Tensor x = contig(x_in), grad = contig(to_dtype(grad_in, x.scalar_type()));
  const int64_t n = rowptr.numel() - 1, E = col.numel(), d = x.size(1), F = x.size(2);
  check_rowptr(rowptr.const_data_ptr<int64_t>(), n, E, "block_spmm_bwd_blocks", "rowptr");
  Tensor gB = diag ? empty_cached({E, d}, x.scalar_type(), x) : empty_cached({E, d, d}, x.scalar_type(), x);
  if (E == 0 || d == 0) return gB;
  const Csr g{rowptr.const_data_ptr<int64_t>(), col.const_data_ptr<int64_t>(), perm.const_data_ptr<int64_t>()};
  const int64_t nsrc = x.size(0);
  BadSlot bad;
  dispatch_float_double(x.scalar_type(), "block_spmm_bwd_blocks_cpu", [&](auto tag) {
    using scalar_t = decltype(tag);
    const scalar_t* gp = grad.const_data_ptr<scalar_t>();
    const scalar_t* xp = x.const_data_ptr<scalar_t>();
    scalar_t* gbp = gB.mutable_data_ptr<scalar_t>();
    parallel_rows(g.rowptr, n, d * F, [&](int64_t r0, int64_t r1) {
      bad.note(block_grad_dispatch(g, gp, xp, gbp, diag, r0, r1, d, F, nsrc, E));
    });
  });
  if (bad.any()) {
    raise_bad_slot("block_spmm_bwd_blocks", bad.pos.load(), g.col, "col", nsrc, g.perm, "perm", E);
  }
  return gB;
}

}  // namespace

STABLE_TORCH_LIBRARY_IMPL(fastlayers, CPU, m) {
  m.impl("block_spmm_fwd", TORCH_BOX(&block_spmm_fwd_cpu));
  m.impl("block_spmm_bwd_blocks", TORCH_BOX(&block_spmm_bwd_blocks_cpu));
}

}  // namespace fastlayers::mp
