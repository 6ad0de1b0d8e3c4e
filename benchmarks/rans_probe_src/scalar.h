// Scalar N-lane rANS32x16 in the layout of tenfold's format (own code):
// value j -> lane j % N, each lane its own stream (u32 state, then u16 words in decoder
// order), encoder writes each lane downwards from its end. For N = 4 the bytes are
// those of tenfold's format (words little-endian on x86).
#pragma once
#include "common.h"

typedef struct { uint64_t rcp, xmax, cmpl, bias; } enc_row_t;  // as tenfold's _encoder_table

static void build_enc_rows(const dist_t *d, int n, enc_row_t *tab) {
    uint64_t M = 1ull << n;
    for (int s = 0; s < d->K; s++) {
        uint64_t f = d->f[s];
        tab[s].rcp = f == 1 ? ~0ull : (~0ull) / f + 1;
        uint64_t xm = f << (16 - n);
        tab[s].xmax = xm > 0xFFFF ? 0xFFFF : xm;
        tab[s].cmpl = M - f;
        tab[s].bias = d->cum[s] + (f == 1 ? M - 1 : 0);
    }
}

static void build_dec_tabs(const dist_t *d, int n, uint32_t *fb, float *val) {
    for (int s = 0; s < d->K; s++)
        for (uint32_t b = 0; b < d->f[s]; b++) {
            fb[d->cum[s] + b] = (d->f[s] << 16) | b;
            val[d->cum[s] + b] = (float)s;
        }
    (void)n;
}

static inline uint64_t mulhi64(uint64_t a, uint64_t b) {
    return (uint64_t)(((unsigned __int128)a * b) >> 64);
}

// room: lane l gets words [beg[l], end[l]) of buf; returns start index per lane in beg
static void lane_layout(int N, size_t n, size_t *beg, size_t *end) {
    size_t o = 0;
    for (int l = 0; l < N; l++) {
        size_t c = n > (size_t)l ? (n - l + N - 1) / N : 0;
        beg[l] = o;
        o += c + 2;
        end[l] = o;
    }
}

// encode n symbols (n % N == 0 required here) into buf; starts[l] = first word of lane l
static inline __attribute__((always_inline)) void enc_scalar(
    const int N, const uint16_t *sym, size_t n, const enc_row_t *tab, uint16_t *buf,
    const size_t *ends, size_t *starts) {
    uint64_t x[16];
    uint16_t *p[16];
    for (int l = 0; l < N; l++) { x[l] = RANS_L; p[l] = buf + ends[l]; }
    for (size_t i = n; i >= (size_t)N; i -= N) {
        const uint16_t *s = sym + i - N;
#pragma GCC unroll 16
        for (int l = 0; l < N; l++) {
            const enc_row_t *e = &tab[s[l]];
            uint64_t xl = x[l], hi = xl >> 16;
            p[l][-1] = (uint16_t)xl;  // stored whether due or not
            uint64_t c = hi >= e->xmax;
            p[l] -= c;
            xl = c ? hi : xl;
            x[l] = xl + mulhi64(xl, e->rcp) * e->cmpl + e->bias;
        }
    }
    for (int l = 0; l < N; l++) {
        p[l] -= 2;
        p[l][0] = (uint16_t)x[l];
        p[l][1] = (uint16_t)(x[l] >> 16);
        starts[l] = p[l] - buf;
    }
}

// returns 0 if every lane ends at state L with its words consumed exactly
static inline __attribute__((always_inline)) int dec_scalar(
    const int N, const int branchless, const uint16_t *buf, const size_t *starts,
    const size_t *ends, const uint32_t *fb, const float *val, int n_bits, float *out,
    size_t n) {
    uint32_t x[16];
    const uint16_t *q[16], *last[16];
    const uint32_t mask = (1u << n_bits) - 1;
    for (int l = 0; l < N; l++) {
        x[l] = buf[starts[l]] | ((uint32_t)buf[starts[l] + 1] << 16);
        q[l] = buf + starts[l] + 2;
        last[l] = buf + ends[l] - 1;
    }
    for (size_t j = 0; j < n; j += N) {
#pragma GCC unroll 16
        for (int l = 0; l < N; l++) {
            uint32_t xl = x[l], slot = xl & mask;
            out[j + l] = val[slot];
            uint32_t e = fb[slot];
            xl = (e >> 16) * (xl >> n_bits) + (e & 0xFFFF);
            if (branchless) {
                const uint16_t *a = q[l] < last[l] ? q[l] : last[l];
                uint32_t w = *a;
                uint32_t c = xl < RANS_L;
                xl = (xl << (c << 4)) | (w & (0u - c));  // arithmetic select: gcc made a branch of ?:
                q[l] += c;
            } else if (xl < RANS_L) {
                const uint16_t *a = q[l] < last[l] ? q[l] : last[l];
                xl = (xl << 16) | *a;
                q[l]++;
            }
            x[l] = xl;
        }
    }
    int bad = 0;
    for (int l = 0; l < N; l++) bad |= (x[l] != RANS_L || q[l] != buf + ends[l]) << l;
    return bad;
}
