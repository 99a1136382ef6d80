// The N-cache's per-ISA kernels, compiled once per instruction set (common/cpu_isa.h): included after the target
// pragma by ncache_<isa>.cpp with FL_ISA_NS set. No include guard on purpose.
//
// group_codes: a key's hop-2 slot is its hop-1 slot >> r on an aligned state, so hop-1 columns c and hop-2 column
// c >> r of both rows form a group no other key can match; every code bit is one compare inside the group.
// Bits: u's hop 0/1/2 -> 1/2/4, v's -> 8/16/32 (ncache_common.h, pair_code).

namespace fastlayers::ncache::FL_ISA_NS {

// Any shape: one column at a time.
inline void group_codes_any(const int64_t* ku, const int64_t* kv, int64_t m1, int64_t m2, GroupCodes& o) {
  const int r = __builtin_ctzll(uint64_t(m1 / m2));
  const int64_t U = ku[0], V = kv[0], *A = ku + 1, *B = kv + 1, *X = ku + 1 + m1, *Y = kv + 1 + m1;
  for (int64_t g = 0; g < m2; ++g) {
    const int64_t x = X[g], y = Y[g];
    int64_t inAX = 0, inAY = 0, inBX = 0, inBY = 0;
    for (int64_t c = g << r; c < (g + 1) << r; ++c) {
      const int64_t a = A[c], b = B[c], av = a >= 0, bv = b >= 0;
      const int64_t ax = av & (a == x), ay = av & (a == y), bx = bv & (b == x), by = bv & (b == y);
      const int64_t ab = av & (a == b);
      inAX |= ax, inAY |= ay, inBX |= bx, inBY |= by;
      o.code[0][c] = av * (2 | (a == U) | ax << 2 | (a == V) << 3 | ab << 4 | ay << 5);
      o.code[2][c] = bv * (16 | (b == U) | ab << 1 | bx << 2 | (b == V) << 3 | by << 5);
    }
    const int64_t xv = x >= 0, yv = y >= 0, xy = xv & (x == y);
    o.code[1][g] = xv * (4 | (x == U) | inAX << 1 | (x == V) << 3 | inBX << 4 | xy << 5);
    o.code[3][g] = yv * (32 | (y == U) | inAY << 1 | xy << 2 | (y == V) << 3 | inBY << 4);
  }
  const int64_t below[4] = {1, 3, 15, 31};
  for (int s = 0; s < 4; ++s) {
    const int64_t m = (s & 1) ? m2 : m1;
    uint64_t bits = 0;
    for (int64_t c = 0; c < m; ++c) bits |= uint64_t(o.code[s][c] != 0 && !(o.code[s][c] & below[s])) << c;
    o.emit[s] = bits;
  }
}

#if FL_GROUP_VECTORS
// NAT's shape (m1 = 2 * m2, m1 a multiple of 4) with AVX2: four hop-1 columns and their two hop-2 columns per
// step, each hop-2 key duplicated across the two lanes of its group.
inline void group_codes_pairs(const int64_t* ku, const int64_t* kv, int64_t m1, GroupCodes& o) {
  const int64_t *A = ku + 1, *B = kv + 1, *X = ku + 1 + m1, *Y = kv + 1 + m1;
  const __m256i U = _mm256_set1_epi64x(ku[0]), V = _mm256_set1_epi64x(kv[0]), none = _mm256_set1_epi64x(-1);
  auto bits = [](int64_t b) { return _mm256_set1_epi64x(b); };
  auto eq = [](__m256i p, __m256i q) { return _mm256_cmpeq_epi64(p, q); };
  auto And = [](__m256i p, __m256i q) { return _mm256_and_si256(p, q); };
  auto Or = [](__m256i p, __m256i q) { return _mm256_or_si256(p, q); };
  auto lanes = [](__m256i m) { return uint64_t(_mm256_movemask_pd(_mm256_castsi256_pd(m))); };
  // Lanes 0..3 = groups g, g, g + 1, g + 1 of a two-key load.
  auto dup = [](const int64_t* p) {
    return _mm256_permute4x64_epi64(_mm256_castsi128_si256(_mm_loadu_si128(reinterpret_cast<const __m128i*>(p))),
                                    0x50);
  };
  // The OR of each group's two lanes, in both.
  auto group_or = [](__m256i m) { return _mm256_or_si256(m, _mm256_shuffle_epi32(m, 0x4E)); };
  uint64_t eA = 0, eX = 0, eB = 0, eY = 0;
  for (int64_t c = 0; c < m1; c += 4) {
    const int64_t g = c >> 1;
    const __m256i a = _mm256_loadu_si256(reinterpret_cast<const __m256i*>(A + c));
    const __m256i b = _mm256_loadu_si256(reinterpret_cast<const __m256i*>(B + c));
    const __m256i x = dup(X + g), y = dup(Y + g);
    const __m256i av = _mm256_cmpgt_epi64(a, none), bv = _mm256_cmpgt_epi64(b, none);
    const __m256i xv = _mm256_cmpgt_epi64(x, none), yv = _mm256_cmpgt_epi64(y, none);
    const __m256i aU = eq(a, U), aV = eq(a, V), bU = eq(b, U), bV = eq(b, V), xU = eq(x, U), xV = eq(x, V);
    const __m256i yU = eq(y, U), yV = eq(y, V);
    const __m256i ax = eq(a, x), ay = eq(a, y), bx = eq(b, x), by = eq(b, y), ab = eq(a, b), xy = eq(x, y);
    const __m256i gax = group_or(ax), gay = group_or(ay), gbx = group_or(bx), gby = group_or(by);
    // Each entry's code (0 where empty); a compare of two empty slots is masked by the entry's own validity.
    const __m256i ca = And(av, Or(Or(Or(bits(2), And(aU, bits(1))), Or(And(ax, bits(4)), And(aV, bits(8)))),
                                  Or(And(ab, bits(16)), And(ay, bits(32)))));
    const __m256i cb = And(bv, Or(Or(Or(bits(16), And(bU, bits(1))), Or(And(ab, bits(2)), And(bx, bits(4)))),
                                  Or(And(bV, bits(8)), And(by, bits(32)))));
    const __m256i cx = And(xv, Or(Or(Or(bits(4), And(xU, bits(1))), Or(And(gax, bits(2)), And(xV, bits(8)))),
                                  Or(And(gbx, bits(16)), And(xy, bits(32)))));
    const __m256i cy = And(yv, Or(Or(Or(bits(32), And(yU, bits(1))), Or(And(gay, bits(2)), And(xy, bits(4)))),
                                  Or(And(yV, bits(8)), And(gby, bits(16)))));
    _mm256_storeu_si256(reinterpret_cast<__m256i*>(o.code[0] + c), ca);
    _mm256_storeu_si256(reinterpret_cast<__m256i*>(o.code[2] + c), cb);
    // Lanes 0 and 2 hold the two groups' hop-2 codes.
    auto store_lanes02 = [](int64_t* to, __m256i m) {
      _mm_storeu_si128(reinterpret_cast<__m128i*>(to), _mm256_castsi256_si128(_mm256_permute4x64_epi64(m, 0x08)));
    };
    store_lanes02(o.code[1] + g, cx);
    store_lanes02(o.code[3] + g, cy);
    // First places: occupied with no code bit below the entry's own.
    eA |= lanes(_mm256_andnot_si256(aU, av)) << c;
    eB |= lanes(_mm256_andnot_si256(Or(Or(bU, ab), Or(bx, bV)), bv)) << c;
    const uint64_t fx = lanes(_mm256_andnot_si256(Or(xU, gax), xv));
    const uint64_t fy = lanes(_mm256_andnot_si256(Or(Or(yU, gay), Or(Or(xy, yV), gby)), yv));
    eX |= ((fx & 1) | (fx >> 1 & 2)) << g;
    eY |= ((fy & 1) | (fy >> 1 & 2)) << g;
  }
  o.emit[0] = eA, o.emit[1] = eX, o.emit[2] = eB, o.emit[3] = eY;
}
#endif

inline void group_codes(const int64_t* ku, const int64_t* kv, int64_t m1, int64_t m2, GroupCodes& o) {
#if FL_GROUP_VECTORS
  if (m1 == 2 * m2 && m1 % 4 == 0) return group_codes_pairs(ku, kv, m1, o);
#endif
  group_codes_any(ku, kv, m1, m2, o);
}

const Kernels& table() {
  static const Kernels t{&group_codes};
  return t;
}

}  // namespace fastlayers::ncache::FL_ISA_NS
