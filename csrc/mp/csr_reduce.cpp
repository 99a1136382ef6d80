// The multiversioned instances of the CSR gather-reduce core (mp_cpu.h): one translation unit, so the template is
// compiled once per dtype, kind and instruction set.
#include "mp/mp_cpu.h"

namespace fastlayers::mp {

// Returns the first slot with an index out of range (-1 if none): see reduce_rows.
#define FL_MP_EXT(T, K, A, W) \
  reduce_rows<T, K, A, W>(g, w, wH, x, out, A ? arg : nullptr, r0, r1, H, F, false, none_id, nsrc, nid)
#define FL_MP_DEFINE(T)                                                                                         \
  FL_MULTIVERSION int64_t reduce_rows_sum(const Csr& g, const T* w, int64_t wH, const T* x, T* out, int64_t r0, \
                                          int64_t r1, int64_t H, int64_t F, bool mean, int64_t nsrc,            \
                                          int64_t nid) {                                                        \
    if (w) return reduce_rows<T, 0, false, true>(g, w, wH, x, out, nullptr, r0, r1, H, F, mean, 0, nsrc, nid);  \
    return reduce_rows<T, 0, false, false>(g, w, wH, x, out, nullptr, r0, r1, H, F, mean, 0, nsrc, nid);        \
  }                                                                                                             \
  FL_MULTIVERSION int64_t reduce_rows_ext(const Csr& g, const T* w, int64_t wH, const T* x, T* out,            \
                                          int64_t* arg, int64_t r0, int64_t r1, int64_t H, int64_t F,           \
                                          bool is_max, int64_t none_id, int64_t nsrc, int64_t nid) {            \
    if (is_max) {                                                                                               \
      if (arg) return w ? FL_MP_EXT(T, 1, true, true) : FL_MP_EXT(T, 1, true, false);                           \
      return w ? FL_MP_EXT(T, 1, false, true) : FL_MP_EXT(T, 1, false, false);                                  \
    }                                                                                                           \
    if (arg) return w ? FL_MP_EXT(T, 2, true, true) : FL_MP_EXT(T, 2, true, false);                             \
    return w ? FL_MP_EXT(T, 2, false, true) : FL_MP_EXT(T, 2, false, false);                                    \
  }

FL_MP_DEFINE(float)
FL_MP_DEFINE(double)
#undef FL_MP_DEFINE
#undef FL_MP_EXT

}  // namespace fastlayers::mp
