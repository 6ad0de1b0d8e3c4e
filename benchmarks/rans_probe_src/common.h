// common helpers: RNG, distributions, frequency quantisation, timing (own code)
#pragma once
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <math.h>
#include <time.h>

#define NPREC 12
#define RANS_L (1u << 16)

static inline double now_s(void) {
    struct timespec t;
    clock_gettime(CLOCK_MONOTONIC, &t);
    return t.tv_sec + 1e-9 * t.tv_nsec;
}

static uint64_t rng_s = 0x9E3779B97F4A7C15ull;
static inline uint64_t rng_next(void) {  // splitmix64
    uint64_t z = (rng_s += 0x9E3779B97F4A7C15ull);
    z = (z ^ (z >> 30)) * 0xBF58476D1CE4E5B9ull;
    z = (z ^ (z >> 27)) * 0x94D049BB133111EBull;
    return z ^ (z >> 31);
}

// distribution: quads of `levels` levels with probabilities pl, or an explicit list
typedef struct {
    int K;
    double p[256];
    uint32_t f[256];
    uint32_t cum[257];
    double entropy;  // bits/symbol (true probabilities)
} dist_t;

static void make_quads(dist_t *d, int levels, const double *pl) {
    d->K = levels * levels * levels * levels;
    int s = 0;
    for (int a = 0; a < levels; a++)
        for (int b = 0; b < levels; b++)
            for (int c = 0; c < levels; c++)
                for (int e = 0; e < levels; e++) d->p[s++] = pl[a] * pl[b] * pl[c] * pl[e];
}

static void quantise(dist_t *d, int n) {
    uint32_t M = 1u << n;
    int64_t sum = 0;
    int big = 0;
    for (int s = 0; s < d->K; s++) {
        int64_t v = llround(d->p[s] * M);
        if (v < 1) v = 1;
        d->f[s] = (uint32_t)v;
        sum += v;
        if (d->f[s] > d->f[big]) big = s;
    }
    // fix the sum on the largest frequencies, one unit at a time
    while (sum != M) {
        big = 0;
        for (int s = 0; s < d->K; s++)
            if (d->f[s] > d->f[big]) big = s;
        if (sum > M) { d->f[big]--; sum--; } else { d->f[big]++; sum++; }
    }
    d->cum[0] = 0;
    for (int s = 0; s < d->K; s++) d->cum[s + 1] = d->cum[s] + d->f[s];
    double h = 0;
    for (int s = 0; s < d->K; s++)
        if (d->p[s] > 0) h -= d->p[s] * log2(d->p[s]);
    d->entropy = h;
}

static void draw(const dist_t *d, uint16_t *sym, size_t n) {
    double cdf[257];
    cdf[0] = 0;
    for (int s = 0; s < d->K; s++) cdf[s + 1] = cdf[s] + d->p[s];
    for (size_t i = 0; i < n; i++) {
        double u = (rng_next() >> 11) * (1.0 / 9007199254740992.0) * cdf[d->K];
        int lo = 0, hi = d->K - 1;  // first s with cdf[s+1] > u
        while (lo < hi) {
            int mid = (lo + hi) >> 1;
            if (cdf[mid + 1] > u) hi = mid; else lo = mid + 1;
        }
        sym[i] = (uint16_t)lo;
    }
}

static int cmp_d(const void *a, const void *b) {
    double x = *(const double *)a, y = *(const double *)b;
    return (x > y) - (x < y);
}
static double median(double *v, int n) {
    qsort(v, n, sizeof(double), cmp_d);
    return v[n / 2];
}

#define CHECK(c, ...) do { if (!(c)) { fprintf(stderr, "FAIL %s:%d: ", __FILE__, __LINE__); \
    fprintf(stderr, __VA_ARGS__); fprintf(stderr, "\n"); exit(1); } } while (0)
