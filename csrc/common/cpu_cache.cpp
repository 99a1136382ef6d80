#include "common/cpu_cache.h"

#include <atomic>
#include <cstdlib>
#include <cstring>
#include <map>
#include <mutex>
#include <string>

namespace fastlayers::cpu_cache {
namespace {

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

}  // namespace

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
