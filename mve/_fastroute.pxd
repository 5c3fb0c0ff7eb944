# The C-level contract of mve._fastroute: the kernels (PRNG, hash, alias pick, rendezvous pick,
# histogram buckets) as plain C, and the state each extension type keeps in C.
# The kernels are written in C rather than Cython so that 64-bit unsigned wrap-around, rotations
# and the 128-bit multiply read exactly like their reference definitions, and so that the bulk
# alias loop can have an AVX2 version chosen at run time (GCC/Clang on x86-64; scalar elsewhere).

cimport cython
from libc.stddef cimport ptrdiff_t
from libc.stdint cimport int64_t, uint8_t, uint32_t, uint64_t

cdef extern from *:
    """
    #include <float.h>
    #include <math.h>
    #include <stddef.h>
    #include <stdint.h>

    /* ---- PRNG: xoshiro256** (Blackman & Vigna), seeded by splitmix64 ---- */
    typedef struct { uint64_t s[4]; } mve_rng;

    static inline uint64_t mve_rotl(uint64_t x, int k) { return (x << k) | (x >> (64 - k)); }

    /* splitmix64's output function: a bijective 64-bit mix. */
    static inline uint64_t mve_mix64(uint64_t z) {
        z = (z ^ (z >> 30)) * 0xBF58476D1CE4E5B9ULL;
        z = (z ^ (z >> 27)) * 0x94D049BB133111EBULL;
        return z ^ (z >> 31);
    }

    static inline uint64_t mve_splitmix64_next(uint64_t *x) {
        *x += 0x9E3779B97F4A7C15ULL;
        return mve_mix64(*x);
    }

    /* Four consecutive splitmix64 outputs are distinct, so the state is never all zero. */
    static inline void mve_rng_seed(mve_rng *r, uint64_t seed) {
        uint64_t x = seed;
        for (int i = 0; i < 4; i++) r->s[i] = mve_splitmix64_next(&x);
    }

    static inline uint64_t mve_rng_next(mve_rng *r) {
        uint64_t *s = r->s;
        const uint64_t result = mve_rotl(s[1] * 5, 7) * 9;
        const uint64_t t = s[1] << 17;
        s[2] ^= s[0];
        s[3] ^= s[1];
        s[1] ^= s[2];
        s[0] ^= s[3];
        s[2] ^= t;
        s[3] = mve_rotl(s[3], 45);
        return result;
    }

    /* High 64 bits of a*b; the low 64 bits go to *lo. */
    static inline uint64_t mve_mul_hi(uint64_t a, uint64_t b, uint64_t *lo) {
        __uint128_t p = (__uint128_t)a * b;
        *lo = (uint64_t)p;
        return (uint64_t)(p >> 64);
    }

    /* Unbiased integer in [0, n), n >= 1 (Lemire's multiply-and-reject). */
    static inline uint64_t mve_rng_bounded(mve_rng *r, uint64_t n) {
        uint64_t lo;
        uint64_t hi = mve_mul_hi(mve_rng_next(r), n, &lo);
        if (lo < n) {
            const uint64_t reject_below = (0 - n) % n;
            while (lo < reject_below) hi = mve_mul_hi(mve_rng_next(r), n, &lo);
        }
        return hi;
    }

    /* ---- Walker/Vose alias table ----
       Each pick takes 32 random bits: column = high half of bits * m, coin = low half. Given
       the column, the coin is uniform on a lattice of step m, so a variant's probability is
       off by at most about m / 2**32 (2.3e-9 for 10 variants).
       A column keeps its own variant when coin < threshold, else takes its alias `other`;
       `flip` = own ^ other, so a pick is a mask and two xors. 16 bytes: a shift indexes it. */
    typedef struct { uint32_t threshold; uint32_t other; uint32_t flip; uint32_t unused; } mve_alias_entry;

    static inline uint32_t mve_alias_column(const mve_alias_entry *table, uint32_t m, uint32_t bits) {
        const uint64_t p = (uint64_t)bits * m;
        const mve_alias_entry *e = table + (p >> 32);
        /* A mask rather than '?:': the coin is random, and compilers turn a select on it into a
           branch that is mispredicted about half the time. */
        const uint32_t keep_mask = (uint32_t)0 - (uint32_t)((uint32_t)p < e->threshold);
        return e->other ^ (e->flip & keep_mask);
    }

    /* Four xoshiro256** streams side by side (s[word][lane]), so that one SIMD step makes four
       64-bit draws; a step's eight 32-bit halves (lane 0 low, lane 0 high, lane 1 low, ...)
       are used in that order, by the SIMD loop directly or from buf by the scalar code, so
       that pick, pick_many and fill draw one and the same stream. */
    typedef struct { uint64_t s[4][4]; uint32_t buf[8]; int next; } mve_alias_rng;

    static inline void mve_alias_rng_seed(mve_alias_rng *r, uint64_t seed) {
        uint64_t x = seed;  /* a lane's four words are distinct splitmix64 outputs: never all 0 */
        for (int lane = 0; lane < 4; lane++)
            for (int w = 0; w < 4; w++) r->s[w][lane] = mve_splitmix64_next(&x);
        r->next = 8;
    }

    static inline void mve_alias_rng_refill(mve_alias_rng *r) {
        for (int lane = 0; lane < 4; lane++) {
            uint64_t s0 = r->s[0][lane], s1 = r->s[1][lane], s2 = r->s[2][lane], s3 = r->s[3][lane];
            const uint64_t x = mve_rotl(s1 * 5, 7) * 9;
            const uint64_t t = s1 << 17;
            s2 ^= s0; s3 ^= s1; s1 ^= s2; s0 ^= s3; s2 ^= t; s3 = mve_rotl(s3, 45);
            r->s[0][lane] = s0; r->s[1][lane] = s1; r->s[2][lane] = s2; r->s[3][lane] = s3;
            r->buf[2 * lane] = (uint32_t)x;
            r->buf[2 * lane + 1] = (uint32_t)(x >> 32);
        }
        r->next = 0;
    }

    static inline int64_t mve_alias_pick(const mve_alias_entry *table, uint32_t m, mve_alias_rng *r) {
        if (r->next == 8) mve_alias_rng_refill(r);
        return mve_alias_column(table, m, r->buf[r->next++]);
    }

    /* The state is copied into a local: out may alias anything, and a state behind a pointer
       would be stored and reloaded around every write. */
    static inline __attribute__((always_inline)) void mve_alias_fill_scalar(
            const mve_alias_entry *table, uint32_t m, mve_alias_rng *r, int64_t *out,
            ptrdiff_t stride, ptrdiff_t n) {
        mve_alias_rng local = *r;
        for (ptrdiff_t i = 0; i < n; i++) out[i * stride] = mve_alias_pick(table, m, &local);
        *r = local;
    }

    #if defined(__GNUC__) && defined(__x86_64__)
    #include <immintrin.h>
    #define MVE_ALIAS_AVX2 1

    static int mve_cpu_has_avx2(void) {
        static int cached = -1;  /* a race here only computes the same answer twice */
        if (cached < 0) {
            __builtin_cpu_init();
            cached = __builtin_cpu_supports("avx2") ? 1 : 0;
        }
        return cached;
    }

    #define MVE_ROTL4(x, k) _mm256_or_si256(_mm256_slli_epi64((x), (k)), _mm256_srli_epi64((x), 64 - (k)))

    /* blocks * 8 picks into out, for tables of at most 16 columns (held in registers and
       looked up with permutes) when the buffer is empty: the same picks as the scalar code. */
    __attribute__((target("avx2")))
    static void mve_alias_fill_avx2(const mve_alias_entry *table, uint32_t m, mve_alias_rng *r,
                                    int64_t *out, ptrdiff_t blocks) {
        uint32_t thr[16] = {0}, oth[16] = {0}, flp[16] = {0};
        for (uint32_t j = 0; j < m; j++) {
            thr[j] = table[j].threshold ^ 0x80000000u;  /* unsigned order as signed order */
            oth[j] = table[j].other;
            flp[j] = table[j].flip;
        }
        const __m256i t0 = _mm256_loadu_si256((const __m256i *)thr), t1 = _mm256_loadu_si256((const __m256i *)(thr + 8));
        const __m256i o0 = _mm256_loadu_si256((const __m256i *)oth), o1 = _mm256_loadu_si256((const __m256i *)(oth + 8));
        const __m256i f0 = _mm256_loadu_si256((const __m256i *)flp), f1 = _mm256_loadu_si256((const __m256i *)(flp + 8));
        const __m256i columns = _mm256_set1_epi64x((long long)m);
        const __m256i sign = _mm256_set1_epi32((int)0x80000000u), seven = _mm256_set1_epi32(7);
        __m256i s0 = _mm256_loadu_si256((const __m256i *)r->s[0]), s1 = _mm256_loadu_si256((const __m256i *)r->s[1]);
        __m256i s2 = _mm256_loadu_si256((const __m256i *)r->s[2]), s3 = _mm256_loadu_si256((const __m256i *)r->s[3]);
        for (ptrdiff_t b = 0; b < blocks; b++) {
            __m256i x = _mm256_add_epi64(s1, _mm256_slli_epi64(s1, 2));  /* s1 * 5 */
            x = MVE_ROTL4(x, 7);
            x = _mm256_add_epi64(x, _mm256_slli_epi64(x, 3));            /* * 9 */
            const __m256i t = _mm256_slli_epi64(s1, 17);
            s2 = _mm256_xor_si256(s2, s0);
            s3 = _mm256_xor_si256(s3, s1);
            s1 = _mm256_xor_si256(s1, s2);
            s0 = _mm256_xor_si256(s0, s3);
            s2 = _mm256_xor_si256(s2, t);
            s3 = MVE_ROTL4(s3, 45);
            const __m256i even = _mm256_mul_epu32(x, columns);                         /* halves 0, 2, 4, 6 */
            const __m256i odd = _mm256_mul_epu32(_mm256_srli_epi64(x, 32), columns);  /* halves 1, 3, 5, 7 */
            const __m256i col = _mm256_blend_epi32(_mm256_srli_epi64(even, 32), odd, 0xAA);
            const __m256i coin = _mm256_xor_si256(_mm256_blend_epi32(even, _mm256_slli_epi64(odd, 32), 0xAA), sign);
            const __m256i upper = _mm256_cmpgt_epi32(col, seven);
            const __m256i th = _mm256_blendv_epi8(_mm256_permutevar8x32_epi32(t0, col), _mm256_permutevar8x32_epi32(t1, col), upper);
            const __m256i ot = _mm256_blendv_epi8(_mm256_permutevar8x32_epi32(o0, col), _mm256_permutevar8x32_epi32(o1, col), upper);
            const __m256i fl = _mm256_blendv_epi8(_mm256_permutevar8x32_epi32(f0, col), _mm256_permutevar8x32_epi32(f1, col), upper);
            const __m256i pick = _mm256_xor_si256(ot, _mm256_and_si256(fl, _mm256_cmpgt_epi32(th, coin)));
            _mm256_storeu_si256((__m256i *)(out + 8 * b), _mm256_cvtepu32_epi64(_mm256_castsi256_si128(pick)));
            _mm256_storeu_si256((__m256i *)(out + 8 * b + 4), _mm256_cvtepu32_epi64(_mm256_extracti128_si256(pick, 1)));
        }
        _mm256_storeu_si256((__m256i *)r->s[0], s0);
        _mm256_storeu_si256((__m256i *)r->s[1], s1);
        _mm256_storeu_si256((__m256i *)r->s[2], s2);
        _mm256_storeu_si256((__m256i *)r->s[3], s3);
    }
    #endif

    /* n picks into out[0], out[stride], ... (stride in elements): the same picks, in the same
       order, as n calls of mve_alias_pick. */
    static void mve_alias_fill(const mve_alias_entry *table, uint32_t m, mve_alias_rng *r,
                               int64_t *out, ptrdiff_t stride, ptrdiff_t n) {
        ptrdiff_t i = 0;
        for (; i < n && r->next < 8; i++) out[i * stride] = mve_alias_column(table, m, r->buf[r->next++]);
    #ifdef MVE_ALIAS_AVX2
        if (stride == 1 && m <= 16 && n - i >= 8 && mve_cpu_has_avx2()) {
            const ptrdiff_t blocks = (n - i) / 8;
            mve_alias_fill_avx2(table, m, r, out + i, blocks);
            i += blocks * 8;
        }
    #endif
        if (stride == 1) mve_alias_fill_scalar(table, m, r, out + i, 1, n - i);
        else mve_alias_fill_scalar(table, m, r, out + i * stride, stride, n - i);
    }

    /* Whether fill uses the AVX2 loop for tables of up to 16 columns (for the benchmark). */
    static int mve_alias_simd(void) {
    #ifdef MVE_ALIAS_AVX2
        return mve_cpu_has_avx2();
    #else
        return 0;
    #endif
    }

    /* ---- XXH64 (the xxHash specification), little-endian reads on any host ---- */
    #define MVE_XXH_P1 0x9E3779B185EBCA87ULL
    #define MVE_XXH_P2 0xC2B2AE3D27D4EB4FULL
    #define MVE_XXH_P3 0x165667B19E3779F9ULL
    #define MVE_XXH_P4 0x85EBCA77C2B2AE63ULL
    #define MVE_XXH_P5 0x27D4EB2F165667C5ULL

    static inline uint64_t mve_read64(const unsigned char *p) {
        return (uint64_t)p[0] | ((uint64_t)p[1] << 8) | ((uint64_t)p[2] << 16) | ((uint64_t)p[3] << 24)
             | ((uint64_t)p[4] << 32) | ((uint64_t)p[5] << 40) | ((uint64_t)p[6] << 48) | ((uint64_t)p[7] << 56);
    }

    static inline uint64_t mve_read32(const unsigned char *p) {
        return (uint64_t)p[0] | ((uint64_t)p[1] << 8) | ((uint64_t)p[2] << 16) | ((uint64_t)p[3] << 24);
    }

    static inline uint64_t mve_xxh_round(uint64_t acc, uint64_t input) {
        acc += input * MVE_XXH_P2;
        acc = mve_rotl(acc, 31);
        return acc * MVE_XXH_P1;
    }

    static inline uint64_t mve_xxh_merge(uint64_t acc, uint64_t val) {
        acc ^= mve_xxh_round(0, val);
        return acc * MVE_XXH_P1 + MVE_XXH_P4;
    }

    static inline uint64_t mve_xxh64(const unsigned char *p, size_t len, uint64_t seed) {
        const unsigned char *end = p + len;
        uint64_t h;
        if (len >= 32) {
            const unsigned char *limit = end - 32;
            uint64_t v1 = seed + MVE_XXH_P1 + MVE_XXH_P2, v2 = seed + MVE_XXH_P2;
            uint64_t v3 = seed, v4 = seed - MVE_XXH_P1;
            do {
                v1 = mve_xxh_round(v1, mve_read64(p)); p += 8;
                v2 = mve_xxh_round(v2, mve_read64(p)); p += 8;
                v3 = mve_xxh_round(v3, mve_read64(p)); p += 8;
                v4 = mve_xxh_round(v4, mve_read64(p)); p += 8;
            } while (p <= limit);
            h = mve_rotl(v1, 1) + mve_rotl(v2, 7) + mve_rotl(v3, 12) + mve_rotl(v4, 18);
            h = mve_xxh_merge(h, v1);
            h = mve_xxh_merge(h, v2);
            h = mve_xxh_merge(h, v3);
            h = mve_xxh_merge(h, v4);
        } else {
            h = seed + MVE_XXH_P5;
        }
        h += (uint64_t)len;
        while (p + 8 <= end) {
            h ^= mve_xxh_round(0, mve_read64(p));
            h = mve_rotl(h, 27) * MVE_XXH_P1 + MVE_XXH_P4;
            p += 8;
        }
        if (p + 4 <= end) {
            h ^= mve_read32(p) * MVE_XXH_P1;
            h = mve_rotl(h, 23) * MVE_XXH_P2 + MVE_XXH_P3;
            p += 4;
        }
        while (p < end) {
            h ^= (uint64_t)(*p) * MVE_XXH_P5;
            h = mve_rotl(h, 11) * MVE_XXH_P1;
            p++;
        }
        h ^= h >> 33;
        h *= MVE_XXH_P2;
        h ^= h >> 29;
        h *= MVE_XXH_P3;
        h ^= h >> 32;
        return h;
    }

    /* ---- weighted rendezvous hashing ----
       u_i = (52 random bits + 0.5) / 2**52 lies strictly inside (0, 1) and is exact in a double,
       so -log(u_i) > 0 and score_i = w_i / -log(u_i) is finite. max_i score_i picks i with
       probability w_i / sum(w); a strict '>' breaks exact ties towards the lower index. */
    static inline int64_t mve_rendezvous_pick(uint64_t key_hash, const double *weights,
                                              const uint64_t *salts, int64_t k) {
        int64_t best = -1;
        double best_score = -1.0;
        for (int64_t i = 0; i < k; i++) {
            if (!(weights[i] > 0.0)) continue;
            const uint64_t x = mve_mix64(key_hash ^ salts[i]);
            const double u = ((double)(x >> 12) + 0.5) * (1.0 / 4503599627370496.0);
            const double score = weights[i] / -log(u);
            if (score > best_score) { best_score = score; best = i; }
        }
        return best;
    }

    /* ---- log-linear latency histogram (microseconds) ----
       bucket 0 holds [0, 1); then each power of two [2**o, 2**(o+1)), o = 0..29, is split into
       64 equal sub-buckets (relative width <= 1/64); values >= 2**30 us (about 17.9 minutes)
       are counted in the top bucket. */
    #define MVE_HIST_SUB 64
    #define MVE_HIST_OCTAVES 30
    #define MVE_HIST_BUCKETS (1 + MVE_HIST_OCTAVES * MVE_HIST_SUB)
    #define MVE_HIST_TOP_VALUE 1073741824.0

    typedef struct {
        int64_t counts[MVE_HIST_BUCKETS];
        int64_t count;
        double sum;
        double min;
        double max;
    } mve_hist;

    static inline int mve_hist_index(double v) {
        if (v < 1.0) return 0;
        if (v >= MVE_HIST_TOP_VALUE) return MVE_HIST_BUCKETS - 1;
        int e;
        const double m = frexp(v, &e);  /* v = m * 2**e, m in [0.5, 1) */
        return 1 + (e - 1) * MVE_HIST_SUB + (int)((m * 2.0 - 1.0) * MVE_HIST_SUB);
    }

    static inline double mve_hist_lower(int b) {
        if (b == 0) return 0.0;
        return ldexp(1.0 + (double)((b - 1) % MVE_HIST_SUB) / MVE_HIST_SUB, (b - 1) / MVE_HIST_SUB);
    }

    static inline double mve_hist_upper(int b) {
        if (b == 0) return 1.0;
        return ldexp(1.0 + (double)((b - 1) % MVE_HIST_SUB + 1) / MVE_HIST_SUB, (b - 1) / MVE_HIST_SUB);
    }

    static inline void mve_hist_add(mve_hist *h, double v) {
        h->counts[mve_hist_index(v)] += 1;
        h->count += 1;
        h->sum += v;
        if (v < h->min) h->min = v;
        if (v > h->max) h->max = v;
    }
    """
    ctypedef struct mve_rng:
        uint64_t s[4]

    ctypedef struct mve_alias_entry:
        uint32_t threshold
        uint32_t other
        uint32_t flip

    ctypedef struct mve_alias_rng:
        pass                        # only the C kernels touch its fields

    enum:
        MVE_HIST_SUB
        MVE_HIST_OCTAVES
        MVE_HIST_BUCKETS

    ctypedef struct mve_hist:
        int64_t counts[MVE_HIST_BUCKETS]
        int64_t count
        double sum
        double min
        double max

    uint64_t mve_mix64(uint64_t z) noexcept nogil
    uint64_t mve_splitmix64_next(uint64_t *x) noexcept nogil
    void mve_rng_seed(mve_rng *r, uint64_t seed) noexcept nogil
    uint64_t mve_rng_next(mve_rng *r) noexcept nogil
    uint64_t mve_rng_bounded(mve_rng *r, uint64_t n) noexcept nogil
    void mve_alias_rng_seed(mve_alias_rng *r, uint64_t seed) noexcept nogil
    int64_t mve_alias_pick(const mve_alias_entry *table, uint32_t m, mve_alias_rng *r) noexcept nogil
    int mve_alias_simd() noexcept nogil
    void mve_alias_fill(const mve_alias_entry *table, uint32_t m, mve_alias_rng *r,
                        int64_t *out, ptrdiff_t stride, ptrdiff_t n) noexcept nogil
    uint64_t mve_xxh64(const unsigned char *p, size_t length, uint64_t seed) noexcept nogil
    int64_t mve_rendezvous_pick(uint64_t key_hash, const double *weights,
                                const uint64_t *salts, int64_t k) noexcept nogil
    int mve_hist_index(double v) noexcept nogil
    double mve_hist_lower(int b) noexcept nogil
    double mve_hist_upper(int b) noexcept nogil
    void mve_hist_add(mve_hist *h, double v) noexcept nogil


@cython.final
cdef class WeightedChooser:
    cdef mve_alias_rng _rng
    cdef object _table              # numpy uint8 buffer that owns the alias entries
    cdef const mve_alias_entry *_entries
    cdef uint32_t _m                # columns: the number of positive weights
    cdef object _weights            # the given weights, float64, read-only
    cdef int _fill(self, int64_t *out, Py_ssize_t stride, Py_ssize_t n) except -1


@cython.final
cdef class StickyChooser:
    cdef object _weights            # float64, read-only; owns the pointer below
    cdef object _salts              # uint64, one mixed seed per variant; owns the pointer below
    cdef const double *_w
    cdef const uint64_t *_s
    cdef int64_t _k
    cdef tuple _seeds
    cdef bint _default_seeds


@cython.final
cdef class InstanceBalancer:
    cdef mve_rng _rng
    cdef object _counts_owner       # int64 numpy array that owns the counters
    cdef int64_t *_counts
    cdef object _skipped_owner      # uint8 numpy array: 1 for an instance passed over while others serve
    cdef uint8_t *_skipped
    cdef int64_t _n_skipped
    cdef int64_t _n
    cdef bint _candidate(self, int64_t i, int64_t exclude, bint honour_skips) noexcept
    cdef int64_t _least(self, int64_t exclude, bint honour_skips) noexcept
    cdef int64_t _uniform(self, int64_t exclude, bint honour_skips) noexcept
    cdef int64_t _exclusion(self, object exclude) except -2


@cython.final
cdef class LatencyHistogram:
    cdef mve_hist _h
    cdef double _order_statistic(self, int64_t k) noexcept nogil
    cdef double _percentile(self, double q) noexcept nogil
