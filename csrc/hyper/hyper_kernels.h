// The hypernetwork per-sample loops, compiled once per instruction set: included by hyper_avx512.cpp,
// hyper_avx2.cpp and hyper_scalar.cpp after their `#pragma GCC target`, with FL_ISA_NS naming the set (see
// common/cpu_isa.h). Only code defined here gets that set's instructions; no #include below this line.
#ifndef FL_ISA_NS
#error "include hyper_kernels.h only from hyper_<isa>.cpp, after defining FL_ISA_NS"
#endif

namespace fastlayers::hyper::FL_ISA_NS {
namespace {

/* y[b, t, o0 + o] += <W[b, o, :], x[b, t, :]> for a tile W [nb, no, I] of generated weights: the T tokens of */
/* each sample against its generated rows, written straight into y (rows of O). */
template <typename S>
void apply_tile(const S* __restrict w, const S* __restrict x, S* __restrict y, int64_t nb,
                                int64_t T, int64_t I, int64_t no, int64_t O) {
  for (int64_t b = 0; b < nb; ++b) {
    const S* xb = x + b * T * I;
    S* yb = y + b * T * O;
    for (int64_t o = 0; o < no; ++o) {
      const S* wr = w + (b * no + o) * I;
      for (int64_t t = 0; t < T; ++t) {
        const S* xt = xb + t * I;
        S acc = 0;
        FL_SIMD_SUM(acc) for (int64_t i = 0; i < I; ++i) acc += wr[i] * xt[i];
        yb[t * O + o] += acc;
      }
    }
  }
}
/* dx[b, t, :] += sum_o g[b, t, o0 + o] W[b, o, :] (g rows of O, starting at column o0). */
template <typename S>
void apply_tile_t(const S* __restrict w, const S* __restrict g, S* __restrict dx, int64_t nb,
                                  int64_t T, int64_t I, int64_t no, int64_t O) {
  for (int64_t b = 0; b < nb; ++b) {
    for (int64_t t = 0; t < T; ++t) {
      const S* gt = g + (b * T + t) * O;
      S* dxt = dx + (b * T + t) * I;
      for (int64_t o = 0; o < no; ++o) {
        const S go = gt[o];
        const S* wr = w + (b * no + o) * I;
        FL_SIMD for (int64_t i = 0; i < I; ++i) dxt[i] += go * wr[i];
      }
    }
  }
}
/* dW[b, o, :] = sum_t g[b, t, o0 + o] x[b, t, :]: the per-sample weight gradient of a tile. */
template <typename S>
void sample_grad_tile(const S* __restrict g, const S* __restrict x, S* __restrict dw,
                                      int64_t nb, int64_t T, int64_t I, int64_t no, int64_t O) {
  for (int64_t b = 0; b < nb; ++b) {
    S* dwb = dw + b * no * I;
    for (int64_t k = 0; k < no * I; ++k) dwb[k] = 0;
    for (int64_t t = 0; t < T; ++t) {
      const S* gt = g + (b * T + t) * O;
      const S* xt = x + (b * T + t) * I;
      for (int64_t o = 0; o < no; ++o) {
        const S go = gt[o];
        S* dr = dwb + o * I;
        FL_SIMD for (int64_t i = 0; i < I; ++i) dr[i] += go * xt[i];
      }
    }
  }
}

/* z[b, i, :] = x[b, i0 + i] * phi[b, :] for a block of nb samples and ni inputs (the outer-product tile). */
template <typename S>
void outer_tile(const S* __restrict x, const S* __restrict phi, S* __restrict z, int64_t nb,
                                int64_t I, int64_t i0, int64_t ni, int64_t h) {
  {
    for (int64_t b = 0; b < nb; ++b) {
      const S* xb = x + b * I + i0;
      const S* pb = phi + b * h;
      S* zb = z + b * ni * h;
      for (int64_t i = 0; i < ni; ++i) {
        const S xi = xb[i];
        FL_SIMD for (int64_t j = 0; j < h; ++j) zb[i * h + j] = xi * pb[j];
      }
    }
  }
}
/* For V [nb, ni, h] (= G Hm on the block's columns): dx[b, i0 + i] += <V[b, i], phi_b>, */
/* dphi[b] += sum_i x[b, i0 + i] V[b, i]. */
template <typename S>
void contract_tile(const S* __restrict v, const S* __restrict x, const S* __restrict phi,
                                   S* __restrict dx, S* __restrict dphi, int64_t nb, int64_t I, int64_t i0,
                                   int64_t ni, int64_t h) {
  {
    for (int64_t b = 0; b < nb; ++b) {
      const S* vb = v + b * ni * h;
      const S* pb = phi + b * h;
      const S* xb = x + b * I + i0;
      S* gp = dphi + b * h;
      S* gx = dx + b * I + i0;
      for (int64_t i = 0; i < ni; ++i) {
        const S* vi = vb + i * h;
        const S xi = xb[i];
        S acc = 0;
        FL_SIMD_SUM(acc) for (int64_t j = 0; j < h; ++j) acc += vi[j] * pb[j];
        gx[i] += acc;
        FL_SIMD for (int64_t j = 0; j < h; ++j) gp[j] += xi * vi[j];
      }
    }
  }
}

template <typename S>
constexpr Kernels<S> make() {
  return {&apply_tile<S>, &apply_tile_t<S>, &sample_grad_tile<S>, &outer_tile<S>, &contract_tile<S>};
}

}  // namespace

const Table& table() {
  static constexpr Table t{make<float>(), make<double>()};
  return t;
}

}  // namespace fastlayers::hyper::FL_ISA_NS
