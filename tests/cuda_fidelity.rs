//! Fidelity on the GPU: the PyTorch fixtures of `tests/fixtures/` replayed through the CUDA target,
//! against the same budget as the CPU (`docs/fidelity.md`).
//!
//! Takes: `tests/fidelity.rs` as a module, so the fixture loader, the replay and the budget are
//! the one copy the CPU backends use (its CPU tests therefore run here too; they take well under a
//! second). Gives: two tests, one per way a tensor reaches the GPU: the single-tensor entries
//! (`step`: vector or scalar entry by alignment) and the multi-tensor entry (`step_many`).
//! Guarantees: each step runs on the device; the parameter, the states, the step count and the
//! scalar states go up from the host buffers of the replay before the step and come back after
//! it, so the replay sees exactly what the kernel wrote (f32 copies are exact).
//!
//! Needs an NVIDIA GPU and driver; without one each test prints why it is skipped and passes,
//! unless `OPTC_REQUIRE_GPU` is set, where it fails. `OPTC_REPO_DIR` points the replay at a copy
//! of the fixtures (the GPU bundle, `docs/cuda.md`).
#![cfg(feature = "cuda")]

#[path = "fidelity.rs"]
mod fidelity;

use optc_compiler::backend::interp::Buffers;
use optc_compiler::backend::ptx::{emit, Options};
use optc_kernel::Kernel;
use optc_runtime::cuda::cudarc::driver::CudaSlice;
use optc_runtime::cuda::{devices, driver_available, CudaOptimizer, ParamId};
use std::collections::HashMap;

/// Whether a GPU is present; prints the reason when not (and fails under `OPTC_REQUIRE_GPU`).
fn gpu_present(test: &str) -> bool {
    let reason = if !driver_available() {
        Some("no CUDA driver".to_string())
    } else {
        match devices() {
            Ok(d) if !d.is_empty() => None,
            Ok(_) => Some("no CUDA device".to_string()),
            Err(e) => Some(e.to_string()),
        }
    };
    match reason {
        None => true,
        Some(r) => {
            assert!(
                std::env::var_os("OPTC_REQUIRE_GPU").is_none(),
                "{test}: {r}, but OPTC_REQUIRE_GPU is set"
            );
            eprintln!("SKIPPED {test}: {r}");
            false
        }
    }
}

/// Which entry a step launches.
#[derive(Clone, Copy)]
enum Entry {
    /// `CudaOptimizer::step`: the vector entry for 16-byte aligned buffers, else the scalar one.
    Single,
    /// `CudaOptimizer::step_many` with one tensor: the multi-tensor entry.
    Multi,
}

/// A parameter slot of one length, with its device buffers for `p` and `g`.
struct Slot {
    id: ParamId,
    p: CudaSlice<f32>,
    g: CudaSlice<f32>,
}

/// The loaded module for the kernel of the fixture being replayed, and one parameter slot per
/// tensor length (the replay hands over host buffers; the slots are reused step after step).
struct Device {
    kernel: Kernel,
    opt: CudaOptimizer,
    slots: HashMap<usize, Slot>,
}

impl Device {
    fn load(kernel: &Kernel) -> Device {
        let ptx =
            emit(kernel, &Options::default()).unwrap_or_else(|e| panic!("{}: {e}", kernel.rule));
        let opt = CudaOptimizer::new(kernel.clone(), &ptx, 0)
            .unwrap_or_else(|e| panic!("{}: load on device 0: {e}", kernel.rule));
        Device {
            kernel: kernel.clone(),
            opt,
            slots: HashMap::new(),
        }
    }

    /// One step of one tensor: the replay's host state goes up, the kernel runs, the result
    /// comes back into the same buffers.
    fn step(
        &mut self,
        entry: Entry,
        hypers: &[f64],
        t: u64,
        scalars: &mut [f64],
        bufs: Buffers<'_, f32>,
    ) {
        let rule = self.kernel.rule.clone();
        let fail = |e: &dyn std::fmt::Display| -> ! { panic!("{rule} step {t}: {e}") };
        let opt = &mut self.opt;
        for (h, v) in self.kernel.hypers.iter().zip(hypers) {
            opt.set_hyper(&h.name, *v).unwrap_or_else(|e| fail(&e));
        }
        let stream = opt.stream().clone();
        let n = bufs.param.len();
        let slot = match self.slots.entry(n) {
            std::collections::hash_map::Entry::Occupied(o) => o.into_mut(),
            std::collections::hash_map::Entry::Vacant(v) => {
                let p = stream.clone_htod(bufs.param).unwrap_or_else(|e| fail(&e));
                let g = stream.clone_htod(bufs.grad).unwrap_or_else(|e| fail(&e));
                let id = opt.add_param(&p).unwrap_or_else(|e| fail(&e));
                v.insert(Slot { id, p, g })
            }
        };
        stream
            .memcpy_htod(bufs.param, &mut slot.p)
            .unwrap_or_else(|e| fail(&e));
        stream
            .memcpy_htod(bufs.grad, &mut slot.g)
            .unwrap_or_else(|e| fail(&e));
        let mut states = bufs.states;
        for (s, values) in self.kernel.states.iter().zip(states.iter()) {
            opt.set_state(slot.id, &s.name, values)
                .unwrap_or_else(|e| fail(&e));
        }
        opt.set_progress(slot.id, t - 1, scalars)
            .unwrap_or_else(|e| fail(&e));
        match entry {
            Entry::Single => opt.step(slot.id, &mut slot.p, &slot.g),
            Entry::Multi => opt.step_many(&mut [(slot.id, &mut slot.p, &slot.g)]),
        }
        .unwrap_or_else(|e| fail(&e));
        stream
            .memcpy_dtoh(&slot.p, bufs.param)
            .unwrap_or_else(|e| fail(&e));
        let got: Vec<Vec<f32>> = self
            .kernel
            .states
            .iter()
            .map(|s| opt.state(slot.id, &s.name).unwrap_or_else(|e| fail(&e)))
            .collect();
        // Copies to pageable memory return when done in practice; CUDA only says "might".
        opt.synchronize().unwrap_or_else(|e| fail(&e));
        for (values, got) in states.iter_mut().zip(got) {
            values.copy_from_slice(&got);
        }
        assert_eq!(opt.steps(slot.id).unwrap_or_else(|e| fail(&e)), t);
        scalars.copy_from_slice(opt.scalars(slot.id).unwrap_or_else(|e| fail(&e)));
    }
}

/// Replays every fixture on GPU 0 through `entry`, one loaded module per kernel.
fn replay_on_gpu(backend: &str, entry: Entry) {
    let mut device: Option<Device> = None;
    let mut step =
        |kernel: &Kernel, hypers: &[f64], t: u64, scalars: &mut [f64], bufs: Buffers<'_, f32>| {
            if device.as_ref().is_none_or(|d| &d.kernel != kernel) {
                device = Some(Device::load(kernel));
            }
            let Some(d) = device.as_mut() else {
                unreachable!()
            };
            d.step(entry, hypers, t, scalars, bufs);
        };
    fidelity::replay_all(backend, &mut step);
}

#[test]
fn every_stdlib_rule_matches_torch_on_cuda_single_tensor_entries() {
    if gpu_present("every_stdlib_rule_matches_torch_on_cuda_single_tensor_entries") {
        replay_on_gpu("cuda", Entry::Single);
    }
}

#[test]
fn every_stdlib_rule_matches_torch_on_cuda_multi_tensor_entry() {
    if gpu_present("every_stdlib_rule_matches_torch_on_cuda_multi_tensor_entry") {
        replay_on_gpu("cuda-multi", Entry::Multi);
    }
}
