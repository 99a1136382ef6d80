// The N-cache's hash functions: one source compiled for the host (C++ kernels) and the device (CUDA kernels), so
// slot indices and replacement draws are bit-identical on CPU and GPU. Python's reference mirrors them in
// python/fastlayers/reference/ncache.py (mix64 in int64 arithmetic).
#pragma once
#include <cstdint>
#include <cstring>

#if defined(__CUDACC__)
#define FL_HD __host__ __device__ __forceinline__
#else
#define FL_HD inline
#endif

namespace fastlayers::ncache {

// splitmix64's finaliser: a bijective mixer whose every output bit depends on every input bit, unlike the
// reference's (id*s + id^2*(s+1)) mod M, which with even s and M = 32 reaches 7 of the 32 slots.
FL_HD uint64_t mix64(uint64_t z) {
  z += 0x9E3779B97F4A7C15ull;
  z = (z ^ (z >> 30)) * 0xBF58476D1CE4E5B9ull;
  z = (z ^ (z >> 27)) * 0x94D049BB133111EBull;
  return z ^ (z >> 31);
}

// Hash of a key for the slot index of every hop: slot = slot_in(key_hash(key, seed), M_h). It ignores the owner so
// the same neighbour lands in the same slot of every node's cache, which is what lets pair features probe instead
// of sort.
FL_HD uint64_t key_hash(int64_t key, uint64_t seed_mix) { return mix64(uint64_t(key) ^ seed_mix); }

// Slot in a hop of m slots (m < 2^31): the top 32 bits of the hash scaled to [0, m) by a multiply-shift, which is
// uniform like a modulo but costs a multiply where a 64-bit division costs tens of cycles on every probe.
FL_HD int64_t slot_in(uint64_t kh, int64_t m) { return int64_t(((kh >> 32) * uint64_t(m)) >> 32); }

FL_HD uint64_t seed_mix_of(int64_t seed) { return mix64(uint64_t(seed) ^ 0x5EEDC0DE5EEDC0DEull); }

// -0.0 and 0.0 compare equal, so they must draw the same number.
FL_HD uint64_t time_bits(double t) {
  if (t == 0.0) return 0;
  uint64_t b;
  memcpy(&b, &t, sizeof(b));
  return b;
}

// Counter-based draw for "overwrite an occupied slot": a function of (seed, owner, hop, key, time) only, so the
// result does not depend on thread order or device. Returns 53 uniform bits; replace iff draw < threshold53.
FL_HD uint64_t replace_draw(uint64_t seed_mix, int64_t owner, int64_t hop, int64_t key, double t) {
  uint64_t h = mix64(seed_mix ^ uint64_t(owner));
  h = mix64(h ^ uint64_t(key));
  h = mix64(h ^ time_bits(t));
  h = mix64(h ^ uint64_t(hop));
  return h >> 11;
}

// The total order of candidates for one (owner, hop, slot) within a batch: latest time, then largest edge id,
// then largest key, then largest rank (the candidate's position in the batch; ties there only arise from
// duplicate edge ids).
FL_HD bool beats(double ta, int64_t ea, int64_t ka, int64_t ra, double tb, int64_t eb, int64_t kb, int64_t rb) {
  if (ta != tb) return ta > tb;
  if (ea != eb) return ea > eb;
  if (ka != kb) return ka > kb;
  return ra > rb;
}

constexpr int kMaxHops = 4;  // hop 0 plus up to 3 tables: the pair code has 2 * hops <= 8 bits

}  // namespace fastlayers::ncache
