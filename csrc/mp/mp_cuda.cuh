// The CUDA CSR gather-reduce shared by spmm, segment and scatter: one warp per (row, 32 features); lanes load 32
// slots' source ids and edge ids coalesced and broadcast them with shuffles (the torch_sparse / GE-SpMM pattern),
// then each lane reads its feature of each source row (a warp reads 32 consecutive values: one coalesced access).
// Each warp owns its outputs: no atomics, deterministic, accumulation in float for half types.
#pragma once
#include <ATen/ATen.h>
#include <ATen/OpMathType.h>
#include <ATen/cuda/CUDAContext.h>
#include <c10/cuda/CUDAGuard.h>

namespace fastlayers::mp::cuda {

constexpr int kWarp = 32;
constexpr int kBlock = 256;
constexpr int kWarpsPerBlock = kBlock / kWarp;

inline int64_t ceil_div(int64_t a, int64_t b) { return (a + b - 1) / b; }

inline dim3 warp_grid(int64_t warps) { return dim3(unsigned(ceil_div(warps, kWarpsPerBlock))); }

// KIND 0: sum/mean, 1: max, 2: min. col/perm nullptr = identity. arg (when not nullptr) gets the id of the winning
// slot (first in slot order among ties), none_id for empty rows; empty rows give 0.
template <typename T, int KIND>
__global__ void csr_reduce_kernel(const int64_t* __restrict__ rowptr, const int64_t* __restrict__ col,
                                  const int64_t* __restrict__ perm, const T* __restrict__ w, int64_t wH,
                                  const T* __restrict__ x, T* __restrict__ out, int64_t* __restrict__ arg, int64_t n,
                                  int64_t H, int64_t F, bool mean, int64_t none_id) {
  using acc_t = at::opmath_type<T>;
  const int64_t HF = H * F;
  const int64_t chunks = (HF + kWarp - 1) / kWarp;
  const int64_t warp = (int64_t(blockIdx.x) * blockDim.x + threadIdx.x) / kWarp;
  const int lane = threadIdx.x % kWarp;
  if (warp >= n * chunks) return;  // whole warps exit together: the shuffles below see full warps
  const int64_t r = warp / chunks;
  const int64_t f = (warp % chunks) * kWarp + lane;
  const bool valid = f < HF;
  const int64_t h = valid ? f / F : 0;
  const int64_t kb = rowptr[r], ke = rowptr[r + 1];
  acc_t acc = 0;
  int64_t best = none_id;
  for (int64_t k0 = kb; k0 < ke; k0 += kWarp) {
    const int64_t kl = k0 + lane;
    const int64_t my_src = kl < ke ? (col ? col[kl] : kl) : 0;
    const int64_t my_id = kl < ke ? (perm ? perm[kl] : kl) : 0;
    const int m = ke - k0 < kWarp ? int(ke - k0) : kWarp;
    for (int j = 0; j < m; ++j) {
      const int64_t s = __shfl_sync(0xffffffffu, my_src, j);
      const int64_t id = __shfl_sync(0xffffffffu, my_id, j);
      if (!valid) continue;
      acc_t v = acc_t(x[s * HF + f]);
      if (w) v *= acc_t(w[id * wH + (wH == 1 ? 0 : h)]);
      if (KIND == 0) {
        acc += v;
      } else if (k0 + j == kb || (KIND == 1 ? v > acc : v < acc)) {
        acc = v;
        best = id;
      }
    }
  }
  if (!valid) return;
  if (KIND == 0 && mean && ke > kb) acc /= acc_t(ke - kb);
  out[r * HF + f] = T(acc);
  if (arg) arg[r * HF + f] = best;
}

template <typename T>
void launch_csr_reduce(const int64_t* rowptr, const int64_t* col, const int64_t* perm, const T* w, int64_t wH,
                       const T* x, T* out, int64_t* arg, int64_t n, int64_t H, int64_t F, int kind, bool mean,
                       int64_t none_id) {
  const int64_t warps = n * ceil_div(H * F, kWarp);
  if (warps == 0) return;
  auto stream = at::cuda::getCurrentCUDAStream();
  const dim3 grid = warp_grid(warps);
  if (kind == 0) {
    csr_reduce_kernel<T, 0><<<grid, kBlock, 0, stream>>>(rowptr, col, perm, w, wH, x, out, nullptr, n, H, F, mean, none_id);
  } else if (kind == 1) {
    csr_reduce_kernel<T, 1><<<grid, kBlock, 0, stream>>>(rowptr, col, perm, w, wH, x, out, arg, n, H, F, false, none_id);
  } else {
    csr_reduce_kernel<T, 2><<<grid, kBlock, 0, stream>>>(rowptr, col, perm, w, wH, x, out, arg, n, H, F, false, none_id);
  }
  C10_CUDA_KERNEL_LAUNCH_CHECK();
}

inline int reduce_kind(c10::string_view s, bool* mean) {
  *mean = s == "mean";
  if (s == "sum" || s == "mean") return 0;
  if (s == "max") return 1;
  if (s == "min") return 2;
  TORCH_CHECK(false, "fastlayers: reduce must be sum, mean, min or max");
}

template <typename T>
__device__ __forceinline__ T warp_sum(T v) {
  for (int o = kWarp / 2; o > 0; o /= 2) v += __shfl_xor_sync(0xffffffffu, v, o);
  return v;
}

template <typename T>
__device__ __forceinline__ T warp_max(T v) {
  for (int o = kWarp / 2; o > 0; o /= 2) v = max(v, __shfl_xor_sync(0xffffffffu, v, o));
  return v;
}

}  // namespace fastlayers::mp::cuda
