//! A memory-bandwidth probe with a kernel's read/write shape, for stating speed as a fraction of
//! what this machine can move in the same run.
//!
//! Takes the buffer use of each pass a kernel makes over the data (one list per stage, each as
//! [`optc_kernel::BufferUse`]: which buffers are read, which written) and a list of tensor
//! lengths; owns one buffer per tensor per buffer the kernel touches and makes, per run, one pass
//! over them per stage with a plain, vectorizable Rust loop: in each pass every element of every
//! buffer read in that stage is loaded once and every buffer written in it is stored once (a pass
//! that writes nothing sums what it reads, as a reduction does), split into `(tensor, range)`
//! work items the way the CPU executor splits them ([`crate::cpu::MIN_CHUNK`],
//! [`crate::cpu::CHUNK_ALIGN`]), over the same rayon pool. The bytes it moves per element are
//! the sum over the passes, as for the kernel, so `kernel time / probe time` is the kernel's
//! fraction of the bandwidth limit.

use crate::cpu::{CHUNK_ALIGN, MIN_CHUNK};
use optc_kernel::BufferUse;
use rayon::prelude::*;

/// Elements per inner block: small enough that the block of every buffer stays in L1.
const BLOCK: usize = 256;
/// Chunks per thread for load balance (as the CPU executor).
const CHUNKS_PER_THREAD: usize = 4;

/// Buffers of one kernel's shape, and the passes that stream through them. See the module docs.
pub struct BandwidthProbe {
    /// Per tensor, one buffer per buffer position of the passes (empty where no pass uses it).
    tensors: Vec<Vec<Vec<f32>>>,
    /// Per pass, how it uses each buffer position.
    passes: Vec<Vec<BufferUse>>,
}

/// One work item: matching ranges of one tensor's buffers.
struct Item<'a> {
    read_only: Vec<&'a [f32]>,
    read_write: Vec<&'a mut [f32]>,
    write_only: Vec<&'a mut [f32]>,
}

impl BandwidthProbe {
    /// A probe of one pass with the read/write shape of `buffers`, for tensors of lengths `lens`,
    /// filled with small non-zero values (no denormals).
    pub fn new(buffers: &[BufferUse], lens: &[usize]) -> Self {
        Self::with_passes(&[buffers.to_vec()], lens)
    }

    /// A probe of one pass per entry of `passes` (a staged kernel's stages, in order), each with
    /// that read/write shape, over one set of buffers for tensors of lengths `lens`.
    pub fn with_passes(passes: &[Vec<BufferUse>], lens: &[usize]) -> Self {
        let slots = passes.iter().map(Vec::len).max().unwrap_or(0);
        let touched: Vec<bool> = (0..slots)
            .map(|k| {
                passes
                    .iter()
                    .any(|p| p.get(k).is_some_and(|b| b.read || b.written))
            })
            .collect();
        BandwidthProbe {
            tensors: lens
                .iter()
                .map(|&n| {
                    touched
                        .iter()
                        .enumerate()
                        .map(|(k, &t)| {
                            let fill = 0.25 + 0.125 * k as f32;
                            if t {
                                vec![fill; n]
                            } else {
                                Vec::new()
                            }
                        })
                        .collect()
                })
                .collect(),
            passes: passes.to_vec(),
        }
    }

    /// Bytes one run moves per element, over all its passes: 4 per buffer read and 4 per buffer
    /// written in each pass.
    pub fn bytes_per_element(&self) -> usize {
        self.passes
            .iter()
            .flatten()
            .map(|b| 4 * (usize::from(b.read) + usize::from(b.written)))
            .sum()
    }

    /// One run: each pass in turn over every buffer, on `pool` (rayon's global pool when
    /// `None`).
    pub fn run(&mut self, pool: Option<&rayon::ThreadPool>) {
        let threads = pool.map_or_else(rayon::current_num_threads, |p| p.current_num_threads());
        let lens: Vec<usize> = self
            .tensors
            .iter()
            .map(|t| t.iter().map(Vec::len).max().unwrap_or(0))
            .collect();
        let chunk = chunk_len(&lens, threads);
        for uses in &self.passes {
            let reads = uses.iter().filter(|b| b.read).count();
            let scale = 0.5 / reads.max(1) as f32;
            let mut items = Vec::new();
            for t in &mut self.tensors {
                split_tensor(t, uses, chunk, &mut items);
            }
            let pass = move || items.into_par_iter().for_each(|item| stream(item, scale));
            match pool {
                Some(p) => p.install(pass),
                None => pass(),
            }
        }
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

/// Cuts the buffers of one tensor that the pass `uses` touches into work items of `chunk`
/// elements (the last absorbs a remainder shorter than two chunks, as the executor does).
fn split_tensor<'a>(
    t: &'a mut [Vec<f32>],
    uses: &[BufferUse],
    chunk: usize,
    items: &mut Vec<Item<'a>>,
) {
    let mut ro: Vec<&'a [f32]> = Vec::new();
    let mut rw: Vec<&'a mut [f32]> = Vec::new();
    let mut wo: Vec<&'a mut [f32]> = Vec::new();
    for (buf, u) in t.iter_mut().zip(uses) {
        match (u.read, u.written) {
            (true, false) => ro.push(buf.as_slice()),
            (true, true) => rw.push(buf.as_mut_slice()),
            (false, true) => wo.push(buf.as_mut_slice()),
            (false, false) => {}
        }
    }
    let len = ro
        .iter()
        .map(|s| s.len())
        .chain(rw.iter().map(|s| s.len()))
        .chain(wo.iter().map(|s| s.len()))
        .max()
        .unwrap_or(0);
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

/// Streams one item: the sum for a pass that writes nothing, the fused loop for the common
/// shapes, the blocked loop for the rest.
fn stream(item: Item<'_>, scale: f32) {
    if item.read_write.is_empty() && item.write_only.is_empty() {
        std::hint::black_box(sum(&item.read_only));
        return;
    }
    macro_rules! dispatch {
        ($(($ro:literal, $rw:literal, $wo:literal)),*) => {
            match (item.read_only.len(), item.read_write.len(), item.write_only.len()) {
                $(($ro, $rw, $wo) => fused::<$ro, $rw, $wo>(item, scale),)*
                _ => blocked(item, scale),
            }
        };
    }
    dispatch!(
        (1, 0, 1),
        (1, 1, 0),
        (1, 2, 0),
        (1, 3, 0),
        (1, 4, 0),
        (1, 5, 0),
        (2, 1, 0),
        (2, 2, 0),
        (2, 3, 0),
        (2, 4, 0),
        (1, 1, 1),
        (1, 2, 1),
        (1, 3, 1)
    )
}

/// Moves a list of slices into an array of `N` (the caller matched the length).
fn array<T, const N: usize>(v: Vec<T>) -> Option<[T; N]> {
    v.try_into().ok()
}

/// Lanes per step of the fused loop: four f32x4 vectors.
const LANES: usize = 16;

/// One fused pass: per element `s = sum of reads`, then each read-write buffer gets
/// `x * 0.5 + s * scale` and each write-only one `s * scale` (bounded values: no overflow, no
/// denormals, whatever the number of passes). Constant counts let LLVM unroll the buffer loops;
/// working on fixed-size lane arrays (which cannot alias each other) lets it vectorize.
fn fused<const RO: usize, const RW: usize, const WO: usize>(item: Item<'_>, scale: f32) {
    let Item {
        read_only,
        read_write,
        write_only,
    } = item;
    let (Some(ro), Some(mut rw), Some(mut wo)) = (
        array::<_, RO>(read_only),
        array::<_, RW>(read_write),
        array::<_, WO>(write_only),
    ) else {
        return;
    };
    let n = ro
        .first()
        .map(|s| s.len())
        .or(rw.first().map(|s| s.len()))
        .or(wo.first().map(|s| s.len()))
        .unwrap_or(0);
    let body = n - n % LANES;
    let mut i = 0;
    while i < body {
        let mut t = [0.0f32; LANES];
        for s in &ro {
            add_lanes(&mut t, &s[i..i + LANES]);
        }
        for s in &rw {
            add_lanes(&mut t, &s[i..i + LANES]);
        }
        for x in &mut t {
            *x *= scale;
        }
        for s in rw.iter_mut() {
            for (x, a) in s[i..i + LANES].iter_mut().zip(&t) {
                *x = *x * 0.5 + *a;
            }
        }
        for s in wo.iter_mut() {
            s[i..i + LANES].copy_from_slice(&t);
        }
        i += LANES;
    }
    for i in body..n {
        let mut sum = 0.0f32;
        for s in &ro {
            sum += s[i];
        }
        for s in &rw {
            sum += s[i];
        }
        let t = sum * scale;
        for s in rw.iter_mut() {
            s[i] = s[i] * 0.5 + t;
        }
        for s in wo.iter_mut() {
            s[i] = t;
        }
    }
}

/// The sum of every element of `bufs`, in `LANES` independent lanes (so that it vectorizes).
fn sum(bufs: &[&[f32]]) -> f32 {
    let mut acc = [0.0f32; LANES];
    for s in bufs {
        let body = s.len() - s.len() % LANES;
        for i in (0..body).step_by(LANES) {
            add_lanes(&mut acc, &s[i..i + LANES]);
        }
        for (a, x) in acc.iter_mut().zip(&s[body..]) {
            *a += *x;
        }
    }
    acc.iter().sum()
}

#[inline(always)]
fn add_lanes(acc: &mut [f32; LANES], src: &[f32]) {
    for (a, x) in acc.iter_mut().zip(src) {
        *a += *x;
    }
}

/// The same arithmetic for any buffer counts, block by block (each block of every buffer stays
/// in L1, so the extra passes over it cost no memory traffic).
fn blocked(item: Item<'_>, scale: f32) {
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
        for src in read_only
            .iter()
            .copied()
            .chain(read_write.iter().map(|s| &**s))
        {
            for (a, x) in acc.iter_mut().zip(&src[start..end]) {
                *a += *x;
            }
        }
        for a in acc.iter_mut() {
            *a *= scale;
        }
        for dst in read_write.iter_mut().map(|s| &mut s[start..end]) {
            for (x, a) in dst.iter_mut().zip(acc.iter()) {
                *x = *x * 0.5 + *a;
            }
        }
        for dst in write_only.iter_mut().map(|s| &mut s[start..end]) {
            dst.copy_from_slice(acc);
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
        // reads are p = 0.25, g = 0.375, m = 0.5, v = 0.625, sum 1.75, scale 0.5/4.
        for (t, &n) in probe.tensors.iter().zip(&lens) {
            for k in [0, 2, 3] {
                let start = 0.25 + 0.125 * k as f32;
                let want = start * 0.5 + 1.75 * 0.125;
                assert_eq!(t[k].len(), n);
                assert!(t[k].iter().all(|&x| x == want), "{start}");
            }
            assert!(t[1].iter().all(|&x| x == 0.375));
        }
    }

    #[test]
    fn staged_probe_moves_the_sum_of_its_passes() {
        // Clipped AdamW: a pass that reads g only, then the AdamW pass; an unused buffer.
        let mut g_only: Vec<BufferUse> = adamw_shape()
            .into_iter()
            .map(|b| BufferUse {
                read: b.slot == Slot::Grad,
                written: false,
                ..b
            })
            .collect();
        g_only.push(BufferUse {
            slot: Slot::State(StateId(2)),
            read: false,
            written: false,
        });
        let lens = [MIN_CHUNK * 2 + 3, 17];
        let mut probe = BandwidthProbe::with_passes(&[g_only, adamw_shape()], &lens);
        assert_eq!(probe.bytes_per_element(), 4 + 28);
        probe.run(None);
        for t in &probe.tensors {
            assert!(t[0].iter().all(|&x| x == 0.25 * 0.5 + 1.75 * 0.125));
            assert!(t[1].iter().all(|&x| x == 0.375));
            assert!(t[4].is_empty(), "a buffer no pass touches is not allocated");
        }
        assert_eq!(sum(&[&[1.0; 37], &[0.5; 3]]), 38.5);
    }

    #[test]
    fn fused_and_blocked_loops_agree() {
        let make = |k: usize| -> Vec<Vec<f32>> {
            (0..k)
                .map(|j| (0..1000).map(|i| (i * 7 + j) as f32 / 1e3).collect())
                .collect()
        };
        let (ro, mut rw1, mut wo1) = (make(2), make(3), make(1));
        let (mut rw2, mut wo2) = (rw1.clone(), wo1.clone());
        fused::<2, 3, 1>(
            Item {
                read_only: ro.iter().map(Vec::as_slice).collect(),
                read_write: rw1.iter_mut().map(Vec::as_mut_slice).collect(),
                write_only: wo1.iter_mut().map(Vec::as_mut_slice).collect(),
            },
            0.1,
        );
        blocked(
            Item {
                read_only: ro.iter().map(Vec::as_slice).collect(),
                read_write: rw2.iter_mut().map(Vec::as_mut_slice).collect(),
                write_only: wo2.iter_mut().map(Vec::as_mut_slice).collect(),
            },
            0.1,
        );
        assert_eq!(rw1, rw2);
        assert_eq!(wo1, wo2);
    }
}
