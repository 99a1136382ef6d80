// The alignment kernels for the avx2 path (common/cpu_isa.h) are the scalar path's (SSE2) build.
//
// The align passes are written on 64-byte GCC vectors (vec.h). Compiled for AVX2 (widest native vector 32 bytes),
// GCC 12 lowers their compares and selects (vmax, vrelu, vexp's clamps, the transport masks) element by element
// (the AVX2 objects are full of vmovss / vmaxss / vcmpltss sequences; a 64-byte select in a small test file is
// scalarised under SSE2 too, so why the SSE2 build fares better is not settled), and the family ran slower than
// the SSE2 build of the same source on both development machines (Intel Xeon and AMD EPYC, 2026-12). On the AMD
// one, one thread, float32 unless noted: Sinkhorn forward+backward B=128 n=64 45 vs 33 ms (float64 86 vs 65 ms),
// the hinge score forward+backward 1.4-2.1 vs 1.1 ms, an IsoNet++ node model forward 155 vs 123 ms and
// forward+backward 519 vs 430 ms; Sinkhorn forward alike (16-18 vs 15 ms). So CPUs whose best path is AVX2 run
// the SSE2 kernels for this family until its passes take native 32-byte vectors there.
#include "align/align_isa.h"

#ifdef FL_X86_ISA
namespace fastlayers::align::avx2 {
const Table& table() { return scalar::table(); }
}  // namespace fastlayers::align::avx2
#endif
