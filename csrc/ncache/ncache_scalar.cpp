// The N-cache kernels for the scalar path (common/cpu_isa.h): every header first, then the kernels.
#include <cstdint>

#include "common/cpu_simd.h"
#include "ncache/ncache_isa.h"

#define FL_GROUP_VECTORS 0
#define FL_ISA_NS scalar
#include "ncache/ncache_kernels.h"
