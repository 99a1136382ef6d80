// The hyper kernels for the avx2 path (common/cpu_isa.h): every header first, then the target, then the kernels.
#include <cstdint>

#include "common/cpu_simd.h"
#include "hyper/hyper_isa.h"
#ifdef FL_X86_ISA
#pragma GCC target("avx2,fma")
#define FL_ISA_NS avx2
#include "hyper/hyper_kernels.h"
#endif
