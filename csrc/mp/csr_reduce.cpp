// The multiversioned instances of the CSR gather-reduce core (mp_cpu.h): one translation unit, so the template is
// compiled once per dtype, kind and instruction set.
#include "mp/mp_cpu.h"

namespace fastlayers::mp {

#define FL_MP_DEFINE(T)                                                                                         \
  FL_MULTIVERSION void reduce_rows_sum(const Csr& g, const T* w, int64_t wH, const T* x, T* out, int64_t r0,   \
                                       int64_t r1, int64_t H, int64_t F, bool mean) {                          \
    if (w) reduce_rows<T, 0, false, true>(g, w, wH, x, out, nullptr, r0, r1, H, F, mean, 0);                    \
    else reduce_rows<T, 0, false, false>(g, w, wH, x, out, nullptr, r0, r1, H, F, mean, 0);                     \
  }                                                                                                             \
  FL_MULTIVERSION void reduce_rows_ext(const Csr& g, const T* w, int64_t wH, const T* x, T* out, int64_t* arg, \
                                       int64_t r0, int64_t r1, int64_t H, int64_t F, bool is_max,              \
                                       int64_t none_id) {                                                       \
    if (is_max) {                                                                                               \
      if (arg) {                                                                                                \
        if (w) reduce_rows<T, 1, true, true>(g, w, wH, x, out, arg, r0, r1, H, F, false, none_id);              \
        else reduce_rows<T, 1, true, false>(g, w, wH, x, out, arg, r0, r1, H, F, false, none_id);               \
      } else {                                                                                                  \
        if (w) reduce_rows<T, 1, false, true>(g, w, wH, x, out, nullptr, r0, r1, H, F, false, none_id);         \
        else reduce_rows<T, 1, false, false>(g, w, wH, x, out, nullptr, r0, r1, H, F, false, none_id);          \
      }                                                                                                         \
    } else {                                                                                                    \
      if (arg) {                                                                                                \
        if (w) reduce_rows<T, 2, true, true>(g, w, wH, x, out, arg, r0, r1, H, F, false, none_id);              \
        else reduce_rows<T, 2, true, false>(g, w, wH, x, out, arg, r0, r1, H, F, false, none_id);               \
      } else {                                                                                                  \
        if (w) reduce_rows<T, 2, false, true>(g, w, wH, x, out, nullptr, r0, r1, H, F, false, none_id);         \
        else reduce_rows<T, 2, false, false>(g, w, wH, x, out, nullptr, r0, r1, H, F, false, none_id);          \
      }                                                                                                         \
    }                                                                                                           \
  }

FL_MP_DEFINE(float)
FL_MP_DEFINE(double)
#undef FL_MP_DEFINE

}  // namespace fastlayers::mp
