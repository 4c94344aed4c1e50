//! Steps: one tensor with the vector or scalar entry, or many tensors with one launch of the
//! multi-tensor entry.
#![allow(unsafe_code)]

use super::error::{Context, CudaError};
use super::launch::{launch_stage, Grid};
use super::optimizer::{CudaOptimizer, ParamId, ParamSlot};
use super::table::{aligned16, Tensor};
use cudarc::driver::{
    CudaSlice, CudaStream, DevicePtr, DevicePtrMut, LaunchConfig, PushKernelArg, SyncOnDrop,
};
use optc_kernel::abi::Param;

/// Blocks for `work` units of `block` threads each, between 1 and `max_blocks`.
pub(crate) fn grid(work: u64, block: u32, max_blocks: u32) -> u32 {
    let blocks = work.div_ceil(u64::from(block.max(1)));
    u32::try_from(blocks)
        .unwrap_or(u32::MAX)
        .clamp(1, max_blocks.max(1))
}

/// The raw addresses of a tensor's state buffers, with the guards that record the launch as a
/// write of each buffer. The guards must live until the launch is queued: a guard dropped
/// earlier records its event before the kernel, so work on another stream that waits for the
/// state (for example a reader of [`CudaOptimizer::state_slice`]) could run before the step.
fn state_ptrs<'a>(
    states: &'a mut [CudaSlice<f32>],
    stream: &'a CudaStream,
) -> (Vec<u64>, Vec<SyncOnDrop<'a>>) {
    states.iter_mut().map(|s| s.device_ptr_mut(stream)).unzip()
}

/// One argument of a single-tensor launch.
enum Arg {
    U64(u64),
    F32(f32),
}

/// The arguments of a single-tensor launch in the order of the entry's parameter list (from
/// the artifact).
fn single_args(
    params: &[Param],
    ptrs: &[u64],
    n: u64,
    uniforms: &[f32],
) -> Result<Vec<Arg>, CudaError> {
    params
        .iter()
        .map(|p| match *p {
            Param::Buffer { index } => ptrs.get(index).copied().map(Arg::U64),
            Param::Len => Some(Arg::U64(n)),
            Param::Uniform { index } => uniforms.get(index).copied().map(Arg::F32),
            _ => None,
        })
        .map(|a| {
            a.ok_or_else(|| {
                CudaError::Buffers(format!(
                    "a single-tensor entry takes parameters ({params:?}) this launch cannot pass"
                ))
            })
        })
        .collect()
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
            let (states, _state_syncs) = state_ptrs(&mut slot.states, &stream);
            let mut ptrs = vec![p, g];
            ptrs.extend(states);
            if let Some(bad) = ptrs.iter().find(|p| !p.is_multiple_of(4)) {
                return Err(CudaError::Buffers(format!(
                    "device pointer {bad:#x} is not 4-byte aligned"
                )));
            }
            let vector = ptrs.iter().all(|p| aligned16(*p));
            let n = slot.len as u64;
            let uniforms: Vec<f32> = host.uniforms[0].iter().map(|u| *u as f32).collect();
            let (func, entry, work) = if vector {
                (&self.vector, &self.entries.vector, n / 4)
            } else {
                (&self.scalar, &self.entries.scalar, n)
            };
            let args = single_args(&entry.params, &ptrs, n, &uniforms)?;
            let cfg = LaunchConfig {
                grid_dim: (grid(work, block, max_blocks), 1, 1),
                block_dim: (block, 1, 1),
                shared_mem_bytes: 0,
            };
            let mut launch = stream.launch_builder(func);
            for a in &args {
                match a {
                    Arg::U64(x) => launch.arg(x),
                    Arg::F32(x) => launch.arg(x),
                };
            }
            // SAFETY: `args` follows the entry's parameter list, which `signature::check`
            // matched against the kernel (buffer pointers in `Kernel::buffers` order, n,
            // uniforms) when the module was loaded; every pointer covers `n` f32 (the caller's
            // contract for p and g, our allocations for the states), and the state guards live
            // until the launch is queued.
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
        let grid = Grid::fit(
            self.shape.block,
            self.max_blocks(),
            self.shape.chunk_elems,
            &self.entries,
        );
        let mut tensors = Vec::with_capacity(items.len());
        let mut updates = Vec::with_capacity(items.len());
        // The state guards of every tensor live until the launch is queued (see `state_ptrs`).
        let mut state_syncs = Vec::with_capacity(items.len());
        let mut slots: Vec<Option<&mut ParamSlot>> = self.params.iter_mut().map(Some).collect();
        for &(id, p, g) in items {
            let Some(slot) = slots.get_mut(id.index()).and_then(Option::take) else {
                return Err(CudaError::UnknownParam(id.index()));
            };
            let t = slot
                .t
                .checked_add(1)
                .ok_or_else(|| CudaError::Buffers("the step count would overflow".into()))?;
            let host = self.kernel.eval_host(&self.hypers, t, &slot.scalars, &[])?;
            let (states, syncs) = state_ptrs(&mut slot.states, &stream);
            state_syncs.push(syncs);
            let mut pointers = vec![p, g];
            pointers.extend(states);
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
        // A one-stage kernel without reductions (`only_stage`, checked at load): no partials.
        launch_stage(
            &stream,
            &self.multi,
            &self.entries,
            0,
            &tensors,
            grid,
            &mut self.buffers,
        )?;
        drop(state_syncs);
        drop(slots);
        for (id, t, scalars) in updates {
            let slot = &mut self.params[id.index()];
            slot.t = t;
            slot.scalars = scalars;
        }
        Ok(())
    }
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
