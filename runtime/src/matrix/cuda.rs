//! Matrix programs on CUDA: cuBLAS for the products and the elementwise nodes, one PTX entry for
//! bfloat16 rounding (`docs/stages.md`, "Matrix stages").
//!
//! Takes a stage's [`MatrixProgram`], one tensor's device buffers (the pointers of a launch, in
//! `Kernel::buffers` order: `p`, `g`, then the kernel's states) with their lengths, its
//! [`WideView`] and the stage's uniforms. Queues the program on the executor's stream, before the
//! stage's per-element launch, which sees what it wrote.
//!
//! **Layout.** Every value is a dense row-major matrix in device memory, possibly *stored
//! transposed* (the memory holds `Vᵀ` row-major): a buffer of a tall tensor is its wide matrix
//! stored transposed, and `transpose(x)` only flips the flag, so neither costs a copy. cuBLAS is
//! column-major; a row-major `r × c` matrix is the column-major `c × r` matrix `Vᵀ` with leading
//! dimension `c`, so `C = A·B` is queued as `Cᵀ = Bᵀ·Aᵀ` (`sgemm`), and each operand is passed
//! with `CUBLAS_OP_T` exactly when its storage differs from the result's. `Scale`, `Add`, `Sub`
//! and `Neg` are `sgeam` (`α·op(A) + β·op(B)`; with `α, β ∈ {±1}` the sum is exact before its one
//! rounding, as the reference's), which also writes each output back in the tensor's layout.
//! `RoundBf16` is [`ROUND_BF16_ENTRY`], `cvt.rn.bf16.f32` per element (ties to even, as
//! [`optc_kernel::matrix::round_bf16`]).
//!
//! **Scratch.** Intermediate matrices come from a pool of device buffers kept by this executor
//! and reused across nodes, tensors and steps: a node's buffer goes back to the pool after its
//! last use (all work is on one stream, so reuse is ordered after the last reader). Nothing of
//! it is optimizer state: it is not in checkpoints or state bytes. The pool holds at most the
//! largest set of matrices live at once over the tensors stepped (for Muon on a `m × n` tensor:
//! three `m × n` and three `m × m` buffers).
//!
//! **Precision.** Products are f32 `sgemm` with `CUBLAS_DEFAULT_MATH` (no TF32): each within
//! `k · 2^-24 · Σ_l |a_il b_lj|` of the exact one, like the CPU's `gemm`; the elementwise nodes
//! round as the reference does.
//!
//! Guarantees: cuBLAS (`libcublas`) is checked to load before its first call ([`CudaMatrix::new`]
//! fails with [`CudaError::NoCublas`] otherwise); every failure is an error, never a panic.
#![allow(unsafe_code)]

use crate::cuda::{Context, CudaError};
use crate::error::RuntimeError;
use cudarc::cublas::sys::{cublasMath_t, cublasOperation_t};
use cudarc::cublas::{result::CublasError, sys as blas, CudaBlas};
use cudarc::driver::{
    CudaFunction, CudaModule, CudaSlice, CudaStream, DevicePtr, LaunchConfig, PushKernelArg,
};
use cudarc::nvrtc::Ptx;
use optc_kernel::matrix::{Coef, MatExpr, MatrixProgram, WideView};
use optc_kernel::{Dtype, Slot};
use std::ffi::c_int;
use std::sync::Arc;

/// The name of the bfloat16 rounding entry in [`round_bf16_ptx`].
pub(crate) const ROUND_BF16_ENTRY: &str = "optc_round_bf16";
/// The name of the bf16-to-f32 widening entry in [`round_bf16_ptx`]'s module.
pub(crate) const WIDEN_BF16_ENTRY: &str = "optc_widen_bf16";
/// The name of the f16-to-f32 widening entry in [`round_bf16_ptx`]'s module.
pub(crate) const WIDEN_F16_ENTRY: &str = "optc_widen_f16";

/// A PTX entry `name(src: u64, dst: u64, len: u64)`: a grid-stride loop over `i < len` with
/// `%rd4` = `i`, `%rd1`/`%rd2` the global `src`/`dst` and `body` the loop's work for one `i`.
fn grid_stride_entry(name: &str, body: &str) -> String {
    format!(
        ".visible .entry {name}(\n\
    .param .u64 src,\n\
    .param .u64 dst,\n\
    .param .u64 len\n\
)\n\
{{\n\
    .reg .pred %p<2>;\n\
    .reg .b16 %h<2>;\n\
    .reg .b32 %r<8>;\n\
    .reg .f32 %f<3>;\n\
    .reg .b64 %rd<12>;\n\
\n\
    ld.param.u64 %rd1, [src];\n\
    ld.param.u64 %rd2, [dst];\n\
    ld.param.u64 %rd3, [len];\n\
    cvta.to.global.u64 %rd1, %rd1;\n\
    cvta.to.global.u64 %rd2, %rd2;\n\
    mov.u32 %r1, %ctaid.x;\n\
    mov.u32 %r2, %ntid.x;\n\
    mov.u32 %r3, %tid.x;\n\
    mov.u32 %r4, %nctaid.x;\n\
    mul.wide.u32 %rd4, %r1, %r2;\n\
    cvt.u64.u32 %rd5, %r3;\n\
    add.u64 %rd4, %rd4, %rd5;\n\
    mul.wide.u32 %rd6, %r4, %r2;\n\
LOOP:\n\
    setp.ge.u64 %p1, %rd4, %rd3;\n\
    @%p1 bra DONE;\n\
{body}\
    add.u64 %rd4, %rd4, %rd6;\n\
    bra LOOP;\n\
DONE:\n\
    ret;\n\
}}\n"
    )
}

/// A widening entry: `dst[i] = f32(src[i])` for `i < len`, `src` 16-bit values (`cvt` of
/// `widen`: exact), a grid-stride loop. Params: `src: u64`, `dst: u64`, `len: u64`.
fn widen_entry(name: &str, widen: &str) -> String {
    grid_stride_entry(
        name,
        &format!(
            "shl.b64 %rd7, %rd4, 1;\nadd.u64 %rd8, %rd1, %rd7;\nshl.b64 %rd7, %rd4, 2;\n\
             add.u64 %rd9, %rd2, %rd7;\nld.global.b16 %h1, [%rd8];\n{widen}\
             st.global.f32 [%rd9], %f1;\n"
        ),
    )
}

/// The PTX module of [`ROUND_BF16_ENTRY`]: `dst[i] = f32(bf16_rn(src[i]))` for `i < len`, a
/// grid-stride loop (`src` may equal `dst`). Params: `src: u64`, `dst: u64`, `len: u64`. The
/// module also holds [`WIDEN_BF16_ENTRY`] and [`WIDEN_F16_ENTRY`] (16-bit `p`/`g` widened for
/// the matrix programs, which read f32).
/// `cvt.rn.bf16.f32` needs `sm_80` and PTX ISA 7.0; the widening back to f32 is a shift of the
/// bits (exact), so the module runs on every device the stage kernels do.
pub(crate) fn round_bf16_ptx() -> String {
    let round = grid_stride_entry(
        ROUND_BF16_ENTRY,
        "shl.b64 %rd7, %rd4, 2;\nadd.u64 %rd8, %rd1, %rd7;\nadd.u64 %rd9, %rd2, %rd7;\n\
         ld.global.f32 %f1, [%rd8];\ncvt.rn.bf16.f32 %h1, %f1;\ncvt.u32.u16 %r5, %h1;\n\
         shl.b32 %r6, %r5, 16;\nmov.b32 %f2, %r6;\nst.global.f32 [%rd9], %f2;\n",
    );
    format!(
        "//\n// optc: bfloat16 rounding of matrix values (runtime/src/matrix/cuda.rs)\n//\n\n\
.version 8.0\n.target sm_80\n.address_size 64\n\n\
{round}\n{}\n{}",
        widen_entry(
            WIDEN_BF16_ENTRY,
            "    cvt.u32.u16 %r5, %h1;\n    shl.b32 %r6, %r5, 16;\n    mov.b32 %f1, %r6;\n"
        ),
        widen_entry(WIDEN_F16_ENTRY, "    cvt.f32.f16 %f1, %h1;\n"),
    )
}

/// Threads per block of the rounding entry.
const ROUND_BLOCK: u32 = 256;

/// Whether cuBLAS (`libcublas`) can be loaded.
pub(crate) fn cublas_available() -> bool {
    // SAFETY: `is_culib_present` only tries to open the library with libloading and closes it
    // again; it calls no function of the library.
    unsafe { blas::is_culib_present() }
}

fn blas_err(action: impl Into<String>) -> impl FnOnce(CublasError) -> CudaError {
    let action = action.into();
    move |source| CudaError::Cublas { action, source }
}

/// One tensor's device buffers for a matrix program: `p`, `g`, then the kernel's states.
pub(crate) struct DeviceBuffers<'a> {
    /// Device pointers, in `Kernel::buffers` order.
    pub pointers: &'a [u64],
    /// The length of each, in values.
    pub lens: &'a [usize],
    /// The storage dtype of each: a 16-bit `p` or `g` the program reads is widened to f32 scratch
    /// first ([`WIDEN_BF16_ENTRY`], [`WIDEN_F16_ENTRY`]); the states a program touches are f32
    /// (`Storage::check`).
    pub dtypes: &'a [Dtype],
}

/// What a matrix program needs of a device: scratch memory and three column-major primitives
/// with cuBLAS's argument conventions (`t*`: transpose the operand; `ld*`: leading dimension).
/// [`Queue`] is cuBLAS; the tests emulate it on the host.
#[allow(clippy::too_many_arguments)]
trait Device {
    /// A scratch buffer of at least `len` f32 (contents undefined): its handle and address.
    fn take(&mut self, len: usize) -> Result<(usize, u64), CudaError>;
    /// Gives scratch `handle` back; its last reader is queued.
    fn give(&mut self, handle: usize);
    /// `c = alpha · op(a) + beta · op(b)`, all `m × n` column-major.
    fn geam(
        &mut self,
        ta: bool,
        tb: bool,
        m: usize,
        n: usize,
        alpha: f32,
        a: (u64, usize),
        beta: f32,
        b: (u64, usize),
        c: (u64, usize),
    ) -> Result<(), CudaError>;
    /// `c = op(a) · op(b)`, `m × k` by `k × n`, column-major.
    fn gemm(
        &mut self,
        ta: bool,
        tb: bool,
        m: usize,
        n: usize,
        k: usize,
        a: (u64, usize),
        b: (u64, usize),
        c: (u64, usize),
    ) -> Result<(), CudaError>;
    /// `dst[i] = round_bf16(src[i])` for `i < len`.
    fn round(&mut self, src: u64, dst: u64, len: usize) -> Result<(), CudaError>;
}

/// A matrix value: `rows × cols`, at `ptr`, row-major, or stored transposed.
#[derive(Clone, Copy, Debug)]
struct Val {
    ptr: u64,
    rows: usize,
    cols: usize,
    /// The memory holds the transpose (`cols × rows`, row-major).
    trans: bool,
    /// The scratch it owns (a [`Device::take`] handle), if any.
    owner: Option<usize>,
}

impl Val {
    /// The address with the row length of the memory (the leading dimension of its
    /// column-major view).
    fn mem(&self) -> (u64, usize) {
        (self.ptr, if self.trans { self.rows } else { self.cols })
    }
    /// Whether cuBLAS transposes it for a result stored with flag `out_trans`.
    fn op(&self, out_trans: bool) -> bool {
        self.trans != out_trans
    }
}

/// The column-major shape of `out`'s memory.
fn column_major(out: &Val) -> (usize, usize) {
    if out.trans {
        (out.rows, out.cols)
    } else {
        (out.cols, out.rows)
    }
}

/// Scratch for `rows × cols`, stored with flag `trans`.
fn scratch(d: &mut dyn Device, rows: usize, cols: usize, trans: bool) -> Result<Val, CudaError> {
    let (h, ptr) = d.take(rows * cols)?;
    Ok(Val {
        ptr,
        rows,
        cols,
        trans,
        owner: Some(h),
    })
}

/// `out = alpha · a + beta · b` (one shape).
fn geam(
    d: &mut dyn Device,
    out: Val,
    alpha: f32,
    a: Val,
    beta: f32,
    b: Val,
) -> Result<(), CudaError> {
    if (a.rows, a.cols) != (out.rows, out.cols) || (b.rows, b.cols) != (out.rows, out.cols) {
        return Err(CudaError::Buffers(
            "matrix operands of different shapes".into(),
        ));
    }
    let (m, n) = column_major(&out);
    d.geam(
        a.op(out.trans),
        b.op(out.trans),
        m,
        n,
        alpha,
        a.mem(),
        beta,
        b.mem(),
        out.mem(),
    )
}

/// `out = a · b`. Row-major `out = a·b` is column-major `outᵀ = bᵀ·aᵀ`; stored transposed, it is
/// column-major `out = a·b`.
fn gemm(d: &mut dyn Device, out: Val, a: Val, b: Val) -> Result<(), CudaError> {
    if a.cols != b.rows || (out.rows, out.cols) != (a.rows, b.cols) {
        return Err(CudaError::Buffers(
            "a matrix product of mismatched shapes".into(),
        ));
    }
    let (first, second) = if out.trans { (a, b) } else { (b, a) };
    let (m, n) = column_major(&out);
    d.gemm(
        first.op(out.trans),
        second.op(out.trans),
        m,
        n,
        a.cols,
        first.mem(),
        second.mem(),
        out.mem(),
    )
}

/// Runs `program` for one tensor of `view` on `d`: reads and writes `buffers`. See the module
/// docs.
fn run_on(
    d: &mut dyn Device,
    rule: &str,
    program: &MatrixProgram,
    uniforms: &[f32],
    view: Option<WideView>,
    buffers: DeviceBuffers<'_>,
) -> Result<(), RuntimeError> {
    let internal =
        |what: String| RuntimeError::Unsupported(format!("internal: rule `{rule}`: {what}"));
    let view = view.ok_or_else(|| internal("a matrix stage for a tensor without 2 dims".into()))?;
    program.shapes(uniforms.len()).map_err(internal)?;
    let (m, n) = (view.m(), view.n());
    if m == 0 || n == 0 {
        return Ok(());
    }
    let len = m * n;
    let buffer = |slot: Slot| -> Result<Val, RuntimeError> {
        let i = match slot {
            Slot::Param => 0,
            Slot::Grad => 1,
            Slot::State(s) => 2 + s.index(),
        };
        match (buffers.pointers.get(i), buffers.lens.get(i)) {
            (Some(&ptr), Some(&l)) if l == len => Ok(Val {
                ptr,
                rows: m,
                cols: n,
                trans: view.transposed(),
                owner: None,
            }),
            (Some(_), Some(&l)) => Err(internal(format!(
                "a matrix buffer of {l} floats for a {}×{} tensor",
                view.rows, view.cols
            ))),
            _ => Err(internal("a matrix program reads a missing buffer".into())),
        }
    };

    // The last node that reads each value (outputs: the end); a transpose shares its operand's
    // memory, so the operand lives as long as the transpose.
    let count = program.nodes.len();
    let mut last: Vec<usize> = (0..count).collect();
    for (j, e) in program.nodes.iter().enumerate() {
        for o in e.operands() {
            last[o] = last[o].max(j);
        }
    }
    for o in &program.outputs {
        if let Some(l) = last.get_mut(o.node as usize) {
            *l = count;
        }
    }
    for (i, e) in program.nodes.iter().enumerate().rev() {
        if let MatExpr::Transpose(a) = *e {
            last[a as usize] = last[a as usize].max(last[i]);
        }
    }
    let mut dies_at: Vec<Vec<usize>> = vec![Vec::new(); count];
    for (i, &l) in last.iter().enumerate() {
        if let Some(dies) = dies_at.get_mut(l) {
            dies.push(i);
        }
    }

    let mut vals: Vec<Val> = Vec::with_capacity(count);
    for (j, e) in program.nodes.iter().enumerate() {
        let v = |i: u32| vals[i as usize];
        let val = match *e {
            MatExpr::Buffer(slot) => buffer(slot)?,
            MatExpr::Transpose(a) => {
                let a = v(a);
                Val {
                    rows: a.cols,
                    cols: a.rows,
                    trans: !a.trans,
                    owner: None,
                    ..a
                }
            }
            MatExpr::MatMul(a, b) => {
                let (a, b) = (v(a), v(b));
                let out = scratch(d, a.rows, b.cols, false)?;
                gemm(d, out, a, b)?;
                out
            }
            MatExpr::Scale(c, a) => {
                let c = match c {
                    Coef::Const(x) => x as f32,
                    Coef::Uniform(u) => uniforms[u.index()],
                };
                let a = v(a);
                let out = scratch(d, a.rows, a.cols, a.trans)?;
                geam(d, out, c, a, 0.0, a)?;
                out
            }
            MatExpr::Neg(a) => {
                let a = v(a);
                let out = scratch(d, a.rows, a.cols, a.trans)?;
                geam(d, out, -1.0, a, 0.0, a)?;
                out
            }
            MatExpr::Add(a, b) | MatExpr::Sub(a, b) => {
                let (a, b) = (v(a), v(b));
                let beta = if matches!(e, MatExpr::Add(..)) {
                    1.0
                } else {
                    -1.0
                };
                let out = scratch(d, a.rows, a.cols, a.trans && b.trans)?;
                geam(d, out, 1.0, a, beta, b)?;
                out
            }
            MatExpr::RoundBf16(a) => {
                let a = v(a);
                let out = scratch(d, a.rows, a.cols, a.trans)?;
                d.round(a.ptr, out.ptr, a.rows * a.cols)?;
                out
            }
        };
        vals.push(val);
        // Scratch whose last reader was just queued goes back to the pool.
        for &i in &dies_at[j] {
            if let Some(h) = vals[i].owner.take() {
                d.give(h);
            }
        }
    }

    // An output that is a buffer of the tensor (or its transpose) is copied first, so that
    // writing one output never changes what another reads.
    let mut results = Vec::with_capacity(program.outputs.len());
    for o in &program.outputs {
        let val = *vals
            .get(o.node as usize)
            .ok_or_else(|| internal("a matrix output is out of range".into()))?;
        let val = if val.owner.is_none() {
            let copy = scratch(d, val.rows, val.cols, val.trans)?;
            geam(d, copy, 1.0, val, 0.0, val)?;
            copy
        } else {
            val
        };
        results.push(val);
    }
    for (o, val) in program.outputs.iter().zip(&results) {
        if matches!(o.slot, Slot::Param | Slot::Grad) {
            return Err(internal("a matrix output writes p or g".into()));
        }
        // In the tensor's layout: the wide matrix, stored transposed for a tall tensor.
        geam(d, buffer(o.slot)?, 1.0, *val, 0.0, *val)?;
    }
    // The rest of the scratch: the outputs, their copies, what a transpose output kept alive.
    let mut rest: Vec<usize> = vals
        .iter()
        .chain(&results)
        .filter_map(|v| v.owner)
        .collect();
    rest.sort_unstable();
    rest.dedup();
    for h in rest {
        d.give(h);
    }
    Ok(())
}

/// cuBLAS on the executor's stream, the rounding entry and the scratch pool. See the module docs.
pub(crate) struct CudaMatrix {
    blas: CudaBlas,
    round: CudaFunction,
    /// The bf16 and f16 widening entries.
    widen: [CudaFunction; 2],
    _module: Arc<CudaModule>,
    /// Free scratch buffers.
    pool: Vec<CudaSlice<f32>>,
    /// Scratch in use by the program running, by handle.
    live: Vec<Option<CudaSlice<f32>>>,
    /// Most blocks of a rounding launch.
    max_blocks: u32,
}

fn int(x: usize) -> Result<c_int, CudaError> {
    c_int::try_from(x).map_err(|_| {
        CudaError::Buffers(format!(
            "a matrix dimension of {x} is too large for cuBLAS (at most {})",
            c_int::MAX
        ))
    })
}

fn op(t: bool) -> cublasOperation_t {
    if t {
        cublasOperation_t::CUBLAS_OP_T
    } else {
        cublasOperation_t::CUBLAS_OP_N
    }
}

impl CudaMatrix {
    /// cuBLAS on `stream` and the rounding entry loaded, or [`CudaError::NoCublas`] (naming
    /// `rule`, the first rule with matrix stages).
    pub(crate) fn new(
        stream: &Arc<CudaStream>,
        max_blocks: u32,
        rule: &str,
    ) -> Result<CudaMatrix, CudaError> {
        if !cublas_available() {
            return Err(CudaError::NoCublas(rule.to_string()));
        }
        let blas = CudaBlas::new(stream.clone()).map_err(blas_err("creating a cuBLAS handle"))?;
        // SAFETY: the handle is valid (just created) and the mode is a valid enum value.
        unsafe { blas::cublasSetMathMode(*blas.handle(), cublasMath_t::CUBLAS_DEFAULT_MATH) }
            .result()
            .map_err(blas_err("setting cuBLAS's math mode"))?;
        let module = stream
            .context()
            .load_module(Ptx::from_src(round_bf16_ptx()))
            .during("loading the bfloat16 rounding module (.version 8.0, .target sm_80)")?;
        let find = |name: &str| {
            module
                .load_function(name)
                .during(format!("finding entry `{name}`"))
        };
        let round = find(ROUND_BF16_ENTRY)?;
        let widen = [find(WIDEN_BF16_ENTRY)?, find(WIDEN_F16_ENTRY)?];
        Ok(CudaMatrix {
            blas,
            round,
            widen,
            _module: module,
            pool: Vec::new(),
            live: Vec::new(),
            max_blocks: max_blocks.max(1),
        })
    }

    /// Queues `program` for one tensor of `view` on `stream`, the stream of the handle. See the
    /// module docs.
    pub(crate) fn run(
        &mut self,
        stream: &Arc<CudaStream>,
        rule: &str,
        program: &MatrixProgram,
        uniforms: &[f32],
        view: Option<WideView>,
        buffers: DeviceBuffers<'_>,
    ) -> Result<(), RuntimeError> {
        stream
            .context()
            .bind_to_thread()
            .during("binding the context for cuBLAS")?;
        let mut q = Queue { m: self, stream };
        // A 16-bit `p` or `g` the program reads is widened into f32 scratch (exact), which goes
        // back to the pool with the program's.
        let reads = program.reads();
        let mut pointers = buffers.pointers.to_vec();
        let mut out = Ok(());
        for (i, slot) in [Slot::Param, Slot::Grad].into_iter().enumerate() {
            let (Some(&d), Some(&len)) = (buffers.dtypes.get(i), buffers.lens.get(i)) else {
                continue;
            };
            if d == Dtype::F32 || !reads.contains(&slot) || len == 0 {
                continue;
            }
            out = q.widen(d, pointers[i], len).map(|dst| pointers[i] = dst);
            if out.is_err() {
                break;
            }
        }
        let widened = DeviceBuffers {
            pointers: &pointers,
            lens: buffers.lens,
            dtypes: buffers.dtypes,
        };
        let out = out
            .map_err(RuntimeError::from)
            .and_then(|()| run_on(&mut q, rule, program, uniforms, view, widened));
        // Everything goes back to the pool, also after an error.
        let live = std::mem::take(&mut self.live);
        self.pool.extend(live.into_iter().flatten());
        out
    }
}

/// [`CudaMatrix`] with its stream: the [`Device`] of one program.
struct Queue<'a> {
    m: &'a mut CudaMatrix,
    stream: &'a Arc<CudaStream>,
}

impl Queue<'_> {
    /// The launch of a grid-stride entry (`grid_stride_entry`) over `len` elements:
    /// `ROUND_BLOCK` threads a block, one per block of elements up to the matrix's `max_blocks`.
    fn grid(&self, len: usize) -> LaunchConfig {
        let blocks = u32::try_from(len.div_ceil(ROUND_BLOCK as usize))
            .unwrap_or(u32::MAX)
            .clamp(1, self.m.max_blocks);
        LaunchConfig {
            grid_dim: (blocks, 1, 1),
            block_dim: (ROUND_BLOCK, 1, 1),
            shared_mem_bytes: 0,
        }
    }

    /// `len` 16-bit values of `d` at `src` widened into f32 scratch (kept live until the program
    /// ends); its address.
    fn widen(&mut self, d: Dtype, src: u64, len: usize) -> Result<u64, CudaError> {
        let (name, func) = match d {
            Dtype::Bf16 => (WIDEN_BF16_ENTRY, &self.m.widen[0]),
            Dtype::F16 => (WIDEN_F16_ENTRY, &self.m.widen[1]),
            other => {
                return Err(CudaError::Buffers(format!(
                    "a matrix program reads a {other} parameter or gradient"
                )))
            }
        };
        let func = func.clone();
        let (_, dst) = self.take(len)?;
        let cfg = self.grid(len);
        let n = len as u64;
        let mut launch = self.stream.launch_builder(&func);
        launch.arg(&src).arg(&dst).arg(&n);
        // SAFETY: the entry takes three u64 (`widen_entry`); `src` holds `len` 16-bit values of
        // the tensor (checked by the optimizer and the executor), `dst` is fresh scratch of at
        // least `len` f32, and the grid-stride loop touches indices below `len` only.
        unsafe { launch.launch(cfg) }.during(format!("launching `{name}`"))?;
        Ok(dst)
    }
}

impl Device for Queue<'_> {
    fn take(&mut self, len: usize) -> Result<(usize, u64), CudaError> {
        let pool = &mut self.m.pool;
        let best = pool
            .iter()
            .enumerate()
            .filter(|(_, b)| b.len() >= len)
            .min_by_key(|(_, b)| b.len())
            .map(|(i, _)| i);
        let buf = match best {
            Some(i) => pool.swap_remove(i),
            // SAFETY: every node writes all of its result before any read of it.
            None => unsafe { self.stream.alloc::<f32>(len.max(1)) }.during(format!(
                "allocating a matrix scratch buffer of {len} floats"
            ))?,
        };
        // The address stays valid while `live` or the pool holds the buffer; all its uses are
        // on this stream, so the guard (event bookkeeping for other streams) is not needed.
        let ptr = buf.device_ptr(self.stream).0;
        self.m.live.push(Some(buf));
        Ok((self.m.live.len() - 1, ptr))
    }

    fn give(&mut self, handle: usize) {
        if let Some(b) = self.m.live.get_mut(handle).and_then(Option::take) {
            self.m.pool.push(b);
        }
    }

    fn geam(
        &mut self,
        ta: bool,
        tb: bool,
        m: usize,
        n: usize,
        alpha: f32,
        a: (u64, usize),
        beta: f32,
        b: (u64, usize),
        c: (u64, usize),
    ) -> Result<(), CudaError> {
        let (mi, ni) = (int(m)?, int(n)?);
        let (lda, ldb, ldc) = (int(a.1)?, int(b.1)?, int(c.1)?);
        // SAFETY: `run_on` passes addresses of device buffers of this context that hold their
        // matrix (tensor buffers whose lengths it checked, or scratch of at least that size
        // held in `live` or the pool, both kept past this call and only used on this stream);
        // each leading dimension is its memory's row length, which is what the column-major
        // view under the op chosen (`Val::op`) needs; `c` does not overlap `a` or `b` (fresh
        // scratch, or a state written only from scratch); `alpha`/`beta` are host values (the
        // handle's default pointer mode); the handle's stream is this stream.
        unsafe {
            blas::cublasSgeam(
                *self.m.blas.handle(),
                op(ta),
                op(tb),
                mi,
                ni,
                &alpha,
                a.0 as *const f32,
                lda,
                &beta,
                b.0 as *const f32,
                ldb,
                c.0 as *mut f32,
                ldc,
            )
        }
        .result()
        .map_err(blas_err(format!("cublasSgeam on a {m}×{n} matrix")))
    }

    fn gemm(
        &mut self,
        ta: bool,
        tb: bool,
        m: usize,
        n: usize,
        k: usize,
        a: (u64, usize),
        b: (u64, usize),
        c: (u64, usize),
    ) -> Result<(), CudaError> {
        let (mi, ni, ki) = (int(m)?, int(n)?, int(k)?);
        let (lda, ldb, ldc) = (int(a.1)?, int(b.1)?, int(c.1)?);
        let (alpha, beta) = (1.0f32, 0.0f32);
        // SAFETY: as in `geam`: the operands are `m × k` and `k × n` column-major under their
        // ops, `c` is fresh scratch of `m · n`, disjoint from them; `beta = 0`, so `c` is not
        // read.
        unsafe {
            blas::cublasSgemm_v2(
                *self.m.blas.handle(),
                op(ta),
                op(tb),
                mi,
                ni,
                ki,
                &alpha,
                a.0 as *const f32,
                lda,
                b.0 as *const f32,
                ldb,
                &beta,
                c.0 as *mut f32,
                ldc,
            )
        }
        .result()
        .map_err(blas_err(format!(
            "cublasSgemm_v2 for a {m}×{k} by {k}×{n} product"
        )))
    }

    fn round(&mut self, src: u64, dst: u64, len: usize) -> Result<(), CudaError> {
        let cfg = self.grid(len);
        let len = len as u64;
        let mut launch = self.stream.launch_builder(&self.m.round);
        launch.arg(&src).arg(&dst).arg(&len);
        // SAFETY: the entry takes three u64 (`round_bf16_ptx`); `src` and `dst` hold `len` f32
        // on this context (a value and fresh scratch of its size), and the grid-stride loop
        // touches indices below `len` only.
        unsafe { launch.launch(cfg) }.during(format!("launching `{ROUND_BF16_ENTRY}`"))?;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use optc_kernel::matrix::{self, round_bf16, Mat, MatOutput};
    use optc_kernel::StateId;
    use std::path::PathBuf;
    use std::process::Command;

    /// cuBLAS's column-major `geam`/`gemm` on host memory, as the reference computes: each sum
    /// over `k` ascending from `+0`, every product and sum rounded. Addresses are `(i + 1) << 32`
    /// for buffer `i`.
    #[derive(Default)]
    struct Host {
        mem: Vec<Vec<f32>>,
        free: Vec<usize>,
        live: usize,
        peak: usize,
    }

    fn at(ptr: u64) -> usize {
        (ptr >> 32) as usize - 1
    }

    impl Host {
        fn add(&mut self, data: Vec<f32>) -> u64 {
            self.mem.push(data);
            (self.mem.len() as u64) << 32
        }
        fn get(&self, (ptr, ld): (u64, usize), t: bool, i: usize, j: usize) -> f32 {
            let (r, c) = if t { (j, i) } else { (i, j) };
            self.mem[at(ptr)][r + c * ld]
        }
    }

    impl Device for Host {
        fn take(&mut self, len: usize) -> Result<(usize, u64), CudaError> {
            self.live += 1;
            self.peak = self.peak.max(self.live);
            // Poisoned, so that a read of an unwritten element shows.
            let ptr = self.add(vec![f32::NAN; len]);
            Ok((at(ptr), ptr))
        }
        fn give(&mut self, handle: usize) {
            assert!(!self.free.contains(&handle), "scratch {handle} given twice");
            self.free.push(handle);
            self.live -= 1;
        }
        fn geam(
            &mut self,
            ta: bool,
            tb: bool,
            m: usize,
            n: usize,
            alpha: f32,
            a: (u64, usize),
            beta: f32,
            b: (u64, usize),
            c: (u64, usize),
        ) -> Result<(), CudaError> {
            assert!(c.1 >= m.max(1) && a.1 >= (if ta { n } else { m }).max(1));
            assert!(!self.free.contains(&at(c.0)), "write to freed scratch");
            for j in 0..n {
                for i in 0..m {
                    let x = alpha * self.get(a, ta, i, j);
                    let y = if beta == 0.0 {
                        0.0
                    } else {
                        beta * self.get(b, tb, i, j)
                    };
                    self.mem[at(c.0)][i + j * c.1] = if beta == 0.0 { x } else { x + y };
                }
            }
            Ok(())
        }
        fn gemm(
            &mut self,
            ta: bool,
            tb: bool,
            m: usize,
            n: usize,
            k: usize,
            a: (u64, usize),
            b: (u64, usize),
            c: (u64, usize),
        ) -> Result<(), CudaError> {
            assert!(c.1 >= m.max(1));
            assert!(a.1 >= (if ta { k } else { m }).max(1));
            assert!(b.1 >= (if tb { n } else { k }).max(1));
            for j in 0..n {
                for i in 0..m {
                    let mut acc = 0.0f32;
                    for l in 0..k {
                        // The reference's product order: `a[i][l] · b[l][j]` of the row-major
                        // product, which is `op(b)(l, i)`... here `op(a)(i, l) · op(b)(l, j)`
                        // of the column-major one, its transpose: factors swap, exactly.
                        acc += self.get(b, tb, l, j) * self.get(a, ta, i, l);
                    }
                    self.mem[at(c.0)][i + j * c.1] = acc;
                }
            }
            Ok(())
        }
        fn round(&mut self, src: u64, dst: u64, len: usize) -> Result<(), CudaError> {
            for i in 0..len {
                self.mem[at(dst)][i] = round_bf16(self.mem[at(src)][i]);
            }
            Ok(())
        }
    }

    fn data(len: usize, seed: u32) -> Vec<f32> {
        let mut x = seed.wrapping_mul(2654435761).wrapping_add(1);
        (0..len)
            .map(|_| {
                x = x.wrapping_mul(1664525).wrapping_add(1013904223);
                (x >> 8) as f32 / (1u32 << 24) as f32 - 0.5
            })
            .collect()
    }

    /// Runs `program` through the emulated cuBLAS calls and through `optc_kernel::matrix::run`
    /// (the meaning) on a tensor of `shape` with `states` states; the outputs must be equal
    /// bit for bit (the emulation sums in the reference's order, so any layout mistake shows).
    fn agree(program: &MatrixProgram, uniforms: &[f32], shape: &[usize], states: usize) -> usize {
        let view = WideView::of_shape(shape).expect("2 dims");
        let len = shape.iter().product::<usize>();
        let bufs: Vec<Vec<f32>> = (0..2 + states).map(|i| data(len, i as u32)).collect();
        let mut host = Host::default();
        let pointers: Vec<u64> = bufs.iter().map(|b| host.add(b.clone())).collect();
        let lens = vec![len; bufs.len()];
        run_on(
            &mut host,
            "test",
            program,
            uniforms,
            Some(view),
            DeviceBuffers {
                pointers: &pointers,
                lens: &lens,
                dtypes: &vec![Dtype::F32; lens.len()],
            },
        )
        .expect("run");
        let read = |slot: Slot| -> Option<Vec<f32>> {
            Some(match slot {
                Slot::Param => bufs[0].clone(),
                Slot::Grad => bufs[1].clone(),
                Slot::State(s) => bufs.get(2 + s.index())?.clone(),
            })
        };
        let outs = matrix::run(program, uniforms, view, &read, &mut |a: &Mat, b: &Mat| {
            matrix::reference_matmul(a, b)
        })
        .expect("reference");
        let mut want = bufs.clone();
        for (o, w) in program.outputs.iter().zip(&outs) {
            let Slot::State(s) = o.slot else { panic!() };
            matrix::store_wide(w, &mut want[2 + s.index()], view);
        }
        for (i, w) in want.iter().enumerate() {
            let got = &host.mem[i];
            let same = got.iter().zip(w).all(|(x, y)| x.to_bits() == y.to_bits());
            assert!(same, "{shape:?}: buffer {i} differs:\n{got:?}\n{w:?}");
        }
        assert_eq!(host.live, 0, "scratch not given back");
        host.peak
    }

    const SHAPES: &[&[usize]] = &[
        &[5, 7],
        &[7, 5],
        &[6, 6],
        &[1, 9],
        &[9, 1],
        &[13, 3],
        &[3, 4, 5],
    ];

    /// Every node kind, transposes of buffers and of scratch, layouts that agree and that
    /// differ, an output that is a buffer and one that is a transpose.
    #[test]
    fn every_node_agrees_with_the_reference_in_every_layout() {
        use MatExpr::*;
        let s = |i| Slot::State(StateId(i));
        let program = MatrixProgram {
            nodes: vec![
                Buffer(Slot::Param),                                // 0  m×n
                Buffer(Slot::Grad),                                 // 1  m×n
                Transpose(0),                                       // 2  n×m (a buffer's transpose)
                MatMul(0, 2),                                       // 3  m×m
                MatMul(2, 3),                                       // 4  n×m
                Transpose(4),                                       // 5  m×n (scratch's transpose)
                Sub(5, 1), // 6  mixed layouts for a tall tensor
                Add(0, 1), // 7
                Scale(Coef::Uniform(optc_kernel::UniformId(0)), 6), // 8
                Neg(7),    // 9
                RoundBf16(8), // 10
                Transpose(1), // 11 n×m
                Transpose(11), // 12 m×n
                Add(12, 9), // 13
                MatMul(3, 13), // 14 m×n
                Scale(Coef::Const(0.5), 14), // 15
            ],
            outputs: vec![
                MatOutput {
                    slot: s(0),
                    node: 10,
                },
                MatOutput {
                    slot: s(1),
                    node: 1,
                },
                MatOutput {
                    slot: s(2),
                    node: 5,
                },
                MatOutput {
                    slot: s(3),
                    node: 15,
                },
            ],
        };
        for shape in SHAPES {
            agree(&program, &[1.7], shape, 4);
        }
    }

    /// Muon's Newton–Schulz programs (f32 and bf16), compiled from `stdlib/muon.opt`, on wide,
    /// tall, square and odd shapes; scratch stays a few matrices however many steps run.
    #[cfg(feature = "compiler")]
    #[test]
    fn muon_agrees_with_the_reference() {
        use optc_compiler::passes::CompileOptions;
        use optc_kernel::RankClass;
        let rule = optc_compiler::stdlib::rule("muon")
            .expect("muon")
            .expect("compiles");
        let names: Vec<String> = rule.flags().iter().map(|f| f.name.clone()).collect();
        for bf16 in [false, true] {
            let flags: Vec<bool> = names
                .iter()
                .map(|n| match n.as_str() {
                    "nesterov" => true,
                    "ns_bf16" => bf16,
                    _ => false,
                })
                .collect();
            let options = CompileOptions {
                rank: RankClass::Matrix,
                ..CompileOptions::default()
            };
            let kernel = rule
                .specialize_values_with(&flags, &options)
                .expect("specialize");
            let mut found = 0;
            for stage in &kernel.stages {
                let Some(program) = &stage.matrix else {
                    continue;
                };
                found += 1;
                let uniforms: Vec<f32> =
                    (0..stage.uniforms.len()).map(|i| 0.25 + i as f32).collect();
                for shape in SHAPES {
                    let peak = agree(program, &uniforms, shape, kernel.states.len());
                    assert!(peak <= 8, "{shape:?}: {peak} scratch matrices live at once");
                }
            }
            assert!(found >= 1, "bf16 = {bf16}: no matrix stage");
        }
    }

    fn ptxas() -> Option<PathBuf> {
        if let Some(p) = std::env::var_os("OPTC_PTXAS") {
            return Some(PathBuf::from(p));
        }
        let path = std::env::var_os("PATH")?;
        std::env::split_paths(&path)
            .map(|dir| dir.join("ptxas"))
            .find(|p| p.is_file())
    }

    /// The rounding module assembles for sm_80 and sm_90 (a missing ptxas skips the test, except
    /// under CI).
    #[test]
    fn the_rounding_module_assembles() {
        let Some(ptxas) = ptxas() else {
            assert!(
                std::env::var_os("CI").is_none(),
                "ptxas not found (set OPTC_PTXAS; .ci/fetch-ptxas.sh downloads it)"
            );
            eprintln!("SKIPPED the_rounding_module_assembles: no ptxas");
            return;
        };
        let dir = std::env::temp_dir().join(format!("optc-round-bf16-{}", std::process::id()));
        std::fs::create_dir_all(&dir).expect("temp dir");
        let input = dir.join("round.ptx");
        std::fs::write(&input, round_bf16_ptx()).expect("write ptx");
        for arch in ["sm_80", "sm_90"] {
            let out = Command::new(&ptxas)
                .arg(format!("-arch={arch}"))
                .arg("-o")
                .arg(dir.join(format!("round-{arch}.cubin")))
                .arg(&input)
                .output()
                .expect("run ptxas");
            assert!(
                out.status.success(),
                "ptxas -arch={arch}: {}",
                String::from_utf8_lossy(&out.stderr)
            );
        }
        let _ = std::fs::remove_dir_all(&dir);
    }
}
