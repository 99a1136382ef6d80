// The pool's front-end for the ATen kernels of fastlayers._C_aten.
#define FASTLAYERS_WITH_TORCH_API
#include "common/cpu_cache.h"

#include <cstring>

namespace fastlayers {

namespace {

at::Tensor poisoned(at::Tensor t) {
  if (cpu_cache::poison() && t.device().is_cpu() && t.numel() > 0) {
    std::memset(t.data_ptr(), 0xFF, size_t(t.numel()) * t.element_size());
  }
  return t;
}

// sizes/strides describe a non-overlapping dense tensor: its storage is exactly numel elements.
at::Tensor alloc(at::IntArrayRef sizes, at::IntArrayRef strides, const at::TensorOptions& options) {
  const int64_t numel = c10::multiply_integers(sizes);
  const size_t nbytes = size_t(numel) * c10::elementSize(c10::typeMetaToScalarType(options.dtype()));
  if (!options.device().is_cpu() || nbytes < cpu_cache::kMinCachedBytes || cpu_cache::stats().limit_bytes == 0) {
    return poisoned(at::empty_strided(sizes, strides, options));
  }
  const size_t size = cpu_cache::round_up(nbytes);
  void* ptr = cpu_cache::take(size);
  TORCH_CHECK(ptr != nullptr, "fastlayers: out of memory allocating ", nbytes, " bytes");
  return poisoned(at::from_blob(
      ptr, sizes, strides, [size](void* q) { cpu_cache::give_back(q, size); }, options));
}

}  // namespace

at::Tensor empty_like_cached(const at::Tensor& x) {
  TORCH_CHECK(x.is_non_overlapping_and_dense(), "empty_like_cached: x must be dense");
  return alloc(x.sizes(), x.strides(), x.options());
}

at::Tensor empty_cached(at::IntArrayRef sizes, const at::TensorOptions& options) {
  return alloc(sizes, c10::contiguous_strides(sizes), options);
}

}  // namespace fastlayers
