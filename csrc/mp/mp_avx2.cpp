// The message-passing kernels for the avx2 path (common/cpu_isa.h): every header first (torch, STL and the
// always-inline row loops compile for the baseline), then the target, then the per-ISA entry points.
#include "mp/mp_cpu.h"
#include "mp/mp_rows.h"
#ifdef FL_X86_ISA
#pragma GCC target("avx2,fma")
#define FL_ISA_NS avx2
#include "mp/mp_kernels.h"
#endif
