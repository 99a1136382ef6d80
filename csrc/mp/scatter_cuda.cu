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
    // Slots are the src rows themselves, inside [0, E] by the check above: no device-side record needed.
    launch_csr_reduce<scalar_t>(indptr.data_ptr<int64_t>(), nullptr, nullptr, nullptr, 1, src.data_ptr<scalar_t>(),
                                out.data_ptr<scalar_t>(), with_arg ? arg.data_ptr<int64_t>() : nullptr, n, 1, B,
                                kind, mean, E, E, E, E, nullptr);
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
  check_index_cuda(indptr_in, "segment_bwd", "indptr", grad_in);
  TORCH_CHECK(indptr_in.numel() >= 1 && grad_in.size(0) == indptr_in.numel() - 1,
              "segment_bwd: grad_out must have one row per segment (indptr.numel() - 1)");
  TORCH_CHECK(num_src >= 0, "segment_bwd: num_src must be >= 0, got ", num_src);
  const c10::cuda::CUDAGuard guard(grad_in.device());
  bool mean;
  const int kind = reduce_kind(reduce, &mean);
  const at::Tensor g = grad_in.contiguous(), indptr = indptr_in.contiguous();
  TORCH_CHECK(kind == 0 || (arg_in.sizes() == g.sizes() && arg_in.scalar_type() == at::kLong &&
                            arg_in.device() == g.device()),
              "segment_bwd: arg must be int64 [N, F] on grad_out's device for max/min");
  const at::Tensor arg = kind != 0 ? arg_in.contiguous() : arg_in;
  const int64_t n = indptr.numel() - 1, B = g.size(1);
  at::Tensor gs = at::empty({num_src, B}, g.options());
  // indptr: loose segment_csr bounds; arg: compared with positions only, so a bad value would silently drop
  // gradient (num_src is the forward's sentinel for an empty segment).
  const at::Tensor err = new_err(g);
  launch_check_ptr(indptr, num_src, err, false);
  if (kind != 0) launch_check_range(arg, num_src + 1, err);
  const at::Tensor herr = fetch_err(err);
  raise_ptr(herr, "segment_bwd", indptr, "indptr", num_src, false);
  raise_arg(herr, "segment_bwd", arg, "arg", num_src + 1, "a position in src (or num_src for an empty segment)");
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

// Every index value in [0, n): one small kernel and one synchronising copy; raises naming the first bad position.
void check_index_range(const at::Tensor& index, int64_t n, const char* op, const char* name, const char* expected) {
  if (index.numel() == 0) return;
  const at::Tensor err = new_err(index);
  launch_check_range(index, n, err);
  raise_arg(fetch_err(err), op, index, name, n, expected);
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
  check_index_cuda(index_in, "scatter_fwd", "index", src_in);
  TORCH_CHECK(index_in.numel() == src_in.size(1), "scatter_fwd: index must be [L]");
  TORCH_CHECK(n >= 0, "scatter_fwd: dim_size must be >= 0, got ", n);
  const c10::cuda::CUDAGuard guard(src_in.device());
  bool mean;
  const int kind = reduce_kind(reduce, &mean);
  const at::Tensor src = src_in.contiguous();
  const int64_t A = src.size(0), L = src.size(1), B = src.size(2);
  at::Tensor out = at::empty({A, n, B}, src.options());
  const bool with_arg = need_arg && kind != 0;
  at::Tensor arg = at::empty({with_arg ? A : 0, n, B}, src.options().dtype(at::kLong));
  // Indexing is int64 throughout, so no dim_size is refused (one too large to allocate fails in the allocator);
  // with nothing to reduce or write, nothing that grows with dim_size besides the output is built.
  const at::Tensor index = index_in.contiguous();
  if (L == 0 || A * n * B == 0) {
    check_index_range(index, n, "scatter_fwd", "index", "a value in [0, dim_size)");
    out.zero_();
    if (with_arg) arg.fill_(L);
    return {out, arg};
  }
  // Values outside [0, n) would fall before slot rowptr[0] or after rowptr[n] and be dropped silently: refused.
  check_index_range(index, n, "scatter_fwd", "index", "a value in [0, dim_size)");
  auto csr = index_csr(index, n);
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, src.scalar_type(), "scatter_fwd_cuda", [&] {
    for (int64_t a = 0; a < A; ++a) {
      launch_csr_reduce<scalar_t>(csr.first.data_ptr<int64_t>(), csr.second.data_ptr<int64_t>(),
                                  csr.second.data_ptr<int64_t>(), nullptr, 1, src.data_ptr<scalar_t>() + a * L * B,
                                  out.data_ptr<scalar_t>() + a * n * B,
                                  with_arg ? arg.data_ptr<int64_t>() + a * n * B : nullptr, n, 1, B, kind, mean, L,
                                  L, L, L, nullptr);
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
  check_index_cuda(index_in, "scatter_bwd", "index", grad_in);
  const c10::cuda::CUDAGuard guard(grad_in.device());
  bool mean;
  const int kind = reduce_kind(reduce, &mean);
  const at::Tensor g = grad_in.contiguous(), index = index_in.contiguous();
  TORCH_CHECK(kind == 0 || (arg_in.sizes() == g.sizes() && arg_in.scalar_type() == at::kLong &&
                            arg_in.device() == g.device()),
              "scatter_bwd: arg must be int64 like grad_out for max/min");
  const at::Tensor arg = kind != 0 ? arg_in.contiguous() : arg_in;
  const int64_t A = g.size(0), n = g.size(1), B = g.size(2), L = index.numel();
  at::Tensor gs = at::empty({A, L, B}, g.options());
  if (A * L * B == 0) return gs;
  {
    // Before bincount (which would reject a negative value with a message that names no op). arg is compared,
    // not dereferenced: a value past L would silently drop gradient; L is the forward's empty-row sentinel.
    const at::Tensor err = new_err(g);
    launch_check_range(index, n, err);
    const at::Tensor herr = fetch_err(err);
    raise_arg(herr, "scatter_bwd", index, "index", n, "a value in [0, dim_size)");
    if (kind != 0) {
      launch_check_range(arg, L + 1, err);
      raise_arg(fetch_err(err), "scatter_bwd", arg, "arg", L + 1, "a position in src (or L for an empty row)");
    }
  }
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
  TORCH_CHECK(key.is_cuda() && key.dim() == 1 && key.scalar_type() == at::kLong,
              "csr_index: key must be a 1-D int64 CUDA tensor");
  TORCH_CHECK(n >= 0, "csr_index: n must be >= 0, got ", n);
  const c10::cuda::CUDAGuard guard(key.device());
  check_index_range(key.contiguous(), n, "csr_index", "key", "a value in [0, n)");
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
