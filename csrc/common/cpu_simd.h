// Runtime CPU dispatch for hot loops. A function marked FL_MULTIVERSION is compiled for AVX-512, AVX2 and the
// baseline, and the loader picks the widest the CPU supports, so a source build runs on any x86-64 while
// still using the vector units of the machine it lands on. Elsewhere the marker is empty.
#pragma once

#if defined(__x86_64__) && defined(__linux__) && defined(__GNUC__) && !defined(__clang__)
#define FL_MULTIVERSION __attribute__((target_clones("avx512f", "avx2", "default")))
#else
#define FL_MULTIVERSION
#endif

#if defined(__GNUC__)
#define FL_INLINE inline __attribute__((always_inline))
#else
#define FL_INLINE inline
#endif

#define FL_PRAGMA(x) _Pragma(#x)
// Lets the compiler vectorise a floating-point sum in this loop only (lane-wise partial sums, reassociated).
#define FL_SIMD_SUM(var) FL_PRAGMA(omp simd reduction(+ : var))
#define FL_SIMD FL_PRAGMA(omp simd)
