// The N-cache kernels for the avx2 path (common/cpu_isa.h): every header first, then the target, then the kernels.
#include <cstdint>

#include "common/cpu_simd.h"
#include "ncache/ncache_isa.h"
#ifdef FL_X86_ISA
#include <immintrin.h>

#pragma GCC target("avx2,fma")
#define FL_GROUP_VECTORS 1
#define FL_ISA_NS avx2
#include "ncache/ncache_kernels.h"
#endif
