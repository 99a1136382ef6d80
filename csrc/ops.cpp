// Every op schema of the fastlayers library, in one place. Kernels register per device in csrc/<family>/ (C++,
// CUDA) or from Python (Triton); fake kernels and autograd formulas live in python/fastlayers/ops/<family>.py.
#include <torch/library.h>

TORCH_LIBRARY(fastlayers, m) {
  // eca: y = x * sigmoid(conv1d_over_channels(mean_spatial(x), weight)); also returns the pooled means and the
  // gates ([N, C], float32 or float64) that the backward needs.
  m.def("eca_fwd(Tensor x, Tensor weight, bool circular) -> (Tensor y, Tensor pooled, Tensor gate)");
  m.def(
      "eca_bwd(Tensor grad_y, Tensor x, Tensor weight, Tensor pooled, Tensor gate, bool circular)"
      " -> (Tensor grad_x, Tensor grad_weight)");

  // ncache: NAT's per-node hashed neighbour dictionaries. Tables keys/eids [N, S] int64, times [N, S] float64,
  // values [N, S, D] float32, S = 1 + sum(sizes); last_time [1] float64. update writes them in place.
  m.def(
      "ncache_update(Tensor(a!) keys, Tensor(b!) eids, Tensor(c!) times, Tensor(d!) values, Tensor(e!) last_time,"
      " Tensor src, Tensor dst, Tensor t, Tensor eid, Tensor? edge_values, int[] sizes, float replace_prob,"
      " int seed) -> ()");
  m.def(
      "ncache_lookup(Tensor keys, Tensor eids, Tensor times, Tensor values, Tensor nodes)"
      " -> (Tensor keys, Tensor eids, Tensor times, Tensor values)");
  m.def(
      "ncache_pair_features(Tensor keys, Tensor values, Tensor u, Tensor v, int[] sizes, int seed)"
      " -> (Tensor keys, Tensor codes, Tensor feats, Tensor mask, Tensor counts)");
}
