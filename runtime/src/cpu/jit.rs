//! The JIT: Cranelift code for the host ISA, and the calls into it.
//!
//! All unsafe code of the CPU path is here. The generated function has the ABI described in
//! [`optc_compiler::backend::clif`]: `extern "C" fn(bufs: *const *mut f32, n: u64, uniforms:
//! *const f32)`; it reads and writes exactly `n` elements from each buffer pointer and reads one
//! f32 per uniform, and it never writes the gradient buffer.
#![allow(unsafe_code)]

use super::split::{self, WorkItem, CHUNK_ALIGN};
use super::{CpuError, TensorArgs};
use cranelift_codegen::ir::UserFuncName;
use cranelift_codegen::settings::{self, Configurable};
use cranelift_jit::{JITBuilder, JITModule};
use cranelift_module::{default_libcall_names, Linkage, Module};
use optc_compiler::backend::clif;
use optc_kernel::Kernel;
use std::marker::PhantomData;
use std::sync::Mutex;

type KernelFn = unsafe extern "C" fn(*const *mut f32, u64, *const f32);

/// A JIT-compiled kernel function and the memory that holds it.
pub(super) struct Code {
    func: KernelFn,
    /// Whether the code uses FMA.
    pub fma: bool,
    /// Kept only to free the code on drop (a `Mutex` so that `Code` is `Sync`; never locked).
    module: Mutex<Option<JITModule>>,
}

fn jit_err(e: impl std::fmt::Display) -> CpuError {
    CpuError::Jit(e.to_string())
}

impl Code {
    /// Lowers and compiles `kernel` (already validated) for the host.
    pub fn compile(kernel: &Kernel, allow_fma: bool) -> Result<Code, CpuError> {
        let mut flags = settings::builder();
        // The lowering already hoists every loop invariant, and the frontend has done CSE and
        // DCE. Cranelift 0.135's e-graph pass (`opt_level = speed`) moves the hoisted `splat`s
        // of the uniforms back into the loop (and reloads them from spill slots there), which
        // measured about 2x slower on AdamW, so it stays off.
        flags.set("opt_level", "none").map_err(jit_err)?;
        flags
            .set("use_colocated_libcalls", "false")
            .map_err(jit_err)?;
        flags.set("is_pic", "false").map_err(jit_err)?;
        let isa = cranelift_native::builder()
            .map_err(|e| CpuError::Jit(format!("this host is not supported: {e}")))?
            .finish(settings::Flags::new(flags))
            .map_err(jit_err)?;
        let has_fma = isa
            .isa_flags()
            .iter()
            .any(|f| f.name == "has_fma" && f.as_bool() == Some(true));
        let fma = allow_fma && has_fma;
        let opts = clif::Options {
            fma,
            call_conv: isa.default_call_conv(),
            ..clif::Options::default()
        };
        let func = clif::emit(kernel, &opts)?;
        let mut module = JITModule::new(JITBuilder::with_isa(isa, default_libcall_names()));
        let mut ctx = module.make_context();
        ctx.func = func;
        let id = module
            .declare_function(
                &clif::func_name(kernel),
                Linkage::Export,
                &ctx.func.signature,
            )
            .map_err(jit_err)?;
        ctx.func.name = UserFuncName::user(0, id.as_u32());
        module.define_function(id, &mut ctx).map_err(jit_err)?;
        module.clear_context(&mut ctx);
        module.finalize_definitions().map_err(jit_err)?;
        let ptr = module.get_finalized_function(id);
        // SAFETY: `ptr` is the finalized (executable) code of the function just defined, whose
        // signature is `(i64, i64, i64) -> ()` in the host's default C calling convention, which is
        // what `KernelFn` is on a 64-bit host. It stays valid until `module` is freed in `drop`.
        let func = unsafe { std::mem::transmute::<*const u8, KernelFn>(ptr) };
        Ok(Code {
            func,
            fma,
            module: Mutex::new(Some(module)),
        })
    }

    /// Runs the kernel on elements `[start, start + len)` of `t`.
    ///
    /// # Safety
    /// `start + len <= t.len`, and no other thread accesses those elements of `t`'s written
    /// buffers while this runs.
    unsafe fn run(&self, t: &RawTensor<'_>, start: usize, len: usize) {
        if len == 0 {
            return;
        }
        // SAFETY: by the caller's contract the range is inside every buffer (all have `t.len`
        // elements, checked when `t` was made), so offsetting each base pointer stays in bounds.
        let ptrs: Vec<*mut f32> = t.ptrs.iter().map(|p| unsafe { p.add(start) }).collect();
        // SAFETY: `ptrs` holds one valid pointer per buffer in `Kernel::buffers` order, each with
        // at least `len` elements after it; `t.uniforms` holds one f32 per uniform; the function
        // touches nothing else and never writes the gradient (validated kernel). Exclusive access
        // to the written range is the caller's contract.
        unsafe { (self.func)(ptrs.as_ptr(), len as u64, t.uniforms.as_ptr()) };
    }

    /// Runs one tensor on the current thread (its arguments already checked).
    pub fn run_one(&self, args: &mut TensorArgs<'_>) {
        let t = RawTensor::new(args);
        // SAFETY: the whole range of `t`, whose buffers are borrowed mutably (or shared, for the
        // read-only gradient) through `args` for the duration of the call.
        unsafe { self.run(&t, 0, t.len) };
    }

    /// Runs many tensors (arguments already checked) in one parallel pass.
    pub fn run_many(&self, tensors: &mut [TensorArgs<'_>], pool: Option<&rayon::ThreadPool>) {
        let raws: Vec<RawTensor> = tensors.iter_mut().map(RawTensor::new).collect();
        let lens: Vec<usize> = raws.iter().map(|r| r.len).collect();
        let threads = pool.map_or_else(rayon::current_num_threads, |p| p.current_num_threads());
        let items = split::plan(&lens, threads, CHUNK_ALIGN);
        if !disjoint_cover(&items, &lens) {
            // `split::plan` guarantees this (and is tested); never run on a bad plan.
            for t in &raws {
                // SAFETY: each whole tensor in turn, on this thread only.
                unsafe { self.run(t, 0, t.len) };
            }
            return;
        }
        // Too little work to pay for waking the pool (tens of microseconds on a busy machine):
        // run it on this thread.
        if lens.iter().sum::<usize>() <= split::MIN_CHUNK {
            for w in &items {
                // SAFETY: as below; a single thread visits the disjoint, in-bounds items in turn.
                unsafe { self.run(&raws[w.tensor], w.start, w.len) };
            }
            return;
        }
        let run = || {
            use rayon::prelude::*;
            items.par_iter().for_each(|w| {
                // SAFETY: `disjoint_cover` checked that the items are in bounds and that no
                // two items of a tensor overlap, so each range is accessed by one thread only;
                // the buffers stay borrowed through `tensors` until the pass is over.
                unsafe { self.run(&raws[w.tensor], w.start, w.len) };
            });
        };
        match pool {
            Some(p) => p.install(run),
            None => run(),
        }
    }
}

/// Whether the items of each tensor are in order, in bounds and non-overlapping.
fn disjoint_cover(items: &[WorkItem], lens: &[usize]) -> bool {
    let mut next = vec![0usize; lens.len()];
    items.iter().all(|w| {
        let ok = w.tensor < lens.len()
            && w.start == next[w.tensor]
            && w.start
                .checked_add(w.len)
                .is_some_and(|e| e <= lens[w.tensor]);
        if ok {
            next[w.tensor] = w.start + w.len;
        }
        ok
    })
}

impl Drop for Code {
    fn drop(&mut self) {
        let module = match self.module.get_mut() {
            Ok(m) => m.take(),
            Err(poisoned) => poisoned.into_inner().take(),
        };
        if let Some(module) = module {
            // SAFETY: `&mut self` means no call into the code is running, and `func` (the only
            // pointer into it) is dropped with `self` and was never handed out.
            unsafe { module.free_memory() };
        }
    }
}

/// One tensor's buffer pointers (in `Kernel::buffers` order) and uniforms, for sharing ranges of
/// it between threads.
struct RawTensor<'a> {
    ptrs: Vec<*mut f32>,
    uniforms: Vec<f32>,
    /// The number of elements of every buffer.
    pub len: usize,
    borrow: PhantomData<&'a mut [f32]>,
}

// SAFETY: the pointers come from `&mut [f32]` (and `&[f32]` for the never-written gradient)
// borrowed for as long as the `RawTensor` is used; threads only ever access disjoint ranges.
unsafe impl Send for RawTensor<'_> {}
// SAFETY: as above; `&RawTensor` only gives access to the pointers, and `Code::run`'s contract
// keeps threads on disjoint ranges.
unsafe impl Sync for RawTensor<'_> {}

impl<'a> RawTensor<'a> {
    /// Takes the pointers of `args` (whose lengths were checked to agree).
    fn new(args: &'a mut TensorArgs<'_>) -> RawTensor<'a> {
        let mut ptrs = vec![args.param.as_mut_ptr(), args.grad.as_ptr().cast_mut()];
        ptrs.extend(args.states.iter_mut().map(|s| s.as_mut_ptr()));
        RawTensor {
            ptrs,
            uniforms: args.uniforms.clone(),
            len: args.param.len(),
            borrow: PhantomData,
        }
    }
}
