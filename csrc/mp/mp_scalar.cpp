// The message-passing kernels for the scalar path (common/cpu_isa.h): every header first (torch, STL and the
// always-inline row loops compile for the baseline), then the target, then the per-ISA entry points.
#include "mp/mp_cpu.h"
#include "mp/mp_rows.h"

#define FL_ISA_NS scalar
#include "mp/mp_kernels.h"

