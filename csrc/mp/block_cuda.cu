// block_spmm on CUDA: a warp per (target v, 32 of its d * F outputs) sums B_e[i, :] x[u, :, f] over the incoming
// edges; the block gradient uses a warp per target, one shuffle-reduced dot over F per (edge, i, j). No atomics.
#include <ATen/Dispatch.h>
#include <torch/library.h>

#include "mp/mp_cuda.cuh"

namespace fastlayers::mp::cuda {
namespace {

void check_block_csr(const at::Tensor& rowptr, const at::Tensor& col, const at::Tensor& perm, const at::Tensor& x,
                     const char* op) {
  check_index_cuda(rowptr, op, "rowptr", x);
  check_index_cuda(col, op, "col", x);
  check_index_cuda(perm, op, "perm", x);
  TORCH_CHECK(rowptr.numel() >= 1, op, ": rowptr must have N + 1 >= 1 entries");
  TORCH_CHECK(col.numel() == perm.numel(), op, ": col and perm must have one length, got ", col.numel(), " and ",
              perm.numel());
}

template <typename T>
__global__ void block_spmm_kernel(const int64_t* __restrict__ rowptr, const int64_t* __restrict__ col,
                                  const int64_t* __restrict__ perm, const T* __restrict__ B, bool diag,
                                  bool transpose, const T* __restrict__ x, T* __restrict__ out, int64_t n, int64_t d,
                                  int64_t F, int64_t E, int64_t nsrc, int64_t* __restrict__ err) {
  using acc_t = at::opmath_type<T>;
  const int64_t dF = d * F, chunks = (dF + kWarp - 1) / kWarp, bs = diag ? d : d * d;
  const int64_t warp = (int64_t(blockIdx.x) * blockDim.x + threadIdx.x) / kWarp;
  if (warp >= n * chunks) return;
  const int64_t v = warp / chunks, o = (warp % chunks) * kWarp + threadIdx.x % kWarp;
  if (o >= dF) return;
  const int64_t i = o / F, f = o % F;
  acc_t acc = 0;
  int64_t kb, ke;
  slot_range(rowptr, v, E, kb, ke);
  for (int64_t k = kb; k < ke; ++k) {
    const int64_t u = col[k], e = perm[k];
    if (out_of(u, nsrc) || out_of(e, E)) {
      note_bad(err, k);
      continue;
    }
    const T* b = B + e * bs;
    const T* xu = x + u * dF;
    if (diag) {
      acc += acc_t(b[i]) * acc_t(xu[i * F + f]);
    } else {
      for (int64_t j = 0; j < d; ++j) acc += acc_t(transpose ? b[j * d + i] : b[i * d + j]) * acc_t(xu[j * F + f]);
    }
  }
  out[v * dF + o] = T(acc);
}

template <typename T>
__global__ void block_grad_kernel(const int64_t* __restrict__ rowptr, const int64_t* __restrict__ col,
                                  const int64_t* __restrict__ perm, const T* __restrict__ grad,
                                  const T* __restrict__ x, T* __restrict__ gB, bool diag, int64_t n, int64_t d,
                                  int64_t F, int64_t E, int64_t nsrc, int64_t* __restrict__ err) {
  using acc_t = at::opmath_type<T>;
  const int64_t dF = d * F, bs = diag ? d : d * d;
  const int64_t v = (int64_t(blockIdx.x) * blockDim.x + threadIdx.x) / kWarp;
  const int lane = threadIdx.x % kWarp;
  if (v >= n) return;
  int64_t kb, ke;
  slot_range(rowptr, v, E, kb, ke);
  for (int64_t k = kb; k < ke; ++k) {
    const int64_t u = col[k], e = perm[k];
    if (out_of(u, nsrc) || out_of(e, E)) {  // warp-uniform (one slot per iteration): the shuffles stay full
      note_bad(err, k);
      continue;
    }
    const T* xu = x + u * dF;
    for (int64_t i = 0; i < d; ++i) {
      for (int64_t j = diag ? i : 0; j < (diag ? i + 1 : d); ++j) {
        acc_t acc = 0;
        for (int64_t f = lane; f < F; f += kWarp) acc += acc_t(grad[v * dF + i * F + f]) * acc_t(xu[j * F + f]);
        acc = warp_sum(acc);
        if (lane == 0) gB[e * bs + (diag ? i : i * d + j)] = T(acc);
      }
    }
  }
}

at::Tensor block_spmm_fwd_cuda(const at::Tensor& rowptr_in, const at::Tensor& col_in, const at::Tensor& perm_in,
                               const at::Tensor&, const at::Tensor&, const at::Tensor&, const at::Tensor& blocks_in,
                               const at::Tensor& x_in, bool transpose) {
  TORCH_CHECK(x_in.is_cuda() && x_in.dim() == 3, "block_spmm: x must be a CUDA tensor [N, d, F]");
  check_block_csr(rowptr_in, col_in, perm_in, x_in, "block_spmm_fwd");
  TORCH_CHECK(blocks_in.device() == x_in.device(), "block_spmm_fwd: blocks must be on x's device");
  const c10::cuda::CUDAGuard guard(x_in.device());
  const at::Tensor rowptr = rowptr_in.contiguous(), col = col_in.contiguous(), perm = perm_in.contiguous();
  const at::Tensor x = x_in.contiguous(), B = blocks_in.to(x.scalar_type()).contiguous();
  const int64_t n = rowptr.numel() - 1, d = x.size(1), F = x.size(2), E = col.numel(), nsrc = x.size(0);
  const bool diag = B.dim() == 2;
  TORCH_CHECK((B.dim() == 2 || B.dim() == 3) && B.size(0) == E && B.size(1) == d && (diag || B.size(2) == d),
              "block_spmm: blocks must be [E, d, d] or [E, d]");
  at::Tensor out = at::empty({n, d, F}, x.options());
  const at::Tensor err = new_err(x);
  launch_check_ptr(rowptr, E, err, true);
  const int64_t warps = n * ceil_div(d * F, kWarp);
  if (warps > 0) {
    AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, x.scalar_type(), "block_spmm_fwd_cuda", [&] {
      block_spmm_kernel<scalar_t><<<warp_grid(warps), kBlock, 0, at::cuda::getCurrentCUDAStream()>>>(
          rowptr.data_ptr<int64_t>(), col.data_ptr<int64_t>(), perm.data_ptr<int64_t>(), B.data_ptr<scalar_t>(),
          diag, transpose, x.data_ptr<scalar_t>(), out.data_ptr<scalar_t>(), n, d, F, E, nsrc,
          err.data_ptr<int64_t>());
      C10_CUDA_KERNEL_LAUNCH_CHECK();
    });
  }
  const at::Tensor herr = fetch_err(err);
  raise_ptr(herr, "block_spmm_fwd", rowptr, "rowptr", E, true);
  raise_slot(herr, "block_spmm_fwd", &col, "col", nsrc, perm, "perm", E);
  return out;
}

at::Tensor block_spmm_bwd_blocks_cuda(const at::Tensor& rowptr_in, const at::Tensor& col_in,
                                      const at::Tensor& perm_in, const at::Tensor& grad_in, const at::Tensor& x_in,
                                      bool diag) {
  TORCH_CHECK(x_in.is_cuda() && x_in.dim() == 3 && grad_in.dim() == 3 && grad_in.device() == x_in.device() &&
                  grad_in.size(1) == x_in.size(1) && grad_in.size(2) == x_in.size(2) &&
                  grad_in.size(0) == rowptr_in.numel() - 1,
              "block_spmm_bwd_blocks: grad_out [N, d, F] and x [*, d, F] on one CUDA device expected");
  check_block_csr(rowptr_in, col_in, perm_in, x_in, "block_spmm_bwd_blocks");
  const c10::cuda::CUDAGuard guard(x_in.device());
  const at::Tensor rowptr = rowptr_in.contiguous(), col = col_in.contiguous(), perm = perm_in.contiguous();
  const at::Tensor x = x_in.contiguous(), grad = grad_in.to(x.scalar_type()).contiguous();
  const int64_t n = rowptr.numel() - 1, E = col.numel(), d = x.size(1), F = x.size(2);
  at::Tensor gB = diag ? at::empty({E, d}, x.options()) : at::empty({E, d, d}, x.options());
  const at::Tensor err = new_err(x);
  launch_check_ptr(rowptr, E, err, true);
  if (E > 0 && d > 0 && n > 0) {
    AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, x.scalar_type(), "block_spmm_bwd_blocks_cuda", [&] {
      block_grad_kernel<scalar_t><<<warp_grid(n), kBlock, 0, at::cuda::getCurrentCUDAStream()>>>(
          rowptr.data_ptr<int64_t>(), col.data_ptr<int64_t>(), perm.data_ptr<int64_t>(), grad.data_ptr<scalar_t>(),
          x.data_ptr<scalar_t>(), gB.data_ptr<scalar_t>(), diag, n, d, F, E, x.size(0), err.data_ptr<int64_t>());
      C10_CUDA_KERNEL_LAUNCH_CHECK();
    });
  }
  const at::Tensor herr = fetch_err(err);
  raise_ptr(herr, "block_spmm_bwd_blocks", rowptr, "rowptr", E, true);
  raise_slot(herr, "block_spmm_bwd_blocks", &col, "col", x.size(0), perm, "perm", E);
  return gB;
}

}  // namespace

TORCH_LIBRARY_IMPL(fastlayers, CUDA, m) {
  m.impl("block_spmm_fwd", &block_spmm_fwd_cuda);
  m.impl("block_spmm_bwd_blocks", &block_spmm_bwd_blocks_cuda);
}

}  // namespace fastlayers::mp::cuda
