// The ECA vector primitives as one table per instruction set (common/cpu_isa.h): defined by eca_avx512.cpp,
// eca_avx2.cpp and eca_scalar.cpp from eca_kernels.h, called by eca_cpu.cpp through eca::kernels<T>().
// "plane": one channel's S spatial values, contiguous. "rows": S rows of C channels (channels-last), acc[c] += ...
#pragma once
#include <cstdint>

#include "common/cpu_isa.h"

namespace fastlayers::eca {

template <typename T>
struct Kernels {
  double (*plane_sum)(const T* x, int64_t n);
  double (*plane_dot)(const T* a, const T* b, int64_t n);
  void (*plane_scale)(const T* x, T* y, T s, int64_t n);
  void (*plane_affine)(const T* g, T* dx, T s, T c, int64_t n);
  void (*rows_sum)(const T* x, double* acc, int64_t rows, int64_t C);
  void (*rows_dot)(const T* a, const T* b, double* acc, int64_t rows, int64_t C);
  void (*rows_scale)(const T* x, T* y, const T* s, int64_t rows, int64_t C);
  void (*rows_affine)(const T* g, T* dx, const T* s, const T* c0, int64_t rows, int64_t C);
};

FL_ISA_KERNELS(Kernels)

}  // namespace fastlayers::eca
