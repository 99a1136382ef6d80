// The CUDA CSR gather-reduce shared by spmm, segment and scatter: one warp per (row, 32 features); lanes load 32
// slots' source ids and edge ids coalesced and broadcast them with shuffles (the torch_sparse / GE-SpMM pattern),
// then each lane reads its feature of each source row (a warp reads 32 consecutive values: one coalesced access).
// Each warp owns its outputs: no atomics, deterministic, accumulation in float for half types.
#pragma once
#include <ATen/ATen.h>
#include <ATen/OpMathType.h>
#include <ATen/cuda/CUDAContext.h>
#include <c10/cuda/CUDAGuard.h>

#include <limits>

namespace fastlayers::mp::cuda {

constexpr int kWarp = 32;
constexpr int kBlock = 256;
constexpr int kWarpsPerBlock = kBlock / kWarp;

inline int64_t ceil_div(int64_t a, int64_t b) { return (a + b - 1) / b; }

inline dim3 warp_grid(int64_t warps) { return dim3(unsigned(ceil_div(warps, kWarpsPerBlock))); }

// Index checks on the device. The registered ops are public, so every kernel checks the indices it dereferences:
// a thread that sees a bad one skips it and records its position with an atomicMin in a small int64 buffer
// (kNoBad when none), which the op copies to the host once after its kernels (one small D2H copy) and turns into
// a clear error. Slots: [kErrSlot] first bad slot of col/perm, [kErrPtr] first bad position of rowptr,
// [kErrArg] first bad element of arg/index.
constexpr int64_t kNoBad = std::numeric_limits<int64_t>::max();
constexpr int kErrSlot = 0, kErrPtr = 1, kErrArg = 2;

inline at::Tensor new_err(const at::Tensor& like) {
  return at::full({3}, kNoBad, like.options().dtype(at::kLong));
}

__device__ __forceinline__ bool out_of(int64_t v, int64_t hi) {  // v < 0 or v >= hi
  return static_cast<unsigned long long>(v) >= static_cast<unsigned long long>(hi);
}

// Slots [kb, ke) of row r clamped to [0, E): a bad ptr (checked and reported by its own kernel) cannot send
// the slot loops outside col/perm.
__device__ __forceinline__ void slot_range(const int64_t* __restrict__ ptr, int64_t r, int64_t E, int64_t& kb,
                                          int64_t& ke) {
  kb = ptr[r] < 0 ? 0 : ptr[r];
  ke = ptr[r + 1] > E ? E : ptr[r + 1];
}

__device__ __forceinline__ void note_bad(int64_t* err, int64_t pos) {
  if (err) atomicMin(reinterpret_cast<unsigned long long*>(err), static_cast<unsigned long long>(pos));
}

inline void check_index_cuda(const at::Tensor& t, const char* op, const char* name, const at::Tensor& like) {
  TORCH_CHECK(t.device() == like.device() && t.scalar_type() == at::kLong && t.dim() == 1, op, ": ", name,
              " must be a 1-D int64 tensor on ", like.device(), ", got a ", t.dim(), "-D ", t.scalar_type(),
              " tensor on ", t.device());
}

// strict: p[0] == 0, non-decreasing, p[n] == E (a Graph's CSR). Loose (segment_csr): 0 <= p[0] <= ... <= p[n] <= E.
template <bool STRICT>
__global__ void check_ptr_kernel(const int64_t* __restrict__ p, int64_t n, int64_t E, int64_t* __restrict__ err) {
  const int64_t i = int64_t(blockIdx.x) * blockDim.x + threadIdx.x;
  if (i > n) return;
  const int64_t v = p[i];
  bool bad = i < n && v > p[i + 1];
  if (i == 0) bad |= STRICT ? v != 0 : v < 0;
  if (i == n) bad |= STRICT ? v != E : v > E;
  if (bad) note_bad(err + kErrPtr, i);
}

inline void launch_check_ptr(const at::Tensor& p, int64_t E, const at::Tensor& err, bool strict) {
  const int64_t n = p.numel() - 1;
  auto stream = at::cuda::getCurrentCUDAStream();
  const unsigned grid = unsigned(ceil_div(n + 1, kBlock));
  if (strict) {
    check_ptr_kernel<true><<<grid, kBlock, 0, stream>>>(p.data_ptr<int64_t>(), n, E, err.data_ptr<int64_t>());
  } else {
    check_ptr_kernel<false><<<grid, kBlock, 0, stream>>>(p.data_ptr<int64_t>(), n, E, err.data_ptr<int64_t>());
  }
  C10_CUDA_KERNEL_LAUNCH_CHECK();
}

// Every value in [0, lim): arg tensors (lim = the forward's "no element" sentinel + 1) and scatter's index.
template <typename I>
__global__ void check_range_kernel(const I* __restrict__ a, int64_t numel, int64_t lim, int64_t* __restrict__ err) {
  const int64_t i = int64_t(blockIdx.x) * blockDim.x + threadIdx.x;
  if (i < numel && out_of(int64_t(a[i]), lim)) note_bad(err + kErrArg, i);
}

inline void launch_check_range(const at::Tensor& a, int64_t lim, const at::Tensor& err) {
  if (a.numel() == 0) return;
  check_range_kernel<int64_t><<<unsigned(ceil_div(a.numel(), kBlock)), kBlock, 0, at::cuda::getCurrentCUDAStream()>>>(
      a.data_ptr<int64_t>(), a.numel(), lim, err.data_ptr<int64_t>());
  C10_CUDA_KERNEL_LAUNCH_CHECK();
}

inline int64_t value_at(const at::Tensor& t, int64_t i) { return t.reshape(-1)[i].item<int64_t>(); }

// The one synchronising copy of an op: the host view of err.
inline at::Tensor fetch_err(const at::Tensor& err) { return err.to(at::kCPU); }

inline void raise_ptr(const at::Tensor& herr, const char* op, const at::Tensor& p, const char* name, int64_t E,
                      bool strict) {
  const int64_t i = herr.data_ptr<int64_t>()[kErrPtr];
  if (i == kNoBad) return;
  const int64_t n = p.numel() - 1, v = value_at(p, i);
  if (i < n && v > value_at(p, i + 1)) {
    TORCH_CHECK(false, op, ": ", name, " must be non-decreasing, got ", name, "[", i, "] = ", v, " > ", name, "[",
                i + 1, "] = ", value_at(p, i + 1));
  }
  if (i == 0 && (strict ? v != 0 : v < 0)) {
    TORCH_CHECK(false, op, ": ", name, "[0] must be ", strict ? "0" : ">= 0", ", got ", v);
  }
  TORCH_CHECK(false, op, ": ", name, "[-1] must ", strict ? "equal" : "be at most", " the number of slots (", E,
              "), got ", v);
}

inline void raise_slot(const at::Tensor& herr, const char* op, const at::Tensor* col, const char* col_name,
                       int64_t nsrc, const at::Tensor& perm, const char* perm_name, int64_t nid) {
  const int64_t k = herr.data_ptr<int64_t>()[kErrSlot];
  if (k == kNoBad) return;
  if (col) {
    const int64_t c = value_at(*col, k);
    TORCH_CHECK(c >= 0 && c < nsrc, op, ": ", col_name, "[", k, "] = ", c,
                " is out of range: expected a node id in [0, ", nsrc, ")");
  }
  TORCH_CHECK(false, op, ": ", perm_name, "[", k, "] = ", value_at(perm, k),
              " is out of range: expected an edge id in [0, ", nid, ")");
}

inline void raise_arg(const at::Tensor& herr, const char* op, const at::Tensor& a, const char* name, int64_t lim,
                      const char* expected) {
  const int64_t i = herr.data_ptr<int64_t>()[kErrArg];
  if (i == kNoBad) return;
  TORCH_CHECK(false, op, ": ", name, " (flat position ", i, ") = ", value_at(a, i), " is out of range: expected ",
              expected, " in [0, ", lim, ")");
}

// KIND 0: sum/mean, 1: max, 2: min. col/perm nullptr = identity. arg (when not nullptr) gets the id of the winning
// slot (first in slot order among ties), none_id for empty rows; empty rows give 0. Max/min take NaN like torch's
// amax/amin: a NaN wins and stays (arg: the first NaN).
// Slots are clamped to [0, nslots) (a malformed rowptr, reported by check_ptr_kernel, must not send the loads
// outside col); a slot whose source is not in [0, nsrc) or whose id (when read) is not in [0, nid) is skipped and
// noted in err (nullptr: the caller built col/perm itself and they are in range).
template <typename T, int KIND>
__global__ void csr_reduce_kernel(const int64_t* __restrict__ rowptr, const int64_t* __restrict__ col,
                                  const int64_t* __restrict__ perm, const T* __restrict__ w, int64_t wH,
                                  const T* __restrict__ x, T* __restrict__ out, int64_t* __restrict__ arg, int64_t n,
                                  int64_t H, int64_t F, bool mean, int64_t none_id, int64_t nslots, int64_t nsrc,
                                  int64_t nid, int64_t* __restrict__ err) {
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
  int64_t kb, ke;
  slot_range(rowptr, r, nslots, kb, ke);
  const bool reads_id = w != nullptr || arg != nullptr;
  acc_t acc = 0;
  int64_t best = none_id;
  for (int64_t k0 = kb; k0 < ke; k0 += kWarp) {
    const int64_t kl = k0 + lane;
    int64_t my_src = kl < ke ? (col ? col[kl] : kl) : 0;
    const int64_t my_id = kl < ke ? (perm ? perm[kl] : kl) : 0;
    if (kl < ke && (out_of(my_src, nsrc) || (reads_id && out_of(my_id, nid)))) {
      note_bad(err, kl);
      my_src = -1;  // after the broadcast every lane skips this slot together
    }
    const int m = ke - k0 < kWarp ? int(ke - k0) : kWarp;
    for (int j = 0; j < m; ++j) {
      const int64_t s = __shfl_sync(0xffffffffu, my_src, j);
      const int64_t id = __shfl_sync(0xffffffffu, my_id, j);
      if (!valid || s < 0) continue;
      acc_t v = acc_t(x[s * HF + f]);
      if (w) v *= acc_t(w[id * wH + (wH == 1 ? 0 : h)]);
      if (KIND == 0) {
        acc += v;
      } else if (k0 + j == kb || (KIND == 1 ? v > acc : v < acc) || (v != v && acc == acc)) {
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
                       int64_t none_id, int64_t nslots, int64_t nsrc, int64_t nid, int64_t* err) {
  const int64_t warps = n * ceil_div(H * F, kWarp);
  if (warps == 0) return;
  auto stream = at::cuda::getCurrentCUDAStream();
  const dim3 grid = warp_grid(warps);
  if (kind == 0) {
    csr_reduce_kernel<T, 0><<<grid, kBlock, 0, stream>>>(rowptr, col, perm, w, wH, x, out, nullptr, n, H, F, mean,
                                                         none_id, nslots, nsrc, nid, err);
  } else if (kind == 1) {
    csr_reduce_kernel<T, 1><<<grid, kBlock, 0, stream>>>(rowptr, col, perm, w, wH, x, out, arg, n, H, F, false,
                                                         none_id, nslots, nsrc, nid, err);
  } else {
    csr_reduce_kernel<T, 2><<<grid, kBlock, 0, stream>>>(rowptr, col, perm, w, wH, x, out, arg, n, H, F, false,
                                                         none_id, nslots, nsrc, nid, err);
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
