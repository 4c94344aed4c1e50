//! The CPU matrix product: the `gemm` crate (the GEMM candle uses), row-major f32.
//!
//! Chosen over `faer` by measurement (`bench/gemm_faer`, `BENCHMARKS.md` "gemm or faer": faer
//! took 1.08 to 1.19 times as long over Muon's Newton–Schulz products on GPT-2 small's shapes);
//! it is also already in the dependency tree through candle, whose CPU matmul it is.
//! Its summation order is its own (blocked, vectorized, with FMA), so products differ from the
//! reference triple loop by rounding: `docs/stages.md` states the budget.

#![allow(unsafe_code)]

use optc_kernel::matrix::Mat;

/// `a · b` with `threads` threads of the current rayon pool (1: on this thread).
pub(crate) fn matmul(a: &Mat, b: &Mat, threads: usize) -> Mat {
    let (m, k, n) = (a.rows, a.cols, b.cols);
    let mut data = vec![0.0f32; m * n];
    if m == 0 || n == 0 {
        return Mat {
            rows: m,
            cols: n,
            data,
        };
    }
    assert_eq!(a.data.len(), m * k, "matmul: lhs shape");
    assert_eq!(b.data.len(), k * n, "matmul: rhs shape");
    let parallelism = if threads > 1 {
        gemm::Parallelism::Rayon(threads)
    } else {
        gemm::Parallelism::None
    };
    // SAFETY: `data` holds m·n, `a.data` m·k and `b.data` k·n f32 values (checked above), all
    // row-major: column stride 1 and row strides n, k and n, so every index gemm forms is in
    // bounds; `data` does not alias the inputs; `read_dst = false`, so its initial contents are
    // not read (alpha is ignored) and dst = 1 · a · b.
    unsafe {
        gemm::gemm(
            m,
            n,
            k,
            data.as_mut_ptr(),
            1,
            n as isize,
            false,
            a.data.as_ptr(),
            1,
            k as isize,
            b.data.as_ptr(),
            1,
            n as isize,
            0.0f32,
            1.0f32,
            false,
            false,
            false,
            parallelism,
        );
    }
    Mat {
        rows: m,
        cols: n,
        data,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use optc_kernel::matrix::reference_matmul;

    #[test]
    fn gemm_matches_the_reference_product_within_its_budget() {
        let mut x = 1u32;
        let mut next = || {
            x = x.wrapping_mul(1664525).wrapping_add(1013904223);
            (x >> 8) as f32 / (1u32 << 24) as f32 - 0.5
        };
        let (m, k, n) = (37, 129, 65);
        let a = Mat {
            rows: m,
            cols: k,
            data: (0..m * k).map(|_| next()).collect(),
        };
        let b = Mat {
            rows: k,
            cols: n,
            data: (0..k * n).map(|_| next()).collect(),
        };
        let want = reference_matmul(&a, &b);
        for threads in [1, 2] {
            let got = matmul(&a, &b, threads);
            for i in 0..m {
                for j in 0..n {
                    let abs: f32 = (0..k)
                        .map(|l| (a.data[i * k + l] * b.data[l * n + j]).abs())
                        .sum();
                    let d = (got.data[i * n + j] - want.data[i * n + j]).abs();
                    // Both are f32 sums of k products: each within k·2^-24·Σ|ab| of the exact one.
                    assert!(
                        d <= 2.0 * k as f32 * f32::EPSILON / 2.0 * abs,
                        "({i},{j}): {d} vs {abs}"
                    );
                }
            }
        }
    }
}
