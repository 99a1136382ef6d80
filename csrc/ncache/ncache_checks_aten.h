// The ATen side of ncache_common.h's argument checks, for the CUDA kernels (fastlayers._C_aten): the checks and
// their messages are ncache_common.h's templates; only the contiguous copy of an index vector is ATen's here.
#pragma once
#include <ATen/ATen.h>

#include "ncache/ncache_common.h"

namespace fastlayers::ncache {

// An index vector of the kernels ([B] int64); returned contiguous.
inline at::Tensor check_ids(const at::Tensor& x, const char* name, const at::Tensor& keys) {
  check_id_vector(x, name, keys);
  return x.contiguous();
}

}  // namespace fastlayers::ncache
