// A caching pool for large CPU outputs of fastlayers kernels.
//
// A fresh large allocation is backed by pages the kernel zeroes on first touch; on the machines we measured that
// runs at 3-8 GB/s against about 50 GB/s for writing memory already mapped, so for memory-bound kernels the
// output's page faults cost more than the kernel. Like PyTorch's CUDA caching allocator, freed outputs of at least
// kMinCachedBytes go back to a pool (bounded, FASTLAYERS_CPU_CACHE_MB, default 1024; 0 disables) and are reused.
#pragma once
#include <cstddef>

namespace fastlayers::cpu_cache {

struct Stats {
  size_t cached_bytes;  // held in the pool, free for reuse
  size_t limit_bytes;
  size_t hits;
  size_t misses;
};

Stats stats();
void set_limit(size_t bytes);  // also frees whatever exceeds the new limit
void empty();                  // returns every pooled block to the system
// Test aid: when on, every output allocated through empty_like_cached (any size) is filled with 0xFF bytes
// (NaN in every float dtype) before the kernel runs, so an element a kernel forgets to write shows up.
void set_poison(bool on);
bool poison();

// For the allocation front-ends (cpu_cache_stable.cpp for fastlayers._C, cpu_cache_aten.cpp for _C_aten; each
// library holds its own pool): outputs below kMinCachedBytes skip the pool; blocks are round_up(nbytes) long;
// take returns nullptr when out of memory.
constexpr size_t kMinCachedBytes = size_t(1) << 20;
size_t round_up(size_t nbytes);
void* take(size_t size);
void give_back(void* ptr, size_t size);

}  // namespace fastlayers::cpu_cache

#ifdef FASTLAYERS_WITH_TORCH_API
#include <ATen/ATen.h>
namespace fastlayers {
// An uninitialised tensor with x's sizes, strides, dtype and device; x must be non-overlapping and dense.
// CPU tensors of at least the pool's minimum size come from the pool; others from at::empty_like.
// Kernels allocate every output through this so the poison test aid covers them all.
at::Tensor empty_like_cached(const at::Tensor& x);
// A contiguous uninitialised tensor, allocated the same way.
at::Tensor empty_cached(at::IntArrayRef sizes, const at::TensorOptions& options);
}  // namespace fastlayers
#endif
