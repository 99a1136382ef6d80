// The hypernetwork per-sample loops as one table per instruction set (common/cpu_isa.h): defined by
// hyper_avx512.cpp, hyper_avx2.cpp and hyper_scalar.cpp from hyper_kernels.h, called through hyper::kernels<S>().
#pragma once
#include <cstdint>

#include "common/cpu_isa.h"

namespace fastlayers::hyper {

template <typename S>
struct Kernels {
  void (*apply_tile)(const S* w, const S* x, S* y, int64_t nb, int64_t T, int64_t I, int64_t no, int64_t O);
  void (*apply_tile_t)(const S* w, const S* g, S* dx, int64_t nb, int64_t T, int64_t I, int64_t no, int64_t O);
  void (*sample_grad_tile)(const S* g, const S* x, S* dw, int64_t nb, int64_t T, int64_t I, int64_t no, int64_t O);
  void (*outer_tile)(const S* x, const S* phi, S* z, int64_t nb, int64_t I, int64_t i0, int64_t ni, int64_t h);
  void (*contract_tile)(const S* v, const S* x, const S* phi, S* dx, S* dphi, int64_t nb, int64_t I, int64_t i0,
                        int64_t ni, int64_t h);
};

FL_ISA_KERNELS(Kernels)

}  // namespace fastlayers::hyper
