//! The multi-tensor table and the partials of a launch, built on the host (pure: no driver
//! calls).
//!
//! Takes one [`Tensor`] per tensor of a launch; gives the bytes of the tensor table and of the
//! chunk list that a stage's multi-tensor entry reads, where each tensor's block partials go, and
//! the launch arguments in the order the entry's parameter list (from the artifact) names them.
//! The record layout is data ([`TableLayout`], defined in [`optc_kernel::table`] and carried by
//! the artifact); `docs/cuda.md` describes it.

use super::error::CudaError;
use optc_kernel::abi::Param;
use optc_kernel::reduce::REDUCE_BLOCK;
use std::ops::Range;

pub use optc_kernel::table::{TableLayout, CHUNK_RECORD_BYTES, FLAG_ALIGNED};

/// One tensor of a multi-tensor launch.
#[derive(Clone, Debug, PartialEq)]
pub(crate) struct Tensor {
    /// Device pointers in buffer order.
    pub pointers: Vec<u64>,
    /// Elements.
    pub len: usize,
    /// The tensor's uniforms for the stage, already rounded to f32.
    pub uniforms: Vec<f32>,
    /// The tensor's stochastic-rounding key for this step (`StageTensor::sr_key`).
    pub sr_key: u32,
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

/// Where each tensor's block partials lie in the launch's partials buffer (in f32s): tensor
/// `t`'s are `ranges[t]`, reduce output `r`'s partial of block `b` at `ranges[t].start + r *
/// blocks + b` with `blocks = ceil(len / REDUCE_BLOCK)`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) struct PartialsLayout {
    /// Each tensor's range.
    pub ranges: Vec<Range<usize>>,
    /// The f32s of the whole buffer.
    pub len: usize,
}

/// The partials layout of a launch whose stage has `outputs` reduce outputs.
pub(crate) fn partials_layout(outputs: usize, tensors: &[Tensor]) -> PartialsLayout {
    let mut ranges = Vec::with_capacity(tensors.len());
    let mut at = 0;
    for t in tensors {
        let n = outputs * t.len.div_ceil(REDUCE_BLOCK);
        ranges.push(at..at + n);
        at += n;
    }
    PartialsLayout { ranges, len: at }
}

/// Splits the partials buffer, copied back to the host, into one vector per tensor.
pub(crate) fn split_partials(host: &[f32], layout: &PartialsLayout) -> Vec<Vec<f32>> {
    layout
        .ranges
        .iter()
        .map(|r| host.get(r.clone()).map(<[f32]>::to_vec).unwrap_or_default())
        .collect()
}

/// Whether a device pointer allows `ld.global.v4.f32`.
pub(crate) fn aligned16(ptr: u64) -> bool {
    ptr.is_multiple_of(16)
}

/// Builds the table for `tensors`; `chunk_elems` must be a positive multiple of
/// `chunk_multiple`. In a stage with reduce outputs, `partials` is the device address of the
/// partials buffer and its layout: each record gets the address of its tensor's range.
pub(crate) fn build(
    layout: &TableLayout,
    tensors: &[Tensor],
    chunk_elems: usize,
    chunk_multiple: usize,
    partials: Option<(u64, &PartialsLayout)>,
) -> Result<Table, CudaError> {
    if chunk_elems == 0 || !chunk_elems.is_multiple_of(chunk_multiple.max(1)) {
        return Err(CudaError::Buffers(format!(
            "chunk size {chunk_elems} is not a positive multiple of {chunk_multiple}"
        )));
    }
    if layout.partials.is_some() != partials.is_some() {
        return Err(CudaError::Buffers(
            "the partials of a launch do not fit its stage's record".into(),
        ));
    }
    let stride = layout.stride();
    let mut records = vec![0u8; stride * tensors.len()];
    let mut chunks = Vec::new();
    for (ti, t) in tensors.iter().enumerate() {
        if t.pointers.len() != layout.pointers.len() || t.uniforms.len() != layout.uniforms.len() {
            return Err(CudaError::Buffers(format!(
                "tensor {ti} has {} pointers and {} uniforms; the stage takes {} and {}",
                t.pointers.len(),
                t.uniforms.len(),
                layout.pointers.len(),
                layout.uniforms.len()
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
        if let Some(off) = layout.sr_key_offset() {
            put(off, &t.sr_key.to_le_bytes());
        }
        if let (Some(off), Some((base, p))) = (layout.partials_offset(), partials) {
            let start = p.ranges.get(ti).map_or(0, |r| r.start) as u64;
            put(off, &(base + 4 * start).to_le_bytes());
        }
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

/// The arguments of a multi-tensor launch, in the order of the entry's parameter list (every
/// one a `u64`): the list comes from the artifact, so the launcher follows the data.
pub(crate) fn multi_args(
    params: &[Param],
    table: u64,
    chunks: u64,
    num_chunks: u64,
    chunk_elems: u64,
) -> Result<Vec<u64>, CudaError> {
    params
        .iter()
        .map(|p| match p {
            Param::Table => Ok(table),
            Param::Chunks => Ok(chunks),
            Param::NumChunks => Ok(num_chunks),
            Param::ChunkElems => Ok(chunk_elems),
            other => Err(CudaError::Buffers(format!(
                "a multi-tensor entry takes no {other:?} parameter"
            ))),
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn u64_at(b: &[u8], off: usize) -> u64 {
        let mut a = [0u8; 8];
        a.copy_from_slice(&b[off..off + 8]);
        u64::from_le_bytes(a)
    }

    /// A stochastically rounding stage's record holds each tensor's key at the layout's offset;
    /// other records leave those bytes as padding.
    #[test]
    fn records_hold_the_stochastic_rounding_key() {
        let tensor = |sr_key| Tensor {
            pointers: vec![16, 32],
            len: 8,
            uniforms: vec![1.0],
            sr_key,
        };
        let layout = TableLayout::new(2, false, 1).with_sr_key();
        let off = layout.sr_key_offset().expect("offset");
        let t = build(&layout, &[tensor(0xdead_beef), tensor(7)], 4, 4, None).expect("build");
        let s = layout.stride();
        assert_eq!(t.records[off..off + 4], 0xdead_beefu32.to_le_bytes());
        assert_eq!(t.records[s + off..s + off + 4], 7u32.to_le_bytes());
        let plain = TableLayout::new(2, false, 1);
        let t = build(&plain, &[tensor(0xdead_beef)], 4, 4, None).expect("build");
        assert_eq!(t.records[off..off + 4], [0; 4]);
    }

    #[test]
    fn records_hold_pointers_length_flags_and_uniforms() {
        let layout = TableLayout::new(3, false, 3);
        assert_eq!(layout.stride(), 24 + 16 + 16);
        let tensors = vec![
            Tensor {
                pointers: vec![16, 32, 48],
                len: 10,
                uniforms: vec![1.0, 2.0, 3.0],
                sr_key: 0,
            },
            Tensor {
                pointers: vec![16, 36, 48],
                len: 0,
                uniforms: vec![4.0, 5.0, 6.0],
                sr_key: 0,
            },
            Tensor {
                pointers: vec![64, 80, 96],
                len: 8,
                uniforms: vec![7.0, 8.0, 9.0],
                sr_key: 0,
            },
        ];
        let t = build(&layout, &tensors, 4, 4, None).expect("build");
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
        let layout = TableLayout::new(2, false, 0);
        let t = Tensor {
            pointers: vec![0, 0],
            len: 1,
            uniforms: vec![],
            sr_key: 0,
        };
        assert!(build(&layout, std::slice::from_ref(&t), 6, 4, None).is_err());
        assert!(build(&layout, std::slice::from_ref(&t), 0, 4, None).is_err());
        assert!(build(&layout, std::slice::from_ref(&t), 8, 4096, None).is_err());
        let wrong = Tensor {
            pointers: vec![0],
            ..t.clone()
        };
        assert!(build(&layout, &[wrong], 4, 4, None).is_err());
        let reducing = TableLayout::new(2, true, 0);
        assert!(
            build(&reducing, std::slice::from_ref(&t), 4096, 4096, None).is_err(),
            "a reducing stage needs its partials"
        );
    }

    /// Tensors of 4097, 0 and 4096 elements in a stage with 2 reduce outputs: 2, 0 and 1 blocks,
    /// so 4, 0 and 2 partials; each record points at its own range.
    #[test]
    fn partials_are_laid_out_per_tensor_per_output_per_block() {
        let layout = TableLayout::new(2, true, 1);
        let tensor = |len| Tensor {
            pointers: vec![16, 32],
            len,
            uniforms: vec![0.5],
            sr_key: 0,
        };
        let tensors = vec![tensor(4097), tensor(0), tensor(4096)];
        let p = partials_layout(2, &tensors);
        assert_eq!(p.ranges, vec![0..4, 4..4, 4..6]);
        assert_eq!(p.len, 6);
        let base = 0x1000;
        let t = build(&layout, &tensors, 8192, 4096, Some((base, &p))).expect("build");
        let off = layout.partials_offset().expect("partials");
        let s = layout.stride();
        assert_eq!(u64_at(&t.records, off), base);
        assert_eq!(u64_at(&t.records, 2 * s + off), base + 16);
        // One chunk each for the two non-empty tensors.
        assert_eq!(t.num_chunks, 2);
        let host: Vec<f32> = (0..6).map(|i| i as f32).collect();
        assert_eq!(
            split_partials(&host, &p),
            vec![vec![0.0, 1.0, 2.0, 3.0], vec![], vec![4.0, 5.0]]
        );
    }

    /// What the device does with the record (write reduce output `r`'s partial of block `b` at
    /// `record.partials + 4 (r blocks + b)`), then the host side (split, combine in f64), give
    /// the reference reduction of every tensor, and the Step total in registration order.
    #[test]
    fn partials_written_through_the_records_combine_to_the_reference() {
        use optc_kernel::reduce::{block_partial, combine, combine_totals, reduce, ReduceOp};
        let ops = [ReduceOp::Sum, ReduceOp::Max];
        let lens = [1usize, 4096, 0, 3 * 4096 + 5, 33];
        let data: Vec<Vec<f32>> = lens
            .iter()
            .enumerate()
            .map(|(t, &n)| {
                (0..n)
                    .map(|i| ((i * 7919 + t * 104_729) % 2001) as f32 / 1000.0 - 1.0)
                    .map(|x| x * 1.5e3)
                    .collect()
            })
            .collect();
        let tensors: Vec<Tensor> = lens
            .iter()
            .map(|&len| Tensor {
                pointers: vec![16, 32],
                len,
                uniforms: vec![],
                sr_key: 0,
            })
            .collect();
        let layout = TableLayout::new(2, true, 0);
        let plan = partials_layout(ops.len(), &tensors);
        let base = 0x10_0000u64;
        let t = build(&layout, &tensors, 4096, 4096, Some((base, &plan))).expect("build");
        let off = layout.partials_offset().expect("partials");
        // The device's writes, addressed from each record as the PTX does.
        let mut device = vec![f32::NAN; plan.len];
        for (ti, xs) in data.iter().enumerate() {
            let ptr = u64_at(&t.records, ti * layout.stride() + off);
            let blocks = xs.len().div_ceil(4096);
            for (r, op) in ops.iter().enumerate() {
                for (b, block) in xs.chunks(4096).enumerate() {
                    let at = (ptr - base) as usize / 4 + r * blocks + b;
                    device[at] = block_partial(*op, block);
                }
            }
        }
        let per_tensor = split_partials(&device, &plan);
        let mut totals = vec![Vec::new(); ops.len()];
        for (xs, parts) in data.iter().zip(&per_tensor) {
            let blocks = xs.len().div_ceil(4096);
            for (r, op) in ops.iter().enumerate() {
                let got = combine(*op, parts[r * blocks..(r + 1) * blocks].iter().copied());
                assert_eq!(got.to_bits(), reduce(*op, xs).to_bits(), "{op:?}");
                totals[r].push(got);
            }
        }
        let all: Vec<f32> = data.concat();
        let step_sum = combine_totals(ReduceOp::Sum, totals[0].iter().copied());
        let exact: f64 = data
            .iter()
            .map(|xs| reduce(ReduceOp::Sum, xs))
            .fold(-0.0, |a, b| a + b);
        assert_eq!(step_sum, exact);
        let step_max = combine_totals(ReduceOp::Max, totals[1].iter().copied());
        let max = all.iter().copied().fold(f32::NEG_INFINITY, f32::max);
        assert_eq!(step_max, f64::from(max));
    }

    #[test]
    fn launch_arguments_follow_the_parameter_list() {
        let params = optc_kernel::abi::multi_params();
        assert_eq!(
            multi_args(&params, 1, 2, 3, 4).expect("args"),
            vec![1, 2, 3, 4]
        );
        let reordered = [
            Param::ChunkElems,
            Param::Table,
            Param::Chunks,
            Param::NumChunks,
        ];
        assert_eq!(
            multi_args(&reordered, 1, 2, 3, 4).expect("args"),
            vec![4, 1, 2, 3]
        );
        assert!(multi_args(&[Param::Len], 1, 2, 3, 4).is_err());
    }
}
