// The alignment kernels for the scalar path (common/cpu_isa.h): every header first (ATen, STL and the always-inline
// passes compile for the baseline), then the target, then the per-ISA entry points.
#include "align/align_isa.h"
#include "align/isonet_layer.h"
#include "align/isonet_layer_bwd.h"
#include "align/sinkhorn_dense.h"
#include "align/transport_score.h"

#define FL_ISA_NS scalar
#include "align/align_kernels.h"

