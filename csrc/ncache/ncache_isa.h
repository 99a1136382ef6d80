// The N-cache's vectorised pieces as one table per instruction set (common/cpu_isa.h): defined by
// ncache_avx512.cpp, ncache_avx2.cpp and ncache_scalar.cpp from ncache_kernels.h, called by ncache_cpu.cpp through
// ncache::kernels().
#pragma once
#include <cstdint>

#include "common/cpu_isa.h"

namespace fastlayers::ncache {

constexpr int64_t kGroupMaxM1 = 64;  // the column-group path serves hop-1 tables of up to 64 slots (one mask word)

// The hop codes of every entry of a pair's two rows on an aligned state (ncache_cpu.cpp, pair_rows_aligned):
// segments 0..3 are u's hop 1, u's hop 2, v's hop 1, v's hop 2 (0 where the slot is empty), and emit[s] has bit c
// set where column c of segment s holds the first place of its key (no code bit below its own).
struct GroupCodes {
  int64_t code[4][kGroupMaxM1];
  uint64_t emit[4];
};

struct Kernels {
  // ku, kv: the two rows' key columns [S]; m1 = m2 << r (powers of two, m1 <= kGroupMaxM1).
  void (*group_codes)(const int64_t* ku, const int64_t* kv, int64_t m1, int64_t m2, GroupCodes& out);
};

FL_ISA_DECLARE(Kernels, table)

inline const Kernels& kernels() {
  static const Kernels& t = FL_ISA_SELECT(table);
  return t;
}

}  // namespace fastlayers::ncache
