//! The multi-tensor table: the device-side records the multi-tensor entry walks.
//!
//! One launch of the multi-tensor entry steps many tensors. The host writes two arrays to device
//! memory:
//! - the **tensor table**: one record per tensor, [`TableLayout::stride`] bytes each, holding the
//!   tensor's buffer pointers (in [`Kernel::buffers`] order), its length, flags, and its own
//!   uniforms (each tensor has its own step count and scalar states, so its own uniforms);
//! - the **chunk list**: one 8-byte record per chunk, `(u32 tensor index, u32 chunk index)`.
//!   Chunk `k` of a tensor covers elements `[k * chunk_elems, min(n, (k + 1) * chunk_elems))`.
//!
//! Blocks take chunks in a grid-stride loop (the idea of apex's `multi_tensor_apply`). The PTX
//! backend reads and the CUDA runtime writes exactly this layout, defined once here so the runtime
//! needs no compiler; `docs/cuda.md` describes it for other hosts.

use crate::kernel::Kernel;

/// Bytes of one chunk record: `u32` tensor index, then `u32` chunk index within the tensor.
pub const CHUNK_RECORD_BYTES: usize = 8;

/// Record flag: every buffer pointer of this tensor is 16-byte aligned, so the vector path may
/// be used.
pub const FLAG_ALIGNED: u32 = 1;

/// The byte layout of one tensor record for a kernel.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct TableLayout {
    /// The number of buffers (`p`, `g`, then each state).
    pub buffers: usize,
    /// The number of uniforms.
    pub uniforms: usize,
}

impl TableLayout {
    /// The layout for stage 0 of `kernel` (the only stage of a one-stage kernel).
    pub fn of(kernel: &Kernel) -> TableLayout {
        Self::of_stage(kernel, 0)
    }

    /// The layout for stage `stage` of `kernel`: every stage gets every buffer, and its own
    /// uniforms.
    pub fn of_stage(kernel: &Kernel, stage: usize) -> TableLayout {
        TableLayout {
            buffers: 2 + kernel.states.len(),
            uniforms: kernel.stages.get(stage).map_or(0, |s| s.uniforms.len()),
        }
    }

    /// Offset of buffer `i`'s device pointer (`u64`).
    pub fn pointer_offset(&self, i: usize) -> usize {
        8 * i
    }

    /// Offset of the tensor's element count (`u64`).
    pub fn len_offset(&self) -> usize {
        8 * self.buffers
    }

    /// Offset of the flags (`u32`, see [`FLAG_ALIGNED`]); 4 bytes of padding follow.
    pub fn flags_offset(&self) -> usize {
        8 * self.buffers + 8
    }

    /// Offset of uniform `u` (`f32`).
    pub fn uniform_offset(&self, u: usize) -> usize {
        8 * self.buffers + 16 + 4 * u
    }

    /// Bytes from one record to the next (a multiple of 8).
    pub fn stride(&self) -> usize {
        (8 * self.buffers + 16 + 4 * self.uniforms).div_ceil(8) * 8
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// AdamW's record, worked out by hand: 4 pointers (32 bytes), the length (8), flags and
    /// padding (8), 7 uniforms (28): 76 bytes, padded to 80.
    #[test]
    fn adamw_record_by_hand() {
        let l = TableLayout {
            buffers: 4,
            uniforms: 7,
        };
        assert_eq!(l.pointer_offset(3), 24);
        assert_eq!(l.len_offset(), 32);
        assert_eq!(l.flags_offset(), 40);
        assert_eq!(l.uniform_offset(0), 48);
        assert_eq!(l.uniform_offset(6), 72);
        assert_eq!(l.stride(), 80);
        let even = TableLayout {
            buffers: 2,
            uniforms: 2,
        };
        assert_eq!(even.stride(), 40);
    }
}
