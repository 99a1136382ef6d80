// block_spmm on CUDA: a warp per (target v, 32 of its d * F outputs) sums B_e[i, :] x[u, :, f] over the incoming
// edges; the block gradient uses a warp per target, one shuffle-reduced dot over F per (edge, i, j). No atomics.
#include <ATen/Dispatch.h>
#include <torch/library.h>

#include "mp/mp_cuda.cuh"

namespace fastlayers::mp::cuda {
namespace {

template <typename T>
__global__ void block_spmm_kernel(const int64_t* __restrict__ rowptr, const int64_t* __restrict__ col,
                                  const int64_t* __restrict__ perm, const T* __restrict__ B, bool diag,
                                  bool transpose, const T* __restrict__ x, T* __restrict__ out, int64_t n, int64_t d,
                                  int64_t F) {
  using acc_t = at::opmath_type<T>;
  const int64_t dF = d * F, chunks = (dF + kWarp - 1) / kWarp, bs = diag ? d : d * d;
  const int64_t warp = (int64_t(blockIdx.x) * blockDim.x + threadIdx.x) / kWarp;
  if (warp >= n * chunks) return;
  const int64_t v = warp / chunks, o = (warp % chunks) * kWarp + threadIdx.x % kWarp;
  if (o >= dF) return;
  const int64_t i = o / F, f = o % F;
  acc_t acc = 0;
  for (int64_t k = rowptr[v]; k < rowptr[v + 1]; ++k) {
    const T* b = B + perm[k] * bs;
    const T* xu = x + col[k] * dF;
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
                                  int64_t F) {
  using acc_t = at::opmath_type<T>;
  const int64_t dF = d * F, bs = diag ? d : d * d;
  const int64_t v = (int64_t(blockIdx.x) * blockDim.x + threadIdx.x) / kWarp;
  const int lane = threadIdx.x % kWarp;
  if (v >= n) return;
  for (int64_t k = rowptr[v]; k < rowptr[v + 1]; ++k) {
    const T* xu = x + col[k] * dF;
    for (int64_t i = 0; i < d; ++i) {
      for (int64_t j = diag ? i : 0; j < (diag ? i + 1 : d); ++j) {
        acc_t acc = 0;
        for (int64_t f = lane; f < F; f += kWarp) acc += acc_t(grad[v * dF + i * F + f]) * acc_t(xu[j * F + f]);
        acc = warp_sum(acc);
        if (lane == 0) gB[perm[k] * bs + (diag ? i : i * d + j)] = T(acc);
      }
    }
  }
}

at::Tensor block_spmm_fwd_cuda(const at::Tensor& rowptr_in, const at::Tensor& col_in, const at::Tensor& perm_in,
                               const at::Tensor&, const at::Tensor&, const at::Tensor&, const at::Tensor& blocks_in,
                               const at::Tensor& x_in, bool transpose) {
  TORCH_CHECK(x_in.is_cuda() && x_in.dim() == 3, "block_spmm: x must be a CUDA tensor [N, d, F]");
  const c10::cuda::CUDAGuard guard(x_in.device());
  const at::Tensor rowptr = rowptr_in.contiguous(), col = col_in.contiguous(), perm = perm_in.contiguous();
  const at::Tensor x = x_in.contiguous(), B = blocks_in.to(x.scalar_type()).contiguous();
  const int64_t n = rowptr.numel() - 1, d = x.size(1), F = x.size(2);
  const bool diag = B.dim() == 2;
  TORCH_CHECK(B.size(0) == col.numel() && B.size(1) == d && (diag || B.size(2) == d),
              "block_spmm: blocks must be [E, d, d] or [E, d]");
  at::Tensor out = at::empty({n, d, F}, x.options());
  const int64_t warps = n * ceil_div(d * F, kWarp);
  if (warps == 0) return out;
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, x.scalar_type(), "block_spmm_fwd_cuda", [&] {
    block_spmm_kernel<scalar_t><<<warp_grid(warps), kBlock, 0, at::cuda::getCurrentCUDAStream()>>>(
        rowptr.data_ptr<int64_t>(), col.data_ptr<int64_t>(), perm.data_ptr<int64_t>(), B.data_ptr<scalar_t>(), diag,
        transpose, x.data_ptr<scalar_t>(), out.data_ptr<scalar_t>(), n, d, F);
    C10_CUDA_KERNEL_LAUNCH_CHECK();
  });
  return out;
}

at::Tensor block_spmm_bwd_blocks_cuda(const at::Tensor& rowptr_in, const at::Tensor& col_in,
                                      const at::Tensor& perm_in, const at::Tensor& grad_in, const at::Tensor& x_in,
                                      bool diag) {
  TORCH_CHECK(x_in.is_cuda() && x_in.dim() == 3 && grad_in.sizes() == x_in.sizes(),
              "block_spmm_bwd_blocks: grad_out and x must be CUDA [N, d, F]");
  const c10::cuda::CUDAGuard guard(x_in.device());
  const at::Tensor rowptr = rowptr_in.contiguous(), col = col_in.contiguous(), perm = perm_in.contiguous();
  const at::Tensor x = x_in.contiguous(), grad = grad_in.to(x.scalar_type()).contiguous();
  const int64_t n = rowptr.numel() - 1, E = col.numel(), d = x.size(1), F = x.size(2);
  at::Tensor gB = diag ? at::empty({E, d}, x.options()) : at::empty({E, d, d}, x.options());
  if (E == 0 || d == 0 || n == 0) return gB;
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, x.scalar_type(), "block_spmm_bwd_blocks_cuda", [&] {
    block_grad_kernel<scalar_t><<<warp_grid(n), kBlock, 0, at::cuda::getCurrentCUDAStream()>>>(
        rowptr.data_ptr<int64_t>(), col.data_ptr<int64_t>(), perm.data_ptr<int64_t>(), grad.data_ptr<scalar_t>(),
        x.data_ptr<scalar_t>(), gB.data_ptr<scalar_t>(), diag, n, d, F);
    C10_CUDA_KERNEL_LAUNCH_CHECK();
  });
  return gB;
}

}  // namespace

TORCH_LIBRARY_IMPL(fastlayers, CUDA, m) {
  m.impl("block_spmm_fwd", &block_spmm_fwd_cuda);
  m.impl("block_spmm_bwd_blocks", &block_spmm_bwd_blocks_cuda);
}

}  // namespace fastlayers::mp::cuda
