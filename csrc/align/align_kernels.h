// The alignment kernels' entry points, compiled once per instruction set: included by align_avx512.cpp,
// align_avx2.cpp and align_scalar.cpp after their `#pragma GCC target`, with FL_ISA_NS naming the set
// (common/cpu_isa.h). The always-inline passes they call (isonet_layer.h, isonet_layer_bwd.h, transport_score.h,
// sinkhorn_dense.h, vec.h) are inlined here and so take this set's instructions. No #include below this line.
#ifndef FL_ISA_NS
#error "include align_kernels.h only from align_<isa>.cpp, after defining FL_ISA_NS"
#endif

namespace fastlayers::align::FL_ISA_NS {
namespace {

using namespace ::fastlayers::isonet_layer;

template <typename T>
void node_sweep(const Dims& d, const Folded<T>& f, const T* h, const T* p, const Transport<T>& tr,
                const uint8_t* need, T* a, int64_t u0, int64_t u1, T* rbuf, T* coef) {
  node_pass<T>(d, f, h, p, tr, need, a, u0, u1, rbuf, coef, nullptr);
}
template <typename T>
void other_sweep(const Dims& d, const Folded<T>& f, const T* o, const T* zero, T* Q, int64_t j0, int64_t j1) {
  other_pass<T>(d, f, o, zero, Q, j0, j1);
}
template <typename T>
void target_sweep(const Dims& d, const Folded<T>& f, const T* h, const T* a, const int64_t* rowptr,
                  const int64_t* col, const bool* mask, T* out, int64_t v0, int64_t v1, GateBuf<T>& g) {
  for (int64_t b = v0; b < v1; b += kBlock)
    target_pass<T>(d, f, h, a, rowptr, col, mask, out, b, std::min(v1, b + kBlock), g);
}
template <typename T>
void node_sweep_keep_r(const Dims& d, const Folded<T>& f, const T* h, const T* p, const uint8_t* need, T* a,
                       int64_t u0, int64_t u1, T* rbuf, T* r) {
  node_pass<T>(d, f, h, p, Transport<T>{}, need, a, u0, u1, rbuf, nullptr, r);
}
template <typename T>
void grad_target_sweep(const Dims& d, const Folded<T>& f, const BackWeights<T>& bw, const T* h, const T* g,
                       const T* a, const int64_t* rowptr, const int64_t* col, const bool* mask, const BackOut<T>& o,
                       int64_t v0, int64_t v1, GateBuf<T>& gb, T* ds, const T* zero) {
  for (int64_t b = v0; b < v1; b += kBlock)
    grad_target_pass<T>(d, f, bw, h, g, a, rowptr, col, mask, o, b, std::min(v1, b + kBlock), gb, ds, zero);
}
template <typename T>
void grad_node_sweep(const Dims& d, const BackWeights<T>& bw, const uint8_t* need, bool with_partner,
                     const BackOut<T>& o, int64_t u0, int64_t u1, const T* zero) {
  grad_node_pass<T>(d, bw, need, with_partner, o, u0, u1, zero);
}
template <typename T>
void score_fwd(const T* hq, const T* hc, const T* P, T* s, int64_t b0, int64_t b1, int64_t n, int64_t m, int64_t d) {
  transport::score_fwd_impl<T>(hq, hc, P, s, b0, b1, n, m, d);
}
template <typename T>
void score_bwd(const T* gs, const T* hq, const T* hc, const T* P, T* gq, T* gc, T* gP, int64_t b0, int64_t b1,
               int64_t n, int64_t m, int64_t d) {
  transport::score_bwd_impl<T>(gs, hq, hc, P, gq, gc, gP, b0, b1, n, m, d);
}
template <typename T>
void forward_dense(const T* x0, const T* x0T, T* K, T* KT, int64_t n, int64_t m, int64_t ns, int64_t ms,
                   int64_t iters, T* a, T* b, T* w) {
  sinkhorn::forward_dense_impl<T>(x0, x0T, K, KT, n, m, ns, ms, iters, a, b, w);
}
template <typename T>
void backward_dense(const T* x0, T* g, int64_t n, int64_t m, int64_t ns, int64_t ms, int64_t iters, const T* a,
                    const T* b, T* K, T* w) {
  sinkhorn::backward_dense_impl<T>(x0, g, n, m, ns, ms, iters, a, b, K, w);
}

template <typename T>
constexpr Kernels<T> make() {
  return {&node_sweep<T>,        &other_sweep<T>,     &target_sweep<T>, &node_sweep_keep_r<T>,
          &grad_target_sweep<T>, &grad_node_sweep<T>, &score_fwd<T>,    &score_bwd<T>,
          &forward_dense<T>,     &backward_dense<T>};
}

}  // namespace

const Table& table() {
  static constexpr Table t{make<float>(), make<double>()};
  return t;
}

}  // namespace fastlayers::align::FL_ISA_NS
