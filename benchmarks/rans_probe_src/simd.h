// SIMD rANS32x16 (own code). S = W*G interleaved states (W = 8 for AVX2, 16 for AVX-512,
// G vectors per step); value j -> state j % S. Format: S u32 final encoder states, then ONE
// shared stream of u16 words. The encoder (values backwards, vectors G-1..0) appends the
// words of the lanes that flush, lane-ascending, going forwards; the decoder (values
// forwards, vectors 0..G-1) reads the stream backwards from its end: per vector it takes
// the popcount(need) words just below its read pointer and expands them into the lanes
// that need a word (lane-ascending).
// Encoder division: q = floor((x + 0.5) * (1/f)) in binary64 (exact for x < 2^32, f <= 2^16,
// see tenfold's _encoder_table for the same argument), x' = x + q * (2^n - f) + cum.
#pragma once
#include <immintrin.h>
#include "common.h"

typedef struct {
    uint32_t A[256];    // xmax16 = f << (16 - n) (<= 0xFFFF) | cum << 16
    double inv[256];    // 1 / f
    uint32_t fb[1 << 16];
    float val[1 << 16];
} simd_tab_t;

static void build_simd_tab(const dist_t *d, int n, simd_tab_t *t) {
    for (int s = 0; s < d->K; s++) {
        uint32_t xm = d->f[s] << (16 - n);
        if (xm > 0xFFFF) xm = 0xFFFF;
        t->A[s] = xm | (d->cum[s] << 16);
        t->inv[s] = 1.0 / d->f[s];
        for (uint32_t b = 0; b < d->f[s]; b++) {
            t->fb[d->cum[s] + b] = (d->f[s] << 16) | b;
            t->val[d->cum[s] + b] = (float)s;
        }
    }
}

// ---------------------------------------------------------------- AVX2, 8 lanes/vector
static uint32_t ctab8[256][8], etab8[256][8];  // compress / expand permutations
static void init_perm8(void) {
    for (int m = 0; m < 256; m++) {
        int k = 0;
        for (int i = 0; i < 8; i++) { ctab8[m][i] = 0; etab8[m][i] = 0; }
        for (int i = 0; i < 8; i++)
            if (m >> i & 1) { ctab8[m][k] = i; etab8[m][i] = k; k++; }
    }
}

static inline __attribute__((always_inline)) size_t enc_avx2(
    const int G, const uint16_t *sym, size_t n, const simd_tab_t *t, int nb, uint16_t *words,
    uint32_t *states) {
    __m256i x[8];
    for (int g = 0; g < G; g++) x[g] = _mm256_set1_epi32(RANS_L);
    const int S = 8 * G;
    uint16_t *w = words;
    const __m256i lo16 = _mm256_set1_epi32(0xFFFF), M = _mm256_set1_epi32(1 << nb);
    const __m128i fsh = _mm_cvtsi32_si128(16 - nb);
    const __m256d off = _mm256_set1_pd(2147483648.0 + 0.5);
    const __m128i sgn = _mm_set1_epi32((int)0x80000000u);
    for (size_t i = n; i >= (size_t)S; i -= S) {
        const uint16_t *sb = sym + i - S;
#pragma GCC unroll 8
        for (int g = G - 1; g >= 0; g--) {
            __m256i s = _mm256_cvtepu16_epi32(_mm_loadu_si128((const __m128i *)(sb + 8 * g)));
            __m256i a = _mm256_i32gather_epi32((const int *)t->A, s, 4);
            __m256i xm = _mm256_and_si256(a, lo16), cum = _mm256_srli_epi32(a, 16);
            __m256i hi = _mm256_srli_epi32(x[g], 16);
            __m256i keep = _mm256_cmpgt_epi32(xm, hi);  // no flush (both < 2^16)
            unsigned fl = (~_mm256_movemask_ps(_mm256_castsi256_ps(keep))) & 0xFF;
            __m256i c = _mm256_permutevar8x32_epi32(
                _mm256_and_si256(x[g], lo16), _mm256_loadu_si256((const __m256i *)ctab8[fl]));
            _mm_storeu_si128((__m128i *)w, _mm_packus_epi32(_mm256_castsi256_si128(c),
                                                            _mm256_extracti128_si256(c, 1)));
            w += __builtin_popcount(fl);
            __m256i xv = _mm256_blendv_epi8(hi, x[g], keep);
            __m128i s0 = _mm256_castsi256_si128(s), s1 = _mm256_extracti128_si256(s, 1);
            __m128i x0 = _mm256_castsi256_si128(xv), x1 = _mm256_extracti128_si256(xv, 1);
            __m256d d0 = _mm256_add_pd(_mm256_cvtepi32_pd(_mm_xor_si128(x0, sgn)), off);
            __m256d d1 = _mm256_add_pd(_mm256_cvtepi32_pd(_mm_xor_si128(x1, sgn)), off);
            d0 = _mm256_mul_pd(d0, _mm256_i32gather_pd(t->inv, s0, 8));
            d1 = _mm256_mul_pd(d1, _mm256_i32gather_pd(t->inv, s1, 8));
            __m256i q = _mm256_set_m128i(_mm256_cvttpd_epi32(d1), _mm256_cvttpd_epi32(d0));
            __m256i cm = _mm256_sub_epi32(M, _mm256_srl_epi32(xm, fsh));
            x[g] = _mm256_add_epi32(_mm256_add_epi32(xv, _mm256_mullo_epi32(q, cm)), cum);
        }
    }
    for (int g = 0; g < G; g++) _mm256_storeu_si256((__m256i *)(states + 8 * g), x[g]);
    return w - words;
}

static inline __attribute__((always_inline)) int dec_avx2(
    const int G, const uint16_t *words, size_t nwords, const uint32_t *states,
    const simd_tab_t *t, int nb, float *out, size_t n) {
    __m256i x[8];
    for (int g = 0; g < G; g++) x[g] = _mm256_loadu_si256((const __m256i *)(states + 8 * g));
    const int S = 8 * G;
    const uint16_t *r = words + nwords;
    const __m256i mask = _mm256_set1_epi32((1 << nb) - 1), lo16 = _mm256_set1_epi32(0xFFFF);
    const __m256i zero = _mm256_setzero_si256();
    const __m128i sh = _mm_cvtsi32_si128(nb);
    for (size_t j = 0; j < n; j += S) {
#pragma GCC unroll 8
        for (int g = 0; g < G; g++) {
            __m256i slot = _mm256_and_si256(x[g], mask);
            __m256i e = _mm256_i32gather_epi32((const int *)t->fb, slot, 4);
            _mm256_storeu_ps(out + j + 8 * g, _mm256_i32gather_ps(t->val, slot, 4));
            __m256i xv = _mm256_add_epi32(
                _mm256_mullo_epi32(_mm256_srli_epi32(e, 16), _mm256_srl_epi32(x[g], sh)),
                _mm256_and_si256(e, lo16));
            __m256i need = _mm256_cmpeq_epi32(_mm256_srli_epi32(xv, 16), zero);
            unsigned m = _mm256_movemask_ps(_mm256_castsi256_ps(need));
            r -= __builtin_popcount(m);
            __m256i wv = _mm256_cvtepu16_epi32(_mm_loadu_si128((const __m128i *)r));
            wv = _mm256_permutevar8x32_epi32(wv, _mm256_loadu_si256((const __m256i *)etab8[m]));
            x[g] = _mm256_blendv_epi8(xv, _mm256_or_si256(_mm256_slli_epi32(xv, 16), wv), need);
        }
    }
    int bad = r != words;
    for (int g = 0; g < G; g++)
        bad |= _mm256_movemask_epi8(_mm256_cmpeq_epi32(x[g], _mm256_set1_epi32(RANS_L))) != -1;
    return bad;
}

// ---------------------------------------------------------------- AVX-512, 16 lanes/vector
static inline __attribute__((always_inline)) size_t enc_avx512(
    const int G, const uint16_t *sym, size_t n, const simd_tab_t *t, int nb, uint16_t *words,
    uint32_t *states) {
    __m512i x[4];
    for (int g = 0; g < G; g++) x[g] = _mm512_set1_epi32(RANS_L);
    const int S = 16 * G;
    uint16_t *w = words;
    const __m512i lo16 = _mm512_set1_epi32(0xFFFF), M = _mm512_set1_epi32(1 << nb);
    const __m128i fsh = _mm_cvtsi32_si128(16 - nb);
    const __m512d half = _mm512_set1_pd(0.5);
    for (size_t i = n; i >= (size_t)S; i -= S) {
        const uint16_t *sb = sym + i - S;
#pragma GCC unroll 4
        for (int g = G - 1; g >= 0; g--) {
            __m512i s = _mm512_cvtepu16_epi32(_mm256_loadu_si256((const __m256i *)(sb + 16 * g)));
            __m512i a = _mm512_i32gather_epi32(s, (const int *)t->A, 4);
            __m512i xm = _mm512_and_si512(a, lo16), cum = _mm512_srli_epi32(a, 16);
            __m512i hi = _mm512_srli_epi32(x[g], 16);
            __mmask16 fl = _mm512_cmpge_epu32_mask(hi, xm);
#ifdef EXPAND32
            __m256i c = _mm512_cvtepi32_epi16(_mm512_maskz_compress_epi32(fl, x[g]));
#else
            __m256i c = _mm256_maskz_compress_epi16(fl, _mm512_cvtepi32_epi16(x[g]));
#endif
            _mm256_storeu_si256((__m256i *)w, c);
            w += __builtin_popcount(fl);
            __m512i xv = _mm512_mask_mov_epi32(x[g], fl, hi);
            __m512d d0 = _mm512_add_pd(_mm512_cvtepu32_pd(_mm512_castsi512_si256(xv)), half);
            __m512d d1 = _mm512_add_pd(_mm512_cvtepu32_pd(_mm512_extracti64x4_epi64(xv, 1)), half);
            d0 = _mm512_mul_pd(d0, _mm512_i32gather_pd(_mm512_castsi512_si256(s), t->inv, 8));
            d1 = _mm512_mul_pd(d1, _mm512_i32gather_pd(_mm512_extracti64x4_epi64(s, 1), t->inv, 8));
            __m512i q = _mm512_inserti64x4(_mm512_castsi256_si512(_mm512_cvttpd_epu32(d0)),
                                           _mm512_cvttpd_epu32(d1), 1);
            __m512i cm = _mm512_sub_epi32(M, _mm512_srl_epi32(xm, fsh));
            x[g] = _mm512_add_epi32(_mm512_add_epi32(xv, _mm512_mullo_epi32(q, cm)), cum);
        }
    }
    for (int g = 0; g < G; g++) _mm512_storeu_si512(states + 16 * g, x[g]);
    return w - words;
}

static inline __attribute__((always_inline)) int dec_avx512(
    const int G, const uint16_t *words, size_t nwords, const uint32_t *states,
    const simd_tab_t *t, int nb, float *out, size_t n) {
    __m512i x[4];
    for (int g = 0; g < G; g++) x[g] = _mm512_loadu_si512(states + 16 * g);
    const int S = 16 * G;
    const uint16_t *r = words + nwords;
    const __m512i mask = _mm512_set1_epi32((1 << nb) - 1), lo16 = _mm512_set1_epi32(0xFFFF);
    const __m512i L = _mm512_set1_epi32(RANS_L);
    const __m128i sh = _mm_cvtsi32_si128(nb);
    for (size_t j = 0; j < n; j += S) {
#pragma GCC unroll 4
        for (int g = 0; g < G; g++) {
            __m512i slot = _mm512_and_si512(x[g], mask);
            __m512i e = _mm512_i32gather_epi32(slot, (const int *)t->fb, 4);
#ifdef NOVAL
            _mm512_storeu_si512(out + j + 16 * g, slot);
#else
            _mm512_storeu_ps(out + j + 16 * g, _mm512_i32gather_ps(slot, t->val, 4));
#endif
            __m512i xv = _mm512_add_epi32(
                _mm512_mullo_epi32(_mm512_srli_epi32(e, 16), _mm512_srl_epi32(x[g], sh)),
                _mm512_and_si512(e, lo16));
            __mmask16 m = _mm512_cmplt_epu32_mask(xv, L);
            r -= __builtin_popcount(m);
#ifdef EXPAND32
            __m512i wv = _mm512_maskz_expand_epi32(
                m, _mm512_cvtepu16_epi32(_mm256_loadu_si256((const __m256i *)r)));
#else
            __m512i wv = _mm512_cvtepu16_epi32(
                _mm256_maskz_expand_epi16(m, _mm256_loadu_si256((const __m256i *)r)));
#endif
            x[g] = _mm512_mask_or_epi32(xv, m, _mm512_slli_epi32(xv, 16), wv);
        }
    }
    int bad = r != words;
    for (int g = 0; g < G; g++) bad |= _mm512_cmpneq_epu32_mask(x[g], L) != 0;
    return bad;
}

// ---------------------------------------------------------------- AVX-512, "b" variants
// encoder: no 1/f table: q0 = trunc(float(x) / float(f)) is within 1 of x // f (x < 2^32,
// float rounding ~2^-24 relative, q < 2^(32-n) <= 2^20), fixed with the remainder.
// decoder: one 64-bit slot table {f << 16 | slot - cum, value bits}: one 2x8 qword gather.
typedef struct { uint64_t e[1 << 16]; } slot64_t;
static void build_slot64(const simd_tab_t *t, int nb, slot64_t *s) {
    for (int i = 0; i < (1 << nb); i++) {
        uint32_t v;
        memcpy(&v, &t->val[i], 4);
        s->e[i] = t->fb[i] | ((uint64_t)v << 32);
    }
}

static inline __attribute__((always_inline)) size_t enc_avx512b(
    const int G, const uint16_t *sym, size_t n, const simd_tab_t *t, int nb, uint16_t *words,
    uint32_t *states) {
    __m512i x[4];
    for (int g = 0; g < G; g++) x[g] = _mm512_set1_epi32(RANS_L);
    const int S = 16 * G;
    uint16_t *w = words;
    const __m512i lo16 = _mm512_set1_epi32(0xFFFF), one = _mm512_set1_epi32(1);
    const __m128i fsh = _mm_cvtsi32_si128(16 - nb), nsh = _mm_cvtsi32_si128(nb);
    for (size_t i = n; i >= (size_t)S; i -= S) {
        const uint16_t *sb = sym + i - S;
#pragma GCC unroll 4
        for (int g = G - 1; g >= 0; g--) {
            __m512i s = _mm512_cvtepu16_epi32(_mm256_loadu_si256((const __m256i *)(sb + 16 * g)));
            __m512i a = _mm512_i32gather_epi32(s, (const int *)t->A, 4);
            __m512i xm = _mm512_and_si512(a, lo16), cum = _mm512_srli_epi32(a, 16);
            __m512i hi = _mm512_srli_epi32(x[g], 16);
            __mmask16 fl = _mm512_cmpge_epu32_mask(hi, xm);
            __m256i c = _mm256_maskz_compress_epi16(fl, _mm512_cvtepi32_epi16(x[g]));
            _mm256_storeu_si256((__m256i *)w, c);
            w += __builtin_popcount(fl);
            __m512i xv = _mm512_mask_mov_epi32(x[g], fl, hi);
            __m512i f = _mm512_srl_epi32(xm, fsh);
            __m512i q = _mm512_cvttps_epu32(
                _mm512_div_ps(_mm512_cvtepu32_ps(xv), _mm512_cvtepu32_ps(f)));
            __m512i r = _mm512_sub_epi32(xv, _mm512_mullo_epi32(q, f));
            __mmask16 neg = _mm512_cmplt_epi32_mask(r, _mm512_setzero_si512());
            q = _mm512_mask_sub_epi32(q, neg, q, one);
            r = _mm512_mask_add_epi32(r, neg, r, f);
            __mmask16 big = _mm512_cmpge_epi32_mask(r, f);
            q = _mm512_mask_add_epi32(q, big, q, one);
            r = _mm512_mask_sub_epi32(r, big, r, f);
            x[g] = _mm512_add_epi32(_mm512_sll_epi32(q, nsh), _mm512_add_epi32(r, cum));
        }
    }
    for (int g = 0; g < G; g++) _mm512_storeu_si512(states + 16 * g, x[g]);
    return w - words;
}

static inline __attribute__((always_inline)) int dec_avx512b(
    const int G, const uint16_t *words, size_t nwords, const uint32_t *states,
    const slot64_t *t, int nb, float *out, size_t n) {
    __m512i x[4];
    for (int g = 0; g < G; g++) x[g] = _mm512_loadu_si512(states + 16 * g);
    const int S = 16 * G;
    const uint16_t *r = words + nwords;
    const __m512i mask = _mm512_set1_epi32((1 << nb) - 1), lo16 = _mm512_set1_epi32(0xFFFF);
    const __m512i L = _mm512_set1_epi32(RANS_L);
    const __m512i ilo = _mm512_setr_epi32(0, 2, 4, 6, 8, 10, 12, 14, 16, 18, 20, 22, 24, 26, 28, 30);
    const __m512i ihi = _mm512_setr_epi32(1, 3, 5, 7, 9, 11, 13, 15, 17, 19, 21, 23, 25, 27, 29, 31);
    const __m128i sh = _mm_cvtsi32_si128(nb);
    for (size_t j = 0; j < n; j += S) {
#pragma GCC unroll 4
        for (int g = 0; g < G; g++) {
            __m512i slot = _mm512_and_si512(x[g], mask);
            __m512i g0 = _mm512_i32gather_epi64(_mm512_castsi512_si256(slot), t->e, 8);
            __m512i g1 = _mm512_i32gather_epi64(_mm512_extracti64x4_epi64(slot, 1), t->e, 8);
            __m512i e = _mm512_permutex2var_epi32(g0, ilo, g1);
            _mm512_storeu_si512(out + j + 16 * g, _mm512_permutex2var_epi32(g0, ihi, g1));
            __m512i xv = _mm512_add_epi32(
                _mm512_mullo_epi32(_mm512_srli_epi32(e, 16), _mm512_srl_epi32(x[g], sh)),
                _mm512_and_si512(e, lo16));
            __mmask16 m = _mm512_cmplt_epu32_mask(xv, L);
            r -= __builtin_popcount(m);
            __m512i wv = _mm512_cvtepu16_epi32(
                _mm256_maskz_expand_epi16(m, _mm256_loadu_si256((const __m256i *)r)));
            x[g] = _mm512_mask_or_epi32(xv, m, _mm512_slli_epi32(xv, 16), wv);
        }
    }
    int bad = r != words;
    for (int g = 0; g < G; g++) bad |= _mm512_cmpneq_epu32_mask(x[g], L) != 0;
    return bad;
}
