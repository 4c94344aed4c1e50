//! int8 states on the CPU: the compiled code sees every state as f32, so a tensor with int8
//! states runs tile by tile ([`TILE`] elements): the tile's codes are dequantized into an f32
//! scratch tile that stays in cache, the stage's function runs on the tile, and the states it
//! stores are quantized back, block by block, from the scratch (`optc_kernel::int8`, the same
//! functions the reference interpreter uses, so the two agree bit for bit). Memory sees one read
//! of the codes and scales and one write of them: no extra pass.
//!
//! A tile is a whole number of quantization blocks and exactly one reduction block
//! (`REDUCE_BLOCK`), so the block partials of a reducing stage are those of the untiled run.
//!
//! On an x86-64 CPU with AVX2 the loads and stores run a second build of the same
//! `optc_kernel::int8` code with AVX2 enabled ([`Isa`]): the compiler then vectorizes its passes
//! 8 lanes wide instead of 4. The code and its f32 and integer operations are the same (no fused
//! multiply-add: Rust never contracts), so the results are bit for bit those of the portable
//! build (tested below). Calling that build is the one unsafe operation of this module.
#![allow(unsafe_code)]

use optc_kernel::quant::QUANT_BLOCK;
use optc_kernel::REDUCE_BLOCK;

/// Elements per tile: one reduction block, 16 quantization blocks (16 KiB of f32 per state).
pub(super) const TILE: usize = REDUCE_BLOCK;

const _: () = assert!(TILE.is_multiple_of(QUANT_BLOCK) && TILE.is_multiple_of(REDUCE_BLOCK));

/// One f32 tile per int8 state of a tensor.
pub(super) struct Scratch {
    tiles: Vec<Vec<f32>>,
    isa: Isa,
}

impl Scratch {
    /// Scratch for `states` int8 states.
    pub fn new(states: usize) -> Scratch {
        Scratch {
            tiles: (0..states).map(|_| vec![0f32; TILE]).collect(),
            isa: Isa::detect(),
        }
    }

    /// Dequantizes `codes` (at most [`TILE`], from a block boundary) with their blocks' `scales`
    /// into tile `j` when `read`, and returns the tile's address (with [`TILE`] f32s after it).
    pub fn load(&mut self, j: usize, read: bool, codes: &[u8], scales: &[f32]) -> *mut f32 {
        let tile = &mut self.tiles[j];
        if read {
            self.isa.load(codes, scales, &mut tile[..codes.len()]);
        }
        tile.as_mut_ptr()
    }

    /// Quantizes tile `j`'s first `codes.len()` values into `codes` and `scales`.
    pub fn store(&self, j: usize, codes: &mut [u8], scales: &mut [f32]) {
        self.isa.store(&self.tiles[j][..codes.len()], codes, scales);
    }
}

/// Which build of the int8 load and store this CPU runs.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Isa {
    /// The portable build.
    Base,
    /// The AVX2 build (x86-64 CPUs that have it).
    #[cfg(target_arch = "x86_64")]
    Avx2,
}

impl Isa {
    /// The widest build this CPU runs (detected once; a cached read after that).
    /// AVX2 on a CPU with AVX2 or AVX-512 ([`super::simd`]): LLVM's AVX-512 build of the code
    /// lookups (gathers) measured slower on Zen 4.
    fn detect() -> Isa {
        #[cfg(target_arch = "x86_64")]
        if super::simd::detect() >= super::simd::Simd::Avx2 {
            return Isa::Avx2;
        }
        Isa::Base
    }

    /// `optc_kernel::int8::load` in this build.
    fn load(self, codes: &[u8], scales: &[f32], out: &mut [f32]) {
        match self {
            Isa::Base => optc_kernel::int8::load(codes, scales, out),
            // SAFETY: `Isa::Avx2` is only made by `detect` on a CPU that has AVX2, the one
            // requirement of calling an `avx2` function.
            #[cfg(target_arch = "x86_64")]
            Isa::Avx2 => unsafe { avx2::load(codes, scales, out) },
        }
    }

    /// `optc_kernel::int8::store` in this build.
    fn store(self, xs: &[f32], codes: &mut [u8], scales: &mut [f32]) {
        match self {
            Isa::Base => optc_kernel::int8::store(xs, codes, scales),
            // SAFETY: as in `load`.
            #[cfg(target_arch = "x86_64")]
            Isa::Avx2 => unsafe { avx2::store(xs, codes, scales) },
        }
    }
}

/// The AVX2 build: `optc_kernel::int8`'s functions inlined into functions compiled for AVX2.
#[cfg(target_arch = "x86_64")]
mod avx2 {
    /// `optc_kernel::int8::load` compiled for AVX2.
    #[target_feature(enable = "avx2")]
    pub(super) fn load(codes: &[u8], scales: &[f32], out: &mut [f32]) {
        optc_kernel::int8::load(codes, scales, out);
    }

    /// `optc_kernel::int8::store` compiled for AVX2.
    #[target_feature(enable = "avx2")]
    pub(super) fn store(xs: &[f32], codes: &mut [u8], scales: &mut [f32]) {
        optc_kernel::int8::store(xs, codes, scales);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use optc_kernel::int8;

    /// Values of many magnitudes and signs, some blocks non-negative, with NaNs, infinities and
    /// zeros in a few, and a short last block.
    fn values() -> Vec<f32> {
        let n = 64 * QUANT_BLOCK + 77;
        (0..n)
            .map(|i| {
                let h = optc_kernel::dtype::lowbias32(i as u32);
                let u = (h >> 8) as f32 / (1u32 << 24) as f32;
                let block = i / QUANT_BLOCK;
                let x = (u - if block.is_multiple_of(3) { 0.0 } else { 0.5 })
                    * 2f32.powi(block as i32 % 40 - 30);
                match (block % 7, h % 61) {
                    (6, 0) => f32::NAN,
                    (5, 0) => f32::NEG_INFINITY,
                    (4, 0..=9) => 0.0,
                    _ => x,
                }
            })
            .collect()
    }

    /// The build this CPU runs (AVX2 on the CI machines) against the portable one; on a CPU
    /// without AVX2 both are the portable build.
    #[test]
    fn every_build_stores_and_loads_as_the_portable_one() {
        let xs = values();
        let blocks = int8::scale_count(xs.len());
        let (mut want_codes, mut want_scales) = (vec![0u8; xs.len()], vec![0f32; blocks]);
        int8::store(&xs, &mut want_codes, &mut want_scales);
        let mut want = vec![0f32; xs.len()];
        int8::load(&want_codes, &want_scales, &mut want);
        let isa = Isa::detect();
        let (mut codes, mut scales) = (vec![0u8; xs.len()], vec![0f32; blocks]);
        isa.store(&xs, &mut codes, &mut scales);
        assert_eq!(codes, want_codes, "{isa:?}");
        let bits = |v: &[f32]| v.iter().map(|x| x.to_bits()).collect::<Vec<_>>();
        assert_eq!(bits(&scales), bits(&want_scales), "{isa:?}");
        let mut out = vec![0f32; xs.len()];
        isa.load(&codes, &scales, &mut out);
        assert_eq!(bits(&out), bits(&want), "{isa:?}");
    }
}
