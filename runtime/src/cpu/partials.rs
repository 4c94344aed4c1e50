//! Block partials: what one pass of a stage with reduce outputs hands back, per tensor, per
//! reduce output, per block (see `docs/stages.md`).

use super::jit::RawOut;
use optc_kernel::REDUCE_BLOCK;

/// The f32 block partials of one stage's reduce outputs over a list of tensors, written by
/// [`super::CpuKernel::run_stage`]. For tensor `t` and reduce output `r` (its position in the
/// stage's [`optc_kernel::Stage::reduce`]), [`Partials::get`] gives one partial per block of
/// [`REDUCE_BLOCK`] consecutive elements of the tensor, in block order; the caller combines them
/// in f64 in that order ([`optc_kernel::reduce::combine`]). Reused across passes, so that a step
/// allocates nothing once the sizes are known.
#[derive(Clone, Debug, Default)]
pub struct Partials {
    data: Vec<f32>,
    /// Per tensor: the start of its region and its block count.
    regions: Vec<(usize, usize)>,
    outputs: usize,
}

impl Partials {
    /// No partials yet.
    pub fn new() -> Partials {
        Partials::default()
    }

    /// Lays the buffer out for tensors of lengths `lens` and `outputs` reduce outputs: tensor
    /// `t`'s region is `outputs` runs of `lens[t].div_ceil(REDUCE_BLOCK)` partials. Every partial
    /// starts as NaN, so one that no pass wrote cannot pass for a result.
    pub(super) fn layout(&mut self, lens: &[usize], outputs: usize) {
        self.regions.clear();
        let mut at = 0;
        for &n in lens {
            let blocks = n.div_ceil(REDUCE_BLOCK);
            self.regions.push((at, blocks));
            at += outputs * blocks;
        }
        self.outputs = outputs;
        self.data.clear();
        self.data.resize(at, f32::NAN);
    }

    /// Each tensor's region, for the JIT calls of one pass.
    pub(super) fn raw(&mut self) -> Vec<RawOut> {
        let base = self.data.as_mut_ptr();
        self.regions
            .iter()
            .map(|&(at, blocks)| RawOut {
                // In bounds (or one past the end for an empty region): `layout` sized the buffer.
                ptr: base.wrapping_add(at),
                stride: blocks,
            })
            .collect()
    }

    /// The number of tensors laid out.
    pub fn tensors(&self) -> usize {
        self.regions.len()
    }

    /// The number of reduce outputs per tensor.
    pub fn outputs(&self) -> usize {
        self.outputs
    }

    /// Every partial of tensor `tensor`: its reduce outputs in stage order, each as
    /// [`Partials::get`] gives it (empty when `tensor` is out of range).
    pub fn tensor(&self, tensor: usize) -> &[f32] {
        match self.regions.get(tensor) {
            Some(&(at, blocks)) => &self.data[at..at + self.outputs * blocks],
            None => &[],
        }
    }

    /// The block partials of reduce output `output` of tensor `tensor`, in block order (empty
    /// for an empty tensor, or when either index is out of range).
    pub fn get(&self, tensor: usize, output: usize) -> &[f32] {
        match self.regions.get(tensor) {
            Some(&(at, blocks)) if output < self.outputs => {
                let start = at + output * blocks;
                &self.data[start..start + blocks]
            }
            _ => &[],
        }
    }
}
