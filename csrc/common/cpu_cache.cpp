#define FASTLAYERS_WITH_TORCH_API
#include "common/cpu_cache.h"

#include <atomic>
#include <cstdlib>
#include <cstring>
#include <map>
#include <mutex>
#include <string>

namespace fastlayers::cpu_cache {
namespace {

constexpr size_t kMinCachedBytes = size_t(1) << 20;
constexpr size_t kGranule = size_t(2) << 20;  // huge-page multiple: equal shapes map to equal blocks

struct Pool {
  std::mutex mu;
  std::multimap<size_t, void*> free_blocks;  // block size -> block
  size_t cached = 0, hits = 0, misses = 0;
  size_t limit;
  Pool() {
    const char* env = std::getenv("FASTLAYERS_CPU_CACHE_MB");
    limit = (env ? size_t(std::strtoull(env, nullptr, 10)) : size_t(1024)) << 20;
  }
  // Frees pooled blocks (largest first) until cached <= target. Caller holds mu.
  void trim(size_t target) {
    while (cached > target && !free_blocks.empty()) {
      auto it = std::prev(free_blocks.end());
      cached -= it->first;
      std::free(it->second);
      free_blocks.erase(it);
    }
  }
};

std::atomic<bool> g_poison{false};

// Never destroyed: tensors holding pool blocks may die during interpreter shutdown, after static destructors.
Pool& pool() {
  static Pool* p = new Pool();
  return *p;
}

size_t round_up(size_t n) { return (n + kGranule - 1) / kGranule * kGranule; }

void* take(size_t size) {
  Pool& p = pool();
  {
    std::lock_guard<std::mutex> lock(p.mu);
    auto it = p.free_blocks.find(size);
    if (it != p.free_blocks.end()) {
      void* ptr = it->second;
      p.cached -= size;
      p.free_blocks.erase(it);
      ++p.hits;
      return ptr;
    }
    ++p.misses;
  }
  void* ptr = nullptr;
  if (posix_memalign(&ptr, kGranule, size) != 0) return nullptr;
  return ptr;
}

void give_back(void* ptr, size_t size) {
  Pool& p = pool();
  std::lock_guard<std::mutex> lock(p.mu);
  if (size > p.limit) {
    std::free(ptr);
    return;
  }
  p.free_blocks.emplace(size, ptr);
  p.cached += size;
  p.trim(p.limit);
}

}  // namespace

Stats stats() {
  Pool& p = pool();
  std::lock_guard<std::mutex> lock(p.mu);
  return {p.cached, p.limit, p.hits, p.misses};
}

void set_limit(size_t bytes) {
  Pool& p = pool();
  std::lock_guard<std::mutex> lock(p.mu);
  p.limit = bytes;
  p.trim(bytes);
}

void empty() {
  Pool& p = pool();
  std::lock_guard<std::mutex> lock(p.mu);
  p.trim(0);
}

void set_poison(bool on) { g_poison.store(on); }
bool poison() { return g_poison.load(); }

}  // namespace fastlayers::cpu_cache

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
