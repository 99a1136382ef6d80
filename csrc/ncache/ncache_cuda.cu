// N-cache on CUDA: the same algorithm as ncache_cpu.cpp, bit-identical results (same hash source, same total
// order of candidates, same float summation order).
//
// update: the 2B (owner, edge) incidences are sorted by owner on the device; one block per distinct owner and
// one launch per hop, from the highest down, so hop h reads its partners' hop h-1 columns before any launch
// writes them. In a block, threads stage a chunk of candidates in shared memory and the thread owning a slot
// keeps the maximum of its candidates: no atomics on the result, hence no dependence on scheduling.
// pair_features: one block per pair, one thread per entry of the joint row; first appearances are compacted by a
// warp-ballot prefix sum. Argument ranges are checked here before the launch (one host sync per call), so the
// registered ops are safe to call directly.
#include <ATen/ATen.h>
#include <ATen/cuda/CUDAContext.h>
#include <c10/cuda/CUDAGuard.h>
#include <torch/library.h>

#include "ncache/ncache_checks_aten.h"

namespace fastlayers::ncache {
namespace {

constexpr int kUpdateThreads = 128;
constexpr int kPairThreads = 128;
constexpr int64_t kMaxSlotsCuda = 1024;  // per hop: the block keeps one candidate per slot in shared memory

// The batch's ranges and times as device reductions read back in one host sync: the kernels index rows by these
// ids, and a bad one would be an out-of-bounds access that CUDA reports late or not at all.
void check_batch_on_device(int64_t n, const at::Tensor& src, const at::Tensor& dst, const at::Tensor& t,
                           const at::Tensor& last_time) {
  const at::Tensor flags =
      at::stack({((src < 0) | (src >= n)).any(), ((dst < 0) | (dst >= n)).any(),
                 (at::isfinite(t).logical_not() | (t < 0)).any(),
                 (t.slice(0, 1) < t.slice(0, 0, t.size(0) - 1)).any(), (t[0] < last_time.reshape({})).any()})
          .cpu();
  const bool* f = flags.const_data_ptr<bool>();
  TORCH_CHECK_INDEX(!f[0], "ncache.update: src has ids out of range [0, ", n, ")");
  TORCH_CHECK_INDEX(!f[1], "ncache.update: dst has ids out of range [0, ", n, ")");
  TORCH_CHECK_VALUE(!f[2], "ncache.update: t must be finite and >= 0");
  TORCH_CHECK_VALUE(!f[3], "ncache.update: t must be non-decreasing within a batch");
  TORCH_CHECK_VALUE(!f[4], "ncache.update: the batch starts older than the cache's latest time (reset() the cache ",
                    "to replay a stream)");
}

void check_nodes_on_device(const at::Tensor& x, int64_t n, const char* op, const char* name) {
  if (x.numel() == 0) return;
  TORCH_CHECK_INDEX(!((x < 0) | (x >= n)).any().item<bool>(), "ncache.", op, ": ", name,
                    " has ids out of range [0, ", n, ")");
}

__device__ __forceinline__ int64_t hop_of_col(const Layout& L, int64_t c) {
  int64_t h = 0;
  while (c >= L.off[h + 1]) ++h;
  return h;
}

__global__ void update_hop_kernel(int64_t* __restrict__ K, int64_t* __restrict__ E, double* __restrict__ T,
                                  float* __restrict__ V, const int64_t* __restrict__ owner_sorted,
                                  const int64_t* __restrict__ perm, int64_t n_inc, const int64_t* __restrict__ sp,
                                  const int64_t* __restrict__ dp, const int64_t* __restrict__ ep,
                                  const double* __restrict__ tp, const float* __restrict__ evp, Layout L, int64_t h,
                                  uint64_t sm, uint64_t thr) {
  extern __shared__ unsigned char smem[];
  Best* best = reinterpret_cast<Best*>(smem);
  const int64_t M = L.m[h], off = L.off[h], S = L.S, D = L.D;
  Best* cand = best + M;
  int64_t* cslot = reinterpret_cast<int64_t*>(cand + kUpdateThreads);
  const int64_t i0 = blockIdx.x;
  if (i0 > 0 && owner_sorted[i0] == owner_sorted[i0 - 1]) return;  // not the first incidence of its owner
  const int64_t o = owner_sorted[i0];
  int64_t i1 = i0 + 1;
  while (i1 < n_inc && owner_sorted[i1] == o) ++i1;
  const int64_t pm = h >= 2 ? L.m[h - 1] : 1, poff = h >= 2 ? L.off[h - 1] : 0;
  const int64_t total = (i1 - i0) * pm;
  const int tid = threadIdx.x;
  for (int64_t s = tid; s < M; s += blockDim.x) best[s].rank = -1;
  for (int64_t c0 = 0; c0 < total; c0 += kUpdateThreads) {
    const int64_t c = c0 + tid;
    int64_t slot = -1;
    Best x{0.0, 0, 0, 0, 0};
    if (c < total) {
      const int64_t ii = c / pm, cc = c % pm;
      const int64_t j = perm[i0 + ii], b = j >> 1;
      const int64_t partner = (j & 1) ? sp[b] : dp[b];
      if (h == 0) {
        slot = 0;
        x = {tp[b], ep[b], o, j, b};
      } else if (h == 1) {
        slot = slot_in(key_hash(partner, sm), M);
        x = {tp[b], ep[b], partner, j, b};
      } else {
        const int64_t idx = partner * S + poff + cc, k = K[idx];
        if (k >= 0) {
          slot = slot_in(key_hash(k, sm), M);
          x = {T[idx], E[idx], k, j * pm + cc, idx};
        }
      }
    }
    cslot[tid] = slot;
    cand[tid] = x;
    __syncthreads();
    const int64_t n = min(int64_t(kUpdateThreads), total - c0);
    for (int64_t s = tid; s < M; s += blockDim.x) {
      Best b = best[s];
      for (int64_t y = 0; y < n; ++y) {
        if (cslot[y] != s) continue;
        const Best& z = cand[y];
        if (b.rank < 0 || beats(z.t, z.eid, z.key, z.rank, b.t, b.eid, b.key, b.rank)) b = z;
      }
      best[s] = b;
    }
    __syncthreads();
  }
  for (int64_t s = tid; s < M; s += blockDim.x) {
    const Best x = best[s];
    if (x.rank < 0) continue;
    commit_slot(K, E, T, V, o * S + off + s, x, h, o, sm, thr, evp, V, D);
  }
}

void update_cuda(at::Tensor& keys, at::Tensor& eids, at::Tensor& times, at::Tensor& values, at::Tensor& last_time,
                 const at::Tensor& src_in, const at::Tensor& dst_in, const at::Tensor& t_in, const at::Tensor& eid_in,
                 const c10::optional<at::Tensor>& edge_values_in, at::IntArrayRef sizes, double replace_prob,
                 int64_t seed, bool /*aligned: a CPU shortcut; this kernel hashes anyway*/) {
  TORCH_CHECK(keys.is_cuda(), "ncache_update (CUDA): keys must be a CUDA tensor");
  const Layout L = check_tables(keys, eids, times, values, sizes);
  for (int64_t h = 0; h < L.hops; ++h)
    TORCH_CHECK_VALUE(L.m[h] <= kMaxSlotsCuda, "ncache (CUDA): at most ", kMaxSlotsCuda, " slots per hop");
  TORCH_CHECK_VALUE(last_time.numel() == 1 && last_time.scalar_type() == at::kDouble &&
                        last_time.device() == keys.device(),
                    "ncache.update: last_time must be a float64 tensor of one element on the cache's device, got ",
                    last_time.scalar_type(), " of shape ", last_time.sizes(), " on ", last_time.device());
  const at::Tensor src = check_ids(src_in, "src", keys), dst = check_ids(dst_in, "dst", keys);
  const at::Tensor eid = check_ids(eid_in, "eid", keys);
  const int64_t B = src.size(0);
  TORCH_CHECK_VALUE(dst.size(0) == B && eid.size(0) == B && t_in.dim() == 1 && t_in.size(0) == B,
                    "ncache.update: src, dst, t and eid must have one length, got ", B, ", ", dst.size(0), ", ",
                    t_in.sizes(), ", ", eid.size(0));
  TORCH_CHECK_TYPE(t_in.scalar_type() == at::kDouble, "ncache.update: t must be float64, got ", t_in.scalar_type());
  TORCH_CHECK_VALUE(t_in.device() == keys.device(), "ncache.update: t must be on the cache's device");
  at::Tensor ev;
  if (edge_values_in.has_value()) {
    ev = edge_values_in->contiguous();
    TORCH_CHECK_TYPE(ev.scalar_type() == at::kFloat, "ncache.update: edge_values must be float32, got ",
                     ev.scalar_type());
    TORCH_CHECK_VALUE(ev.dim() == 2 && ev.size(0) == B && ev.size(1) == L.D && ev.device() == keys.device(),
                      "ncache.update: edge_values must be [", B, ", ", L.D, "] on the cache's device, got ",
                      ev.sizes(), " on ", ev.device());
  }
  if (B == 0) return;
  const uint64_t thr = threshold53(replace_prob);
  const at::Tensor t = t_in.contiguous();
  const c10::cuda::CUDAGuard guard(keys.device());
  check_batch_on_device(keys.size(0), src, dst, t, last_time);
  auto stream = at::cuda::getCurrentCUDAStream();
  const at::Tensor owners = at::stack({src, dst}, 1).reshape({-1});
  auto sorted = at::sort(owners, /*stable=*/true, /*dim=*/0, /*descending=*/false);
  const at::Tensor owner_sorted = std::get<0>(sorted).contiguous();
  const at::Tensor perm = std::get<1>(sorted).contiguous();
  const uint64_t sm = seed_mix_of(seed);
  for (int64_t h = L.hops - 1; h >= 0; --h) {
    const size_t shmem = sizeof(Best) * (L.m[h] + kUpdateThreads) + sizeof(int64_t) * kUpdateThreads;
    update_hop_kernel<<<unsigned(2 * B), kUpdateThreads, shmem, stream>>>(
        keys.mutable_data_ptr<int64_t>(), eids.mutable_data_ptr<int64_t>(), times.mutable_data_ptr<double>(),
        values.mutable_data_ptr<float>(), owner_sorted.const_data_ptr<int64_t>(), perm.const_data_ptr<int64_t>(),
        2 * B, src.const_data_ptr<int64_t>(), dst.const_data_ptr<int64_t>(), eid.const_data_ptr<int64_t>(),
        t.const_data_ptr<double>(), ev.defined() ? ev.const_data_ptr<float>() : nullptr, L, h, sm, thr);
    C10_CUDA_KERNEL_LAUNCH_CHECK();
  }
  last_time.copy_(at::maximum(last_time.reshape({1}), t.slice(0, B - 1, B)).reshape(last_time.sizes()));
}

std::tuple<at::Tensor, at::Tensor, at::Tensor, at::Tensor> lookup_cuda(const at::Tensor& keys,
                                                                       const at::Tensor& eids,
                                                                       const at::Tensor& times,
                                                                       const at::Tensor& values,
                                                                       const at::Tensor& nodes_in) {
  check_table_shapes(keys, eids, times, values, "lookup");
  const at::Tensor nodes = check_ids(nodes_in, "nodes", keys);
  const c10::cuda::CUDAGuard guard(keys.device());
  check_nodes_on_device(nodes, keys.size(0), "lookup", "nodes");
  // index_select honours any strides of the tables.
  return {keys.index_select(0, nodes), eids.index_select(0, nodes), times.index_select(0, nodes),
          values.index_select(0, nodes)};
}

__global__ void pair_kernel(const int64_t* __restrict__ K, const float* __restrict__ V,
                            const int64_t* __restrict__ up, const int64_t* __restrict__ vp, Layout L, uint64_t sm,
                            int64_t* __restrict__ ko, int64_t* __restrict__ co, float* __restrict__ fo,
                            bool* __restrict__ mo, int64_t* __restrict__ cnt) {
  __shared__ int warp_total[kPairThreads / 32];
  __shared__ unsigned long long s_cnt[kMaxHops * kMaxHops];
  __shared__ int s_base;
  const int64_t p = blockIdx.x, S = L.S, D = L.D, H = L.hops, Kmax = 2 * S;
  const int tid = threadIdx.x, lane = tid & 31, warp = tid >> 5;
  const int64_t row[2] = {up[p] * S, vp[p] * S};
  for (int i = tid; i < H * H; i += blockDim.x) s_cnt[i] = 0;
  if (tid == 0) s_base = 0;
  __syncthreads();
  for (int64_t q0 = 0; q0 < Kmax; q0 += kPairThreads) {
    const int64_t q = q0 + tid;
    bool first = false;
    int64_t k = -1, code = 0, at[2 * kMaxHops];
    if (q < Kmax) {
      const int64_t side = q >= S, col = q - side * S;
      k = K[row[side] + col];
      if (k >= 0) {
        code = pair_code(K, row, L, k, sm, at);
        first = first_place(code, side * H + hop_of_col(L, col));
      }
    }
    const unsigned ballot = __ballot_sync(0xffffffffu, first);
    if (lane == 0) warp_total[warp] = __popc(ballot);
    __syncthreads();
    int pos = s_base + __popc(ballot & ((1u << lane) - 1));
    for (int w = 0; w < warp; ++w) pos += warp_total[w];
    if (first) {
      const int64_t o = p * Kmax + pos;
      ko[o] = k;
      co[o] = code;
      mo[o] = true;
      for (int64_t d = 0; d < D; ++d) {
        float f = 0.0f;
        for (int64_t bit = 0; bit < 2 * H; ++bit)
          if (code >> bit & 1) f += V[at[bit] * D + d];
        fo[o * D + d] = f;
      }
      for (int64_t i = 0; i < H; ++i)
        if (code >> i & 1)
          for (int64_t j = 0; j < H; ++j)
            if (code >> (H + j) & 1) atomicAdd(&s_cnt[i * H + j], 1ull);
    }
    __syncthreads();
    if (tid == 0) {
      int total = 0;
      for (int w = 0; w < kPairThreads / 32; ++w) total += warp_total[w];
      s_base += total;
    }
    __syncthreads();
  }
  for (int64_t q = s_base + tid; q < Kmax; q += blockDim.x) {
    const int64_t o = p * Kmax + q;
    ko[o] = -1;
    co[o] = 0;
    mo[o] = false;
    for (int64_t d = 0; d < D; ++d) fo[o * D + d] = 0.0f;
  }
  for (int i = tid; i < H * H; i += blockDim.x) cnt[p * H * H + i] = int64_t(s_cnt[i]);
}

std::tuple<at::Tensor, at::Tensor, at::Tensor, at::Tensor, at::Tensor> pair_features_cuda(
    const at::Tensor& keys_in, const at::Tensor& values_in, const at::Tensor& u_in, const at::Tensor& v_in,
    at::IntArrayRef sizes, int64_t seed, bool /*aligned: a CPU shortcut; one thread block per pair probes anyway*/) {
  TORCH_CHECK(keys_in.is_cuda(), "ncache_pair_features (CUDA): keys must be a CUDA tensor");
  check_table_shapes(keys_in, at::Tensor(), at::Tensor(), values_in, "pair_features");
  // Read-only: any layout is served by a dense copy.
  const at::Tensor keys = keys_in.contiguous(), values = values_in.contiguous();
  const Layout L = check_tables(keys, at::Tensor(), at::Tensor(), values, sizes, "pair_features");
  const at::Tensor u = check_ids(u_in, "u", keys), v = check_ids(v_in, "v", keys);
  TORCH_CHECK_VALUE(u.size(0) == v.size(0), "ncache.pair_features: u and v must have one length, got ", u.size(0),
                    " and ", v.size(0));
  const int64_t P = u.size(0), Kmax = 2 * L.S, H = L.hops;
  at::Tensor okeys = at::empty({P, Kmax}, keys.options());
  at::Tensor codes = at::empty({P, Kmax}, keys.options());
  at::Tensor feats = at::empty({P, Kmax, L.D}, values.options());
  at::Tensor mask = at::empty({P, Kmax}, keys.options().dtype(at::kBool));
  at::Tensor counts = at::empty({P, H, H}, keys.options());
  if (P == 0) return {okeys, codes, feats, mask, counts};
  const c10::cuda::CUDAGuard guard(keys.device());
  check_nodes_on_device(at::cat({u, v}), keys.size(0), "pair_features", "u or v");
  pair_kernel<<<unsigned(P), kPairThreads, 0, at::cuda::getCurrentCUDAStream()>>>(
      keys.const_data_ptr<int64_t>(), values.const_data_ptr<float>(), u.const_data_ptr<int64_t>(),
      v.const_data_ptr<int64_t>(), L, seed_mix_of(seed), okeys.mutable_data_ptr<int64_t>(),
      codes.mutable_data_ptr<int64_t>(), feats.mutable_data_ptr<float>(), mask.mutable_data_ptr<bool>(),
      counts.mutable_data_ptr<int64_t>());
  C10_CUDA_KERNEL_LAUNCH_CHECK();
  return {okeys, codes, feats, mask, counts};
}

}  // namespace

TORCH_LIBRARY_IMPL(fastlayers, CUDA, m) {
  m.impl("ncache_update", &update_cuda);
  m.impl("ncache_lookup", &lookup_cuda);
  m.impl("ncache_pair_features", &pair_features_cuda);
}

}  // namespace fastlayers::ncache
