// Internal invariants of kernels. The public Python functions validate user input with clear exceptions; these
// TORCH_CHECKs only guard the C++ boundary against direct torch.ops calls with malformed tensors.
#pragma once
#include <ATen/ATen.h>

#define FL_CHECK_CPU(t) TORCH_CHECK((t).device().is_cpu(), #t " must be a CPU tensor")
#define FL_CHECK_DIM(t, d) TORCH_CHECK((t).dim() == (d), #t " must have " #d " dims, got ", (t).dim())

namespace fastlayers {

// True when dim 1 (channels) is the innermost dense dim: NHWC, NDHWC and the 1D analogue [N, L, C] transposed.
inline bool is_channels_last_dense(const at::Tensor& x) {
  return x.dim() >= 3 && !x.is_contiguous() && x.movedim(1, -1).is_contiguous();
}

// The layout kernels run on: x itself when it is contiguous or channels-last dense, otherwise a contiguous copy.
inline at::Tensor dense_for_kernel(const at::Tensor& x) {
  return is_channels_last_dense(x) ? x : x.contiguous();
}

// Brings t into the same dense layout as ref (both dense kernels layouts above).
inline at::Tensor like_layout(const at::Tensor& t, const at::Tensor& ref) {
  if (is_channels_last_dense(ref)) return t.movedim(1, -1).contiguous().movedim(-1, 1);
  return t.contiguous();
}

}  // namespace fastlayers
