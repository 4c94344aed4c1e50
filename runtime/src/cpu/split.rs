//! Work splitting for [`super::CpuKernel::step_many`]: a list of tensor lengths in, a list of
//! `(tensor, range)` work items out, for one parallel pass.
//!
//! Guarantees: the items of each tensor are contiguous, in order, do not overlap and cover it
//! exactly; every chunk boundary is a multiple of the alignment asked for ([`CHUNK_ALIGN`]
//! elements, or `REDUCE_BLOCK` for a stage with reductions, so that every reduction block lies in
//! one chunk); a tensor of at most `2 * MIN_CHUNK` elements is one item; no chunk is shorter than
//! [`MIN_CHUNK`]; empty tensors give no item. The chunking depends on the thread count, but the
//! results do not: every element's value and every block partial is computed the same way in
//! any chunk.

/// The smallest chunk a tensor is split into: 32K elements.
///
/// One chunk of AdamW (4 reads, 3 writes) then moves 32K x 28 B = 896 KiB, about 10-20 us at
/// the memory bandwidth of one core, which is ten times or more the cost of handing a task to
/// another rayon thread (about 1 us). Smaller chunks would spend a noticeable share of the time
/// in scheduling; larger ones balance worse for mid-size tensors.
pub const MIN_CHUNK: usize = 32 * 1024;

/// Chunk boundaries are multiples of this many elements (64 bytes: whole cache lines when the
/// buffer is cache-line aligned, and whole f32x4 vectors, so only a tensor's last chunk has a
/// tail).
pub const CHUNK_ALIGN: usize = 16;

/// How many chunks per thread a large workload is cut into, for load balance.
const CHUNKS_PER_THREAD: usize = 4;

/// One range of one tensor.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct WorkItem {
    /// The tensor's position in the list.
    pub tensor: usize,
    /// The first element.
    pub start: usize,
    /// The number of elements.
    pub len: usize,
}

/// Splits tensors of lengths `lens` into work items for `threads` threads, with chunk boundaries
/// at multiples of `align` (a power of two that divides [`MIN_CHUNK`]).
pub fn plan(lens: &[usize], threads: usize, align: usize) -> Vec<WorkItem> {
    let align = align.clamp(1, MIN_CHUNK);
    let total: usize = lens.iter().sum();
    let pieces = threads.max(1) * CHUNKS_PER_THREAD;
    let target = total.div_ceil(pieces).div_ceil(align) * align;
    let chunk = target.max(MIN_CHUNK);
    let mut items = Vec::new();
    for (tensor, &len) in lens.iter().enumerate() {
        let mut start = 0;
        while start < len {
            // The last chunk absorbs a remainder shorter than `chunk`.
            let rest = len - start;
            let take = if rest < 2 * chunk { rest } else { chunk };
            items.push(WorkItem {
                tensor,
                start,
                len: take,
            });
            start += take;
        }
    }
    items
}

#[cfg(test)]
mod tests {
    use super::*;

    fn check(lens: &[usize], threads: usize) -> Vec<WorkItem> {
        let items = check_aligned(lens, threads, CHUNK_ALIGN);
        check_aligned(lens, threads, 4096);
        items
    }

    fn check_aligned(lens: &[usize], threads: usize, align: usize) -> Vec<WorkItem> {
        let items = plan(lens, threads, align);
        for (t, &len) in lens.iter().enumerate() {
            let mine: Vec<&WorkItem> = items.iter().filter(|w| w.tensor == t).collect();
            let mut at = 0;
            for w in &mine {
                assert_eq!(w.start, at, "items of tensor {t} are not contiguous");
                assert_eq!(w.start % align, 0);
                assert!(w.len >= MIN_CHUNK.min(len));
                at += w.len;
            }
            assert_eq!(at, len, "tensor {t} not covered");
            if len <= 2 * MIN_CHUNK {
                assert!(mine.len() <= 1);
            }
        }
        items
    }

    #[test]
    fn small_tensors_stay_whole() {
        let lens: Vec<usize> = (0..200).map(|i| i * 37 % 5000).collect();
        let items = check(&lens, 2);
        assert_eq!(items.len(), lens.iter().filter(|&&l| l > 0).count());
    }

    #[test]
    fn large_tensor_is_split_for_every_thread() {
        let items = check(&[64 << 20], 2);
        assert_eq!(items.len(), 8);
        // A remainder past the last whole chunk joins the last chunk.
        let items = check(&[(64 << 20) + 5], 16);
        assert_eq!(items.len(), 63);
    }

    #[test]
    fn odd_lengths_and_mixtures() {
        check(
            &[0, 1, 3, 4097, 100_003, 1 << 20, (1 << 20) + 13, 65_537],
            2,
        );
        check(&[MIN_CHUNK * 2 + 1, MIN_CHUNK * 3 - 1], 1);
        check(&[7_000_001], 3);
    }
}
