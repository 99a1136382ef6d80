// CUDA kernels over a Graph's CSR: spmm forward, the max/min backward, sddmm and edge softmax. Every kernel gives
// each output element one owner (a warp or a lane), so none uses atomics and all are deterministic.
#include <ATen/Dispatch.h>
#include <torch/library.h>

#include "mp/mp_cuda.cuh"

namespace fastlayers::mp::cuda {
namespace {

void check_cuda(const at::Tensor& t, const char* name) {
  TORCH_CHECK(t.is_cuda(), "fastlayers: ", name, " must be a CUDA tensor");
}

void check_csr_cuda(const at::Tensor& ptr, const at::Tensor& idx, const at::Tensor& perm, const at::Tensor& like,
                    const char* op, const char* ptr_name, const char* idx_name, const char* perm_name) {
  check_index_cuda(ptr, op, ptr_name, like);
  check_index_cuda(idx, op, idx_name, like);
  check_index_cuda(perm, op, perm_name, like);
  TORCH_CHECK(ptr.numel() >= 1, op, ": ", ptr_name, " must have N + 1 >= 1 entries");
  TORCH_CHECK(idx.numel() == perm.numel(), op, ": ", idx_name, " and ", perm_name, " must have one length, got ",
              idx.numel(), " and ", perm.numel());
}

int64_t weight_heads(const c10::optional<at::Tensor>& weight, int64_t E, int64_t H, const at::Tensor& x) {
  if (!weight.has_value()) return 0;
  const at::Tensor& w = *weight;
  check_cuda(w, "weight");
  TORCH_CHECK(w.scalar_type() == x.scalar_type(), "fastlayers: weight must have x's dtype");
  TORCH_CHECK(w.size(0) == E && (w.dim() == 1 || (w.dim() == 2 && (w.size(1) == 1 || w.size(1) == H))),
              "fastlayers: weight must be [E] or [E, H]");
  return w.dim() == 2 ? w.size(1) : 1;
}

std::tuple<at::Tensor, at::Tensor> spmm_fwd_cuda(const at::Tensor& rowptr_in, const at::Tensor& col_in,
                                                 const at::Tensor& perm_in, const at::Tensor&, const at::Tensor&,
                                                 const at::Tensor&, const c10::optional<at::Tensor>& weight,
                                                 const at::Tensor& x_in, c10::string_view reduce, bool need_arg) {
  check_cuda(x_in, "x");
  TORCH_CHECK(x_in.dim() == 3, "spmm_fwd: x must be [N, H, F]");
  check_csr_cuda(rowptr_in, col_in, perm_in, x_in, "spmm_fwd", "rowptr", "col", "perm");
  const c10::cuda::CUDAGuard guard(x_in.device());
  bool mean;
  const int kind = reduce_kind(reduce, &mean);
  const at::Tensor rowptr = rowptr_in.contiguous(), col = col_in.contiguous(), perm = perm_in.contiguous();
  const at::Tensor x = x_in.contiguous();
  const int64_t n = rowptr.numel() - 1, E = col.numel(), H = x.size(1), F = x.size(2), nsrc = x.size(0);
  const int64_t wH = weight_heads(weight, E, H, x);
  const at::Tensor w = weight.has_value() ? weight->contiguous() : at::Tensor();
  at::Tensor out = at::empty({n, H, F}, x.options());
  const bool with_arg = need_arg && kind != 0;
  at::Tensor arg = at::empty({with_arg ? n : 0, H, F}, x.options().dtype(at::kLong));
  const at::Tensor err = new_err(x);
  launch_check_ptr(rowptr, E, err, true);
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, x.scalar_type(), "spmm_fwd_cuda", [&] {
    launch_csr_reduce<scalar_t>(rowptr.data_ptr<int64_t>(), col.data_ptr<int64_t>(), perm.data_ptr<int64_t>(),
                                wH ? w.data_ptr<scalar_t>() : nullptr, std::max<int64_t>(wH, 1),
                                x.data_ptr<scalar_t>(), out.data_ptr<scalar_t>(),
                                with_arg ? arg.data_ptr<int64_t>() : nullptr, n, H, F, kind, mean, E, E, nsrc, E,
                                err.data_ptr<int64_t>());
  });
  const at::Tensor herr = fetch_err(err);
  raise_ptr(herr, "spmm_fwd", rowptr, "rowptr", E, true);
  raise_slot(herr, "spmm_fwd", &col, "col", nsrc, perm, "perm", E);
  return {out, arg};
}

// grad_x[u, f] = sum over u's out-edges e = u -> v with arg[v, f] == e of w_e * grad_out[v, f]: a warp per
// (u, 32 features) over the CSC.
template <typename T>
__global__ void arg_bwd_x_kernel(const int64_t* __restrict__ colptr, const int64_t* __restrict__ row,
                                 const int64_t* __restrict__ cperm, const T* __restrict__ w, int64_t wH,
                                 const T* __restrict__ gout, const int64_t* __restrict__ arg, T* __restrict__ gx,
                                 int64_t n, int64_t H, int64_t F, int64_t E, int64_t* __restrict__ err) {
  using acc_t = at::opmath_type<T>;
  const int64_t HF = H * F, chunks = (HF + kWarp - 1) / kWarp;
  const int64_t warp = (int64_t(blockIdx.x) * blockDim.x + threadIdx.x) / kWarp;
  if (warp >= n * chunks) return;
  const int64_t u = warp / chunks, f = (warp % chunks) * kWarp + threadIdx.x % kWarp;
  if (f >= HF) return;  // no shuffles here: lanes may leave
  const int64_t h = f / F;
  acc_t acc = 0;
  int64_t kb, ke;
  slot_range(colptr, u, E, kb, ke);
  for (int64_t k = kb; k < ke; ++k) {
    const int64_t v = row[k], e = cperm[k];
    if (out_of(v, n) || out_of(e, E)) {
      note_bad(err, k);
      continue;
    }
    if (arg[v * HF + f] == e) acc += acc_t(gout[v * HF + f]) * (w ? acc_t(w[e * wH + (wH == 1 ? 0 : h)]) : acc_t(1));
  }
  gx[u * HF + f] = T(acc);
}

// grad_w[e(, h)] = sum over features (of head h) with arg[v, f] == e of grad_out[v, f] * x[u, f]: a warp per u.
template <typename T>
__global__ void arg_bwd_w_kernel(const int64_t* __restrict__ colptr, const int64_t* __restrict__ row,
                                 const int64_t* __restrict__ cperm, int64_t wH, const T* __restrict__ x,
                                 const T* __restrict__ gout, const int64_t* __restrict__ arg, T* __restrict__ gw,
                                 int64_t n, int64_t H, int64_t F, int64_t E, int64_t* __restrict__ err) {
  using acc_t = at::opmath_type<T>;
  const int64_t HF = H * F;
  const int64_t u = (int64_t(blockIdx.x) * blockDim.x + threadIdx.x) / kWarp;
  const int lane = threadIdx.x % kWarp;
  if (u >= n) return;
  int64_t kb, ke;
  slot_range(colptr, u, E, kb, ke);
  for (int64_t k = kb; k < ke; ++k) {
    const int64_t v = row[k], e = cperm[k];
    if (out_of(v, n) || out_of(e, E)) {  // the same k for the whole warp: the shuffles below stay uniform
      note_bad(err, k);
      continue;
    }
    acc_t all = 0;
    for (int64_t h = 0; h < H; ++h) {
      acc_t acc = 0;
      for (int64_t f = h * F + lane; f < (h + 1) * F; f += kWarp) {
        if (arg[v * HF + f] == e) acc += acc_t(gout[v * HF + f]) * acc_t(x[u * HF + f]);
      }
      acc = warp_sum(acc);
      if (wH == 1) all += acc;
      else if (lane == 0) gw[e * wH + h] = T(acc);
    }
    if (wH == 1 && lane == 0) gw[e] = T(all);
  }
}

std::tuple<at::Tensor, at::Tensor> spmm_arg_bwd_cuda(const at::Tensor& colptr_in, const at::Tensor& row_in,
                                                     const at::Tensor& cperm_in,
                                                     const c10::optional<at::Tensor>& weight, const at::Tensor& x_in,
                                                     const at::Tensor& grad_in, const at::Tensor& arg_in,
                                                     bool need_x, bool need_weight) {
  check_cuda(x_in, "x");
  TORCH_CHECK(x_in.dim() == 3 && grad_in.sizes() == x_in.sizes() && arg_in.sizes() == x_in.sizes(),
              "spmm_arg_bwd: x, grad_out and arg must be [N, H, F]");
  check_csr_cuda(colptr_in, row_in, cperm_in, x_in, "spmm_arg_bwd", "colptr", "row", "cperm");
  TORCH_CHECK(arg_in.scalar_type() == at::kLong && arg_in.device() == x_in.device() &&
                  grad_in.device() == x_in.device(),
              "spmm_arg_bwd: arg must be int64 and grad_out, arg on x's device");
  const c10::cuda::CUDAGuard guard(x_in.device());
  const at::Tensor colptr = colptr_in.contiguous(), row = row_in.contiguous(), cperm = cperm_in.contiguous();
  const at::Tensor x = x_in.contiguous(), gout = grad_in.to(x.scalar_type()).contiguous(), arg = arg_in.contiguous();
  const int64_t n = colptr.numel() - 1, E = row.numel(), H = x.size(1), F = x.size(2);
  TORCH_CHECK(x.size(0) == n, "spmm_arg_bwd: x must have colptr.numel() - 1 = ", n, " rows, got ", x.size(0));
  const at::Tensor err = new_err(x);
  launch_check_ptr(colptr, E, err, true);
  // arg is only compared with edge ids: a bad value would silently drop gradient. E is the forward's sentinel.
  launch_check_range(arg, E + 1, err);
  const int64_t wH = weight_heads(weight, E, H, x);
  const at::Tensor w = weight.has_value() ? weight->contiguous() : at::Tensor();
  const bool do_w = need_weight && wH > 0;
  at::Tensor gx = at::empty({need_x ? n : 0, H, F}, x.options());
  at::Tensor gw = do_w ? at::zeros_like(w) : at::empty({0}, x.options());
  auto stream = at::cuda::getCurrentCUDAStream();
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, x.scalar_type(), "spmm_arg_bwd_cuda", [&] {
    const int64_t chunks = ceil_div(H * F, kWarp);
    if (need_x && n * chunks > 0) {
      arg_bwd_x_kernel<scalar_t><<<warp_grid(n * chunks), kBlock, 0, stream>>>(
          colptr.data_ptr<int64_t>(), row.data_ptr<int64_t>(), cperm.data_ptr<int64_t>(),
          wH ? w.data_ptr<scalar_t>() : nullptr, std::max<int64_t>(wH, 1), gout.data_ptr<scalar_t>(),
          arg.data_ptr<int64_t>(), gx.data_ptr<scalar_t>(), n, H, F, E, err.data_ptr<int64_t>());
      C10_CUDA_KERNEL_LAUNCH_CHECK();
    }
    if (do_w && n > 0 && E > 0) {
      arg_bwd_w_kernel<scalar_t><<<warp_grid(n), kBlock, 0, stream>>>(
          colptr.data_ptr<int64_t>(), row.data_ptr<int64_t>(), cperm.data_ptr<int64_t>(), wH,
          x.data_ptr<scalar_t>(), gout.data_ptr<scalar_t>(), arg.data_ptr<int64_t>(), gw.data_ptr<scalar_t>(), n, H,
          F, E, err.data_ptr<int64_t>());
      C10_CUDA_KERNEL_LAUNCH_CHECK();
    }
  });
  const at::Tensor herr = fetch_err(err);
  raise_ptr(herr, "spmm_arg_bwd", colptr, "colptr", E, true);
  raise_arg(herr, "spmm_arg_bwd", arg, "arg", E + 1, "an edge id (or E for an empty row)");
  raise_slot(herr, "spmm_arg_bwd", &row, "row", n, cperm, "cperm", E);
  return {gx, gw};
}

// out[perm[k], h] = a[v, h] . b[col[k], h]: a warp per target v, lanes over features, a shuffle reduction.
template <typename T>
__global__ void sddmm_kernel(const int64_t* __restrict__ rowptr, const int64_t* __restrict__ col,
                             const int64_t* __restrict__ perm, const T* __restrict__ a, const T* __restrict__ b,
                             T* __restrict__ out, int64_t n, int64_t H, int64_t F, int64_t E,
                             int64_t* __restrict__ err) {
  using acc_t = at::opmath_type<T>;
  const int64_t HF = H * F;
  const int64_t v = (int64_t(blockIdx.x) * blockDim.x + threadIdx.x) / kWarp;
  const int lane = threadIdx.x % kWarp;
  if (v >= n) return;
  int64_t kb, ke;
  slot_range(rowptr, v, E, kb, ke);
  for (int64_t k = kb; k < ke; ++k) {
    const int64_t u = col[k], e = perm[k];
    if (out_of(u, n) || out_of(e, E)) {  // warp-uniform: every lane reads the same slot
      note_bad(err, k);
      continue;
    }
    for (int64_t h = 0; h < H; ++h) {
      acc_t acc = 0;
      for (int64_t f = h * F + lane; f < (h + 1) * F; f += kWarp) acc += acc_t(a[v * HF + f]) * acc_t(b[u * HF + f]);
      acc = warp_sum(acc);
      if (lane == 0) out[e * H + h] = T(acc);
    }
  }
}

at::Tensor sddmm_cuda(const at::Tensor& rowptr_in, const at::Tensor& col_in, const at::Tensor& perm_in,
                      const at::Tensor&, const at::Tensor&, const at::Tensor&, const at::Tensor& a_in,
                      const at::Tensor& b_in) {
  check_cuda(a_in, "a");
  TORCH_CHECK(a_in.dim() == 3 && b_in.sizes() == a_in.sizes() && b_in.device() == a_in.device(),
              "sddmm: a and b must be [N, H, F] on one device");
  check_csr_cuda(rowptr_in, col_in, perm_in, a_in, "sddmm", "rowptr", "col", "perm");
  const c10::cuda::CUDAGuard guard(a_in.device());
  const at::Tensor rowptr = rowptr_in.contiguous(), col = col_in.contiguous(), perm = perm_in.contiguous();
  const at::Tensor a = a_in.contiguous(), b = b_in.to(a.scalar_type()).contiguous();
  const int64_t n = rowptr.numel() - 1, E = col.numel(), H = a.size(1), F = a.size(2);
  TORCH_CHECK(a.size(0) == n, "sddmm: a and b must have rowptr.numel() - 1 = ", n, " rows, got ", a.size(0));
  at::Tensor out = at::empty({E, H}, a.options());
  if (E == 0 || H == 0 || n == 0) return out;
  if (F == 0) return out.zero_();
  const at::Tensor err = new_err(a);
  launch_check_ptr(rowptr, E, err, true);
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, a.scalar_type(), "sddmm_cuda", [&] {
    sddmm_kernel<scalar_t><<<warp_grid(n), kBlock, 0, at::cuda::getCurrentCUDAStream()>>>(
        rowptr.data_ptr<int64_t>(), col.data_ptr<int64_t>(), perm.data_ptr<int64_t>(), a.data_ptr<scalar_t>(),
        b.data_ptr<scalar_t>(), out.data_ptr<scalar_t>(), n, H, F, E, err.data_ptr<int64_t>());
    C10_CUDA_KERNEL_LAUNCH_CHECK();
  });
  const at::Tensor herr = fetch_err(err);
  raise_ptr(herr, "sddmm", rowptr, "rowptr", E, true);
  raise_slot(herr, "sddmm", &col, "col", n, perm, "perm", E);
  return out;
}

// A warp per (target, head): lanes stride over the target's incoming edges.
template <typename T, bool BACKWARD>
__global__ void edge_softmax_kernel(const int64_t* __restrict__ rowptr, const int64_t* __restrict__ perm,
                                    const T* __restrict__ s, const T* __restrict__ g, T* __restrict__ out, int64_t n,
                                    int64_t H, int64_t E, int64_t* __restrict__ err) {
  using acc_t = at::opmath_type<T>;
  const int64_t warp = (int64_t(blockIdx.x) * blockDim.x + threadIdx.x) / kWarp;
  const int lane = threadIdx.x % kWarp;
  if (warp >= n * H) return;
  const int64_t v = warp / H, h = warp % H;
  int64_t kb, ke;
  slot_range(rowptr, v, E, kb, ke);
  // A row with an edge id out of range is left alone (the op raises): the ballot keeps the exit warp-uniform.
  bool row_bad = false;
  for (int64_t k = kb + lane; k < ke; k += kWarp) {
    if (out_of(perm[k], E)) {
      note_bad(err, k);
      row_bad = true;
    }
  }
  if (__any_sync(0xffffffffu, row_bad)) return;
  if (BACKWARD) {  // s = softmax output y: grad = y * (g - sum y g)
    acc_t dot = 0;
    for (int64_t k = kb + lane; k < ke; k += kWarp) dot += acc_t(s[perm[k] * H + h]) * acc_t(g[perm[k] * H + h]);
    dot = warp_sum(dot);
    for (int64_t k = kb + lane; k < ke; k += kWarp) {
      const int64_t i = perm[k] * H + h;
      out[i] = T(acc_t(s[i]) * (acc_t(g[i]) - dot));
    }
    return;
  }
  acc_t m = -INFINITY;
  for (int64_t k = kb + lane; k < ke; k += kWarp) m = max(m, acc_t(s[perm[k] * H + h]));
  m = warp_max(m);
  if (isinf(m) && m < 0) m = 0;
  acc_t sum = 0;
  for (int64_t k = kb + lane; k < ke; k += kWarp) sum += exp(acc_t(s[perm[k] * H + h]) - m);
  sum = warp_sum(sum);
  for (int64_t k = kb + lane; k < ke; k += kWarp) {
    const int64_t i = perm[k] * H + h;
    out[i] = T(exp(acc_t(s[i]) - m) / sum);
  }
}

at::Tensor edge_softmax_cuda(const at::Tensor& rowptr_in, const at::Tensor& perm_in, const at::Tensor& s_in,
                             const at::Tensor* g_in) {
  const char* op = g_in ? "edge_softmax_bwd" : "edge_softmax_fwd";
  check_cuda(s_in, "scores");
  TORCH_CHECK(s_in.dim() == 2 && s_in.size(0) == perm_in.numel(), op, ": scores must be [E, H]");
  check_index_cuda(rowptr_in, op, "rowptr", s_in);
  check_index_cuda(perm_in, op, "perm", s_in);
  TORCH_CHECK(rowptr_in.numel() >= 1, op, ": rowptr must have N + 1 >= 1 entries");
  const c10::cuda::CUDAGuard guard(s_in.device());
  const at::Tensor rowptr = rowptr_in.contiguous(), perm = perm_in.contiguous(), s = s_in.contiguous();
  const at::Tensor g = g_in ? g_in->to(s.scalar_type()).contiguous() : at::Tensor();
  const int64_t n = rowptr.numel() - 1, H = s.size(1), E = perm.numel();
  at::Tensor out = at::empty_like(s, at::MemoryFormat::Contiguous);
  const at::Tensor err = new_err(s);
  launch_check_ptr(rowptr, E, err, true);
  if (s.numel() == 0 || n == 0) {
    raise_ptr(fetch_err(err), op, rowptr, "rowptr", E, true);
    return out;
  }
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, s.scalar_type(), "edge_softmax_cuda", [&] {
    auto stream = at::cuda::getCurrentCUDAStream();
    if (g_in) {
      edge_softmax_kernel<scalar_t, true><<<warp_grid(n * H), kBlock, 0, stream>>>(
          rowptr.data_ptr<int64_t>(), perm.data_ptr<int64_t>(), s.data_ptr<scalar_t>(), g.data_ptr<scalar_t>(),
          out.data_ptr<scalar_t>(), n, H, E, err.data_ptr<int64_t>());
    } else {
      edge_softmax_kernel<scalar_t, false><<<warp_grid(n * H), kBlock, 0, stream>>>(
          rowptr.data_ptr<int64_t>(), perm.data_ptr<int64_t>(), s.data_ptr<scalar_t>(), nullptr,
          out.data_ptr<scalar_t>(), n, H, E, err.data_ptr<int64_t>());
    }
    C10_CUDA_KERNEL_LAUNCH_CHECK();
  });
  const at::Tensor herr = fetch_err(err);
  raise_ptr(herr, op, rowptr, "rowptr", E, true);
  raise_slot(herr, op, nullptr, "", 0, perm, "perm", E);
  return out;
}

at::Tensor edge_softmax_fwd_cuda(const at::Tensor& rowptr, const at::Tensor& perm, const at::Tensor& s) {
  return edge_softmax_cuda(rowptr, perm, s, nullptr);
}

at::Tensor edge_softmax_bwd_cuda(const at::Tensor& rowptr, const at::Tensor& perm, const at::Tensor& y,
                                 const at::Tensor& g) {
  TORCH_CHECK(g.sizes() == y.sizes(), "edge_softmax_bwd: grad_out must be [E, H] like out");
  return edge_softmax_cuda(rowptr, perm, y, &g);
}

}  // namespace

TORCH_LIBRARY_IMPL(fastlayers, CUDA, m) {
  m.impl("spmm_fwd", &spmm_fwd_cuda);
  m.impl("spmm_arg_bwd", &spmm_arg_bwd_cuda);
  m.impl("sddmm", &sddmm_cuda);
  m.impl("edge_softmax_fwd", &edge_softmax_fwd_cuda);
  m.impl("edge_softmax_bwd", &edge_softmax_bwd_cuda);
}

}  // namespace fastlayers::mp::cuda
