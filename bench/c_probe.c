// The C-style bandwidth probe (BENCHMARKS.md): a plain loop with the read/write shape of an
// elementwise rule with K per-element states -- reads p, g and the K states, writes p and the
// states (AdamW: K = 2, 28 bytes per element; SGD with momentum and Adagrad: K = 1, 20 bytes) --
// over N fp32 elements in one tensor, on OMP_NUM_THREADS threads. Prints the median ms per pass.
//
//   gcc -O3 -march=native -fno-math-errno -fopenmp bench/c_probe.c -o c_probe
//   OMP_NUM_THREADS=2 ./c_probe 67108864 2 10
#include <omp.h>
#include <stdio.h>
#include <stdlib.h>

static int cmp(const void *a, const void *b) {
    double x = *(const double *)a, y = *(const double *)b;
    return (x > y) - (x < y);
}

int main(int argc, char **argv) {
    long n = argc > 1 ? atol(argv[1]) : 64L << 20;
    int k = argc > 2 ? atoi(argv[2]) : 2;
    int iters = argc > 3 ? atoi(argv[3]) : 10;
    if (n < 1 || k < 0 || k > 4 || iters < 1 || iters > 1000) {
        fprintf(stderr, "usage: c_probe N K ITERS (N >= 1, 0 <= K <= 4, 1 <= ITERS <= 1000)\n");
        return 2;
    }
    float *p = aligned_alloc(64, n * 4), *g = aligned_alloc(64, n * 4), *s[4] = {0};
    for (int j = 0; j < k; j++) s[j] = aligned_alloc(64, n * 4);
#pragma omp parallel for schedule(static)
    for (long i = 0; i < n; i++) {
        p[i] = 0.5f;
        g[i] = 1e-3f;
        for (int j = 0; j < k; j++) s[j][i] = 0.25f;
    }
    double times[1000];
    float *s0 = s[0], *s1 = s[1];
    for (int it = 0; it < iters + 3; it++) {
        double t0 = omp_get_wtime();
        if (k == 1) {
#pragma omp parallel for schedule(static)
            for (long i = 0; i < n; i++) {
                float q = p[i] + g[i] + s0[i];
                p[i] = p[i] * 0.5f + q * 0.125f;
                s0[i] = s0[i] * 0.5f + q * 0.125f;
            }
        } else if (k == 2) {
#pragma omp parallel for schedule(static)
            for (long i = 0; i < n; i++) {
                float q = p[i] + g[i] + s0[i] + s1[i];
                p[i] = p[i] * 0.5f + q * 0.125f;
                s0[i] = s0[i] * 0.5f + q * 0.125f;
                s1[i] = s1[i] * 0.5f + q * 0.125f;
            }
        } else {
#pragma omp parallel for schedule(static)
            for (long i = 0; i < n; i++) {
                float q = p[i] + g[i];
                for (int j = 0; j < k; j++) q += s[j][i];
                p[i] = p[i] * 0.5f + q * 0.125f;
                for (int j = 0; j < k; j++) s[j][i] = s[j][i] * 0.5f + q * 0.125f;
            }
        }
        double dt = omp_get_wtime() - t0;
        if (it >= 3) times[it - 3] = dt;
    }
    qsort(times, iters, sizeof(double), cmp);
    double med = times[iters / 2];
    printf("{\"probe\": \"c\", \"elements\": %ld, \"states\": %d, \"threads\": %d, \"pass_s\": %.9f, \"bytes_per_s\": %.1f}\n", n, k,
           omp_get_max_threads(), med, (double)(12 + 8 * k) * n / med);
    return 0;
}
