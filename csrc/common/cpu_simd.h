// Loop annotations for the CPU kernels. Which instruction set a kernel is compiled for is not decided here:
// each family's kernel header is compiled once per ISA (AVX-512, AVX2, baseline) in its own translation unit and
// one table is chosen per process, forceable with FASTLAYERS_CPU_ISA (common/cpu_isa.h).
#pragma once

#if defined(__GNUC__)
#define FL_INLINE inline __attribute__((always_inline))
#else
#define FL_INLINE inline
#endif

#define FL_PRAGMA(x) _Pragma(#x)
// Lets the compiler vectorise a floating-point sum in this loop only (lane-wise partial sums, reassociated).
#define FL_SIMD_SUM(var) FL_PRAGMA(omp simd reduction(+ : var))
#define FL_SIMD FL_PRAGMA(omp simd)
