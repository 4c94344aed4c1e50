//! The one place that decides which vector instructions the tile paths' host-compiled loops
//! (16-bit conversions in [`super::half_tiles`], int8 codes in [`super::int8_tiles`]) run with:
//! detected once, at run time, so one optc binary runs everywhere and uses what the CPU has.
//! `OPTC_SIMD=avx2` or `OPTC_SIMD=base` caps it (for measurements and for testing the portable
//! builds); every build gives the same bits.

/// The widest instruction set the loops are built for that this CPU runs.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub(super) enum Simd {
    /// The portable build (SSE2 on x86-64).
    Base,
    /// AVX2 (x86-64).
    Avx2,
    /// AVX-512 F and BW (x86-64).
    Avx512,
}

/// This CPU's [`Simd`], capped by `OPTC_SIMD` (detected once; a cached read after that).
pub(super) fn detect() -> Simd {
    static SIMD: std::sync::OnceLock<Simd> = std::sync::OnceLock::new();
    *SIMD.get_or_init(|| {
        let cap = match std::env::var("OPTC_SIMD").as_deref() {
            Ok("base") => Simd::Base,
            Ok("avx2") => Simd::Avx2,
            _ => Simd::Avx512,
        };
        host().min(cap)
    })
}

#[cfg(target_arch = "x86_64")]
fn host() -> Simd {
    if std::arch::is_x86_feature_detected!("avx512f")
        && std::arch::is_x86_feature_detected!("avx512bw")
    {
        Simd::Avx512
    } else if std::arch::is_x86_feature_detected!("avx2") {
        Simd::Avx2
    } else {
        Simd::Base
    }
}

#[cfg(not(target_arch = "x86_64"))]
fn host() -> Simd {
    Simd::Base
}
