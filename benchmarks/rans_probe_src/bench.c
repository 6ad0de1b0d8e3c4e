// rANS32x16 microbenchmark: scalar 4/8/16 lanes (tenfold layout) and AVX2 / AVX-512
// interleaved-stream variants. Usage: bench DIST [RUNS] [N]   DIST: 0 = 81 quads (0.7/.15/.15),
// 1 = 256 quads (.55/.2/.2/.05), 2 = 3 symbols (.96/.02/.02). Own code.
// A probe for docs/SPEED.md (run by benchmarks/rans_simd_probe.py), not part of the library.
#include "common.h"
#include "scalar.h"
#include "simd.h"

static size_t N_SYM = 10000000;
static int RUNS = 9;

static void check_out(const float *out, const uint16_t *sym, size_t n, const char *name) {
#ifdef NOVAL
    if (strstr(name, "avx512")) return;
#endif
    for (size_t j = 0; j < n; j++)
        CHECK(out[j] == (float)sym[j], "%s: value %zu decoded %g, expected %u", name, j,
              out[j], sym[j]);
}

static void report(const char *name, double *te, double *td, size_t bytes, size_t n) {
    double e = median(te, RUNS), d = median(td, RUNS);
    printf("%-22s enc %6.3f ns/sym  dec %6.3f ns/sym  (min %.3f / %.3f)  %.4f bits/sym\n",
           name, 1e9 * e / n, 1e9 * d / n, 1e9 * te[0] / n, 1e9 * td[0] / n,
           8.0 * bytes / n);
    fflush(stdout);
}

#define RUN_SCALAR(NL, BL, NAME)                                                            \
    do {                                                                                    \
        size_t beg[16], end[16], st[16];                                                    \
        lane_layout(NL, n, beg, end);                                                       \
        for (int r = 0; r < RUNS; r++) {                                                    \
            double t0 = now_s();                                                            \
            enc_scalar(NL, sym, n, rows, sbuf, end, st);                                    \
            double t1 = now_s();                                                            \
            memset(out, 0, n * sizeof(float));                                              \
            double t2 = now_s();                                                            \
            int bad = dec_scalar(NL, BL, sbuf, st, end, fb, val, nb, out, n);               \
            double t3 = now_s();                                                            \
            CHECK(!bad, "%s: lanes bad %x", NAME, bad);                                     \
            check_out(out, sym, n, NAME);                                                   \
            te[r] = t1 - t0; td[r] = t3 - t2;                                               \
        }                                                                                   \
        size_t by = 0;                                                                      \
        for (int l = 0; l < NL; l++) by += 2 * (end[l] - st[l]);                            \
        report(NAME, te, td, by, n);                                                        \
    } while (0)

#define RUN_SIMD(ENC, DEC, G, S, NAME) RUN_SIMD_T(ENC, DEC, G, S, NAME, tab)
#define RUN_SIMD_T(ENC, DEC, G, S, NAME, DT)                                                      \
    do {                                                                                    \
        uint32_t states[64];                                                                \
        size_t nw = 0;                                                                      \
        for (int r = 0; r < RUNS; r++) {                                                    \
            double t0 = now_s();                                                            \
            nw = ENC(G, sym, n, tab, nb, wbuf, states);                                     \
            double t1 = now_s();                                                            \
            memset(out, 0, n * sizeof(float));                                              \
            double t2 = now_s();                                                            \
            int bad = DEC(G, wbuf, nw, states, DT, nb, out, n);                            \
            double t3 = now_s();                                                            \
            CHECK(!bad, "%s: final states / stream position wrong", NAME);                  \
            check_out(out, sym, n, NAME);                                                   \
            te[r] = t1 - t0; td[r] = t3 - t2;                                               \
        }                                                                                   \
        report(NAME, te, td, 2 * nw + 4 * (S), n);                                          \
    } while (0)

int main(int argc, char **argv) {
    int which = argc > 1 ? atoi(argv[1]) : 0;
    if (argc > 2) RUNS = atoi(argv[2]);
    if (argc > 3) N_SYM = strtoull(argv[3], 0, 10);
    const char *only = argc > 4 ? argv[4] : "";
    size_t n = N_SYM;
    CHECK(n % 64 == 0, "n must be a multiple of 64");
    static dist_t d;
    if (which == 0) { double pl[3] = {0.70, 0.15, 0.15}; make_quads(&d, 3, pl); }
    else if (which == 1) { double pl[4] = {0.55, 0.20, 0.20, 0.05}; make_quads(&d, 4, pl); }
    else { d.K = 3; d.p[0] = 0.96; d.p[1] = 0.02; d.p[2] = 0.02; }
    int nb = NPREC;
    quantise(&d, nb);
    printf("dist %d: K=%d n=%d entropy %.4f bits/sym, %zu symbols, %d runs\n", which, d.K, nb,
           d.entropy, n, RUNS);
    uint16_t *sym = aligned_alloc(64, n * 2 + 256);
    draw(&d, sym, n);
    enc_row_t *rows = calloc(256, sizeof(enc_row_t));
    build_enc_rows(&d, nb, rows);
    uint32_t *fb = aligned_alloc(64, 4u << nb);
    float *val = aligned_alloc(64, 4u << nb);
    build_dec_tabs(&d, nb, fb, val);
    static simd_tab_t tabs;
    simd_tab_t *tab = &tabs;
    build_simd_tab(&d, nb, tab);
    init_perm8();
    static slot64_t s64s;
    build_slot64(tab, nb, &s64s);
    uint16_t *sbuf = aligned_alloc(64, (n + 64) * 2 + 4096);
    uint16_t *wbuf = aligned_alloc(64, (n + 64) * 2 + 4096);
    float *out = aligned_alloc(64, n * 4 + 256);
    memset(sbuf, 0, (n + 64) * 2 + 4096);
    memset(wbuf, 0, (n + 64) * 2 + 4096);
    double te[64], td[64];
#define WANT(s) (!*only || strstr(only, s))
    if (WANT("s4b")) RUN_SCALAR(4, 1, "scalar 4 lanes (bl)");
    if (WANT("s4j")) RUN_SCALAR(4, 0, "scalar 4 lanes (br)");
    if (WANT("s8b")) RUN_SCALAR(8, 1, "scalar 8 lanes (bl)");
    if (WANT("s8j")) RUN_SCALAR(8, 0, "scalar 8 lanes (br)");
    if (WANT("s16b")) RUN_SCALAR(16, 1, "scalar 16 lanes (bl)");
    if (WANT("s16j")) RUN_SCALAR(16, 0, "scalar 16 lanes (br)");
    if (WANT("a2x1")) RUN_SIMD(enc_avx2, dec_avx2, 1, 8, "avx2 8 states");
    if (WANT("a2x2")) RUN_SIMD(enc_avx2, dec_avx2, 2, 16, "avx2 16 states");
    if (WANT("a2x4")) RUN_SIMD(enc_avx2, dec_avx2, 4, 32, "avx2 32 states");
    if (WANT("a5x1")) RUN_SIMD(enc_avx512, dec_avx512, 1, 16, "avx512 16 states");
    if (WANT("a5x2")) RUN_SIMD(enc_avx512, dec_avx512, 2, 32, "avx512 32 states");
    if (WANT("a5x4")) RUN_SIMD(enc_avx512, dec_avx512, 4, 64, "avx512 64 states");
    if (WANT("b5x1")) RUN_SIMD_T(enc_avx512b, dec_avx512b, 1, 16, "avx512b 16 states", &s64s);
    if (WANT("b5x2")) RUN_SIMD_T(enc_avx512b, dec_avx512b, 2, 32, "avx512b 32 states", &s64s);
    if (WANT("b5x4")) RUN_SIMD_T(enc_avx512b, dec_avx512b, 4, 64, "avx512b 64 states", &s64s);
    return 0;
}
