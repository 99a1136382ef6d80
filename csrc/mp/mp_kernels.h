// The message-passing entry points, compiled once per instruction set: included by mp_avx512.cpp, mp_avx2.cpp
// and mp_scalar.cpp after their `#pragma GCC target`, with FL_ISA_NS naming the set (common/cpu_isa.h). The
// always-inline row loops they call (mp_cpu.h, mp_rows.h) are inlined here and so take this set's instructions.
// No #include below this line.
#ifndef FL_ISA_NS
#error "include mp_kernels.h only from mp_<isa>.cpp, after defining FL_ISA_NS"
#endif

namespace fastlayers::mp::FL_ISA_NS {
namespace {

// Each returns the first slot with an index out of range (-1 if none): see reduce_rows.
template <typename T>
int64_t reduce_rows_sum(const Csr& g, const T* w, int64_t wH, const T* x, T* out, int64_t r0, int64_t r1, int64_t H,
                        int64_t F, bool mean, int64_t nsrc, int64_t nid) {
  if (w) return reduce_rows<T, 0, false, true>(g, w, wH, x, out, nullptr, r0, r1, H, F, mean, 0, nsrc, nid);
  return reduce_rows<T, 0, false, false>(g, w, wH, x, out, nullptr, r0, r1, H, F, mean, 0, nsrc, nid);
}

template <typename T, int K>
int64_t reduce_rows_ext_k(const Csr& g, const T* w, int64_t wH, const T* x, T* out, int64_t* arg, int64_t r0,
                          int64_t r1, int64_t H, int64_t F, int64_t none_id, int64_t nsrc, int64_t nid) {
  if (arg) {
    if (w) return reduce_rows<T, K, true, true>(g, w, wH, x, out, arg, r0, r1, H, F, false, none_id, nsrc, nid);
    return reduce_rows<T, K, true, false>(g, w, wH, x, out, arg, r0, r1, H, F, false, none_id, nsrc, nid);
  }
  if (w) return reduce_rows<T, K, false, true>(g, w, wH, x, out, nullptr, r0, r1, H, F, false, none_id, nsrc, nid);
  return reduce_rows<T, K, false, false>(g, w, wH, x, out, nullptr, r0, r1, H, F, false, none_id, nsrc, nid);
}

template <typename T>
int64_t reduce_rows_ext(const Csr& g, const T* w, int64_t wH, const T* x, T* out, int64_t* arg, int64_t r0,
                        int64_t r1, int64_t H, int64_t F, bool is_max, int64_t none_id, int64_t nsrc, int64_t nid) {
  if (is_max) return reduce_rows_ext_k<T, 1>(g, w, wH, x, out, arg, r0, r1, H, F, none_id, nsrc, nid);
  return reduce_rows_ext_k<T, 2>(g, w, wH, x, out, arg, r0, r1, H, F, none_id, nsrc, nid);
}

template <typename T>
void scatter_owned_k(const T* src, const int64_t* idx, T* out, int64_t* arg, int64_t L, int64_t B, int64_t r0,
                     int64_t r1, int64_t* count, bool* bad, int64_t n, int kind) {
  if (kind == 0) scatter_owned<T, 0>(src, idx, out, arg, L, B, r0, r1, count, bad, n);
  else if (kind == 1) scatter_owned<T, 1>(src, idx, out, arg, L, B, r0, r1, count, bad, n);
  else scatter_owned<T, 2>(src, idx, out, arg, L, B, r0, r1, count, bad, n);
}

template <typename T>
int64_t arg_bwd_rows_k(const Csr& g, const T* w, int64_t wH, const T* x, const T* gout, const int64_t* arg, T* gx,
                       T* gw, int64_t r0, int64_t r1, int64_t H, int64_t F, int64_t n, int64_t nid) {
  return arg_bwd_rows<T>(g, w, wH, x, gout, arg, gx, gw, r0, r1, H, F, n, nid);
}

template <typename T>
int64_t sddmm_rows_k(const Csr& g, const T* a, const T* b, T* out, int64_t r0, int64_t r1, int64_t H, int64_t F,
                     int64_t nsrc, int64_t nid) {
  return sddmm_rows<T>(g, a, b, out, r0, r1, H, F, nsrc, nid);
}

template <typename T>
int64_t block_rows_k(const Csr& g, const T* B, bool diag, bool tr, const T* x, T* out, int64_t r0, int64_t r1,
                     int64_t d, int64_t F, int64_t nsrc, int64_t nid) {
  return block_rows<T>(g, B, diag, tr, x, out, r0, r1, d, F, nsrc, nid);
}

template <typename T>
int64_t block_grad_rows_k(const Csr& g, const T* grad, const T* x, T* gB, bool diag, int64_t r0, int64_t r1,
                          int64_t d, int64_t F, int64_t nsrc, int64_t nid) {
  return block_grad_rows<T>(g, grad, x, gB, diag, r0, r1, d, F, nsrc, nid);
}

template <typename T>
constexpr Kernels<T> make() {
  return {&reduce_rows_sum<T>, &reduce_rows_ext<T>, &scatter_owned_k<T>, &arg_bwd_rows_k<T>,
          &sddmm_rows_k<T>,    &block_rows_k<T>,    &block_grad_rows_k<T>};
}

}  // namespace

const Table& table() {
  static constexpr Table t{make<float>(), make<double>()};
  return t;
}

}  // namespace fastlayers::mp::FL_ISA_NS
