// What the kernels of fastlayers._C see of torch: the LibTorch stable ABI only (torch/csrc/stable and
// torch/headeronly), built with TORCH_TARGET_VERSION 2.13 so that one binary loads under every torch from 2.13 on.
// Families that need more of ATen (GEMMs inside parallel regions, CUDA streams) live in fastlayers._C_aten, which
// is pinned to the torch it was compiled against (setup.py says which).
#pragma once
#include <torch/csrc/stable/library.h>
#include <torch/csrc/stable/ops.h>
#include <torch/csrc/stable/tensor.h>
#include <torch/headeronly/core/ScalarType.h>
#include <torch/headeronly/util/BFloat16.h>
#include <torch/headeronly/util/Half.h>

#include <atomic>
#include <cstdint>
#include <exception>
#include <vector>

#include "common/errors.h"

namespace fastlayers {

using torch::stable::Tensor;
using ScalarType = torch::headeronly::ScalarType;
using Half = torch::headeronly::Half;
using BFloat16 = torch::headeronly::BFloat16;
namespace dtype {
constexpr ScalarType kFloat = ScalarType::Float, kDouble = ScalarType::Double, kLong = ScalarType::Long,
                     kInt = ScalarType::Int, kHalf = ScalarType::Half, kBFloat16 = ScalarType::BFloat16,
                     kBool = ScalarType::Bool, kByte = ScalarType::Byte;
}  // namespace dtype

inline bool is_floating(ScalarType t) {
  return t == dtype::kFloat || t == dtype::kDouble || t == dtype::kHalf || t == dtype::kBFloat16;
}

// Calls f(T{}) with T the C++ type of t: float or double; anything else is a ValueError naming op.
template <typename F>
void dispatch_float_double(ScalarType t, const char* op, F&& f) {
  if (t == dtype::kFloat) return f(float{});
  if (t == dtype::kDouble) return f(double{});
  FL_CHECK_TYPE(false, op, ": expected float32 or float64, got ", t);
}

// The same over float, double, Half and BFloat16.
template <typename F>
void dispatch_floating(ScalarType t, const char* op, F&& f) {
  if (t == dtype::kHalf) return f(Half{});
  if (t == dtype::kBFloat16) return f(BFloat16{});
  dispatch_float_double(t, op, f);
}

#define FL_CHECK_DIM(t, d) FL_CHECK((t).dim() == (d), #t " must have " #d " dims, got ", (t).dim())

// torch::stable::parallel_for for every parallel region of the stable kernels. An exception must never leave a
// body through the shim (it would arrive as a RuntimeError that has lost its type): bodies record their failures
// and the ops raise after the region. As a safety net for what no body expects to throw (a chunk's scratch
// allocation), the first exception a body lets out is caught in its thread and rethrown here after the region,
// as at::parallel_for does.
template <typename F>
void parallel_for(int64_t begin, int64_t end, int64_t grain, const F& f) {
  std::exception_ptr error;
  std::atomic<bool> failed{false};
  torch::stable::parallel_for(begin, end, grain, [&](int64_t b, int64_t e) {
    try {
      f(b, e);
    } catch (...) {
      if (!failed.exchange(true)) error = std::current_exception();
    }
  });
  if (error) std::rethrow_exception(error);
}

inline int64_t num_threads() { return int64_t(torch::stable::get_num_threads()); }

// Tensor::contiguous() as ATen has it: t itself when contiguous (no dispatcher call), else a contiguous copy.
inline Tensor contig(const Tensor& t) { return t.is_contiguous() ? t : torch::stable::contiguous(t); }

inline Tensor to_dtype(const Tensor& t, ScalarType s) {
  return t.scalar_type() == s ? t : torch::stable::to(t, s);
}

// Dim orders between [N, C, *spatial] (d dims) and its channels-last storage order [N, *spatial, C].
inline std::vector<int64_t> channels_to_last(int64_t d) {
  std::vector<int64_t> p{0};
  for (int64_t i = 2; i < d; ++i) p.push_back(i);
  p.push_back(1);
  return p;
}

// True when dim 1 (channels) is the innermost dense dim: NHWC, NDHWC and the 1D analogue [N, L, C] transposed.
inline bool is_channels_last_dense(const Tensor& x) {
  if (x.dim() < 3 || x.is_contiguous()) return false;
  // movedim(1, -1) contiguous: strides descending in channels_to_last order with no gaps (size-1 dims free)
  const std::vector<int64_t> order = channels_to_last(x.dim());
  int64_t expected = 1;
  for (size_t i = order.size(); i-- > 0;) {
    const int64_t k = order[i];
    if (x.size(k) != 1 && x.stride(k) != expected) return false;
    expected *= x.size(k);
  }
  return true;
}

// The layout kernels run on: x itself when it is contiguous or channels-last dense, otherwise a contiguous copy.
inline Tensor dense_for_kernel(const Tensor& x) {
  return is_channels_last_dense(x) ? x : contig(x);
}

// Brings t into the same dense layout as ref (both dense kernel layouts above).
Tensor like_layout(const Tensor& t, const Tensor& ref);

// Outputs come from the pool of common/cpu_cache.h (CPU, at least its minimum size) or torch's allocator.
// empty_like_cached: x's sizes, strides and dtype; x must be non-overlapping and dense (contiguous or
// channels-last dense). empty_cached: contiguous.
Tensor empty_like_cached(const Tensor& x);
Tensor empty_cached(const std::vector<int64_t>& sizes, ScalarType dtype, const Tensor& device_of);
Tensor zeros_cached(const std::vector<int64_t>& sizes, ScalarType dtype, const Tensor& device_of);

}  // namespace fastlayers
