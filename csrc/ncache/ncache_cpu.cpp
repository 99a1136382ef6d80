// N-cache on the CPU: batched insert (update), row gather (lookup) and joint pair features.
//
// update groups the batch's 2B (owner, edge) incidences by owner, then writes the hops from the highest down:
// hop h >= 2 of an owner reads its partners' hop h-1 columns, which the later passes have not yet written, so
// every read sees the state as it was before the batch without copying it. Within a pass each owner writes only
// its own row, so owners run in parallel with no locks, and the per-slot winner is the maximum of a total order
// (time, edge id, key, rank): the result does not depend on the thread count.
#ifdef _OPENMP
#include <omp.h>
#endif

#include <algorithm>
#include <atomic>
#include <chrono>
#include <cmath>
#include <cstdio>
#include <cstdlib>
#include <mutex>
#include <cstring>
#include <optional>
#include <string>
#include <tuple>
#include <utility>
#include <vector>

#include "common/stable.h"
#include "ncache/ncache_common.h"
#include "ncache/ncache_isa.h"

namespace fastlayers::ncache {
namespace {

constexpr int64_t kOwnerGrain = 64;  // owners per task: a batch of a few hundred edges stays on one thread
constexpr int64_t kPairGrain = 32;

constexpr int64_t kAhead = 8;  // hop 0 / 1 rows are prefetched this many owners ahead: random rows miss the cache
constexpr int64_t kOwnerBlock = 8;  // owners whose partners' entries a hop >= 2 pass gathers at once

// Per-phase wall time, for profiling only: FASTLAYERS_NCACHE_PROFILE=1 records each call's nanoseconds per phase
// (thread 0's view in a parallel region) and prints the medians over the last half of the calls (the first half
// warms the cache up) to stderr at exit. Off, it costs one predicted branch per phase.
enum Phase { kUpdChecks, kUpdGroup, kUpdHop2, kUpdHop1, kUpdHop0, kPairChecks, kPairLoop, kPhases };
struct Profile {
  const bool on = std::getenv("FASTLAYERS_NCACHE_PROFILE") != nullptr;
  std::mutex mu;
  std::vector<int64_t> ns[kPhases];
  ~Profile() {
    if (!on) return;
    static const char* names[kPhases] = {"update: checks + validate", "update: group by owner", "update: hop-2 pass",
                                         "update: hop-1 pass", "update: hop-0 pass", "pairs: checks + alloc",
                                         "pairs: probe + write"};
    for (int i = 0; i < kPhases; ++i) {
      std::vector<int64_t> v(ns[i].begin() + ns[i].size() / 2, ns[i].end());
      if (v.empty()) continue;
      std::nth_element(v.begin(), v.begin() + v.size() / 2, v.end());
      std::fprintf(stderr, "ncache profile %-28s median %9.2f us  (%zu calls)\n", names[i],
                   double(v[v.size() / 2]) / 1e3, v.size());
    }
  }
};
Profile& profile() {
  static Profile p;
  return p;
}
inline int64_t now_ns() {
  return std::chrono::duration_cast<std::chrono::nanoseconds>(std::chrono::steady_clock::now().time_since_epoch())
      .count();
}
// Records the time since t0 for phase ph and restarts t0 (a no-op unless profiling).
inline void lap(Phase ph, int64_t& t0) {
  if (!profile().on) return;
  const int64_t t = now_ns();
  {
    std::lock_guard<std::mutex> lock(profile().mu);
    profile().ns[ph].push_back(t - t0);
  }
  t0 = t;
}

// Tuning knobs for experiments (read once): owners per update thread, pairs per pair_features thread.
int64_t knob(const char* name, int64_t dflt) {
  const char* e = std::getenv(name);
  return e ? std::max<int64_t>(1, std::atoll(e)) : dflt;
}

inline void prefetch(const void* p, int64_t bytes) {
  const char* c = static_cast<const char*>(p);
  for (int64_t i = 0; i < bytes; i += 64) __builtin_prefetch(c + i);
}

// An index vector of the kernels ([B] int64); returned contiguous.
Tensor check_ids(const Tensor& x, const char* name, const Tensor& keys) {
  check_id_vector(x, name, keys);
  return contig(x);
}

void check_batch(const Tensor& src, const Tensor& dst, const Tensor& t, const Tensor& eid,
                 const std::optional<Tensor>& edge_values, const Layout& L) {
  const int64_t B = src.size(0);
  FL_CHECK_VALUE(dst.size(0) == B && eid.size(0) == B && t.dim() == 1 && t.size(0) == B,
                 "ncache.update: src, dst, t and eid must have one length, got ", src.size(0), ", ", dst.size(0),
                 ", ", errors::list(t.sizes()), ", ", eid.size(0));
  FL_CHECK_TYPE(t.scalar_type() == dtype::kDouble, "ncache.update: t must be float64, got ", t.scalar_type());
  if (edge_values.has_value()) {
    const Tensor& v = *edge_values;
    FL_CHECK_TYPE(v.scalar_type() == dtype::kFloat, "ncache.update: edge_values must be float32, got ",
                  v.scalar_type());
    FL_CHECK_VALUE(v.dim() == 2 && v.size(0) == B && v.size(1) == L.D, "ncache.update: edge_values must be [", B,
                   ", ", L.D, "], got ", errors::list(v.sizes()));
    FL_CHECK_VALUE(v.is_cpu(), "ncache.update: edge_values must be on the CPU like the cache");
  }
}

void validate_values(const int64_t* s, const int64_t* d, const double* t, int64_t B, int64_t N, double last) {
  for (int64_t b = 0; b < B; ++b) {
    FL_CHECK_INDEX(s[b] >= 0 && s[b] < N, "ncache.update: src[", b, "] = ", s[b], " is out of range [0, ", N, ")");
    FL_CHECK_INDEX(d[b] >= 0 && d[b] < N, "ncache.update: dst[", b, "] = ", d[b], " is out of range [0, ", N, ")");
    FL_CHECK_VALUE(std::isfinite(t[b]) && t[b] >= 0, "ncache.update: t[", b, "] = ", t[b],
                   " must be finite and >= 0");
    FL_CHECK_VALUE(b == 0 || t[b] >= t[b - 1], "ncache.update: t must be non-decreasing within a batch, t[", b,
                   "] = ", t[b], " < t[", b - 1, "] = ", t[b - 1]);
  }
  FL_CHECK_VALUE(B == 0 || t[0] >= last, "ncache.update: the batch starts at t = ", t[0],
                 ", older than the cache's latest time ", last, " (reset() the cache to replay a stream)");
}

// NAT's shape (3 hops, hop sizes powers of two, m1 = m2 << r, m1 <= 64) on an aligned state (every key at its
// hash slot: what update writes; NCache checks a loaded or edited state once): the hop-2 slot of a key is its
// hop-1 slot >> r (slot_in keeps the top bits of one 32-bit hash), so the hop-1 columns 2^r g .. 2^r g + 2^r - 1
// and hop-2 column g of both rows form a group that no key outside it can match. Codes then come from
// column-wise compares with no hash per entry, and a key's places are found by the same compares. Entries and
// their order, codes and sums are those of pair_rows (the hashed probes): tests compare the two paths.
bool aligned_shape(const Layout& L) {
  auto pow2 = [](int64_t m) { return m >= 1 && (m & (m - 1)) == 0; };
  return L.hops == 3 && pow2(L.m[1]) && pow2(L.m[2]) && L.m[2] <= L.m[1] && L.m[1] <= kGroupMaxM1;
}

// The tables and last_time are written in place (schema Tensor(a!) .. Tensor(e!)): a stable Tensor is a handle,
// so const& still writes through mutable_data_ptr.
void update_cpu(const Tensor& keys, const Tensor& eids, const Tensor& times, const Tensor& values,
                const Tensor& last_time, const Tensor& src_in, const Tensor& dst_in, const Tensor& t_in,
                const Tensor& eid_in, const std::optional<Tensor>& edge_values_in, const std::vector<int64_t>& sizes,
                double replace_prob, int64_t seed, bool aligned) {
  FL_CHECK(keys.is_cpu(), "keys must be a CPU tensor");
  int64_t t0 = profile().on ? now_ns() : 0;
  const Layout L = check_tables(keys, eids, times, values, sizes);
  FL_CHECK_VALUE(last_time.numel() == 1 && last_time.scalar_type() == dtype::kDouble && last_time.is_cpu(),
                 "ncache.update: last_time must be a float64 CPU tensor of one element, got ",
                 last_time.scalar_type(), " of shape ", errors::list(last_time.sizes()), " on ",
                 device_name(last_time.device()));
  const Tensor src = check_ids(src_in, "src", keys), dst = check_ids(dst_in, "dst", keys);
  const Tensor eid = check_ids(eid_in, "eid", keys);
  check_batch(src, dst, t_in, eid, edge_values_in, L);
  FL_CHECK_VALUE(t_in.is_cpu(), "ncache.update: t must be on the CPU like the cache");
  const Tensor t = contig(t_in);
  const uint64_t thr = threshold53(replace_prob);
  const int64_t B = src.size(0), N = keys.size(0), S = L.S, D = L.D;
  const int64_t* sp = src.const_data_ptr<int64_t>();
  const int64_t* dp = dst.const_data_ptr<int64_t>();
  const int64_t* ep = eid.const_data_ptr<int64_t>();
  const double* tp = t.const_data_ptr<double>();
  double* last = last_time.mutable_data_ptr<double>();
  validate_values(sp, dp, tp, B, N, *last);
  if (B == 0) return;
  std::optional<Tensor> ev;
  if (edge_values_in.has_value()) ev = contig(*edge_values_in);
  const float* evp = ev.has_value() ? ev->const_data_ptr<float>() : nullptr;
  lap(kUpdChecks, t0);

  // Incidence j = 2b + side: side 0 is (owner src, partner dst), side 1 the reverse.
  std::vector<std::pair<int64_t, int64_t>> inc(2 * B);
  for (int64_t b = 0; b < B; ++b) {
    inc[2 * b] = {sp[b], 2 * b};
    inc[2 * b + 1] = {dp[b], 2 * b + 1};
  }
  std::sort(inc.begin(), inc.end());
  std::vector<int64_t> start;
  start.reserve(2 * B + 1);
  for (int64_t i = 0; i < 2 * B; ++i)
    if (i == 0 || inc[i].first != inc[i - 1].first) start.push_back(i);
  const int64_t U = int64_t(start.size());
  start.push_back(2 * B);

  int64_t* K = keys.mutable_data_ptr<int64_t>();
  int64_t* E = eids.mutable_data_ptr<int64_t>();
  double* T = times.mutable_data_ptr<double>();
  float* V = values.mutable_data_ptr<float>();
  const uint64_t sm = seed_mix_of(seed);
  lap(kUpdGroup, t0);
  auto hop_phase = [](int64_t h) { return h >= 2 ? kUpdHop2 : h == 1 ? kUpdHop1 : kUpdHop0; };

  // One pass per hop over the owners g0 .. g1 - 1 (a contiguous share of one thread).
  //
  // Hops >= 2 go in blocks of kOwnerBlock owners: first the partners' hop h-1 entries of the whole block (keys,
  // ids, times, values) are copied into thread-local buffers, then the block's offers and commits read those. The
  // copy is streaming loads with no dependence between segments, so many misses are in flight at once; reading
  // the tables in the offer loop, each occupied entry's time, id and value waited on its own miss.
  auto pass = [&](int64_t h, int64_t g0, int64_t g1) {
    const int64_t M = L.m[h], off = L.off[h];
    std::vector<Best> best(M);
    for (auto& x : best) x.rank = -1;
    // Slots offered a candidate for the current owner: an owner usually gets a few candidates for a table of
    // 16 or 32 slots, so the write-out and reset visit these, not the whole table.
    std::vector<int64_t> touched;
    touched.reserve(64);
    auto partner_of = [&](int64_t i) {
      const int64_t j = inc[i].second;
      return (j & 1) ? sp[j >> 1] : dp[j >> 1];
    };
    auto offer = [&](int64_t slot, double ct, int64_t ce, int64_t ck, int64_t cr, int64_t csrc) {
      Best& x = best[slot];
      if (x.rank < 0) {
        touched.push_back(slot);
        x = {ct, ce, ck, cr, csrc};
      } else if (beats(ct, ce, ck, cr, x.t, x.eid, x.key, x.rank)) {
        x = {ct, ce, ck, cr, csrc};
      }
    };
    auto commit = [&](int64_t o, const float* copied) {
      for (const int64_t slot : touched) {
        Best& x = best[slot];
        x.rank = -1;  // reset for the next owner; the fields stay readable below
        commit_slot(K, E, T, V, o * S + off + slot, x, h, o, sm, thr, evp, copied, D);
      }
      touched.clear();
    };
    if (h < 2) {
      // The slots an owner writes are known up front: hop 0 is column 0, hop 1 the partners' hash slots.
      auto warm = [&](int64_t g) {
        const int64_t o = inc[start[g]].first;
        prefetch(K + o * S + off, M * 8);
        for (int64_t i = start[g]; i < start[g + 1]; ++i) {
          const int64_t at = o * S + off + (h == 0 ? 0 : slot_in(key_hash(partner_of(i), sm), M));
          __builtin_prefetch(E + at, 1);
          __builtin_prefetch(T + at, 1);
          __builtin_prefetch(V + at * D, 1);
        }
      };
      for (int64_t g = g0; g < std::min(g1, g0 + kAhead); ++g) warm(g);
      for (int64_t g = g0; g < g1; ++g) {
        if (g + kAhead < g1) warm(g + kAhead);
        const int64_t o = inc[start[g]].first;
        for (int64_t i = start[g]; i < start[g + 1]; ++i) {
          const int64_t j = inc[i].second, b = j >> 1, partner = partner_of(i);
          if (h == 0) offer(0, tp[b], ep[b], o, j, b);
          else offer(slot_in(key_hash(partner, sm), M), tp[b], ep[b], partner, j, b);
        }
        commit(o, V);
      }
      return;
    }
    const int64_t pm = L.m[h - 1], poff0 = L.off[h - 1];
    // On an aligned state a hop-1 entry's hop-2 slot is its column >> shift (see aligned_shape); -1: hash it.
    const int shift = aligned && h == 2 && aligned_shape(L) ? __builtin_ctzll(uint64_t(pm / M)) : -1;
    thread_local std::vector<int64_t> kb, eb;
    thread_local std::vector<double> tb;
    thread_local std::vector<float> vb;
    // The partners' segments and the owners' hop-h lines of owners g .. g + kOwnerBlock: the gather below and
    // the commits then find them in cache.
    auto warm_block = [&](int64_t g) {
      for (int64_t q = g; q < std::min(g1, g + kOwnerBlock); ++q) {
        const int64_t at = inc[start[q]].first * S + off;
        prefetch(K + at, M * 8);
        prefetch(E + at, M * 8);
        prefetch(T + at, M * 8);
        prefetch(V + at * D, M * D * 4);
        for (int64_t i = start[q]; i < start[q + 1]; ++i) {
          const int64_t poff = partner_of(i) * S + poff0;
          prefetch(K + poff, pm * 8);
          prefetch(E + poff, pm * 8);
          prefetch(T + poff, pm * 8);
          prefetch(V + poff * D, pm * D * 4);
        }
      }
    };
    warm_block(g0);
    for (int64_t gb = g0; gb < g1; gb += kOwnerBlock) {
      const int64_t ge = std::min(g1, gb + kOwnerBlock), i0 = start[gb], n = start[ge] - i0;
      kb.resize(size_t(n * pm));
      eb.resize(size_t(n * pm));
      tb.resize(size_t(n * pm));
      vb.resize(size_t(n * pm * D));
      for (int64_t i = 0; i < n; ++i) {
        const int64_t poff = partner_of(i0 + i) * S + poff0;
        std::memcpy(kb.data() + i * pm, K + poff, sizeof(int64_t) * pm);
        std::memcpy(eb.data() + i * pm, E + poff, sizeof(int64_t) * pm);
        std::memcpy(tb.data() + i * pm, T + poff, sizeof(double) * pm);
        std::memcpy(vb.data() + i * pm * D, V + poff * D, sizeof(float) * pm * D);
      }
      if (ge < g1) warm_block(ge);
      for (int64_t g = gb; g < ge; ++g) {
        const int64_t o = inc[start[g]].first;
        for (int64_t i = start[g]; i < start[g + 1]; ++i) {
          const int64_t j = inc[i].second, base = (i - i0) * pm;
          const int64_t* kr = kb.data() + base;
          // Occupied columns as bitmask words built without branches (a sparse row mispredicts a
          // test-and-branch on each occupied slot), then visited by their set bits.
          for (int64_t c0 = 0; c0 < pm; c0 += 64) {
            const int64_t cn = std::min<int64_t>(64, pm - c0);
            uint64_t bits = 0;
            for (int64_t c = 0; c < cn; ++c) bits |= uint64_t(kr[c0 + c] >= 0) << c;
            for (; bits; bits &= bits - 1) {
              const int64_t c = c0 + __builtin_ctzll(bits), k = kr[c];
              const int64_t slot = shift >= 0 ? c >> shift : slot_in(key_hash(k, sm), M);
              offer(slot, tb[base + c], eb[base + c], k, j * pm + c, base + c);
            }
          }
        }
        commit(o, vb.data());
      }
    }
  };
  // The passes run in one parallel region with a barrier between hops, not one region per hop: waking the
  // worker threads three times per batch cost more than the work of a small batch.
  static const int64_t owner_grain = knob("FASTLAYERS_NCACHE_OWNER_GRAIN", kOwnerGrain);
  // at::in_parallel_region() has no stable counterpart; torch's CPU parallel backend is OpenMP, where it is
  // omp_in_parallel().
#ifdef _OPENMP
  const bool nested = omp_in_parallel();
#else
  const bool nested = false;
#endif
  const int64_t nt =
      nested ? 1
             : std::min<int64_t>(num_threads(), (U + owner_grain - 1) / owner_grain);
#ifdef _OPENMP
  if (nt > 1) {
#pragma omp parallel num_threads(nt)
    {
      const int64_t tid = omp_get_thread_num(), n = omp_get_num_threads();
      const int64_t g0 = U * tid / n, g1 = U * (tid + 1) / n;
      for (int64_t h = L.hops - 1; h >= 0; --h) {
        pass(h, g0, g1);
#pragma omp barrier
        if (tid == 0) lap(hop_phase(h), t0);
      }
    }
  } else
#endif
  {
    for (int64_t h = L.hops - 1; h >= 0; --h) {
      pass(h, 0, U);
      lap(hop_phase(h), t0);
    }
  }
  *last = std::max(*last, tp[B - 1]);
}

// Entries of hops >= 1 that are not at their key's hash slot: 0 on every state that update writes. NCache runs
// this once on a state it did not write (loaded, assigned or edited in place) to decide whether the kernels may
// take the aligned shortcuts (ops ncache_update / ncache_pair_features, argument aligned).
int64_t misplaced_cpu(const Tensor& keys_in, const std::vector<int64_t>& sizes, int64_t seed) {
  FL_CHECK(keys_in.is_cpu(), "keys_in must be a CPU tensor");
  FL_CHECK_TYPE(keys_in.scalar_type() == dtype::kLong, "ncache.misplaced: keys must be int64, got ",
                keys_in.scalar_type());
  FL_CHECK_VALUE(keys_in.dim() == 2, "ncache.misplaced: keys must be an [N, S] table, got shape ",
                 errors::list(keys_in.sizes()));
  const Layout L = make_layout(sizes, 0);
  FL_CHECK_VALUE(keys_in.size(1) == L.S, "ncache.misplaced: keys has ", keys_in.size(1), " columns, sizes ",
                 errors::list(sizes), " imply S = ", L.S);
  const Tensor keys = contig(keys_in);
  const int64_t* K = keys.const_data_ptr<int64_t>();
  const int64_t N = keys.size(0), S = L.S;
  const uint64_t sm = seed_mix_of(seed);
  std::atomic<int64_t> bad{0};
  fastlayers::parallel_for(0, N, 1024, [&](int64_t r0, int64_t r1) {
    int64_t n = 0;
    for (int64_t r = r0; r < r1; ++r)
      for (int64_t h = 1; h < L.hops; ++h)
        for (int64_t c = 0; c < L.m[h]; ++c) {
          const int64_t k = K[r * S + L.off[h] + c];
          n += k >= 0 && slot_in(key_hash(k, sm), L.m[h]) != c;
        }
    bad += n;
  });
  return bad.load();
}

void check_nodes(const int64_t* p, int64_t n, int64_t N, const char* op, const char* name) {
  for (int64_t i = 0; i < n; ++i)
    FL_CHECK_INDEX(p[i] >= 0 && p[i] < N, "ncache.", op, ": ", name, "[", i, "] = ", p[i],
                   " is out of range [0, ", N, ")");
}

std::tuple<Tensor, Tensor, Tensor, Tensor> lookup_cpu(const Tensor& keys_in, const Tensor& eids_in,
                                                      const Tensor& times_in, const Tensor& values_in,
                                                      const Tensor& nodes_in) {
  FL_CHECK(keys_in.is_cpu(), "keys_in must be a CPU tensor");
  check_table_shapes(keys_in, eids_in, times_in, values_in, "lookup");
  // Read-only here, so any layout is served (a table loaded with load_state_dict(assign=True) may be a view).
  const Tensor keys = contig(keys_in), eids = contig(eids_in), times = contig(times_in), values = contig(values_in);
  const Tensor nodes = check_ids(nodes_in, "nodes", keys);
  const int64_t n = nodes.size(0), N = keys.size(0), S = keys.size(1), D = values.size(2);
  const int64_t* np = nodes.const_data_ptr<int64_t>();
  check_nodes(np, n, N, "lookup", "nodes");
  Tensor ok = empty_cached({n, S}, dtype::kLong, keys);
  Tensor oe = empty_cached({n, S}, dtype::kLong, eids);
  Tensor ot = empty_cached({n, S}, dtype::kDouble, times);
  Tensor ov = empty_cached({n, S, D}, dtype::kFloat, values);
  const int64_t* K = keys.const_data_ptr<int64_t>();
  const int64_t* E = eids.const_data_ptr<int64_t>();
  const double* T = times.const_data_ptr<double>();
  const float* V = values.const_data_ptr<float>();
  int64_t* ko = ok.mutable_data_ptr<int64_t>();
  int64_t* eo = oe.mutable_data_ptr<int64_t>();
  double* to = ot.mutable_data_ptr<double>();
  float* vo = ov.mutable_data_ptr<float>();
  fastlayers::parallel_for(0, n, 256, [&](int64_t i0, int64_t i1) {
    for (int64_t i = i0; i < i1; ++i) {
      const int64_t r = np[i];
      std::memcpy(ko + i * S, K + r * S, sizeof(int64_t) * S);
      std::memcpy(eo + i * S, E + r * S, sizeof(int64_t) * S);
      std::memcpy(to + i * S, T + r * S, sizeof(double) * S);
      std::memcpy(vo + i * S * D, V + r * S * D, sizeof(float) * S * D);
    }
  });
  return {ok, oe, ot, ov};
}

// Output and input pointers of one pair_features call.
struct PairArgs {
  const int64_t* K;
  const float* V;
  const int64_t* up;
  const int64_t* vp;
  int64_t* ko;
  int64_t* co;
  float* fo;
  bool* mo;
  int64_t* cnt;
  Layout L;
  uint64_t sm;
};

// Pairs p0 .. p1 - 1. HT / DT: the hop count and value dim when known at compile time (NAT's 3 hops and D = 4
// get fully unrolled probes and one vector per feature), 0 = read from the layout. The codes are pair_code's
// (ncache_common.h) with the hop loop unrolled: the probe places and bit order are the same, so CPU and CUDA emit
// the same codes, and features are summed in the same (bit) order from 0.0f.
//
// Pairs go in blocks of kPairBlock: first both rows of every pair of the block (keys and values) are copied into
// a thread-local buffer, then the block is computed from that buffer. The copy is plain streaming loads with no
// dependence between rows, so the core keeps many row misses in flight; probing the tables directly, each probe
// and value read waited on its own miss (perf: ~90% of the loop's samples on three loads) and prefetching pairs
// ahead could not keep enough lines in flight. The next block's key rows are prefetched while a block computes.
constexpr int64_t kPairBlock = 16;

// The block loop both pair kernels share: gathers both rows (keys, values) of each pair of a block into the
// thread-local buffers, prefetches the next block's key rows, then calls row(p, K, V, r0, r1) for each pair with
// K / V the buffers and r0 / r1 the flat offsets of its u and v rows there.
template <typename Row>
void for_each_gathered_pair(const PairArgs& a, int64_t p0, int64_t p1, int64_t D, Row&& row) {
  const int64_t S = a.L.S;
  const int64_t *up = a.up, *vp = a.vp;
  thread_local std::vector<int64_t> kbuf;
  thread_local std::vector<float> vbuf;
  kbuf.resize(size_t(2 * kPairBlock * S));
  vbuf.resize(size_t(2 * kPairBlock * S * D));
  int64_t* const K = kbuf.data();
  float* const V = vbuf.data();
  auto warm_block = [&](int64_t q0) {
    for (int64_t p = q0; p < std::min(p1, q0 + kPairBlock); ++p) {
      prefetch(a.K + up[p] * S, S * 8);
      prefetch(a.K + vp[p] * S, S * 8);
    }
  };
  warm_block(p0);
  for (int64_t q0 = p0; q0 < p1; q0 += kPairBlock) {
    const int64_t q1 = std::min(p1, q0 + kPairBlock);
    for (int64_t p = q0; p < q1; ++p) {
      const int64_t i = 2 * (p - q0);
      std::memcpy(K + i * S, a.K + up[p] * S, sizeof(int64_t) * S);
      std::memcpy(K + (i + 1) * S, a.K + vp[p] * S, sizeof(int64_t) * S);
      std::memcpy(V + i * S * D, a.V + up[p] * S * D, sizeof(float) * S * D);
      std::memcpy(V + (i + 1) * S * D, a.V + vp[p] * S * D, sizeof(float) * S * D);
    }
    if (q1 < p1) warm_block(q1);
    for (int64_t p = q0; p < q1; ++p) {
      const int64_t r0 = 2 * (p - q0) * S;
      row(p, static_cast<const int64_t*>(K), static_cast<const float*>(V), r0, r0 + S);
    }
  }
}

// Pads pair p's output rows after its n entries (keys -1, codes 0, mask false, features 0) and stores its [H, H]
// common-neighbour counts.
inline void finish_pair(const PairArgs& a, int64_t p, int64_t n, int64_t D, const int64_t* counts, int64_t H) {
  const int64_t Kmax = 2 * a.L.S, pad = Kmax - n;
  std::memcpy(a.cnt + p * H * H, counts, sizeof(int64_t) * H * H);
  // Streaming (non-temporal) stores for this mostly-padding output were tried: slower on this machine.
  std::fill(a.ko + p * Kmax + n, a.ko + (p + 1) * Kmax, int64_t(-1));
  std::memset(a.co + p * Kmax + n, 0, sizeof(int64_t) * pad);
  std::memset(a.mo + p * Kmax + n, 0, sizeof(bool) * pad);
  std::memset(a.fo + (p * Kmax + n) * D, 0, sizeof(float) * pad * D);
}

template <int HT, int DT>
void pair_rows(const PairArgs& a, int64_t p0, int64_t p1) {
  const Layout& L = a.L;
  const int64_t H = HT ? HT : L.hops, D = DT ? DT : L.D, Kmax = 2 * L.S;
  for_each_gathered_pair(a, p0, p1, D, [&](int64_t p, const int64_t* K, const float* V, int64_t r0, int64_t r1) {
    int64_t c3[kMaxHops * kMaxHops] = {};
    int64_t* ko = a.ko + p * Kmax;
    int64_t* co = a.co + p * Kmax;
    bool* mo = a.mo + p * Kmax;
    float* fo = a.fo + p * Kmax * D;
    int64_t n = 0;
    // Entry k found in row `side` at hop `hop`: emitted at its first place only (see first_place).
    auto visit = [&](int64_t k, int64_t own_bit) {
      const uint64_t kh = key_hash(k, a.sm);
      int64_t at[2 * kMaxHops];
      int64_t code = 0;
      for (int64_t h = 0; h < H; ++h) {
        const int64_t c = h == 0 ? 0 : L.off[h] + slot_in(kh, L.m[h]);
        at[h] = r0 + c;
        at[H + h] = r1 + c;
        code |= int64_t(K[r0 + c] == k) << h | int64_t(K[r1 + c] == k) << (H + h);
      }
      if (!first_place(code, own_bit)) return;
      ko[n] = k;
      co[n] = code;
      mo[n] = true;
      float f[DT ? DT : 1];
      float* acc = DT ? f : fo + n * D;
      for (int64_t d = 0; d < D; ++d) acc[d] = 0.0f;
      for (int64_t bit = 0; bit < 2 * H; ++bit) {
        if (!(code >> bit & 1)) continue;
        const float* src = V + at[bit] * D;
        for (int64_t d = 0; d < D; ++d) acc[d] += src[d];
      }
      if (DT)
        for (int64_t d = 0; d < D; ++d) fo[n * D + d] = acc[d];
      ++n;
      const int64_t in_u = code & ((int64_t(1) << H) - 1), in_v = code >> H;
      if (in_u && in_v)
        for (int64_t i = 0; i < H; ++i)
          for (int64_t j = 0; j < H; ++j) c3[i * H + j] += (in_u >> i & 1) & (in_v >> j & 1);
    };
    // Each hop's occupied columns as bitmask words built without branches (caches are mostly sparse, and a
    // test-and-branch per column mispredicts on every occupied one), then visited by their set bits; sides and
    // hops in table order, so keys come out in order of first appearance.
    for (int64_t side = 0; side < 2; ++side) {
      const int64_t* kr = K + (side ? r1 : r0);
      for (int64_t h = 0; h < H; ++h) {
        const int64_t own_bit = side * H + h;
        for (int64_t c0 = L.off[h]; c0 < L.off[h + 1]; c0 += 64) {
          const int64_t cn = std::min<int64_t>(64, L.off[h + 1] - c0);
          uint64_t bits = 0;
          for (int64_t c = 0; c < cn; ++c) bits |= uint64_t(kr[c0 + c] >= 0) << c;
          for (; bits; bits &= bits - 1) visit(kr[c0 + __builtin_ctzll(bits)], own_bit);
        }
      }
    }
    finish_pair(a, p, n, D, c3, H);
  });
}

template <int DT>
void pair_rows_aligned(const PairArgs& a, int64_t p0, int64_t p1) {
  const Layout& L = a.L;
  const int64_t D = DT ? DT : L.D, Kmax = 2 * L.S, m1 = L.m[1], m2 = L.m[2];
  const auto group_codes = kernels().group_codes;
  GroupCodes gc;
  for_each_gathered_pair(a, p0, p1, D, [&](int64_t p, const int64_t* K, const float* V, int64_t r0, int64_t r1) {
    const int64_t row[2] = {r0, r1};
    group_codes(K + r0, K + r1, m1, m2, gc);
    int64_t c3[9] = {};
    int64_t* ko = a.ko + p * Kmax;
    int64_t* co = a.co + p * Kmax;
    float* fo = a.fo + p * Kmax * D;
    int64_t n = 0;
    // Emits key k with its code. own: the block index of the entry's own place; places(at) fills at[bit]
    // with the block index of the key's place for each code bit (any valid index where the bit is clear),
    // asked only for a key found in more than one place. The values are summed in bit order from 0.0f as in
    // pair_rows: a clear bit adds 0.0f, which leaves every sum as it was (never -0.0, having started at +0.0).
    auto emit = [&](int64_t k, int64_t code, int64_t own_bit, int64_t own, auto&& places) {
      ko[n] = k;
      co[n] = code;
      float* f = fo + n * D;
      ++n;
      if (code == (int64_t(1) << own_bit)) {
        if constexpr (DT > 0) {
          // Through a local copy: f and the values are not known to be apart, so the sum would go lane by lane.
          float t[DT];
          std::memcpy(t, V + own * D, sizeof(t));
          for (int d = 0; d < DT; ++d) t[d] += 0.0f;  // 0 + x as in the bit-order sum: -0.0 becomes 0.0
          std::memcpy(f, t, sizeof(t));
        } else {
          for (int64_t d = 0; d < D; ++d) f[d] = 0.0f + V[own * D + d];
        }
        return;
      }
      int64_t at[2 * kMaxHops];
      places(at);
      float acc[DT ? DT : 1];
      float* sum = DT ? acc : f;
      for (int64_t d = 0; d < D; ++d) sum[d] = 0.0f;
      for (int64_t bit = 0; bit < 6; ++bit) {
        const float* src = V + at[bit] * D;
        const bool on = code >> bit & 1;
        for (int64_t d = 0; d < D; ++d) sum[d] += on ? src[d] : 0.0f;
      }
      if (DT)
        for (int64_t d = 0; d < D; ++d) f[d] = acc[d];
      const int64_t in_u = code & 7, in_v = code >> 3;
      for (int64_t i = 0; i < 3; ++i)
        for (int64_t j = 0; j < 3; ++j) c3[i * 3 + j] += (in_u >> i & 1) & (in_v >> j & 1);
    };
    // Segment s (u's hop 1, u's hop 2, v's hop 1, v's hop 2). A key's places follow from its column: hop-1
    // column c and hop-2 column c >> r in both rows (for a hop-2 entry, the hop-1 column of its group that
    // holds it), hop 0 at column 0; no hash. Common neighbours are frequent for a positive pair: ~20 per pair
    // right after the pair's edge was inserted.
    const int64_t G = m1 / m2;
    const int r = __builtin_ctzll(uint64_t(G));
    auto segment = [&](int s, int64_t own_bit) {
      const bool hop2 = s & 1;
      const int64_t base = (s < 2 ? r0 : r1) + 1 + (hop2 ? m1 : 0);
      for (uint64_t bits = gc.emit[s]; bits; bits &= bits - 1) {
        const int64_t c = __builtin_ctzll(bits), k = K[base + c];
        emit(k, gc.code[s][c], own_bit, base + c, [&](int64_t* at) {
          const int64_t g = hop2 ? c : c >> r;
          const int64_t h1 = hop2 ? g << r : c;  // for a hop-2 entry: the group's first hop-1 column
          at[0] = r0, at[1] = r0 + 1 + h1, at[2] = r0 + 1 + m1 + g;
          at[3] = r1, at[4] = r1 + 1 + h1, at[5] = r1 + 1 + m1 + g;
          if (hop2)
            for (int64_t j = 1; j < G; ++j) {
              at[1] = K[r0 + 1 + h1 + j] == k ? r0 + 1 + h1 + j : at[1];
              at[4] = K[r1 + 1 + h1 + j] == k ? r1 + 1 + h1 + j : at[4];
            }
        });
      }
    };
    // Hop 0: the node ids' places come from the hashed probes (two per pair).
    int64_t at0[2 * kMaxHops];
    auto hashed = [&](int64_t* at) { std::memcpy(at, at0, sizeof(at0)); };
    const int64_t U0 = K[r0], V0 = K[r1];
    if (U0 >= 0) {
      const int64_t code = pair_code(K, row, L, U0, a.sm, at0);
      emit(U0, code, 0, r0, hashed);
    }
    segment(0, 1);
    segment(1, 2);
    if (V0 >= 0) {
      const int64_t code = pair_code(K, row, L, V0, a.sm, at0);
      if (first_place(code, 3)) emit(V0, code, 3, r1, hashed);
    }
    segment(2, 4);
    segment(3, 5);
    std::memset(a.mo + p * Kmax, 1, sizeof(bool) * n);
    finish_pair(a, p, n, D, c3, 3);
  });
}

// An AVX-512 version of this loop (vpmullq hashes, gathered probes, compress-stored keys) was measured: slower
// (470 vs 370 us for 400 pairs on a 10k-node cache), the loop waits on table and output lines, not on arithmetic.

std::tuple<Tensor, Tensor, Tensor, Tensor, Tensor> pair_features_cpu(const Tensor& keys_in, const Tensor& values_in,
                                                                      const Tensor& u_in, const Tensor& v_in,
                                                                      const std::vector<int64_t>& sizes, int64_t seed,
                                                                      bool aligned) {
  FL_CHECK(keys_in.is_cpu(), "keys_in must be a CPU tensor");
  int64_t t0 = profile().on ? now_ns() : 0;
  const Tensor none;  // the eids / times pair_features does not read
  check_table_shapes(keys_in, none, none, values_in, "pair_features");
  // Read-only: any layout is served by a dense copy.
  const Tensor keys = contig(keys_in), values = contig(values_in);
  const Layout L = check_tables(keys, none, none, values, sizes, "pair_features");
  const Tensor u = check_ids(u_in, "u", keys), v = check_ids(v_in, "v", keys);
  FL_CHECK_VALUE(u.size(0) == v.size(0), "ncache.pair_features: u and v must have one length, got ", u.size(0),
                 " and ", v.size(0));
  const int64_t P = u.size(0), N = keys.size(0), S = L.S, D = L.D, H = L.hops, Kmax = 2 * S;
  const int64_t* up = u.const_data_ptr<int64_t>();
  const int64_t* vp = v.const_data_ptr<int64_t>();
  check_nodes(up, P, N, "pair_features", "u");
  check_nodes(vp, P, N, "pair_features", "v");
  Tensor okeys = empty_cached({P, Kmax}, dtype::kLong, keys);
  Tensor codes = empty_cached({P, Kmax}, dtype::kLong, keys);
  Tensor feats = empty_cached({P, Kmax, D}, dtype::kFloat, values);
  Tensor mask = empty_cached({P, Kmax}, dtype::kBool, keys);
  Tensor counts = empty_cached({P, H, H}, dtype::kLong, keys);
  const PairArgs a{keys.const_data_ptr<int64_t>(), values.const_data_ptr<float>(), up, vp,
                   okeys.mutable_data_ptr<int64_t>(), codes.mutable_data_ptr<int64_t>(),
                   feats.mutable_data_ptr<float>(), mask.mutable_data_ptr<bool>(),
                   counts.mutable_data_ptr<int64_t>(), L, seed_mix_of(seed)};
  lap(kPairChecks, t0);
  auto rows = &pair_rows<0, 0>;
  if (H == 3 && D == 4) rows = &pair_rows<3, 4>;
  else if (H == 3) rows = &pair_rows<3, 0>;
  else if (H == 2) rows = &pair_rows<2, 0>;
  if (aligned && aligned_shape(L))
    rows = D == 4 ? &pair_rows_aligned<4> : &pair_rows_aligned<0>;
  static const int64_t pair_grain = knob("FASTLAYERS_NCACHE_PAIR_GRAIN", kPairGrain);
  fastlayers::parallel_for(0, P, pair_grain, [&](int64_t p0, int64_t p1) { rows(a, p0, p1); });
  lap(kPairLoop, t0);
  return {okeys, codes, feats, mask, counts};
}

}  // namespace

STABLE_TORCH_LIBRARY_IMPL(fastlayers, CPU, m) {
  m.impl("ncache_update", TORCH_BOX(&update_cpu));
  m.impl("ncache_lookup", TORCH_BOX(&lookup_cpu));
  m.impl("ncache_pair_features", TORCH_BOX(&pair_features_cpu));
  m.impl("ncache_misplaced", TORCH_BOX(&misplaced_cpu));
}

}  // namespace fastlayers::ncache
