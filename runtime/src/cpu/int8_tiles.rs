//! int8 states on the CPU: the compiled code sees every state as f32, so a tensor with int8
//! states runs tile by tile ([`TILE`] elements): the tile's codes are dequantized into an f32
//! scratch tile that stays in cache, the stage's function runs on the tile, and the states it
//! stores are quantized back, block by block, from the scratch (`optc_kernel::int8`, the same
//! functions the reference interpreter uses, so the two agree bit for bit). Memory sees one read
//! of the codes and scales and one write of them: no extra pass.
//!
//! A tile is a whole number of quantization blocks and exactly one reduction block
//! (`REDUCE_BLOCK`), so the block partials of a reducing stage are those of the untiled run.

use optc_kernel::quant::QUANT_BLOCK;
use optc_kernel::REDUCE_BLOCK;

/// Elements per tile: one reduction block, 16 quantization blocks (16 KiB of f32 per state).
pub(super) const TILE: usize = REDUCE_BLOCK;

const _: () = assert!(TILE.is_multiple_of(QUANT_BLOCK) && TILE.is_multiple_of(REDUCE_BLOCK));

/// One f32 tile per int8 state of a tensor.
pub(super) struct Scratch {
    tiles: Vec<Vec<f32>>,
}

impl Scratch {
    /// Scratch for `states` int8 states.
    pub fn new(states: usize) -> Scratch {
        Scratch {
            tiles: (0..states).map(|_| vec![0f32; TILE]).collect(),
        }
    }

    /// Dequantizes `codes` (at most [`TILE`], from a block boundary) with their blocks' `scales`
    /// into tile `j` when `read`, and returns the tile's address (with [`TILE`] f32s after it).
    pub fn load(&mut self, j: usize, read: bool, codes: &[u8], scales: &[f32]) -> *mut f32 {
        let tile = &mut self.tiles[j];
        if read {
            optc_kernel::int8::load(codes, scales, &mut tile[..codes.len()]);
        }
        tile.as_mut_ptr()
    }

    /// Quantizes tile `j`'s first `codes.len()` values into `codes` and `scales`.
    pub fn store(&self, j: usize, codes: &mut [u8], scales: &mut [f32]) {
        optc_kernel::int8::store(&self.tiles[j][..codes.len()], codes, scales);
    }
}
