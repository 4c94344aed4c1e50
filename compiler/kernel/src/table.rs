//! The multi-tensor table: the device-side records the multi-tensor entry walks.
//!
//! One launch of the multi-tensor entry steps many tensors. The host writes two arrays to device
//! memory:
//! - the **tensor table**: one record per tensor, [`TableLayout::stride`] bytes each, holding the
//!   tensor's buffer pointers (in [`Kernel::buffers`] order), its length, flags, in a stage with
//!   reduce outputs the address of its block partials, and its own uniforms (each tensor has its own step count and scalar states, so its own uniforms);
//! - the **chunk list**: one 8-byte record per chunk, `(u32 tensor index, u32 chunk index)`.
//!   Chunk `k` of a tensor covers elements `[k * chunk_elems, min(n, (k + 1) * chunk_elems))`.
//!
//! Blocks take chunks in a grid-stride loop (the idea of apex's `multi_tensor_apply`). The PTX
//! backend reads and the CUDA runtime writes exactly this layout, defined once here so the runtime
//! needs no compiler; `docs/cuda.md` describes it for other hosts.

use crate::kernel::Kernel;
use serde::{Deserialize, Serialize};

/// Bytes of one chunk record: `u32` tensor index, then `u32` chunk index within the tensor.
pub const CHUNK_RECORD_BYTES: usize = 8;

/// Record flag: every buffer pointer of this tensor is 16-byte aligned, so the vector path may
/// be used.
pub const FLAG_ALIGNED: u32 = 1;

/// The byte layout of one tensor record for one stage of a kernel, as data: the PTX backend
/// reads its offsets when it emits the multi-tensor entry, writes it into the artifact, and the
/// runtime builds records from it.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct TableLayout {
    /// Bytes from one record to the next (a multiple of 8).
    pub stride: usize,
    /// Offset of each buffer's device pointer (`u64`), in [`Kernel::buffers`] order.
    pub pointers: Vec<usize>,
    /// Offset of the tensor's element count (`u64`).
    pub len: usize,
    /// Offset of the flags (`u32`, see [`FLAG_ALIGNED`]); 4 bytes of padding follow.
    pub flags: usize,
    /// Offset of the device pointer of the tensor's block partials (`u64`), in a stage with
    /// reduce outputs.
    pub partials: Option<usize>,
    /// Offset of each of the stage's uniforms (`f32`).
    pub uniforms: Vec<usize>,
    /// Offset of the tensor's stochastic-rounding key for this step (`u32`, `Storage::sr_key`),
    /// in the 4 bytes after the flags, for a kernel whose stores round stochastically
    /// ([`crate::abi::stochastic`]); `None` otherwise.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub sr_key: Option<usize>,
}

impl TableLayout {
    /// The layout of a record with `buffers` pointers, a partials pointer when `partials`, and
    /// `uniforms` uniforms: pointers, `n`, flags and padding, the partials pointer, uniforms,
    /// padding to 8 bytes.
    pub fn new(buffers: usize, partials: bool, uniforms: usize) -> TableLayout {
        let len = 8 * buffers;
        let flags = len + 8;
        let partials = partials.then_some(flags + 8);
        let first_uniform = partials.map_or(flags + 8, |p| p + 8);
        TableLayout {
            stride: (first_uniform + 4 * uniforms).div_ceil(8) * 8,
            pointers: (0..buffers).map(|i| 8 * i).collect(),
            len,
            flags,
            partials,
            uniforms: (0..uniforms).map(|u| first_uniform + 4 * u).collect(),
            sr_key: None,
        }
    }

    /// This layout with the stochastic-rounding key in the 4 bytes after the flags (which were
    /// padding): the stride and every other offset stay.
    pub fn with_sr_key(mut self) -> TableLayout {
        self.sr_key = Some(self.flags + 4);
        self
    }

    /// The layout for stage 0 of `kernel` (the only stage of a one-stage kernel).
    pub fn of(kernel: &Kernel) -> TableLayout {
        Self::of_stage(kernel, 0)
    }

    /// The layout for stage `stage` of `kernel`: every stage gets every buffer, and its own
    /// uniforms; a stage with reduce outputs also gets the partials pointer, and a kernel whose
    /// stores round stochastically the key ([`TableLayout::with_sr_key`]).
    pub fn of_stage(kernel: &Kernel, stage: usize) -> TableLayout {
        let layout = TableLayout::new(
            2 + kernel.states.len(),
            crate::abi::reduces(kernel, stage),
            kernel.stages.get(stage).map_or(0, |s| s.uniforms.len()),
        );
        if crate::abi::stochastic(kernel) {
            layout.with_sr_key()
        } else {
            layout
        }
    }

    /// Offset of the stochastic-rounding key (`u32`), for a kernel that rounds stochastically.
    pub fn sr_key_offset(&self) -> Option<usize> {
        self.sr_key
    }

    /// Offset of buffer `i`'s device pointer (`u64`).
    pub fn pointer_offset(&self, i: usize) -> usize {
        self.pointers.get(i).copied().unwrap_or(8 * i)
    }

    /// Offset of the tensor's element count (`u64`).
    pub fn len_offset(&self) -> usize {
        self.len
    }

    /// Offset of the flags (`u32`, see [`FLAG_ALIGNED`]).
    pub fn flags_offset(&self) -> usize {
        self.flags
    }

    /// Offset of the partials pointer (`u64`), in a stage with reduce outputs.
    pub fn partials_offset(&self) -> Option<usize> {
        self.partials
    }

    /// Offset of uniform `u` (`f32`).
    pub fn uniform_offset(&self, u: usize) -> usize {
        self.uniforms.get(u).copied().unwrap_or(self.stride)
    }

    /// Bytes from one record to the next (a multiple of 8).
    pub fn stride(&self) -> usize {
        self.stride
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// AdamW's record, worked out by hand: 4 pointers (32 bytes), the length (8), flags and
    /// padding (8), 7 uniforms (28): 76 bytes, padded to 80.
    #[test]
    fn adamw_record_by_hand() {
        let l = TableLayout::new(4, false, 7);
        assert_eq!(l.pointer_offset(3), 24);
        assert_eq!(l.len_offset(), 32);
        assert_eq!(l.flags_offset(), 40);
        assert_eq!(l.partials_offset(), None);
        assert_eq!(l.uniform_offset(0), 48);
        assert_eq!(l.uniform_offset(6), 72);
        assert_eq!(l.stride(), 80);
        assert_eq!(TableLayout::new(2, false, 2).stride(), 40);
    }

    /// A reducing stage's record: 3 pointers (24), n (8), flags and padding (8; a key at 36), the partials
    /// pointer at 40 (8), 1 uniform at 48: 52 bytes, padded to 56.
    #[test]
    fn reducing_record_by_hand() {
        let l = TableLayout::new(3, true, 1);
        assert_eq!(l.partials_offset(), Some(40));
        assert_eq!(l.uniform_offset(0), 48);
        assert_eq!(l.stride(), 56);
        // The key takes the flags' padding: nothing else moves.
        let k = l.clone().with_sr_key();
        assert_eq!(k.sr_key_offset(), Some(36));
        assert_eq!((k.stride(), k.uniform_offset(0)), (56, 48));
        assert_eq!(l.sr_key_offset(), None);
    }
}
