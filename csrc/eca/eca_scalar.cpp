// ECA's primitives for the scalar path (common/cpu_isa.h): every header first, then the target, then the kernels.
#include <algorithm>
#include <cstdint>

#include "common/cpu_simd.h"
#include "eca/eca_isa.h"

#define FL_ISA_NS scalar
#include "eca/eca_kernels.h"

