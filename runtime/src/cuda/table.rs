//! The multi-tensor table, built on the host (pure: no driver calls).
//!
//! Takes one [`Tensor`] per tensor of a launch; gives the bytes of the tensor table and of the
//! chunk list that the multi-tensor entry reads. The layout is defined once, in
//! [`optc_kernel::table`], which the PTX backend reads too. `docs/cuda.md`
//! describes it.

use super::error::CudaError;

pub use optc_kernel::table::{TableLayout, CHUNK_RECORD_BYTES, FLAG_ALIGNED};

/// One tensor of a multi-tensor launch.
#[derive(Clone, Debug, PartialEq)]
pub(crate) struct Tensor {
    /// Device pointers in buffer order.
    pub pointers: Vec<u64>,
    /// Elements.
    pub len: usize,
    /// The tensor's uniforms, already rounded to f32.
    pub uniforms: Vec<f32>,
}

/// The bytes of one launch.
#[derive(Clone, Debug, PartialEq)]
pub(crate) struct Table {
    /// The tensor records.
    pub records: Vec<u8>,
    /// The chunk records.
    pub chunks: Vec<u8>,
    /// The number of chunks.
    pub num_chunks: usize,
}

/// Whether a device pointer allows `ld.global.v4.f32`.
pub(crate) fn aligned16(ptr: u64) -> bool {
    ptr.is_multiple_of(16)
}

/// Builds the table for `tensors`; `chunk_elems` must be a positive multiple of 4.
pub(crate) fn build(
    layout: TableLayout,
    tensors: &[Tensor],
    chunk_elems: usize,
) -> Result<Table, CudaError> {
    if chunk_elems == 0 || !chunk_elems.is_multiple_of(4) {
        return Err(CudaError::Buffers(format!(
            "chunk size {chunk_elems} is not a positive multiple of 4"
        )));
    }
    let stride = layout.stride();
    let mut records = vec![0u8; stride * tensors.len()];
    let mut chunks = Vec::new();
    for (ti, t) in tensors.iter().enumerate() {
        if t.pointers.len() != layout.buffers || t.uniforms.len() != layout.uniforms {
            return Err(CudaError::Buffers(format!(
                "tensor {ti} has {} pointers and {} uniforms; the kernel takes {} and {}",
                t.pointers.len(),
                t.uniforms.len(),
                layout.buffers,
                layout.uniforms
            )));
        }
        let rec = &mut records[ti * stride..(ti + 1) * stride];
        let mut put = |off: usize, bytes: &[u8]| rec[off..off + bytes.len()].copy_from_slice(bytes);
        for (i, p) in t.pointers.iter().enumerate() {
            put(layout.pointer_offset(i), &p.to_le_bytes());
        }
        put(layout.len_offset(), &(t.len as u64).to_le_bytes());
        let flags = if t.pointers.iter().all(|p| aligned16(*p)) {
            FLAG_ALIGNED
        } else {
            0
        };
        put(layout.flags_offset(), &flags.to_le_bytes());
        for (u, v) in t.uniforms.iter().enumerate() {
            put(layout.uniform_offset(u), &v.to_le_bytes());
        }
        let tensor = u32::try_from(ti)
            .map_err(|_| CudaError::Buffers("more than 2^32 tensors in one launch".into()))?;
        for k in 0..t.len.div_ceil(chunk_elems) {
            let k = u32::try_from(k).map_err(|_| {
                CudaError::Buffers(format!("tensor {ti} has more than 2^32 chunks"))
            })?;
            chunks.extend_from_slice(&tensor.to_le_bytes());
            chunks.extend_from_slice(&k.to_le_bytes());
        }
    }
    let num_chunks = chunks.len() / CHUNK_RECORD_BYTES;
    Ok(Table {
        records,
        chunks,
        num_chunks,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn u64_at(b: &[u8], off: usize) -> u64 {
        let mut a = [0u8; 8];
        a.copy_from_slice(&b[off..off + 8]);
        u64::from_le_bytes(a)
    }

    #[test]
    fn records_hold_pointers_length_flags_and_uniforms() {
        let layout = TableLayout {
            buffers: 3,
            uniforms: 3,
        };
        assert_eq!(layout.stride(), 24 + 16 + 16);
        let tensors = vec![
            Tensor {
                pointers: vec![16, 32, 48],
                len: 10,
                uniforms: vec![1.0, 2.0, 3.0],
            },
            Tensor {
                pointers: vec![16, 36, 48],
                len: 0,
                uniforms: vec![4.0, 5.0, 6.0],
            },
            Tensor {
                pointers: vec![64, 80, 96],
                len: 8,
                uniforms: vec![7.0, 8.0, 9.0],
            },
        ];
        let t = build(layout, &tensors, 4).expect("build");
        let s = layout.stride();
        assert_eq!(t.records.len(), 3 * s);
        assert_eq!(u64_at(&t.records, s + layout.pointer_offset(1)), 36);
        assert_eq!(u64_at(&t.records, layout.len_offset()), 10);
        assert_eq!(t.records[layout.flags_offset()], FLAG_ALIGNED as u8);
        assert_eq!(
            t.records[s + layout.flags_offset()],
            0,
            "36 is not 16-byte aligned"
        );
        let u = 2 * s + layout.uniform_offset(2);
        assert_eq!(
            f32::from_le_bytes([
                t.records[u],
                t.records[u + 1],
                t.records[u + 2],
                t.records[u + 3]
            ]),
            9.0
        );
        // 10 elements in chunks of 4: 3 chunks; the empty tensor none; 8 elements: 2 chunks.
        assert_eq!(t.num_chunks, 5);
        let pairs: Vec<(u32, u32)> = t
            .chunks
            .chunks(8)
            .map(|c| {
                (
                    u32::from_le_bytes([c[0], c[1], c[2], c[3]]),
                    u32::from_le_bytes([c[4], c[5], c[6], c[7]]),
                )
            })
            .collect();
        assert_eq!(pairs, vec![(0, 0), (0, 1), (0, 2), (2, 0), (2, 1)]);
    }

    #[test]
    fn bad_chunk_sizes_and_shapes_are_errors() {
        let layout = TableLayout {
            buffers: 2,
            uniforms: 0,
        };
        let t = Tensor {
            pointers: vec![0, 0],
            len: 1,
            uniforms: vec![],
        };
        assert!(build(layout, std::slice::from_ref(&t), 6).is_err());
        assert!(build(layout, std::slice::from_ref(&t), 0).is_err());
        let wrong = Tensor {
            pointers: vec![0],
            ..t
        };
        assert!(build(layout, &[wrong], 4).is_err());
    }
}
