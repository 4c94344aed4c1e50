//! A memory-bandwidth probe with a kernel's read/write shape, for stating speed as a fraction of
//! what this machine can move in the same run.
//!
//! Takes a kernel's buffer use ([`optc_kernel::Kernel::buffers`]: which buffers are read, which
//! written) and a list of tensor lengths; owns buffers of that shape and makes one pass over them
//! with a plain, vectorizable Rust loop: every element of every read buffer is loaded once and
//! every written buffer is stored once, split into `(tensor, range)` work items the way the CPU
//! executor splits them ([`crate::cpu::MIN_CHUNK`], [`crate::cpu::CHUNK_ALIGN`]), over the same
//! rayon pool. The bytes it moves per element equal the kernel's
//! [`optc_kernel::Kernel::bytes_per_element`], so `kernel time / probe time` is the kernel's
//! fraction of the bandwidth limit.

use crate::cpu::{CHUNK_ALIGN, MIN_CHUNK};
use optc_kernel::BufferUse;
use rayon::prelude::*;

/// Elements per inner block: small enough that the block of every buffer stays in L1.
const BLOCK: usize = 256;
/// Chunks per thread for load balance (as the CPU executor).
const CHUNKS_PER_THREAD: usize = 4;

/// Buffers of one kernel's shape, and the pass that streams through them. See the module docs.
pub struct BandwidthProbe {
    /// Per tensor: read-only, read-write and write-only buffers.
    tensors: Vec<ProbeTensor>,
    reads: usize,
    writes: usize,
}

struct ProbeTensor {
    read_only: Vec<Vec<f32>>,
    read_write: Vec<Vec<f32>>,
    write_only: Vec<Vec<f32>>,
}

/// One work item: matching ranges of one tensor's buffers.
struct Item<'a> {
    read_only: Vec<&'a [f32]>,
    read_write: Vec<&'a mut [f32]>,
    write_only: Vec<&'a mut [f32]>,
}

impl BandwidthProbe {
    /// Allocates buffers with the read/write shape of `buffers` for tensors of lengths `lens`,
    /// filled with small non-zero values (no denormals).
    pub fn new(buffers: &[BufferUse], lens: &[usize]) -> Self {
        let count = |read: bool, written: bool| {
            buffers
                .iter()
                .filter(|b| b.read == read && b.written == written)
                .count()
        };
        let (ro, rw, wo) = (count(true, false), count(true, true), count(false, true));
        let make = |k: usize, n: usize, seed: usize| -> Vec<Vec<f32>> {
            (0..k)
                .map(|i| vec![0.25 + 0.125 * (seed + i) as f32; n])
                .collect()
        };
        BandwidthProbe {
            tensors: lens
                .iter()
                .map(|&n| ProbeTensor {
                    read_only: make(ro, n, 0),
                    read_write: make(rw, n, ro),
                    write_only: make(wo, n, ro + rw),
                })
                .collect(),
            reads: ro + rw,
            writes: rw + wo,
        }
    }

    /// Bytes one pass moves per element: 4 per buffer read and 4 per buffer written.
    pub fn bytes_per_element(&self) -> usize {
        4 * (self.reads + self.writes)
    }

    /// One pass over every buffer on `pool` (rayon's global pool when `None`).
    pub fn run(&mut self, pool: Option<&rayon::ThreadPool>) {
        let threads = pool.map_or_else(rayon::current_num_threads, |p| p.current_num_threads());
        let lens: Vec<usize> = self.tensors.iter().map(ProbeTensor::len).collect();
        let chunk = chunk_len(&lens, threads);
        let scale = 0.5 / self.reads.max(1) as f32;
        let mut items = Vec::new();
        for t in &mut self.tensors {
            split_tensor(t, chunk, &mut items);
        }
        let pass = move || items.into_par_iter().for_each(|item| stream(item, scale));
        match pool {
            Some(p) => p.install(pass),
            None => pass(),
        }
    }
}

impl ProbeTensor {
    fn len(&self) -> usize {
        self.read_only
            .iter()
            .chain(&self.read_write)
            .chain(&self.write_only)
            .map(Vec::len)
            .next()
            .unwrap_or(0)
    }
}

/// The chunk length for these tensors: the executor's policy (a share of the total for
/// `CHUNKS_PER_THREAD` chunks per thread, rounded up to `CHUNK_ALIGN`, at least `MIN_CHUNK`).
fn chunk_len(lens: &[usize], threads: usize) -> usize {
    let total: usize = lens.iter().sum();
    let pieces = threads.max(1) * CHUNKS_PER_THREAD;
    let target = total.div_ceil(pieces).div_ceil(CHUNK_ALIGN) * CHUNK_ALIGN;
    target.max(MIN_CHUNK)
}

/// Cuts one tensor's buffers into work items of `chunk` elements (the last absorbs a remainder
/// shorter than two chunks, as the executor does).
fn split_tensor<'a>(t: &'a mut ProbeTensor, chunk: usize, items: &mut Vec<Item<'a>>) {
    let len = t.len();
    let mut ro: Vec<&'a [f32]> = t.read_only.iter().map(Vec::as_slice).collect();
    let mut rw: Vec<&'a mut [f32]> = t.read_write.iter_mut().map(Vec::as_mut_slice).collect();
    let mut wo: Vec<&'a mut [f32]> = t.write_only.iter_mut().map(Vec::as_mut_slice).collect();
    let mut rest = len;
    while rest > 0 {
        let take = if rest < 2 * chunk { rest } else { chunk };
        let mut item = Item {
            read_only: Vec::with_capacity(ro.len()),
            read_write: Vec::with_capacity(rw.len()),
            write_only: Vec::with_capacity(wo.len()),
        };
        for s in &mut ro {
            let (head, tail) = s.split_at(take);
            item.read_only.push(head);
            *s = tail;
        }
        for s in &mut rw {
            let (head, tail) = std::mem::take(s).split_at_mut(take);
            item.read_write.push(head);
            *s = tail;
        }
        for s in &mut wo {
            let (head, tail) = std::mem::take(s).split_at_mut(take);
            item.write_only.push(head);
            *s = tail;
        }
        items.push(item);
        rest -= take;
    }
}

/// Streams one item block by block: sums every read buffer into `acc`, then stores
/// `x * 0.5 + acc * scale` into each read-write buffer and `acc * scale` into each write-only one
/// (bounded values: no overflow, no denormals, whatever the number of passes).
fn stream(item: Item<'_>, scale: f32) {
    let Item {
        read_only,
        mut read_write,
        mut write_only,
    } = item;
    let len = read_only
        .first()
        .map(|s| s.len())
        .or(read_write.first().map(|s| s.len()))
        .or(write_only.first().map(|s| s.len()))
        .unwrap_or(0);
    let mut acc = [0.0f32; BLOCK];
    let mut start = 0;
    while start < len {
        let end = (start + BLOCK).min(len);
        let acc = &mut acc[..end - start];
        acc.fill(0.0);
        for src in read_only.iter().map(|s| &s[start..end]) {
            for (a, x) in acc.iter_mut().zip(src) {
                *a += *x;
            }
        }
        for src in read_write.iter().map(|s| &s[start..end]) {
            for (a, x) in acc.iter_mut().zip(src) {
                *a += *x;
            }
        }
        for dst in read_write.iter_mut().map(|s| &mut s[start..end]) {
            for (x, a) in dst.iter_mut().zip(acc.iter()) {
                *x = *x * 0.5 + *a * scale;
            }
        }
        for dst in write_only.iter_mut().map(|s| &mut s[start..end]) {
            for (x, a) in dst.iter_mut().zip(acc.iter()) {
                *x = *a * scale;
            }
        }
        start = end;
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use optc_kernel::{Slot, StateId};

    fn adamw_shape() -> Vec<BufferUse> {
        let b = |slot, read, written| BufferUse {
            slot,
            read,
            written,
        };
        vec![
            b(Slot::Param, true, true),
            b(Slot::Grad, true, false),
            b(Slot::State(StateId(0)), true, true),
            b(Slot::State(StateId(1)), true, true),
        ]
    }

    #[test]
    fn moves_the_kernels_bytes_and_touches_every_element() {
        let lens = [5, MIN_CHUNK * 3 + 7, 0];
        let mut probe = BandwidthProbe::new(&adamw_shape(), &lens);
        assert_eq!(probe.bytes_per_element(), 28);
        probe.run(None);
        // Every read-write element went from its start value v to v/2 + (sum of reads)/8:
        // reads are g = 0.25, p = 0.375, m = 0.5, v = 0.625, sum 1.75, scale 0.5/4.
        for t in &probe.tensors {
            for (buf, start) in t.read_write.iter().zip([0.375f32, 0.5, 0.625]) {
                let want = start * 0.5 + 1.75 * 0.125;
                assert!(buf.iter().all(|&x| x == want), "{start}");
            }
            assert!(t.read_only[0].iter().all(|&x| x == 0.25));
        }
    }
}
