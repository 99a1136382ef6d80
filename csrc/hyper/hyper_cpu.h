// Shared pieces of the hypernetwork CPU kernels (hyper_fwd_cpu.cpp, hyper_bwd_cpu.cpp).
//
// Layout: weight [O*I + O, h]; its first O*I rows, read as a row-major [O, I*h] matrix Hm, hold T[o, i, j] at
// Hm[o, i*h + j]; the last O rows (Hb [O, h]) generate the output bias. w0 [O, I] and b0 [O] are the static parts
// (the bias's first O*I entries plus base_weight, and the bias's last O entries plus base_bias), combined in Python.
//
// T = 1 (one token per weight set): y = Z Hm^T with Z_b = x_b (outer) phi_b, a GEMM of K = I*h. Z is formed one
// (sample block, input block) tile at a time, at most kTileBytes, and fed to MKL's GEMM, so no [B, O, I] or
// [B, I*h] tensor ever exists. T > 1: a tile of generated weights W[b, o-block, :] = phi_b Hs^T is formed for a
// block of samples and output rows, applied to that block's tokens, and dropped.
#pragma once
#include <ATen/ATen.h>
#include <ATen/Parallel.h>

#include <algorithm>
#include <cstdlib>

#include "common/checks.h"
#include "common/cpu_simd.h"
#include "hyper/hyper_isa.h"

namespace fastlayers::hyper {

struct Dims {
  int64_t B, T, I, O, h;
};

// Bytes of the one generated tile (Z, V or W) alive at a time: 1/16 of the per-sample weights the op avoids
// (B*O*I), between 1 and 16 MiB. MKL's GEMM loses efficiency on thin tiles (measured on a 2-core EPYC at B=1024,
// O=I=256, h=128: backward 1.5x slower with 4 MiB tiles than with 16 MiB), so tiles are as large as that bound
// allows; the peak extra memory stays near 6% of B*O*I.
constexpr int64_t kMinTileBytes = 1 << 20, kMaxTileBytes = 16 << 20;
// Rows of Hm re-read per sample block in the T > 1 path: about an L2's worth, so it stays cached across blocks.
constexpr int64_t kHSliceBytes = 2 << 20;

// FASTLAYERS_HYPER_TILE_BYTES overrides the tile size (the H slice gets half of it): a test aid that makes small
// shapes take many blocks, so every block boundary is exercised.
inline int64_t tile_bytes(const Dims& d, int64_t elt) {
  if (const char* env = std::getenv("FASTLAYERS_HYPER_TILE_BYTES")) return std::max<int64_t>(1, std::atoll(env));
  return std::clamp<int64_t>(d.B * d.O * d.I * elt / 16, kMinTileBytes, kMaxTileBytes);
}
inline int64_t hslice_bytes() {
  if (const char* env = std::getenv("FASTLAYERS_HYPER_TILE_BYTES")) return std::max<int64_t>(1, std::atoll(env) / 2);
  return kHSliceBytes;
}

inline Dims dims_of(const at::Tensor& x, const at::Tensor& phi, const at::Tensor& weight) {
  TORCH_CHECK(x.dim() == 3, "hyper_linear: x must be [B, T, I], got ", x.dim(), " dims");
  FL_CHECK_DIM(phi, 2);
  FL_CHECK_DIM(weight, 2);
  const int64_t B = x.size(0), T = x.size(1), I = x.size(2), h = phi.size(1);
  TORCH_CHECK(phi.size(0) == B, "hyper_linear: phi has ", phi.size(0), " rows, x has ", B);
  TORCH_CHECK(weight.size(1) == h, "hyper_linear: weight must have h = ", h, " columns, got ", weight.size(1));
  TORCH_CHECK(weight.size(0) % (I + 1) == 0, "hyper_linear: weight rows must be O*I + O with I = ", I);
  TORCH_CHECK(x.scalar_type() == phi.scalar_type() && x.scalar_type() == weight.scalar_type(),
              "hyper_linear: x, phi and weight must share one dtype");
  TORCH_CHECK(x.scalar_type() == at::kFloat || x.scalar_type() == at::kDouble,
              "hyper_linear: CPU kernels take float32/float64");
  return {B, T, I, weight.size(0) / (I + 1), h};
}

inline void check_static(const c10::optional<at::Tensor>& w0, const c10::optional<at::Tensor>& b0, const Dims& d,
                         const at::Tensor& x) {
  if (w0) {
    TORCH_CHECK(w0->dim() == 2 && w0->size(0) == d.O && w0->size(1) == d.I, "hyper_linear: w0 must be [O, I]");
    TORCH_CHECK(w0->scalar_type() == x.scalar_type(), "hyper_linear: w0 must have x's dtype");
  }
  if (b0) {
    TORCH_CHECK(b0->dim() == 1 && b0->size(0) == d.O, "hyper_linear: b0 must be [O]");
    TORCH_CHECK(b0->scalar_type() == x.scalar_type(), "hyper_linear: b0 must have x's dtype");
  }
}

// Block sizes of the T = 1 path: samples per block and inputs i per block (K = ib * h per GEMM).
inline std::pair<int64_t, int64_t> outer_blocks(const Dims& d, int64_t elt) {
  // Up to 1024 samples per GEMM (M); fewer only when h is so wide that a quarter tile holds less.
  const int64_t bb = std::clamp<int64_t>(tile_bytes(d, elt) / std::max<int64_t>(1, 4 * d.h * elt), 1,
                                         std::max<int64_t>(1, std::min<int64_t>(d.B, 1024)));
  const int64_t ib = std::clamp<int64_t>(tile_bytes(d, elt) / std::max<int64_t>(1, bb * d.h * elt), 1, d.I);
  return {bb, ib};
}

// Block sizes of the T > 1 path: output rows per H slice, then samples per generated tile.
inline std::pair<int64_t, int64_t> tile_blocks(const Dims& d, int64_t elt) {
  const int64_t ob = std::clamp<int64_t>(hslice_bytes() / std::max<int64_t>(1, d.I * d.h * elt), 1, d.O);
  // Half a tile: backward holds two (the generated weights and their per-sample gradient).
  const int64_t bb = std::clamp<int64_t>(tile_bytes(d, elt) / 2 / std::max<int64_t>(1, ob * d.I * elt), 1, d.B);
  return {ob, bb};
}

// ---- per-sample loops: hyper_kernels.h, compiled per instruction set; one table chosen at load --------------
// y[b, t, o0 + o] += <W[b, o, :], x[b, t, :]> (apply_tile); dx[b, t, :] += sum_o g[b, t, o0 + o] W[b, o, :]
// (apply_tile_t); dW[b, o, :] = sum_t g[b, t, o0 + o] x[b, t, :] (sample_grad_tile); z[b, i, :] = x[b, i0 + i] *
// phi[b, :] (outer_tile); dx[b, i0 + i] += <V[b, i], phi_b>, dphi[b] += sum_i x[b, i0 + i] V[b, i] (contract_tile).

template <typename S>
void apply_tile(const S* w, const same<S>* x, same<S>* y, int64_t nb, int64_t T, int64_t I, int64_t no, int64_t O) {
  kernels<S>().apply_tile(w, x, y, nb, T, I, no, O);
}
template <typename S>
void apply_tile_t(const S* w, const same<S>* g, same<S>* dx, int64_t nb, int64_t T, int64_t I, int64_t no,
                  int64_t O) {
  kernels<S>().apply_tile_t(w, g, dx, nb, T, I, no, O);
}
template <typename S>
void sample_grad_tile(const S* g, const same<S>* x, same<S>* dw, int64_t nb, int64_t T, int64_t I, int64_t no,
                      int64_t O) {
  kernels<S>().sample_grad_tile(g, x, dw, nb, T, I, no, O);
}
template <typename S>
void outer_tile(const S* x, const same<S>* phi, same<S>* z, int64_t nb, int64_t I, int64_t i0, int64_t ni,
                int64_t h) {
  kernels<S>().outer_tile(x, phi, z, nb, I, i0, ni, h);
}
template <typename S>
void contract_tile(const S* v, const same<S>* x, const same<S>* phi, same<S>* dx, same<S>* dphi, int64_t nb,
                   int64_t I, int64_t i0, int64_t ni, int64_t h) {
  kernels<S>().contract_tile(v, x, phi, dx, dphi, nb, I, i0, ni, h);
}

}  // namespace fastlayers::hyper
