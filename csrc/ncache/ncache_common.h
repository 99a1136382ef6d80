// Shapes, device code and argument checks shared by the CPU and CUDA N-cache kernels.
#pragma once
// Free of ATen: included by the CPU kernels (stable ABI) and the CUDA kernels (ATen) alike.
#include <torch/headeronly/core/DeviceType.h>
#include <torch/headeronly/core/ScalarType.h>

#include <cstdint>
#include <string>

#include "common/errors.h"
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

// ---- Argument checks, one source for both builds: templates over the tensor type (at::Tensor in the CUDA
// kernels of fastlayers._C_aten, torch::stable::Tensor in the CPU kernels of fastlayers._C) and the int[] type
// (at::IntArrayRef, std::vector<int64_t>). They throw the std exceptions of common/errors.h: invalid_argument
// (Python ValueError; dtype errors too) and runtime_error.

// A device as ATen prints it: "cpu", "cuda:0". Both builds' Device types have type(), has_index() and index().
inline std::string device_type_name(torch::headeronly::DeviceType t) {
  using T = torch::headeronly::DeviceType;
  switch (t) {
    case T::CPU: return "cpu";
    case T::CUDA: return "cuda";
    case T::Meta: return "meta";
    default: {  // none of these reach the CPU or CUDA kernels
      std::string s = "device type ";
      s += std::to_string(int(t));
      return s;
    }
  }
}
template <typename Device>
std::string device_name(const Device& d) {
  std::string s = device_type_name(d.type());
  if (d.has_index()) {
    s += ':';
    s += std::to_string(int(d.index()));  // at::DeviceIndex is int8_t: not a char
  }
  return s;
}

template <typename Sizes>
Layout make_layout(const Sizes& sizes, int64_t D) {
  FL_CHECK_VALUE(sizes.size() >= 1 && int64_t(sizes.size()) < kMaxHops, "ncache: sizes must have 1 to ",
                 kMaxHops - 1, " entries, got ", errors::list(sizes));
  Layout L;
  L.hops = 1 + int64_t(sizes.size());
  L.m[0] = 1;
  for (size_t i = 0; i < size_t(sizes.size()); ++i) {
    FL_CHECK_VALUE(sizes[i] >= 1 && sizes[i] < (int64_t(1) << 31), "ncache: sizes must each be in [1, 2^31), got ",
                   errors::list(sizes));
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
template <typename Tensor>
void check_table_shapes(const Tensor& keys, const Tensor& eids, const Tensor& times, const Tensor& values,
                        const char* op) {
  using ST = torch::headeronly::ScalarType;
  FL_CHECK_TYPE(keys.scalar_type() == ST::Long, "ncache.", op, ": keys must be int64, got ", keys.scalar_type());
  FL_CHECK_VALUE(keys.dim() == 2, "ncache.", op, ": keys must be an [N, S] table, got shape ",
                 errors::list(keys.sizes()));
  FL_CHECK_TYPE(values.scalar_type() == ST::Float, "ncache.", op, ": values must be float32, got ",
                values.scalar_type());
  FL_CHECK_VALUE(values.dim() == 3 && values.size(0) == keys.size(0) && values.size(1) == keys.size(1), "ncache.",
                 op, ": values must be [N, S, D] = [", keys.size(0), ", ", keys.size(1), ", D] like keys ",
                 errors::list(keys.sizes()), ", got shape ", errors::list(values.sizes()));
  if (eids.defined()) {
    FL_CHECK_TYPE(eids.scalar_type() == ST::Long, "ncache.", op, ": eids must be int64, got ", eids.scalar_type());
    FL_CHECK_VALUE(eids.sizes() == keys.sizes(), "ncache.", op, ": eids must have keys' shape ",
                   errors::list(keys.sizes()), ", got ", errors::list(eids.sizes()));
  }
  if (times.defined()) {
    FL_CHECK_TYPE(times.scalar_type() == ST::Double, "ncache.", op, ": times must be float64, got ",
                  times.scalar_type());
    FL_CHECK_VALUE(times.sizes() == keys.sizes(), "ncache.", op, ": times must have keys' shape ",
                   errors::list(keys.sizes()), ", got ", errors::list(times.sizes()));
  }
  FL_CHECK_VALUE(values.device() == keys.device() && (!eids.defined() || eids.device() == keys.device()) &&
                     (!times.defined() || times.device() == keys.device()),
                 "ncache.", op, ": the tables must be on one device, keys is on ", device_name(keys.device()));
}

// The state tables are updated in place, so they must already be dense: a copy would lose the update.
template <typename Tensor, typename Sizes>
Layout check_tables(const Tensor& keys, const Tensor& eids, const Tensor& times, const Tensor& values,
                    const Sizes& sizes, const char* op = "update") {
  check_table_shapes(keys, eids, times, values, op);
  for (const Tensor* t : {&keys, &eids, &times, &values})
    FL_CHECK_VALUE(!t->defined() || t->is_contiguous(), "ncache.", op,
                   ": the tables must be contiguous (they are written in place), got strides ",
                   errors::list(t->strides()), " for shape ", errors::list(t->sizes()),
                   "; call .contiguous() on the cache's tables first");
  const Layout L = make_layout(sizes, values.size(2));
  FL_CHECK_VALUE(keys.size(1) == L.S, "ncache.", op, ": keys has ", keys.size(1), " columns, sizes ",
                 errors::list(sizes), " imply S = 1 + sum(sizes) = ", L.S);
  return L;
}

// An index vector of the kernels ([B] int64 on the cache's device). Each build's check_ids runs this and returns
// the vector contiguous (ncache_cpu.cpp; ncache_checks_aten.h for the CUDA kernels).
template <typename Tensor>
void check_id_vector(const Tensor& x, const char* name, const Tensor& keys) {
  FL_CHECK_TYPE(x.scalar_type() == torch::headeronly::ScalarType::Long, "ncache: ", name, " must be int64, got ",
                x.scalar_type());
  FL_CHECK_VALUE(x.dim() == 1, "ncache: ", name, " must be 1-D, got shape ", errors::list(x.sizes()));
  FL_CHECK_VALUE(x.device() == keys.device(), "ncache: ", name, " is on ", device_name(x.device()),
                 ", the cache on ", device_name(keys.device()));
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
  FL_CHECK_VALUE(replace_prob >= 0.0 && replace_prob <= 1.0, "ncache: replace_prob must be in [0, 1], got ",
                 replace_prob);
  if (replace_prob >= 1.0) return uint64_t(1) << 53;
  return uint64_t(replace_prob * double(uint64_t(1) << 53));
}

}  // namespace fastlayers::ncache
