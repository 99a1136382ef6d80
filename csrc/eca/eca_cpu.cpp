// ECA on the CPU: fused pool -> conv across channels -> sigmoid -> rescale, and its backward.
//
// Each op makes two passes over x and allocates nothing of x's size but its output. Samples are processed in
// blocks of about kBlockBytes so the second pass re-reads x (and g) from cache rather than memory: the traffic
// approaches the 2|x| floor (forward) and 3|x| (backward) instead of 3|x| and 4|x|.
#include <algorithm>
#include <cmath>
#include <vector>

#include "common/stable.h"
#include "eca/eca_isa.h"

namespace fastlayers {
namespace {

constexpr int64_t kBlockBytes = 8 << 20;  // per block of samples: fits the L3 with room to spare
constexpr int64_t kGrainElems = 1 << 15;  // smallest piece of work handed to a thread

// ---- vector primitives: eca_kernels.h, compiled per instruction set; one table chosen at load (eca_isa.h) ---

template <typename T>
double plane_sum(const T* x, int64_t n) {
  return eca::kernels<T>().plane_sum(x, n);
}
template <typename T>
double plane_dot(const T* a, const same<T>* b, int64_t n) {
  return eca::kernels<T>().plane_dot(a, b, n);
}
template <typename T>
void plane_scale(const T* x, same<T>* y, same<T> s, int64_t n) {
  eca::kernels<T>().plane_scale(x, y, s, n);
}
template <typename T>
void plane_affine(const T* g, same<T>* dx, same<T> s, same<T> c, int64_t n) {
  eca::kernels<T>().plane_affine(g, dx, s, c, n);
}
template <typename T>
void rows_sum(const T* x, double* acc, int64_t rows, int64_t C) {
  eca::kernels<T>().rows_sum(x, acc, rows, C);
}
template <typename T>
void rows_dot(const T* a, const same<T>* b, double* acc, int64_t rows, int64_t C) {
  eca::kernels<T>().rows_dot(a, b, acc, rows, C);
}
template <typename T>
void rows_scale(const T* x, same<T>* y, const same<T>* s, int64_t rows, int64_t C) {
  eca::kernels<T>().rows_scale(x, y, s, rows, C);
}
template <typename T>
void rows_affine(const T* g, same<T>* dx, const same<T>* s, const same<T>* c0, int64_t rows, int64_t C) {
  eca::kernels<T>().rows_affine(g, dx, s, c0, rows, C);
}

// Channel index of tap j around c, or -1 when it falls in the zero padding.
inline int64_t tap(int64_t c, int64_t j, int64_t pad, int64_t C, bool circular) {
  int64_t i = c + j - pad;
  if (circular) {
    i %= C;
    return i < 0 ? i + C : i;
  }
  return (i < 0 || i >= C) ? -1 : i;
}

template <typename T>
T conv_at(const T* p, const T* w, int64_t k, int64_t c, int64_t C, bool circular) {
  const int64_t pad = (k - 1) / 2;
  T a = 0;
  for (int64_t j = 0; j < k; ++j) {
    int64_t i = tap(c, j, pad, C, circular);
    if (i >= 0) a += w[j] * p[i];
  }
  return a;
}

template <typename T>
T sigmoid(T a) {
  return T(1) / (T(1) + std::exp(-a));
}

struct Shape {
  int64_t N, C, S;
  bool cl;
};

Shape shape_of(const Tensor& x) {
  const int64_t N = x.size(0), C = x.size(1);
  return {N, C, (N * C) == 0 ? 0 : x.numel() / (N * C), is_channels_last_dense(x)};
}

int64_t samples_per_block(int64_t bytes_per_sample) {
  return std::max<int64_t>(1, kBlockBytes / std::max<int64_t>(1, bytes_per_sample));
}

// Row chunks per sample for channels-last passes, so a block of few samples still feeds every thread.
int64_t row_chunks(int64_t samples, int64_t S) {
  const int64_t want = (2 * num_threads() + samples - 1) / samples;
  return std::max<int64_t>(1, std::min<int64_t>(want, S / 16));
}

template <typename T>
void forward_impl(const Shape& sh, const T* x, T* y, const T* w, int64_t k, bool circular, T* p, T* s) {
  const int64_t N = sh.N, C = sh.C, S = sh.S;
  const T inv_S = S > 0 ? T(1) / T(S) : T(0);
  const int64_t block = samples_per_block(C * S * int64_t(sizeof(T)));
  for (int64_t n0 = 0; n0 < N; n0 += block) {
    const int64_t n1 = std::min(N, n0 + block);
    if (!sh.cl) {
      const int64_t grain = std::max<int64_t>(1, kGrainElems / std::max<int64_t>(1, S));
      fastlayers::parallel_for(n0 * C, n1 * C, grain, [&](int64_t b, int64_t e) {
        for (int64_t i = b; i < e; ++i) p[i] = T(plane_sum(x + i * S, S)) * inv_S;
      });
      fastlayers::parallel_for(n0 * C, n1 * C, grain, [&](int64_t b, int64_t e) {
        for (int64_t i = b; i < e; ++i) {
          const int64_t n = i / C, c = i % C;
          const T g = sigmoid(conv_at(p + n * C, w, k, c, C, circular));
          s[i] = g;
          plane_scale(x + i * S, y + i * S, g, S);
        }
      });
    } else {
      const int64_t nb = n1 - n0, R = row_chunks(nb, S);
      std::vector<double> part(nb * R * C);
      fastlayers::parallel_for(0, nb * R, 1, [&](int64_t b, int64_t e) {
        for (int64_t it = b; it < e; ++it) {
          const int64_t n = n0 + it / R, r = it % R, r0 = r * S / R, r1 = (r + 1) * S / R;
          double* acc = part.data() + it * C;
          std::fill(acc, acc + C, 0.0);
          rows_sum(x + (n * S + r0) * C, acc, r1 - r0, C);
        }
      });
      fastlayers::parallel_for(0, nb, 1, [&](int64_t b, int64_t e) {
        for (int64_t m = b; m < e; ++m) {
          T* pn = p + (n0 + m) * C;
          for (int64_t c = 0; c < C; ++c) {
            double acc = 0;
            for (int64_t r = 0; r < R; ++r) acc += part[(m * R + r) * C + c];
            pn[c] = T(acc) * inv_S;
          }
          T* sn = s + (n0 + m) * C;
          for (int64_t c = 0; c < C; ++c) sn[c] = sigmoid(conv_at(pn, w, k, c, C, circular));
        }
      });
      fastlayers::parallel_for(0, nb * R, 1, [&](int64_t b, int64_t e) {
        for (int64_t it = b; it < e; ++it) {
          const int64_t n = n0 + it / R, r = it % R, r0 = r * S / R, r1 = (r + 1) * S / R;
          rows_scale(x + (n * S + r0) * C, y + (n * S + r0) * C, s + n * C, r1 - r0, C);
        }
      });
    }
  }
}

// Per sample: ga = gs * s * (1 - s); gp = transposed conv of ga (returned divided by S, the pooling factor);
// dw_n[j] = sum_c ga[c] * p[tap(c, j)].
template <typename T>
void channel_backward(const T* gs, const T* s, const T* p, const T* w, int64_t k, int64_t C, int64_t S,
                      bool circular, T* ga, T* gp_over_S, double* dw_n) {
  const int64_t pad = (k - 1) / 2;
  const T inv_S = S > 0 ? T(1) / T(S) : T(0);
  for (int64_t c = 0; c < C; ++c) ga[c] = gs[c] * s[c] * (T(1) - s[c]);
  std::fill(gp_over_S, gp_over_S + C, T(0));
  for (int64_t c = 0; c < C; ++c) {
    for (int64_t j = 0; j < k; ++j) {
      const int64_t i = tap(c, j, pad, C, circular);
      if (i < 0) continue;
      gp_over_S[i] += w[j] * ga[c];
      dw_n[j] += double(ga[c]) * double(p[i]);
    }
  }
  for (int64_t c = 0; c < C; ++c) gp_over_S[c] *= inv_S;
}

template <typename T>
void backward_impl(const Shape& sh, const T* g, const T* x, const T* w, int64_t k, bool circular, const T* p,
                   const T* s, T* dx, double* dw_per_sample) {
  const int64_t N = sh.N, C = sh.C, S = sh.S;
  const int64_t block = samples_per_block(2 * C * S * int64_t(sizeof(T)));
  std::vector<T> gs(block * C), ga(block * C), gp(block * C);
  for (int64_t n0 = 0; n0 < N; n0 += block) {
    const int64_t n1 = std::min(N, n0 + block), nb = n1 - n0;
    if (!sh.cl) {
      const int64_t grain = std::max<int64_t>(1, kGrainElems / std::max<int64_t>(1, S));
      fastlayers::parallel_for(n0 * C, n1 * C, grain, [&](int64_t b, int64_t e) {
        for (int64_t i = b; i < e; ++i) gs[i - n0 * C] = T(plane_dot(g + i * S, x + i * S, S));
      });
    } else {
      const int64_t R = row_chunks(nb, S);
      std::vector<double> part(nb * R * C);
      fastlayers::parallel_for(0, nb * R, 1, [&](int64_t b, int64_t e) {
        for (int64_t it = b; it < e; ++it) {
          const int64_t n = n0 + it / R, r = it % R, r0 = r * S / R, r1 = (r + 1) * S / R;
          double* acc = part.data() + it * C;
          std::fill(acc, acc + C, 0.0);
          rows_dot(g + (n * S + r0) * C, x + (n * S + r0) * C, acc, r1 - r0, C);
        }
      });
      for (int64_t m = 0; m < nb; ++m)
        for (int64_t c = 0; c < C; ++c) {
          double acc = 0;
          for (int64_t r = 0; r < R; ++r) acc += part[(m * R + r) * C + c];
          gs[m * C + c] = T(acc);
        }
    }
    fastlayers::parallel_for(0, nb, 1, [&](int64_t b, int64_t e) {
      for (int64_t m = b; m < e; ++m) {
        const int64_t n = n0 + m;
        channel_backward(gs.data() + m * C, s + n * C, p + n * C, w, k, C, S, circular, ga.data() + m * C,
                         gp.data() + m * C, dw_per_sample + n * k);
      }
    });
    if (!sh.cl) {
      const int64_t grain = std::max<int64_t>(1, kGrainElems / std::max<int64_t>(1, S));
      fastlayers::parallel_for(n0 * C, n1 * C, grain, [&](int64_t b, int64_t e) {
        for (int64_t i = b; i < e; ++i) plane_affine(g + i * S, dx + i * S, s[i], gp[i - n0 * C], S);
      });
    } else {
      const int64_t R = row_chunks(nb, S);
      fastlayers::parallel_for(0, nb * R, 1, [&](int64_t b, int64_t e) {
        for (int64_t it = b; it < e; ++it) {
          const int64_t m = it / R, n = n0 + m, r = it % R, r0 = r * S / R, r1 = (r + 1) * S / R;
          rows_affine(g + (n * S + r0) * C, dx + (n * S + r0) * C, s + n * C, gp.data() + m * C, r1 - r0, C);
        }
      });
    }
  }
}

void check_args(const Tensor& x, const Tensor& weight) {
  FL_CHECK(x.is_cpu(), "x must be a CPU tensor");
  FL_CHECK(weight.is_cpu(), "weight must be a CPU tensor");
  FL_CHECK_VALUE(x.dim() >= 3, "eca: x must be [N, C, *spatial], got shape ", errors::list(x.sizes()));
  FL_CHECK_VALUE(weight.dim() == 1, "eca: weight must be 1-D [k], got shape ", errors::list(weight.sizes()));
  FL_CHECK_VALUE(weight.numel() % 2 == 1, "eca: weight length k must be odd and positive, got ", weight.numel());
  // An integer weight would be cast silently (and its gradient could not be returned in its dtype).
  FL_CHECK_TYPE(is_floating(weight.scalar_type()), "eca: weight must have a floating dtype, got ",
                weight.scalar_type());
  FL_CHECK_TYPE(x.scalar_type() == dtype::kFloat || x.scalar_type() == dtype::kDouble,
                "eca: x must be float32/float64 on CPU, got ", x.scalar_type());
}

std::tuple<Tensor, Tensor, Tensor> eca_fwd_cpu(const Tensor& x_in, const Tensor& weight,
                                                           bool circular) {
  check_args(x_in, weight);
  const Tensor x = dense_for_kernel(x_in);
  const Shape sh = shape_of(x);
  Tensor y = empty_like_cached(x);
  Tensor p = empty_cached({sh.N, sh.C}, x.scalar_type(), x);
  Tensor s = empty_cached({sh.N, sh.C}, x.scalar_type(), x);
  const Tensor w = contig(to_dtype(weight, x.scalar_type()));
  if (sh.N * sh.C == 0) return {y, p, s};
  dispatch_float_double(x.scalar_type(), "eca_fwd_cpu", [&](auto tag) {
    using scalar_t = decltype(tag);
    forward_impl<scalar_t>(sh, x.const_data_ptr<scalar_t>(), y.mutable_data_ptr<scalar_t>(),
                           w.const_data_ptr<scalar_t>(), w.numel(), circular, p.mutable_data_ptr<scalar_t>(),
                           s.mutable_data_ptr<scalar_t>());
  });
  return {y, p, s};
}

std::tuple<Tensor, Tensor> eca_bwd_cpu(const Tensor& grad_y, const Tensor& x_in,
                                               const Tensor& weight, const Tensor& pooled,
                                               const Tensor& gate, bool circular) {
  check_args(x_in, weight);
  FL_CHECK_VALUE(grad_y.sizes().equals(x_in.sizes()), "eca_bwd: grad_y must have x's shape ",
                 errors::list(x_in.sizes()), ", got ", errors::list(grad_y.sizes()));
  FL_CHECK(grad_y.is_cpu() && pooled.is_cpu() && gate.is_cpu(), "eca_bwd: grad_y, pooled and gate must be CPU tensors");
  const Tensor x = dense_for_kernel(x_in);
  const Shape sh = shape_of(x);
  FL_CHECK(pooled.numel() == sh.N * sh.C && gate.numel() == sh.N * sh.C, "eca_bwd: pooled/gate must be [N, C]");
  const Tensor g = like_layout(to_dtype(grad_y, x.scalar_type()), x);
  const Tensor p = contig(to_dtype(pooled, x.scalar_type()));
  const Tensor s = contig(to_dtype(gate, x.scalar_type()));
  const Tensor w = contig(to_dtype(weight, x.scalar_type()));
  const int64_t k = w.numel();
  Tensor dx = empty_like_cached(x);
  Tensor dw_per_sample = zeros_cached({sh.N, k}, dtype::kDouble, x);
  if (sh.N * sh.C > 0) {
    dispatch_float_double(x.scalar_type(), "eca_bwd_cpu", [&](auto tag) {
      using scalar_t = decltype(tag);
      backward_impl<scalar_t>(sh, g.const_data_ptr<scalar_t>(), x.const_data_ptr<scalar_t>(),
                              w.const_data_ptr<scalar_t>(), k, circular, p.const_data_ptr<scalar_t>(),
                              s.const_data_ptr<scalar_t>(), dx.mutable_data_ptr<scalar_t>(),
                              dw_per_sample.mutable_data_ptr<double>());
    });
  }
  // Summed over samples in a fixed order: deterministic whatever the thread count.
  Tensor dw = zeros_cached({k}, dtype::kDouble, x);
  double* acc = dw.mutable_data_ptr<double>();
  const double* per = dw_per_sample.const_data_ptr<double>();
  for (int64_t n = 0; n < sh.N; ++n)
    for (int64_t j = 0; j < k; ++j) acc[j] += per[n * k + j];
  return {dx, to_dtype(dw, weight.scalar_type())};
}

}  // namespace

STABLE_TORCH_LIBRARY_IMPL(fastlayers, CPU, m) {
  m.impl("eca_fwd", TORCH_BOX(&eca_fwd_cpu));
  m.impl("eca_bwd", TORCH_BOX(&eca_bwd_cpu));
}

}  // namespace fastlayers
