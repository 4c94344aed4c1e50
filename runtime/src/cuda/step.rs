//! Steps: one tensor with the vector or scalar entry, or many tensors with one launch of the
//! multi-tensor entry.
#![allow(unsafe_code)]

use super::error::{Context, CudaError};
use super::optimizer::{CudaOptimizer, ParamId};
use super::table::{self, aligned16, TableLayout, Tensor};
use cudarc::driver::{CudaSlice, CudaStream, DevicePtr, DevicePtrMut, LaunchConfig, PushKernelArg};
use std::sync::Arc;

/// Blocks for `work` units of `block` threads each, between 1 and `max_blocks`.
pub(crate) fn grid(work: u64, block: u32, max_blocks: u32) -> u32 {
    let blocks = work.div_ceil(u64::from(block.max(1)));
    u32::try_from(blocks)
        .unwrap_or(u32::MAX)
        .clamp(1, max_blocks.max(1))
}

/// The raw address of one of our own state buffers. The buffers are only ever used on the
/// optimizer's stream, so stream order alone keeps their reads and writes in sequence.
fn state_ptr(buf: &mut CudaSlice<f32>, stream: &Arc<CudaStream>) -> u64 {
    let (ptr, _sync) = buf.device_ptr_mut(stream);
    ptr
}

impl CudaOptimizer {
    fn max_blocks(&self) -> u32 {
        self.multiprocessors
            .saturating_mul(self.shape.blocks_per_sm)
    }

    fn check_lens(&self, id: ParamId, p: usize, g: usize) -> Result<(), CudaError> {
        let n = self.slot(id)?.len;
        if p != n || g != n {
            return Err(CudaError::Buffers(format!(
                "parameter {} was registered with {n} elements; step got p with {p} and g with {g}",
                id.index()
            )));
        }
        Ok(())
    }

    /// Steps one parameter: `p` is updated in place from the gradient `g`; the states, the step
    /// count and the scalar states advance. Queued on [`CudaOptimizer::stream`].
    pub fn step<P: DevicePtrMut<f32>, G: DevicePtr<f32>>(
        &mut self,
        id: ParamId,
        p: &mut P,
        g: &G,
    ) -> Result<(), CudaError> {
        self.check_lens(id, p.len(), g.len())?;
        let stream = self.stream.clone();
        let (pp, _psync) = p.device_ptr_mut(&stream);
        let (gp, _gsync) = g.device_ptr(&stream);
        // SAFETY: both pointers come from live cudarc buffers whose lengths were checked against
        // the parameter's; the guards order the kernel after earlier writes and record it.
        unsafe { self.step_raw(id, pp, gp) }
    }

    /// Like [`CudaOptimizer::step`], for raw device pointers.
    ///
    /// # Safety
    /// `p` and `g` must each point to as many f32 as the parameter was registered with, in device
    /// memory of this optimizer's context, `p` writable, valid until the step has run on
    /// [`CudaOptimizer::stream`], and not written by other work meanwhile.
    pub unsafe fn step_raw(&mut self, id: ParamId, p: u64, g: u64) -> Result<(), CudaError> {
        let max_blocks = self.max_blocks();
        let block = self.shape.block;
        let stream = self.stream.clone();
        let slot = self
            .params
            .get_mut(id.index())
            .ok_or(CudaError::UnknownParam(id.index()))?;
        let t = slot
            .t
            .checked_add(1)
            .ok_or_else(|| CudaError::Buffers("the step count would overflow".into()))?;
        let host = self.kernel.eval_host(&self.hypers, t, &slot.scalars, &[])?;
        if slot.len > 0 {
            let mut ptrs = vec![p, g];
            ptrs.extend(slot.states.iter_mut().map(|s| state_ptr(s, &stream)));
            if let Some(bad) = ptrs.iter().find(|p| !p.is_multiple_of(4)) {
                return Err(CudaError::Buffers(format!(
                    "device pointer {bad:#x} is not 4-byte aligned"
                )));
            }
            let vector = ptrs.iter().all(|p| aligned16(*p));
            let n = slot.len as u64;
            let uniforms: Vec<f32> = host.uniforms[0].iter().map(|u| *u as f32).collect();
            let (func, work) = if vector {
                (&self.vector, n / 4)
            } else {
                (&self.scalar, n)
            };
            let cfg = LaunchConfig {
                grid_dim: (grid(work, block, max_blocks), 1, 1),
                block_dim: (block, 1, 1),
                shared_mem_bytes: 0,
            };
            let mut launch = stream.launch_builder(func);
            for ptr in &ptrs {
                launch.arg(ptr);
            }
            launch.arg(&n);
            for u in &uniforms {
                launch.arg(u);
            }
            // SAFETY: the arguments match the entry's parameters (buffer pointers in
            // `Kernel::buffers` order, n, uniforms), which `signature::check` verified against
            // the PTX when the module was loaded; every pointer covers
            // `n` f32 (the caller's contract for p and g, our allocations for the states).
            unsafe { launch.launch(cfg) }.during(format!("launching `{}`", self.kernel.rule))?;
        }
        slot.t = t;
        slot.scalars = host.scalars;
        Ok(())
    }

    /// Steps many parameters with one launch of the multi-tensor entry. Each parameter has its
    /// own step count and scalar states, hence its own uniforms in the table.
    pub fn step_many<P: DevicePtrMut<f32>, G: DevicePtr<f32>>(
        &mut self,
        items: &mut [(ParamId, &mut P, &G)],
    ) -> Result<(), CudaError> {
        for (id, p, g) in items.iter() {
            self.check_lens(*id, p.len(), g.len())?;
        }
        let stream = self.stream.clone();
        let mut raw = Vec::with_capacity(items.len());
        let mut syncs = Vec::with_capacity(2 * items.len());
        for (id, p, g) in items.iter_mut() {
            let (pp, ps) = p.device_ptr_mut(&stream);
            let (gp, gs) = g.device_ptr(&stream);
            syncs.push(ps);
            syncs.push(gs);
            raw.push((*id, pp, gp));
        }
        // SAFETY: every pointer comes from a live cudarc buffer whose length was checked; the
        // guards in `syncs` live until after the launch is queued.
        let result = unsafe { self.step_many_raw(&raw) };
        drop(syncs);
        result
    }

    /// Like [`CudaOptimizer::step_many`], for raw device pointers `(id, p, g)`.
    ///
    /// # Safety
    /// The same as [`CudaOptimizer::step_raw`] for every item.
    pub unsafe fn step_many_raw(&mut self, items: &[(ParamId, u64, u64)]) -> Result<(), CudaError> {
        let mut seen = vec![false; self.params.len()];
        for (id, _, _) in items {
            let s = seen
                .get_mut(id.index())
                .ok_or(CudaError::UnknownParam(id.index()))?;
            if *s {
                return Err(CudaError::Buffers(format!(
                    "parameter {} appears twice in one multi-tensor step",
                    id.index()
                )));
            }
            *s = true;
        }
        let stream = self.stream.clone();
        let mut tensors = Vec::with_capacity(items.len());
        let mut updates = Vec::with_capacity(items.len());
        for &(id, p, g) in items {
            let slot = &mut self.params[id.index()];
            let t = slot
                .t
                .checked_add(1)
                .ok_or_else(|| CudaError::Buffers("the step count would overflow".into()))?;
            let host = self.kernel.eval_host(&self.hypers, t, &slot.scalars, &[])?;
            let mut pointers = vec![p, g];
            pointers.extend(slot.states.iter_mut().map(|s| state_ptr(s, &stream)));
            if let Some(bad) = pointers.iter().find(|p| !p.is_multiple_of(4)) {
                return Err(CudaError::Buffers(format!(
                    "device pointer {bad:#x} is not 4-byte aligned"
                )));
            }
            tensors.push(Tensor {
                pointers,
                len: slot.len,
                uniforms: host.uniforms[0].iter().map(|u| *u as f32).collect(),
            });
            updates.push((id, t, host.scalars));
        }
        let table = table::build(
            TableLayout::of(&self.kernel),
            &tensors,
            self.shape.chunk_elems,
        )?;
        if table.num_chunks > 0 {
            let records = upload(
                &stream,
                &mut self.table_buf,
                &table.records,
                "the tensor table",
            )?;
            let chunks = upload(
                &stream,
                &mut self.chunk_buf,
                &table.chunks,
                "the chunk list",
            )?;
            let num_chunks = table.num_chunks as u64;
            let chunk_elems = self.shape.chunk_elems as u64;
            let cfg = LaunchConfig {
                grid_dim: (grid(num_chunks, 1, self.max_blocks()), 1, 1),
                block_dim: (self.shape.block, 1, 1),
                shared_mem_bytes: 0,
            };
            let mut launch = stream.launch_builder(&self.multi);
            launch
                .arg(&records)
                .arg(&chunks)
                .arg(&num_chunks)
                .arg(&chunk_elems);
            // SAFETY: the arguments match the multi-tensor entry (table, chunks, count, chunk
            // size; checked by `signature::check` at load, with the record size); the table was
            // built with the layout the PTX backend reads (one definition, `optc_kernel::table`),
            // its pointers
            // are the caller's (contract above) and our state allocations, and both arrays are
            // queued for upload on this stream before the launch and kept alive in `self`.
            unsafe { launch.launch(cfg) }
                .during(format!("launching `{}` (multi-tensor)", self.kernel.rule))?;
        }
        for (id, t, scalars) in updates {
            let slot = &mut self.params[id.index()];
            slot.t = t;
            slot.scalars = scalars;
        }
        Ok(())
    }
}

/// Copies `bytes` into `buf` (grown when too small) and returns its device address.
fn upload(
    stream: &Arc<CudaStream>,
    buf: &mut Option<CudaSlice<u8>>,
    bytes: &[u8],
    what: &str,
) -> Result<u64, CudaError> {
    if buf.as_ref().is_none_or(|b| b.len() < bytes.len()) {
        let cap = bytes.len().next_power_of_two().max(256);
        *buf = Some(
            stream
                .alloc_zeros::<u8>(cap)
                .during(format!("allocating {what}"))?,
        );
    }
    let Some(dst) = buf.as_mut() else {
        return Err(CudaError::Buffers(format!("no buffer for {what}")));
    };
    let mut view = dst.slice_mut(..bytes.len());
    stream
        .memcpy_htod(bytes, &mut view)
        .during(format!("uploading {what}"))?;
    let (ptr, _sync) = dst.device_ptr(stream);
    Ok(ptr)
}

#[cfg(test)]
mod tests {
    use super::grid;

    #[test]
    fn grids_cover_the_work_within_the_cap() {
        assert_eq!(grid(0, 256, 1056), 1);
        assert_eq!(grid(256, 256, 1056), 1);
        assert_eq!(grid(257, 256, 1056), 2);
        assert_eq!(grid(1 << 30, 256, 1056), 1056);
        assert_eq!(grid(5, 1, 0), 1);
    }
}
