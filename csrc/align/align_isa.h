// The alignment kernels' entry points as one table per instruction set (common/cpu_isa.h): defined by
// align_avx512.cpp, align_avx2.cpp and align_scalar.cpp from align_kernels.h; the op files call them through the
// forwarding functions below (align::node_sweep(...) etc.), which pick the table chosen once per process.
#pragma once
#include <cstdint>

#include "align/isonet_layer.h"
#include "align/isonet_layer_bwd.h"
#include "common/cpu_isa.h"

namespace fastlayers::align {

template <typename T>
struct Kernels {
  // IsoNet++ node layer (isonet_layer_fwd_cpu.cpp, isonet_layer_bwd_cpu.cpp; passes in isonet_layer.h,
  // isonet_layer_bwd.h).
  void (*node_sweep)(const isonet_layer::Dims& d, const isonet_layer::Folded<T>& f, const T* h, const T* p,
                     const isonet_layer::Transport<T>& tr, const uint8_t* need, T* a, int64_t u0, int64_t u1, T* rbuf,
                     T* coef);
  void (*other_sweep)(const isonet_layer::Dims& d, const isonet_layer::Folded<T>& f, const T* o, const T* zero, T* Q,
                      int64_t j0, int64_t j1);
  void (*target_sweep)(const isonet_layer::Dims& d, const isonet_layer::Folded<T>& f, const T* h, const T* a,
                       const int64_t* rowptr, const int64_t* col, const bool* mask, T* out, int64_t v0, int64_t v1,
                       isonet_layer::GateBuf<T>& g);
  void (*node_sweep_keep_r)(const isonet_layer::Dims& d, const isonet_layer::Folded<T>& f, const T* h, const T* p,
                            const uint8_t* need, T* a, int64_t u0, int64_t u1, T* rbuf, T* r);
  void (*grad_target_sweep)(const isonet_layer::Dims& d, const isonet_layer::Folded<T>& f,
                            const isonet_layer::BackWeights<T>& bw, const T* h, const T* g, const T* a,
                            const int64_t* rowptr, const int64_t* col, const bool* mask,
                            const isonet_layer::BackOut<T>& o, int64_t v0, int64_t v1, isonet_layer::GateBuf<T>& gb, T* ds,
                            const T* zero);
  void (*grad_node_sweep)(const isonet_layer::Dims& d, const isonet_layer::BackWeights<T>& bw, const uint8_t* need,
                          bool with_partner, const isonet_layer::BackOut<T>& o, int64_t u0, int64_t u1, const T* zero);
  // Hinge score of the transported partner (transport_cpu.cpp; transport_score.h).
  void (*score_fwd)(const T* hq, const T* hc, const T* P, T* s, int64_t b0, int64_t b1, int64_t n, int64_t m,
                    int64_t d);
  void (*score_bwd)(const T* gs, const T* hq, const T* hc, const T* P, T* gq, T* gc, T* gP, int64_t b0, int64_t b1,
                    int64_t n, int64_t m, int64_t d);
  // Sinkhorn on one gathered block (sinkhorn_cpu.cpp; sinkhorn_dense.h).
  void (*forward_dense)(const T* x0, const T* x0T, T* K, T* KT, int64_t n, int64_t m, int64_t ns, int64_t ms,
                        int64_t iters, T* a, T* b, T* w);
  void (*backward_dense)(const T* x0, T* g, int64_t n, int64_t m, int64_t ns, int64_t ms, int64_t iters, const T* a,
                         const T* b, T* K, T* w);
};

FL_ISA_KERNELS(Kernels)

// Forwarding functions with the kernels' names: the pointer or folded-weights argument named first fixes T, the
// others convert to it (as the former non-template overloads did).

template <typename T>
void node_sweep(const isonet_layer::Dims& d, const isonet_layer::Folded<T>& f, const same<T>* h, const same<T>* p,
                const isonet_layer::Transport<same<T>>& tr, const uint8_t* need, same<T>* a, int64_t u0, int64_t u1,
                same<T>* rbuf, same<T>* coef) {
  kernels<T>().node_sweep(d, f, h, p, tr, need, a, u0, u1, rbuf, coef);
}
template <typename T>
void other_sweep(const isonet_layer::Dims& d, const isonet_layer::Folded<T>& f, const same<T>* o, const same<T>* zero,
                 same<T>* Q, int64_t j0, int64_t j1) {
  kernels<T>().other_sweep(d, f, o, zero, Q, j0, j1);
}
template <typename T>
void target_sweep(const isonet_layer::Dims& d, const isonet_layer::Folded<T>& f, const same<T>* h, const same<T>* a,
                  const int64_t* rowptr, const int64_t* col, const bool* mask, same<T>* out, int64_t v0, int64_t v1,
                  isonet_layer::GateBuf<same<T>>& g) {
  kernels<T>().target_sweep(d, f, h, a, rowptr, col, mask, out, v0, v1, g);
}
template <typename T>
void node_sweep_keep_r(const isonet_layer::Dims& d, const isonet_layer::Folded<T>& f, const same<T>* h, const same<T>* p,
                       const uint8_t* need, same<T>* a, int64_t u0, int64_t u1, same<T>* rbuf, same<T>* r) {
  kernels<T>().node_sweep_keep_r(d, f, h, p, need, a, u0, u1, rbuf, r);
}
template <typename T>
void grad_target_sweep(const isonet_layer::Dims& d, const isonet_layer::Folded<T>& f,
                       const isonet_layer::BackWeights<same<T>>& bw, const same<T>* h, const same<T>* g,
                       const same<T>* a, const int64_t* rowptr, const int64_t* col, const bool* mask,
                       const isonet_layer::BackOut<same<T>>& o, int64_t v0, int64_t v1,
                       isonet_layer::GateBuf<same<T>>& gb, same<T>* ds, const same<T>* zero) {
  kernels<T>().grad_target_sweep(d, f, bw, h, g, a, rowptr, col, mask, o, v0, v1, gb, ds, zero);
}
template <typename T>
void grad_node_sweep(const isonet_layer::Dims& d, const isonet_layer::BackWeights<T>& bw, const uint8_t* need,
                     bool with_partner, const isonet_layer::BackOut<same<T>>& o, int64_t u0, int64_t u1,
                     const same<T>* zero) {
  kernels<T>().grad_node_sweep(d, bw, need, with_partner, o, u0, u1, zero);
}
template <typename T>
void score_fwd(const T* hq, const same<T>* hc, const same<T>* P, same<T>* s, int64_t b0, int64_t b1, int64_t n,
               int64_t m, int64_t d) {
  kernels<T>().score_fwd(hq, hc, P, s, b0, b1, n, m, d);
}
template <typename T>
void score_bwd(const T* gs, const same<T>* hq, const same<T>* hc, const same<T>* P, same<T>* gq, same<T>* gc,
               same<T>* gP, int64_t b0, int64_t b1, int64_t n, int64_t m, int64_t d) {
  kernels<T>().score_bwd(gs, hq, hc, P, gq, gc, gP, b0, b1, n, m, d);
}
template <typename T>
void forward_dense(const T* x0, const same<T>* x0T, same<T>* K, same<T>* KT, int64_t n, int64_t m, int64_t ns,
                   int64_t ms, int64_t iters, same<T>* a, same<T>* b, same<T>* w) {
  kernels<T>().forward_dense(x0, x0T, K, KT, n, m, ns, ms, iters, a, b, w);
}
template <typename T>
void backward_dense(const T* x0, same<T>* g, int64_t n, int64_t m, int64_t ns, int64_t ms, int64_t iters,
                    const same<T>* a, const same<T>* b, same<T>* K, same<T>* w) {
  kernels<T>().backward_dense(x0, g, n, m, ns, ms, iters, a, b, K, w);
}

}  // namespace fastlayers::align
