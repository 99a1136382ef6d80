// CUDA segment (segment_csr) and scatter kernels. scatter sorts its index (stable) into a CSR and runs the same
// warp-per-row gather-reduce as spmm: no float atomics, deterministic. The backward passes are elementwise
// gathers (a thread per output element).
#include <ATen/Dispatch.h>
#include <torch/library.h>

#include "mp/mp_cuda.cuh"

namespace fastlayers::mp::cuda {
namespace {

std::tuple<at::Tensor, at::Tensor> segment_fwd_cuda(const at::Tensor& src_in, const at::Tensor& indptr_in,
                                                    c10::string_view reduce, bool need_arg) {
  TORCH_CHECK(src_in.is_cuda() && src_in.dim() == 2, "segment_fwd: src must be a 2-D CUDA tensor");
  const c10::cuda::CUDAGuard guard(src_in.device());
  bool mean;
  const int kind = reduce_kind(reduce, &mean);
  const at::Tensor src = src_in.contiguous(), indptr = indptr_in.contiguous();
  TORCH_CHECK(indptr.is_cuda() && indptr.scalar_type() == at::kLong && indptr.dim() == 1 && indptr.numel() >= 1,
              "segment: indptr must be a non-empty 1-D int64 CUDA tensor");
  const int64_t E = src.size(0), B = src.size(1), n = indptr.numel() - 1;
  // One sync, so that a malformed indptr from a direct call cannot send the kernel outside src.
  const bool ok = at::logical_and(indptr.min() >= 0, indptr.max() <= E).item<bool>() &&
                  (n == 0 || (indptr.narrow(0, 1, n) >= indptr.narrow(0, 0, n)).all().item<bool>());
  TORCH_CHECK(ok, "segment: indptr must be non-decreasing with values in [0, ", E, "]");
  at::Tensor out = at::empty({n, B}, src.options());
  const bool with_arg = need_arg && kind != 0;
  at::Tensor arg = at::empty({with_arg ? n : 0, B}, src.options().dtype(at::kLong));
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, src.scalar_type(), "segment_fwd_cuda", [&] {
    launch_csr_reduce<scalar_t>(indptr.data_ptr<int64_t>(), nullptr, nullptr, nullptr, 1, src.data_ptr<scalar_t>(),
                                out.data_ptr<scalar_t>(), with_arg ? arg.data_ptr<int64_t>() : nullptr, n, 1, B,
                                kind, mean, E);
  });
  return {out, arg};
}

// A thread per element of grad_src [E, B]: finds its segment by binary search (rows outside every segment get 0).
template <typename T>
__global__ void segment_bwd_kernel(const int64_t* __restrict__ indptr, int64_t n, const T* __restrict__ g,
                                   const int64_t* __restrict__ arg, T* __restrict__ gs, int64_t E, int64_t B,
                                   bool mean) {
  const int64_t i = int64_t(blockIdx.x) * blockDim.x + threadIdx.x;
  if (i >= E * B) return;
  const int64_t k = i / B, f = i % B;
  int64_t lo = 0, hi = n > 0 ? n - 1 : 0;  // last r with indptr[r] <= k, among rows 0..n-1
  while (lo < hi) {
    const int64_t mid = (lo + hi + 1) / 2;
    if (indptr[mid] <= k) lo = mid; else hi = mid - 1;
  }
  const int64_t r = lo;
  T val = T(0);
  if (n > 0 && indptr[r] <= k && k < indptr[r + 1]) {
    if (arg) {
      if (arg[r * B + f] == k) val = g[r * B + f];
    } else {
      val = mean ? T(g[r * B + f] / T(indptr[r + 1] - indptr[r])) : g[r * B + f];
    }
  }
  gs[i] = val;
}

at::Tensor segment_bwd_cuda(const at::Tensor& grad_in, const at::Tensor& indptr_in, const at::Tensor& arg_in,
                            int64_t num_src, c10::string_view reduce) {
  TORCH_CHECK(grad_in.is_cuda() && grad_in.dim() == 2, "segment_bwd: grad_out must be a 2-D CUDA tensor");
  const c10::cuda::CUDAGuard guard(grad_in.device());
  bool mean;
  const int kind = reduce_kind(reduce, &mean);
  const at::Tensor g = grad_in.contiguous(), indptr = indptr_in.contiguous();
  const at::Tensor arg = kind != 0 ? arg_in.contiguous() : arg_in;
  const int64_t n = indptr.numel() - 1, B = g.size(1);
  at::Tensor gs = at::empty({num_src, B}, g.options());
  if (num_src * B == 0) return gs;
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, g.scalar_type(), "segment_bwd_cuda", [&] {
    segment_bwd_kernel<scalar_t><<<unsigned(ceil_div(num_src * B, kBlock)), kBlock, 0,
                                   at::cuda::getCurrentCUDAStream()>>>(
        indptr.data_ptr<int64_t>(), n, g.data_ptr<scalar_t>(), kind != 0 ? arg.data_ptr<int64_t>() : nullptr,
        gs.data_ptr<scalar_t>(), num_src, B, mean);
    C10_CUDA_KERNEL_LAUNCH_CHECK();
  });
  return gs;
}

// index [L] -> (rowptr [n+1], order [L]) with a stable sort, so ties of max/min go to the lowest position.
std::pair<at::Tensor, at::Tensor> index_csr(const at::Tensor& index, int64_t n) {
  auto sorted = at::sort(index, /*stable=*/true, /*dim=*/0, /*descending=*/false);
  const at::Tensor& keys = std::get<0>(sorted);
  at::Tensor bounds = at::arange(n + 1, index.options());
  at::Tensor rowptr = at::searchsorted(keys, bounds);  // first slot with key >= t
  return {rowptr.contiguous(), std::get<1>(sorted).contiguous()};
}

std::tuple<at::Tensor, at::Tensor> scatter_fwd_cuda(const at::Tensor& src_in, const at::Tensor& index_in, int64_t n,
                                                    c10::string_view reduce, bool need_arg) {
  TORCH_CHECK(src_in.is_cuda() && src_in.dim() == 3, "scatter_fwd: src must be a 3-D CUDA tensor");
  TORCH_CHECK(index_in.dim() == 1 && index_in.numel() == src_in.size(1), "scatter_fwd: index must be [L]");
  const c10::cuda::CUDAGuard guard(src_in.device());
  bool mean;
  const int kind = reduce_kind(reduce, &mean);
  const at::Tensor src = src_in.contiguous();
  const int64_t A = src.size(0), L = src.size(1), B = src.size(2);
  at::Tensor out = at::empty({A, n, B}, src.options());
  const bool with_arg = need_arg && kind != 0;
  at::Tensor arg = at::empty({with_arg ? A : 0, n, B}, src.options().dtype(at::kLong));
  if (A * n * B == 0) return {out, arg};
  // Values outside [0, n) fall before slot rowptr[0] or after rowptr[n]: they are never read.
  auto csr = index_csr(index_in.contiguous(), n);
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, src.scalar_type(), "scatter_fwd_cuda", [&] {
    for (int64_t a = 0; a < A; ++a) {
      launch_csr_reduce<scalar_t>(csr.first.data_ptr<int64_t>(), csr.second.data_ptr<int64_t>(),
                                  csr.second.data_ptr<int64_t>(), nullptr, 1, src.data_ptr<scalar_t>() + a * L * B,
                                  out.data_ptr<scalar_t>() + a * n * B,
                                  with_arg ? arg.data_ptr<int64_t>() + a * n * B : nullptr, n, 1, B, kind, mean, L);
    }
  });
  return {out, arg};
}

template <typename T>
__global__ void scatter_bwd_kernel(const int64_t* __restrict__ index, const T* __restrict__ g,
                                   const int64_t* __restrict__ arg, const int64_t* __restrict__ count,
                                   T* __restrict__ gs, int64_t A, int64_t L, int64_t n, int64_t B) {
  const int64_t i = int64_t(blockIdx.x) * blockDim.x + threadIdx.x;
  if (i >= A * L * B) return;
  const int64_t f = i % B, p = (i / B) % L, a = i / (L * B);
  const int64_t t = index[p];
  T val = T(0);
  if (t >= 0 && t < n) {
    const int64_t j = (a * n + t) * B + f;
    if (arg) {
      if (arg[j] == p) val = g[j];
    } else {
      val = count ? T(g[j] / T(count[t])) : g[j];
    }
  }
  gs[i] = val;
}

at::Tensor scatter_bwd_cuda(const at::Tensor& grad_in, const at::Tensor& index_in, const at::Tensor& arg_in,
                            c10::string_view reduce) {
  TORCH_CHECK(grad_in.is_cuda() && grad_in.dim() == 3, "scatter_bwd: grad_out must be a 3-D CUDA tensor");
  const c10::cuda::CUDAGuard guard(grad_in.device());
  bool mean;
  const int kind = reduce_kind(reduce, &mean);
  const at::Tensor g = grad_in.contiguous(), index = index_in.contiguous();
  const at::Tensor arg = kind != 0 ? arg_in.contiguous() : arg_in;
  const int64_t A = g.size(0), n = g.size(1), B = g.size(2), L = index.numel();
  at::Tensor gs = at::empty({A, L, B}, g.options());
  if (A * L * B == 0) return gs;
  at::Tensor count = mean ? at::bincount(index, {}, n) : at::Tensor();
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, g.scalar_type(), "scatter_bwd_cuda", [&] {
    scatter_bwd_kernel<scalar_t><<<unsigned(ceil_div(A * L * B, kBlock)), kBlock, 0,
                                   at::cuda::getCurrentCUDAStream()>>>(
        index.data_ptr<int64_t>(), g.data_ptr<scalar_t>(), kind != 0 ? arg.data_ptr<int64_t>() : nullptr,
        mean ? count.data_ptr<int64_t>() : nullptr, gs.data_ptr<scalar_t>(), A, L, n, B);
    C10_CUDA_KERNEL_LAUNCH_CHECK();
  });
  return gs;
}

std::tuple<at::Tensor, at::Tensor> csr_index_cuda(const at::Tensor& key, int64_t n) {
  TORCH_CHECK(key.is_cuda() && key.dim() == 1, "csr_index: key must be a 1-D CUDA tensor");
  const c10::cuda::CUDAGuard guard(key.device());
  auto csr = index_csr(key.contiguous(), n);
  return {csr.first, csr.second};
}

}  // namespace

TORCH_LIBRARY_IMPL(fastlayers, CUDA, m) {
  m.impl("csr_index", &csr_index_cuda);
  m.impl("segment_fwd", &segment_fwd_cuda);
  m.impl("segment_bwd", &segment_bwd_cuda);
  m.impl("scatter_fwd", &scatter_fwd_cuda);
  m.impl("scatter_bwd", &scatter_bwd_cuda);
}

}  // namespace fastlayers::mp::cuda
