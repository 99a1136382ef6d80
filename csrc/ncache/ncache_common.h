// Shapes and argument checks shared by the CPU and CUDA N-cache kernels.
#pragma once
#include <ATen/ATen.h>

#include <vector>

#include "common/ncache_hash.h"

namespace fastlayers::ncache {

// Column layout of the [N, S] tables: hop h occupies columns off[h] .. off[h] + m[h]; hop 0 is one column.
struct Layout {
  int64_t hops = 0;  // 1 + len(sizes)
  int64_t S = 0;     // total columns
  int64_t D = 0;     // value dim
  int64_t m[kMaxHops] = {0, 0, 0, 0};
  int64_t off[kMaxHops + 1] = {0, 0, 0, 0, 0};
};

inline Layout make_layout(at::IntArrayRef sizes, int64_t D) {
  TORCH_CHECK_VALUE(sizes.size() >= 1 && int64_t(sizes.size()) < kMaxHops, "ncache: sizes must have 1 to ",
                    kMaxHops - 1, " entries, got ", sizes);
  Layout L;
  L.hops = 1 + int64_t(sizes.size());
  L.m[0] = 1;
  for (size_t i = 0; i < sizes.size(); ++i) {
    TORCH_CHECK_VALUE(sizes[i] >= 1 && sizes[i] < (int64_t(1) << 31), "ncache: sizes must each be in [1, 2^31), got ",
                      sizes);
    L.m[i + 1] = sizes[i];
  }
  for (int64_t h = 0; h < L.hops; ++h) L.off[h + 1] = L.off[h] + L.m[h];
  L.S = L.off[L.hops];
  L.D = D;
  return L;
}

// Dtypes, shapes and devices of the tables (eids / times may be undefined: ops that do not read them). Every
// kernel indexes all tables with keys' row and column counts, so a table that disagrees would be read out of
// bounds.
inline void check_table_shapes(const at::Tensor& keys, const at::Tensor& eids, const at::Tensor& times,
                               const at::Tensor& values, const char* op) {
  TORCH_CHECK_TYPE(keys.scalar_type() == at::kLong, "ncache.", op, ": keys must be int64, got ", keys.scalar_type());
  TORCH_CHECK_VALUE(keys.dim() == 2, "ncache.", op, ": keys must be an [N, S] table, got shape ", keys.sizes());
  TORCH_CHECK_TYPE(values.scalar_type() == at::kFloat, "ncache.", op, ": values must be float32, got ",
                   values.scalar_type());
  TORCH_CHECK_VALUE(values.dim() == 3 && values.size(0) == keys.size(0) && values.size(1) == keys.size(1), "ncache.",
                    op, ": values must be [N, S, D] = [", keys.size(0), ", ", keys.size(1), ", D] like keys ",
                    keys.sizes(), ", got shape ", values.sizes());
  if (eids.defined()) {
    TORCH_CHECK_TYPE(eids.scalar_type() == at::kLong, "ncache.", op, ": eids must be int64, got ", eids.scalar_type());
    TORCH_CHECK_VALUE(eids.sizes() == keys.sizes(), "ncache.", op, ": eids must have keys' shape ", keys.sizes(),
                      ", got ", eids.sizes());
  }
  if (times.defined()) {
    TORCH_CHECK_TYPE(times.scalar_type() == at::kDouble, "ncache.", op, ": times must be float64, got ",
                     times.scalar_type());
    TORCH_CHECK_VALUE(times.sizes() == keys.sizes(), "ncache.", op, ": times must have keys' shape ", keys.sizes(),
                      ", got ", times.sizes());
  }
  TORCH_CHECK_VALUE(values.device() == keys.device() && (!eids.defined() || eids.device() == keys.device()) &&
                        (!times.defined() || times.device() == keys.device()),
                    "ncache.", op, ": the tables must be on one device, keys is on ", keys.device());
}

// The state tables are updated in place, so they must already be dense: a copy would lose the update.
inline Layout check_tables(const at::Tensor& keys, const at::Tensor& eids, const at::Tensor& times,
                           const at::Tensor& values, at::IntArrayRef sizes, const char* op = "update") {
  check_table_shapes(keys, eids, times, values, op);
  for (const at::Tensor* t : {&keys, &eids, &times, &values})
    TORCH_CHECK_VALUE(!t->defined() || t->is_contiguous(), "ncache.", op,
                      ": the tables must be contiguous (they are written in place), got strides ", t->strides(),
                      " for shape ", t->sizes(), "; call .contiguous() on the cache's tables first");
  const Layout L = make_layout(sizes, values.size(2));
  TORCH_CHECK_VALUE(keys.size(1) == L.S, "ncache.", op, ": keys has ", keys.size(1), " columns, sizes ", sizes,
                    " imply S = 1 + sum(sizes) = ", L.S);
  return L;
}

// An index vector of the kernels ([B] int64); returned contiguous.
inline at::Tensor check_ids(const at::Tensor& x, const char* name, const at::Tensor& keys) {
  TORCH_CHECK_TYPE(x.scalar_type() == at::kLong, "ncache: ", name, " must be int64, got ", x.scalar_type());
  TORCH_CHECK_VALUE(x.dim() == 1, "ncache: ", name, " must be 1-D, got shape ", x.sizes());
  TORCH_CHECK_VALUE(x.device() == keys.device(), "ncache: ", name, " is on ", x.device(), ", the cache on ",
                    keys.device());
  return x.contiguous();
}

// Where key k can sit in a pair's two rows (row[s] = node * S): only at its hash slot of each hop, or column 0
// for hop 0. Returns the 2H-bit hop code (bit s * H + h: row s holds k there) and puts each place's flat table
// index in at[s * H + h]. One source for the CPU and CUDA pair kernels, so both emit the same codes.
FL_HD int64_t pair_code(const int64_t* K, const int64_t row[2], const Layout& L, int64_t k, uint64_t seed_mix,
                        int64_t at[2 * kMaxHops]) {
  const uint64_t kh = key_hash(k, seed_mix);
  int64_t code = 0;
  for (int64_t h = 0; h < L.hops; ++h) {
    const int64_t c = h == 0 ? 0 : L.off[h] + slot_in(kh, L.m[h]);
    for (int64_t s = 0; s < 2; ++s) {
      at[s * L.hops + h] = row[s] + c;
      code |= int64_t(K[row[s] + c] == k) << (s * L.hops + h);
    }
  }
  return code;
}

// An entry found at bit own_bit of its pair code is emitted there only if that is the key's first place (lowest
// bit); an entry off its hash slot (a foreign state: own bit clear) is never emitted.
FL_HD bool first_place(int64_t code, int64_t own_bit) {
  return (code >> own_bit & 1) && !(code & ((int64_t(1) << own_bit) - 1));
}

// The winning offer for one slot of an owner's row (rank < 0: none yet).
struct Best {
  double t;
  int64_t eid, key, rank, src;  // src: edge index b (hops 0, 1) or flat table index of the copied entry
};

// Writes winner x into table entry at, unless a different resident key survives its replacement draw. The value
// is the copied entry's (hops >= 2: copied[x.src], the values table itself or a copy of the partners' entries),
// the edge's (hops 0, 1, with edge values) or zeros. One source for the CPU and CUDA update kernels.
FL_HD void commit_slot(int64_t* K, int64_t* E, double* T, float* V, int64_t at, const Best& x, int64_t hop,
                       int64_t owner, uint64_t seed_mix, uint64_t thr, const float* evp, const float* copied,
                       int64_t D) {
  const int64_t cur = K[at];
  if (cur >= 0 && cur != x.key && replace_draw(seed_mix, owner, hop, x.key, x.t) >= thr) return;
  K[at] = x.key;
  E[at] = x.eid;
  T[at] = x.t;
  const float* from = hop >= 2 ? copied + x.src * D : (evp ? evp + x.src * D : nullptr);
  float* to = V + at * D;
  for (int64_t d = 0; d < D; ++d) to[d] = from ? from[d] : 0.0f;
}

inline uint64_t threshold53(double replace_prob) {
  TORCH_CHECK_VALUE(replace_prob >= 0.0 && replace_prob <= 1.0, "ncache: replace_prob must be in [0, 1], got ",
                    replace_prob);
  if (replace_prob >= 1.0) return uint64_t(1) << 53;
  return uint64_t(replace_prob * double(uint64_t(1) << 53));
}

}  // namespace fastlayers::ncache
