// The hyper kernels for the scalar path (common/cpu_isa.h): every header first, then the target, then the kernels.
#include <cstdint>

#include "common/cpu_simd.h"
#include "hyper/hyper_isa.h"

#define FL_ISA_NS scalar
#include "hyper/hyper_kernels.h"

