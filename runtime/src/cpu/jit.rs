//! The JIT: Cranelift code for the host ISA, one function per stage, and the calls into them.
//!
//! All unsafe code of the CPU path is here. The generated functions have the ABI described in
//! [`optc_compiler::backend::clif`]: `extern "C" fn(bufs: *const *mut f32, n: u64, uniforms:
//! *const f32)` for a stage without reduce outputs, and with two more arguments `(partials: *mut
//! f32, stride: u64)` for a stage with them; a function reads and writes exactly `n` elements
//! from each buffer pointer, reads one f32 per uniform, writes `partials[r * stride + b]` for each
//! reduce output `r` and each block `b < n.div_ceil(REDUCE_BLOCK)`, and never writes the
//! gradient buffer.
#![allow(unsafe_code)]

use super::half_tiles::{self, Conv};
use super::int8_tiles;
use super::split::{self, WorkItem, CHUNK_ALIGN};
use super::{BufMut, CpuError, Partials, TensorArgs};
use cranelift_codegen::ir::UserFuncName;
use cranelift_codegen::settings::{self, Configurable};
use cranelift_jit::{JITBuilder, JITModule};
use cranelift_module::{default_libcall_names, Linkage, Module};
use optc_compiler::backend::clif;
use optc_kernel::quant::QUANT_BLOCK;
use optc_kernel::{Kernel, REDUCE_BLOCK};
use std::marker::PhantomData;
use std::sync::Mutex;

type MapFn = unsafe extern "C" fn(*const *mut u8, u64, *const f32);
type ReduceFn = unsafe extern "C" fn(*const *mut u8, u64, *const f32, *mut f32, u64);

/// One stage's compiled function.
#[derive(Clone, Copy)]
pub(super) enum StageFn {
    /// A stage without reduce outputs.
    Map(MapFn),
    /// A stage with `outputs` reduce outputs.
    Reduce(ReduceFn, usize),
}

/// The JIT-compiled functions of a kernel's stages and the memory that holds them.
pub(super) struct Code {
    stages: Vec<StageFn>,
    /// Per stage, whether it stores the parameter with stochastic rounding: it then takes three
    /// more uniform words (the key, and the two halves of the first element's index).
    stochastic: Vec<bool>,
    /// Bytes per value of each buffer, in `Kernel::buffers` order, as the compiled code sees it
    /// (an int8 state is f32 to the code: see [`super::int8_tiles`]).
    sizes: Vec<usize>,
    /// Per stage, per buffer (in `Kernel::buffers` order): whether the stage loads it and whether
    /// it stores it.
    uses: Vec<Vec<(bool, bool)>>,
    /// Whether some state is stored as int8 (chunks then start at multiples of `QUANT_BLOCK`).
    int8: bool,
    /// For a kernel run in 16-bit tiles ([`half_tiles`]: the code sees every buffer as f32),
    /// per stage, per buffer: how it is converted around the call (`None` for an f32 buffer);
    /// empty otherwise.
    half: Vec<Vec<Option<Conv>>>,
    /// Whether the code uses FMA.
    pub fma: bool,
    /// Kept only to free the code on drop (a `Mutex` so that `Code` is `Sync`; never locked).
    module: Mutex<Option<JITModule>>,
}

fn jit_err(e: impl std::fmt::Display) -> CpuError {
    CpuError::Jit(e.to_string())
}

impl Code {
    /// Lowers and compiles every stage of `kernel` (already validated) for the host. With
    /// `tiles`, a kernel with 16-bit buffers and no int8 state is compiled with every buffer f32
    /// and [`Code::run`] converts its 16-bit buffers tile by tile ([`half_tiles`]); otherwise
    /// the code converts them itself (what [`Code::call`] callers get).
    pub fn compile(kernel: &Kernel, allow_fma: bool, tiles: bool) -> Result<Code, CpuError> {
        let int8 = kernel.storage.states.contains(&optc_kernel::Dtype::Int8);
        let tiled = tiles && !int8 && !kernel.storage.is_f32();
        let f32_view;
        let code_kernel = if tiled {
            let mut k = kernel.clone();
            k.storage = optc_kernel::Storage::default();
            f32_view = k;
            &f32_view
        } else {
            kernel
        };
        let mut flags = settings::builder();
        // The lowering already hoists every loop invariant, and the frontend has done CSE and
        // DCE. Cranelift 0.135's e-graph pass (`opt_level = speed`) moves the hoisted `splat`s
        // of the uniforms back into the loop (and reloads them from spill slots there), which
        // measured about 2x slower on AdamW, so it stays off.
        flags.set("opt_level", "none").map_err(jit_err)?;
        // `clif::emit` has already run the verifier on every function; running it again inside
        // Cranelift's compile took most of the JIT time of the staged rules (issue 11, §4).
        flags.set("enable_verifier", "false").map_err(jit_err)?;
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
        let funcs = clif::emit(code_kernel, &opts)?;
        let mut module = JITModule::new(JITBuilder::with_isa(isa, default_libcall_names()));
        let mut ids = Vec::with_capacity(funcs.len());
        for (k, func) in funcs.into_iter().enumerate() {
            let mut ctx = module.make_context();
            ctx.func = func;
            let id = module
                .declare_function(
                    &clif::func_name(kernel, k),
                    Linkage::Export,
                    &ctx.func.signature,
                )
                .map_err(jit_err)?;
            ctx.func.name = UserFuncName::user(0, id.as_u32());
            module.define_function(id, &mut ctx).map_err(jit_err)?;
            module.clear_context(&mut ctx);
            ids.push(id);
        }
        module.finalize_definitions().map_err(jit_err)?;
        let stages = ids
            .iter()
            .zip(&kernel.stages)
            .map(|(&id, st)| {
                let ptr = module.get_finalized_function(id);
                if st.reduce.is_empty() {
                    // SAFETY: `ptr` is the finalized (executable) code of a function just
                    // defined, whose signature (a stage without reduce outputs) is
                    // `(i64, i64, i64) -> ()` in the host's default C calling convention, which is
                    // what `MapFn` is on a 64-bit host. It stays valid until `module` is freed in
                    // `drop`.
                    StageFn::Map(unsafe { std::mem::transmute::<*const u8, MapFn>(ptr) })
                } else {
                    // SAFETY: as above, for a stage with reduce outputs, whose signature is
                    // `(i64, i64, i64, i64, i64) -> ()`, which is what `ReduceFn` is.
                    let f = unsafe { std::mem::transmute::<*const u8, ReduceFn>(ptr) };
                    StageFn::Reduce(f, st.reduce.len())
                }
            })
            .collect();
        let stochastic = code_kernel
            .stages
            .iter()
            .map(|st| clif::stores_stochastic(code_kernel, st))
            .collect();
        let sizes = kernel
            .buffers()
            .iter()
            .map(|b| match kernel.storage.dtype(b.slot) {
                optc_kernel::Dtype::Int8 => 4,
                _ => kernel.value_bytes(b.slot),
            })
            .collect();
        let uses = (0..kernel.stages.len())
            .map(|k| {
                kernel
                    .stage_buffers(k)
                    .iter()
                    .map(|b| (b.read, b.written))
                    .collect()
            })
            .collect();
        let half = if tiled {
            (0..kernel.stages.len())
                .map(|k| {
                    let st = &kernel.stages[k];
                    kernel
                        .stage_buffers(k)
                        .iter()
                        .map(|b| {
                            let dtype = kernel.storage.dtype(b.slot);
                            (dtype != optc_kernel::Dtype::F32).then(|| Conv {
                                dtype,
                                stochastic: kernel.storage.is_stochastic(b.slot)
                                    && st.stores_slot(b.slot),
                            })
                        })
                        .collect()
                })
                .collect()
        } else {
            Vec::new()
        };
        Ok(Code {
            stages,
            stochastic,
            sizes,
            uses,
            int8,
            half,
            fma,
            module: Mutex::new(Some(module)),
        })
    }

    /// Runs stage `stage` on elements `[start, start + len)` of `t`; a reducing stage writes its
    /// partials of blocks `start / REDUCE_BLOCK ..` of `t` into `out`.
    ///
    /// # Safety
    /// `stage` is in range, `start + len <= t.len`, `start` is a multiple of `REDUCE_BLOCK` for a
    /// reducing stage, `out` is `t`'s partials region of this stage (laid out as
    /// [`Partials::layout`] says), and no other thread accesses those elements of `t`'s written
    /// buffers or those partials while this runs.
    unsafe fn run(&self, stage: usize, t: &RawTensor<'_>, start: usize, len: usize, out: RawOut) {
        if len == 0 {
            return;
        }
        if !t.int8.is_empty() {
            // SAFETY: the caller's contract, which `run_int8` shares.
            unsafe { self.run_int8(stage, t, start, len, out) };
            return;
        }
        if !self.half.is_empty() {
            // SAFETY: the caller's contract, which `run_half` shares.
            unsafe { self.run_half(stage, t, start, len, out) };
            return;
        }
        // SAFETY: by the caller's contract the range is inside every buffer (all have `t.len`
        // elements of `sizes[i]` bytes, checked when `t` was made), so offsetting each base
        // pointer stays in bounds.
        let ptrs: Vec<*mut u8> = t
            .ptrs
            .iter()
            .zip(&self.sizes)
            .map(|(p, &size)| unsafe { p.add(start * size) })
            .collect();
        let uniforms = self.stage_uniforms(stage, &t.uniforms, t.key, start);
        // SAFETY: `ptrs` holds one valid pointer per buffer in `Kernel::buffers` order, each with
        // at least `len` elements after it; `uniforms` holds one f32 per uniform of the stage
        // (and the three words of a stochastic stage); for a reducing stage `out.ptr` has
        // `outputs * out.stride` f32s (the tensor's region) and the range's blocks are
        // `start / REDUCE_BLOCK ..`, this range's own (the caller's contract), so the writes stay
        // in the region. Exclusive access to the written range is the caller's contract.
        unsafe {
            let first = out.ptr.wrapping_add(start / REDUCE_BLOCK);
            self.call(stage, &ptrs, len, &uniforms, first, out.stride);
        }
    }

    /// [`Code::run`] for a kernel compiled for 16-bit tiles: tile by tile of
    /// [`half_tiles::TILE`] elements, each 16-bit buffer the stage loads is widened into an f32
    /// scratch tile, the compiled (all-f32) function runs with the scratch in place of the
    /// buffer, and each 16-bit buffer the stage stores is narrowed back from the scratch (to
    /// nearest even, or stochastically with `sr_bits(key, element)` where the kernel says so).
    ///
    /// # Safety
    /// As [`Code::run`], and `start` is a multiple of `REDUCE_BLOCK` for a reducing stage.
    unsafe fn run_half(
        &self,
        stage: usize,
        t: &RawTensor<'_>,
        start: usize,
        len: usize,
        out: RawOut,
    ) {
        let convs = &self.half[stage];
        let uses = &self.uses[stage];
        let tile_len = if self.outputs(stage) > 0 {
            half_tiles::TILE
        } else {
            half_tiles::MAP_TILE
        };
        let mut scratch: Vec<Vec<f32>> = convs
            .iter()
            .map(|c| match c {
                Some(_) => vec![0f32; tile_len.min(len)],
                None => Vec::new(),
            })
            .collect();
        let mut ptrs: Vec<*mut u8> = vec![std::ptr::null_mut(); t.ptrs.len()];
        // The all-f32 code never rounds stochastically itself: its uniforms are the stage's.
        let uniforms = self.stage_uniforms(stage, &t.uniforms, t.key, start);
        let mut off = 0;
        while off < len {
            let at = start + off;
            let tl = tile_len.min(len - off);
            for (i, ((p, &size), conv)) in t.ptrs.iter().zip(&self.sizes).zip(convs).enumerate() {
                // SAFETY: `at + tl <= t.len` (the caller's range), inside every buffer.
                let here = unsafe { p.add(at * size) };
                ptrs[i] = match conv {
                    None => here,
                    Some(c) => {
                        let tile = &mut scratch[i][..tl];
                        if uses[i].0 {
                            // SAFETY: a 16-bit buffer with `t.len` values (checked with the
                            // arguments): `tl` of them from `at` are in bounds, aligned as the
                            // caller's `&[u16]`-like buffer is, and only this thread writes them
                            // (the caller's contract); none is written while this borrow lives.
                            let src = unsafe { std::slice::from_raw_parts(here.cast::<u16>(), tl) };
                            half_tiles::widen(c.dtype, src, tile);
                        }
                        tile.as_mut_ptr().cast()
                    }
                };
            }
            // SAFETY: every pointer has `tl` elements after it (a scratch tile holds at least
            // `tl` f32s; the f32 buffers by the caller's range); `at` is a multiple of
            // REDUCE_BLOCK for a reducing stage (`start` is, and TILE is REDUCE_BLOCK), so the
            // partials written are this range's own blocks.
            unsafe {
                let first = out.ptr.wrapping_add(at / REDUCE_BLOCK);
                self.call(stage, &ptrs, tl, &uniforms, first, out.stride);
            }
            for (i, conv) in convs.iter().enumerate() {
                let Some(c) = conv.filter(|_| uses[i].1) else {
                    continue;
                };
                // SAFETY: as for the loads above; the stage stores this buffer, so it is not
                // the (shared) gradient, and only this thread touches these values.
                let dst = unsafe {
                    std::slice::from_raw_parts_mut(
                        t.ptrs[i].add(at * self.sizes[i]).cast::<u16>(),
                        tl,
                    )
                };
                let sr = c.stochastic.then_some((t.key, at as u64));
                half_tiles::narrow(c.dtype, &scratch[i][..tl], dst, sr);
            }
            off += tl;
        }
    }

    /// [`Code::run`] for a tensor with int8 states: tile by tile of [`int8_tiles::TILE`]
    /// elements, each int8 state the stage loads is dequantized into an f32 scratch tile, the
    /// compiled function runs on the tile with the scratch in place of the state, and each int8
    /// state the stage stores is quantized back from the scratch (`optc_kernel::int8`).
    ///
    /// # Safety
    /// As [`Code::run`], and `start` is a multiple of `QUANT_BLOCK` (so the range's blocks are
    /// its own).
    unsafe fn run_int8(
        &self,
        stage: usize,
        t: &RawTensor<'_>,
        start: usize,
        len: usize,
        out: RawOut,
    ) {
        let uses = &self.uses[stage];
        let mut scratch = int8_tiles::Scratch::new(t.int8.len());
        let mut ptrs: Vec<*mut u8> = vec![std::ptr::null_mut(); t.ptrs.len()];
        let mut off = 0;
        while off < len {
            let at = start + off;
            let tl = int8_tiles::TILE.min(len - off);
            for (i, (p, &size)) in t.ptrs.iter().zip(&self.sizes).enumerate() {
                // SAFETY: `at + tl <= t.len` (the caller's range), inside every buffer.
                ptrs[i] = unsafe { p.add(at * size) };
            }
            for (j, q) in t.int8.iter().enumerate() {
                // SAFETY: the buffer has `t.len` codes and `t.len.div_ceil(QUANT_BLOCK)` scales
                // (checked when the arguments were checked); `at` is a multiple of QUANT_BLOCK,
                // so the tile's codes and the scales of its blocks are in bounds, and only this
                // thread touches them (the caller's contract).
                let (codes, scales) = unsafe { q.tile(at, tl) };
                let (read, _) = uses[q.buffer];
                ptrs[q.buffer] = scratch.load(j, read, codes, scales).cast();
            }
            let uniforms = self.stage_uniforms(stage, &t.uniforms, t.key, at);
            // SAFETY: as in `Code::run`: every pointer has `tl` elements after it (a scratch tile
            // holds `TILE >= tl` f32s), and `at` is a multiple of REDUCE_BLOCK for a reducing
            // stage (`start` is, and TILE is a multiple of REDUCE_BLOCK).
            unsafe {
                let first = out.ptr.wrapping_add(at / REDUCE_BLOCK);
                self.call(stage, &ptrs, tl, &uniforms, first, out.stride);
            }
            for (j, q) in t.int8.iter().enumerate() {
                if uses[q.buffer].1 {
                    // SAFETY: as for the loads above.
                    let (codes, scales) = unsafe { q.tile(at, tl) };
                    scratch.store(j, codes, scales);
                }
            }
            off += tl;
        }
    }

    /// The uniform words of stage `stage` for a range from element `start` of a tensor: the
    /// stage's `uniforms`, then for a stochastic stage the tensor's `key` and the low and high
    /// halves of `start` (as bit patterns).
    pub fn stage_uniforms(
        &self,
        stage: usize,
        uniforms: &[f32],
        key: u32,
        start: usize,
    ) -> Vec<f32> {
        let mut u = uniforms.to_vec();
        if self.stochastic.get(stage).copied().unwrap_or(false) {
            let start = start as u64;
            u.extend([key, start as u32, (start >> 32) as u32].map(f32::from_bits));
        }
        u
    }

    /// Calls stage `stage`'s function once: `ptrs` one pointer per buffer (in `Kernel::buffers`
    /// order), `len` elements, `uniforms` the stage's uniforms, and for a reducing stage its
    /// partials at `out[r * stride + b]`.
    ///
    /// # Safety
    /// `stage` is in range; every pointer the stage's body loads or stores has `len` valid
    /// elements after it (and is not written by another thread meanwhile); `uniforms` has one
    /// f32 per uniform of the stage; for a reducing stage, `out[r * stride + b]` is valid and
    /// exclusive for each reduce output `r` and block `b < len.div_ceil(REDUCE_BLOCK)`.
    pub(super) unsafe fn call(
        &self,
        stage: usize,
        ptrs: &[*mut u8],
        len: usize,
        uniforms: &[f32],
        out: *mut f32,
        stride: usize,
    ) {
        if len == 0 {
            return;
        }
        match self.stages[stage] {
            // SAFETY: the caller's contract is the function's (module docs).
            StageFn::Map(f) => unsafe { f(ptrs.as_ptr(), len as u64, uniforms.as_ptr()) },
            // SAFETY: as above, with the partials region of the contract.
            StageFn::Reduce(f, _) => unsafe {
                f(
                    ptrs.as_ptr(),
                    len as u64,
                    uniforms.as_ptr(),
                    out,
                    stride as u64,
                )
            },
        }
    }

    /// Runs stage 0 of a kernel without reductions on one tensor on the current thread (its
    /// arguments already checked).
    pub fn run_one(&self, args: &mut TensorArgs<'_>) {
        if self.outputs(0) > 0 {
            return;
        }
        let t = RawTensor::new(args);
        let out = RawOut {
            ptr: std::ptr::null_mut(),
            stride: 0,
        };
        // SAFETY: stage 0 exists (a kernel has at least one), has no reduce outputs (so `out` is
        // never used), and runs on the whole range of `t`, whose buffers are borrowed mutably (or
        // shared, for the read-only gradient) through `args` for the duration of the call.
        unsafe { self.run(0, &t, 0, t.len, out) };
    }

    /// The number of reduce outputs of stage `stage`.
    pub fn outputs(&self, stage: usize) -> usize {
        match self.stages.get(stage) {
            Some(StageFn::Reduce(_, r)) => *r,
            _ => 0,
        }
    }

    /// Runs stage `stage` (in range) on many tensors (arguments already checked) in one parallel
    /// pass; `partials` was laid out for these tensors and this stage.
    pub fn run_stage(
        &self,
        stage: usize,
        tensors: &mut [TensorArgs<'_>],
        partials: &mut Partials,
        pool: Option<&rayon::ThreadPool>,
    ) {
        let raws: Vec<RawTensor> = tensors.iter_mut().map(RawTensor::new).collect();
        let lens: Vec<usize> = raws.iter().map(|r| r.len).collect();
        let outs = partials.raw();
        let threads = pool.map_or_else(rayon::current_num_threads, |p| p.current_num_threads());
        let align = if self.outputs(stage) > 0 {
            REDUCE_BLOCK
        } else if self.int8 {
            QUANT_BLOCK
        } else {
            CHUNK_ALIGN
        };
        let items = split::plan(&lens, threads, align);
        if !disjoint_cover(&items, &lens, align) {
            // `split::plan` guarantees this (and is tested); never run on a bad plan.
            for (t, out) in raws.iter().zip(&outs) {
                // SAFETY: each whole tensor in turn, on this thread only.
                unsafe { self.run(stage, t, 0, t.len, *out) };
            }
            return;
        }
        // Too little work to pay for waking the pool (tens of microseconds on a busy machine):
        // run it on this thread.
        if lens.iter().sum::<usize>() <= split::MIN_CHUNK {
            for w in &items {
                // SAFETY: as below; a single thread visits the disjoint, in-bounds items in turn.
                unsafe { self.run(stage, &raws[w.tensor], w.start, w.len, outs[w.tensor]) };
            }
            return;
        }
        let run = || {
            use rayon::prelude::*;
            items.par_iter().for_each(|w| {
                // SAFETY: `disjoint_cover` checked that the items are in bounds, aligned and that
                // no two items of a tensor overlap, so each range (and its blocks' partials) is
                // accessed by one thread only; the buffers stay borrowed through `tensors` and
                // the partials through `partials` until the pass is over.
                unsafe { self.run(stage, &raws[w.tensor], w.start, w.len, outs[w.tensor]) };
            });
        };
        match pool {
            Some(p) => p.install(run),
            None => run(),
        }
    }
}

/// Whether the items of each tensor are in order, in bounds, non-overlapping and start at
/// multiples of `align`.
fn disjoint_cover(items: &[WorkItem], lens: &[usize], align: usize) -> bool {
    let mut next = vec![0usize; lens.len()];
    items.iter().all(|w| {
        let ok = w.tensor < lens.len()
            && w.start == next[w.tensor]
            && w.start % align == 0
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
            // SAFETY: `&mut self` means no call into the code is running, and the function
            // pointers (the only pointers into it) are dropped with `self` and never handed out.
            unsafe { module.free_memory() };
        }
    }
}

/// One tensor's partials region: where reduce output 0's partial of block 0 goes, and the
/// distance between two outputs' partials (the tensor's block count).
#[derive(Clone, Copy)]
pub(super) struct RawOut {
    /// The region's start (dangling, never written through, for a stage without outputs).
    pub ptr: *mut f32,
    /// The tensor's block count.
    pub stride: usize,
}

// SAFETY: the pointer comes from the `&mut Partials` borrowed for the whole pass; threads only
// write the partials of disjoint blocks.
unsafe impl Send for RawOut {}
// SAFETY: as above.
unsafe impl Sync for RawOut {}

/// One tensor's buffer pointers (in `Kernel::buffers` order) and uniforms, for sharing ranges of
/// it between threads.
struct RawTensor<'a> {
    ptrs: Vec<*mut u8>,
    uniforms: Vec<f32>,
    /// The stochastic-rounding key.
    key: u32,
    /// The number of elements of every buffer.
    pub len: usize,
    /// The tensor's states stored as int8.
    int8: Vec<RawInt8>,
    borrow: PhantomData<&'a mut [u8]>,
}

/// One int8 state of a [`RawTensor`]: its buffer index and where its codes and scales are.
struct RawInt8 {
    /// The buffer's index in `Kernel::buffers` order.
    buffer: usize,
    codes: *mut u8,
    scales: *mut f32,
}

impl RawInt8 {
    /// The codes of elements `[at, at + len)` and the scales of their blocks.
    ///
    /// # Safety
    /// The state has at least `at + len` codes and `(at + len).div_ceil(QUANT_BLOCK)` scales,
    /// `at` is a multiple of `QUANT_BLOCK`, and no other reference to those codes and scales is
    /// alive while the slices are.
    #[allow(clippy::mut_from_ref)]
    unsafe fn tile(&self, at: usize, len: usize) -> (&mut [u8], &mut [f32]) {
        let first = at / QUANT_BLOCK;
        // SAFETY: in bounds and exclusive by the contract.
        unsafe {
            (
                std::slice::from_raw_parts_mut(self.codes.add(at), len),
                std::slice::from_raw_parts_mut(self.scales.add(first), len.div_ceil(QUANT_BLOCK)),
            )
        }
    }
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
        let int8 = args
            .states
            .iter_mut()
            .enumerate()
            .filter_map(|(i, s)| match s {
                BufMut::Int8(q) => Some(RawInt8 {
                    buffer: 2 + i,
                    codes: q.codes.as_mut_ptr(),
                    scales: q.scales.as_mut_ptr(),
                }),
                _ => None,
            })
            .collect();
        RawTensor {
            ptrs,
            uniforms: args.uniforms.clone(),
            key: args.sr_key,
            len: args.param.len(),
            int8,
            borrow: PhantomData,
        }
    }
}
