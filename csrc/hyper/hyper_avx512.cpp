// The hyper kernels for the avx512 path (common/cpu_isa.h): every header first, then the target, then the kernels.
#include <cstdint>

#include "common/cpu_simd.h"
#include "hyper/hyper_isa.h"
#ifdef FL_X86_ISA
#pragma GCC target("avx512f,avx512bw,avx512vl,avx512dq,avx2,fma")
#define FL_ISA_NS avx512
#include "hyper/hyper_kernels.h"
#endif
