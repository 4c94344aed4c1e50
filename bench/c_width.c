// What the vector width does to an AdamW-shaped loop that is exact (one square root and one
// division per element, as the stdlib rule and torch's fused kernel compute it), against the C
// probe's plain loop of the same read/write shape, on the same buffers, alternated pass by pass.
// Build it once per width and compare in the same session:
//
//   for w in 128 256 512; do
//     gcc -O3 -march=native -fno-math-errno -fopenmp -mprefer-vector-width=$w -DWIDTH=$w bench/c_width.c -o c_width$w
//   done
//   for w in 128 256 512; do OMP_NUM_THREADS=1 ./c_width$w 32768 1000; done    # in cache: arithmetic
//   for w in 128 512; do OMP_NUM_THREADS=2 ./c_width$w 67108864 10; done       # 64M: memory
//
// Cranelift 0.135 emits 128-bit vectors on x86-64, so `c_width128` is the ceiling of optc's JIT
// code for this loop; torch's fused AdamW runs 512-bit vectors on an AVX-512 host.
#include <math.h>
#include <omp.h>
#include <stdio.h>
#include <stdlib.h>

#ifndef WIDTH
#define WIDTH 0
#endif

static int cmp(const void *a, const void *b) {
    double x = *(const double *)a, y = *(const double *)b;
    return (x > y) - (x < y);
}

int main(int argc, char **argv) {
    long n = argc > 1 ? atol(argv[1]) : 64L << 20;
    int iters = argc > 2 ? atoi(argv[2]) : 10;
    if (n < 1 || iters < 1 || iters > 4096) {
        fprintf(stderr, "usage: c_width N ITERS (1 <= ITERS <= 4096)\n");
        return 2;
    }
    float *p = aligned_alloc(64, n * 4), *g = aligned_alloc(64, n * 4), *m = aligned_alloc(64, n * 4),
          *v = aligned_alloc(64, n * 4);
#pragma omp parallel for schedule(static)
    for (long i = 0; i < n; i++) {
        p[i] = 0.5f;
        g[i] = 1e-3f;
        m[i] = 0.1f;
        v[i] = 0.2f;
    }
    // AdamW's uniforms at some step: decay 1 - lr * wd, 1 - beta1, beta2, 1 - beta2, the two
    // factors of 1 / sqrt(1 - beta2^t), eps, lr / (1 - beta1^t).
    const float decay = 1 - 1e-3f * 1e-2f, b1c = 0.1f, b2 = 0.999f, b2c = 0.001f, r = 1.0f / 0.0447f, s = 0.98f,
                eps = 1e-8f, step = 1e-3f / 0.1f;
    static double ta[4096], tb[4096];
    for (int it = 0; it < iters + 2; it++) {
        double t0 = omp_get_wtime();
#pragma omp parallel for schedule(static)
        for (long i = 0; i < n; i++) {
            float gi = g[i];
            float pi = p[i] * decay;
            float mi = m[i] + (gi - m[i]) * b1c;
            float vi = b2 * v[i] + b2c * (gi * gi);
            float denom = sqrtf(vi) * r * s + eps;
            p[i] = pi - step * (mi / denom);
            m[i] = mi;
            v[i] = vi;
        }
        double t1 = omp_get_wtime();
#pragma omp parallel for schedule(static)
        for (long i = 0; i < n; i++) {
            float q = p[i] + g[i] + m[i] + v[i];
            p[i] = p[i] * 0.5f + q * 0.125f;
            m[i] = m[i] * 0.5f + q * 0.125f;
            v[i] = v[i] * 0.5f + q * 0.125f;
        }
        double t2 = omp_get_wtime();
        if (it >= 2) {
            ta[it - 2] = t1 - t0;
            tb[it - 2] = t2 - t1;
        }
    }
    qsort(ta, iters, sizeof(double), cmp);
    qsort(tb, iters, sizeof(double), cmp);
    double a = ta[iters / 2], b = tb[iters / 2];
    printf("width %d bits, %ld elements, %d threads: AdamW %.3f ms (%.2f G elements/s), probe %.3f ms, AdamW / probe %.2f\n",
           WIDTH, n, omp_get_max_threads(), a * 1e3, n / a / 1e9, b * 1e3, b / a);
    return 0;
}
