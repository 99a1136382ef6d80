// The pool's front-end for the stable-ABI kernels of fastlayers._C (common/stable.h declares these).
#include <algorithm>
#include <cstring>

#include "common/cpu_cache.h"
#include "common/stable.h"

namespace fastlayers {
namespace {

Tensor poisoned(Tensor t) {
  if (cpu_cache::poison() && t.is_cpu() && t.numel() > 0) {
    std::memset(t.mutable_data_ptr(), 0xFF, size_t(t.numel()) * t.element_size());
  }
  return t;
}

size_t element_size(ScalarType t) {
  switch (t) {
    case dtype::kDouble:
    case dtype::kLong:
      return 8;
    case dtype::kFloat:
    case dtype::kInt:
      return 4;
    case dtype::kHalf:
    case dtype::kBFloat16:
      return 2;
    case dtype::kBool:
    case dtype::kByte:
      return 1;
    default:
      FL_CHECK(false, "fastlayers: no pooled allocation for dtype ", t);
  }
  return 0;
}

std::vector<int64_t> contiguous_strides(const std::vector<int64_t>& sizes) {
  std::vector<int64_t> strides(sizes.size());
  int64_t run = 1;
  for (size_t i = sizes.size(); i-- > 0;) {
    strides[i] = run;
    run *= std::max<int64_t>(sizes[i], 1);
  }
  return strides;
}

// torch's allocator through the AOTI C shim: torch::stable::new_empty / empty go through the boxed dispatcher
// (an op lookup by name per call, ~2 us each, measured), which small calls with several outputs would feel.
Tensor empty_direct(const std::vector<int64_t>& sizes, ScalarType dt, const Tensor& device_of) {
  const std::vector<int64_t> strides = contiguous_strides(sizes);
  int32_t device_type = 0, device_index = 0;
  STABLE_TORCH_ERROR_CODE_CHECK(aoti_torch_get_device_type(device_of.get(), &device_type));
  STABLE_TORCH_ERROR_CODE_CHECK(aoti_torch_get_device_index(device_of.get(), &device_index));
  const int32_t dtype_code = torch::stable::detail::to<int32_t>(torch::stable::detail::from(dt));
  AtenTensorHandle out = nullptr;
  STABLE_TORCH_ERROR_CODE_CHECK(aoti_torch_empty_strided(int64_t(sizes.size()), sizes.data(), strides.data(),
                                                         dtype_code, device_type, device_index, &out));
  return Tensor(out);
}

// A contiguous [sizes] tensor: from the pool when it is a large CPU one, else from torch's allocator.
Tensor alloc(const std::vector<int64_t>& sizes, ScalarType dt, const Tensor& device_of) {
  int64_t numel = 1;
  for (int64_t s : sizes) numel *= s;
  const size_t nbytes = size_t(numel) * element_size(dt);
  if (!device_of.is_cpu() || nbytes < cpu_cache::kMinCachedBytes || cpu_cache::stats().limit_bytes == 0) {
    return poisoned(empty_direct(sizes, dt, device_of));
  }
  const size_t size = cpu_cache::round_up(nbytes);
  void* ptr = cpu_cache::take(size);
  FL_CHECK(ptr != nullptr, "fastlayers: out of memory allocating ", nbytes, " bytes");
  return poisoned(torch::stable::from_blob(ptr, sizes, contiguous_strides(sizes), device_of.device(), dt,
                                           [size](void* q) { cpu_cache::give_back(q, size); }));
}

// The inverse of a dim permutation.
std::vector<int64_t> inverse(const std::vector<int64_t>& p) {
  std::vector<int64_t> q(p.size());
  for (size_t i = 0; i < p.size(); ++i) q[size_t(p[i])] = int64_t(i);
  return q;
}

}  // namespace

Tensor empty_like_cached(const Tensor& x) {
  std::vector<int64_t> sizes(x.sizes().begin(), x.sizes().end());
  if (x.is_contiguous()) return alloc(sizes, x.scalar_type(), x);
  FL_CHECK(is_channels_last_dense(x), "empty_like_cached: x must be contiguous or channels-last dense");
  const std::vector<int64_t> to_last = channels_to_last(x.dim());
  std::vector<int64_t> stored;
  for (int64_t i : to_last) stored.push_back(sizes[size_t(i)]);
  return torch::stable::permute(alloc(stored, x.scalar_type(), x), inverse(to_last));
}

Tensor empty_cached(const std::vector<int64_t>& sizes, ScalarType dt, const Tensor& device_of) {
  return alloc(sizes, dt, device_of);
}

Tensor zeros_cached(const std::vector<int64_t>& sizes, ScalarType dt, const Tensor& device_of) {
  Tensor t = alloc(sizes, dt, device_of);
  if (t.numel() > 0) std::memset(t.mutable_data_ptr(), 0, size_t(t.numel()) * t.element_size());
  return t;
}

Tensor like_layout(const Tensor& t, const Tensor& ref) {
  if (!is_channels_last_dense(ref)) return contig(t);
  // t laid out like ref: a channels-last dense copy (movedim(1, -1).contiguous().movedim(-1, 1))
  const std::vector<int64_t> to_last = channels_to_last(t.dim());
  return torch::stable::permute(torch::stable::contiguous(torch::stable::permute(t, to_last)), inverse(to_last));
}

}  // namespace fastlayers
