// One IsoNet++ node layer on the CPU: interaction MLP on [h, partner], node-pair messages summed at each target,
// GRU update, node mask, in one pass over the nodes (fastlayers.ops.isonet_layer; reference in
// python/fastlayers/reference/isonet_layer.py).
//
// The layer's tensors are tiny (D = 10 node features, 20 message features) and the eager model spends its time on
// the overhead of ~25 ATen ops per layer. Here everything stays in registers per node. Two linear maps in a row
// are folded into one before the sweep (a few thousand multiply-adds, once per call):
//   - the interaction's second Linear feeds only the message's first Linear, whose input [z_u, z_v] splits into
//     per-node halves a_u = W_u z_u and a_v = W_v z_v + b: so a = (W_{u|v} W_2) r + (W_{u|v} b_2 [+ b]);
//   - the message's second Linear is linear, so it commutes with the sum over incoming edges:
//     sum_e (W_m relu(.) + b_m) = W_m s_v + deg_v b_m, and it feeds only the GRU's input map:
//     W_ih agg = (W_ih W_m) s_v + deg_v (W_ih b_m).
// The partner may come as the alignment transport itself (P and the other graph's states, see Transport), which
// saves the model its per-layer partner products. Each matrix-vector product keeps its output in whole vector
// registers (widths padded to 16 lanes), four nodes at a time, with the weights transposed so one input scalar
// multiplies a contiguous weight row. Three sweeps over the nodes: the other side's partner products (transport
// only), each node's [a_u | a_v], then per target the edge sum and the GRU.
#include <ATen/ATen.h>
#include <ATen/Parallel.h>
#include <torch/library.h>

#include <algorithm>
#include <optional>
#include <vector>

#include "align/align_isa.h"
#include "align/isonet_layer.h"
#include "align/vec.h"
#include "common/checks.h"
#define FASTLAYERS_WITH_TORCH_API
#include "common/cpu_cache.h"
#include "common/cpu_simd.h"

namespace fastlayers {
namespace {

using namespace isonet_layer;
using namespace align;


at::Tensor isonet_layer_fwd_cpu(const at::Tensor& h_in, const std::optional<at::Tensor>& partner,
                            const std::optional<at::Tensor>& P_in, const std::optional<at::Tensor>& other_in,
                            bool transpose, const at::Tensor& rowptr_in, const at::Tensor& col_in,
                            const at::Tensor& mask_in,
                            const at::Tensor& iw1, const at::Tensor& ib1, const at::Tensor& iw2,
                            const at::Tensor& ib2, const at::Tensor& mw1, const at::Tensor& mb1,
                            const at::Tensor& mw2, const at::Tensor& mb2, const at::Tensor& w_ih,
                            const at::Tensor& w_hh, const at::Tensor& b_ih, const at::Tensor& b_hh) {
  FL_CHECK_CPU(h_in);
  FL_CHECK_DIM(h_in, 2);
  const Dims d = layer_dims(h_in, iw1, ib1, iw2, ib2, mw1, mb1, mw2, mb2, w_ih, w_hh, b_ih, b_hh, rowptr_in, mask_in);
  const at::Tensor h = h_in.contiguous(), rowptr = rowptr_in.contiguous(), col = col_in.contiguous(),
                   mask = mask_in.contiguous();
  check_graph(rowptr, col, mask, d.N, "isonet_layer_fwd");
  at::Tensor p;
  if (partner.has_value()) {
    TORCH_CHECK(partner->sizes() == h.sizes() && partner->scalar_type() == h.scalar_type(),
                "isonet_layer: partner must match h");
    p = partner->contiguous();
  }
  at::Tensor P, other;
  int64_t n_this = 0, n_o = 0;
  if (P_in.has_value()) {
    TORCH_CHECK(!p.defined() && other_in.has_value(), "isonet_layer: P needs other and excludes partner");
    P = P_in->contiguous();
    other = other_in->contiguous();
    TORCH_CHECK(P.dim() == 3 && P.scalar_type() == h.scalar_type() && other.scalar_type() == h.scalar_type(),
                "isonet_layer: P must be [B, N, M] in h's dtype");
    n_this = transpose ? P.size(2) : P.size(1);
    n_o = transpose ? P.size(1) : P.size(2);
    TORCH_CHECK(P.size(0) * n_this == d.N && other.dim() == 2 && other.size(0) == P.size(0) * n_o &&
                    other.size(1) == d.D,
                "isonet_layer: h must be [B * n, D] and other [B * n_o, D] for P");
  }
  at::Tensor out = empty_cached({d.N, d.D}, h.options());
  if (d.N == 0 || d.D == 0) return out;
  const int64_t* rp = rowptr.const_data_ptr<int64_t>();
  const int64_t* cp = col.const_data_ptr<int64_t>();
  const bool* mp = mask.const_data_ptr<bool>();
  // The sources of edges into real nodes need a_u too, even where they are padding themselves.
  const std::vector<uint8_t> need = needed_nodes(d.N, rp, cp, mp);
  // Scratch for a = [a_u | a_v] per node, kept per calling thread: at ~650 KB for a 128-pair batch it is below
  // the output pool's minimum, and a fresh block each call comes back from mmap and page-faults in every layer.
  static thread_local std::vector<double> scratch;
  const size_t a_bytes = size_t(d.N) * size_t(d.AP) * h.element_size();
  const size_t q_bytes = P.defined() ? size_t(other.size(0)) * size_t(d.HP) * h.element_size() : 0;
  const size_t words = (a_bytes + q_bytes + 2 * sizeof(double) - 1) / sizeof(double);
  if (scratch.size() < words) scratch.resize(words);
  // Work per node is ~2k multiply-adds: blocks of a few hundred nodes amortise the parallel region.
  const int64_t grain = 256;
  AT_DISPATCH_FLOATING_TYPES(h.scalar_type(), "isonet_layer_fwd_cpu", [&] {
    const Folded<scalar_t> f = fold<scalar_t>(d, iw1, ib1, iw2, ib2, mw1, mb1, mw2, mb2, w_ih, w_hh, b_ih, b_hh);
    const scalar_t* hp = h.const_data_ptr<scalar_t>();
    const scalar_t* pp = p.defined() ? p.const_data_ptr<scalar_t>() : nullptr;
    scalar_t* ap = reinterpret_cast<scalar_t*>(scratch.data());
    scalar_t* op = out.mutable_data_ptr<scalar_t>();
    Transport<scalar_t> tr;
    if (P.defined()) {
      tr.P = P.const_data_ptr<scalar_t>();
      tr.n = n_this;
      tr.n_o = n_o;
      tr.transpose = transpose;
      scalar_t* Q = reinterpret_cast<scalar_t*>(scratch.data() + (a_bytes + sizeof(double) - 1) / sizeof(double));
      tr.Q = Q;
      const std::vector<scalar_t> zero(d.HP, scalar_t(0));
      const scalar_t* o = other.const_data_ptr<scalar_t>();
      at::parallel_for(0, other.size(0), grain,
                       [&](int64_t j0, int64_t j1) { other_sweep(d, f, o, zero.data(), Q, j0, j1); });
    }
    at::parallel_for(0, d.N, grain, [&](int64_t u0, int64_t u1) {
      std::vector<scalar_t> rbuf(kGroup * d.HP), coef(std::max<int64_t>(n_o, 1));
      node_sweep(d, f, hp, pp, tr, need.data(), ap, u0, u1, rbuf.data(), coef.data());
    });
    at::parallel_for(0, d.N, grain, [&](int64_t v0, int64_t v1) {
      GateBuf<scalar_t> g(d);
      target_sweep(d, f, hp, ap, rp, cp, mp, op, v0, v1, g);
    });
  });
  return out;
}

}  // namespace

TORCH_LIBRARY_IMPL(fastlayers, CPU, m) { m.impl("isonet_layer_fwd", &isonet_layer_fwd_cpu); }

}  // namespace fastlayers
