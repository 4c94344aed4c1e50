//! The emitted PTX, run by the emulator of `ptxsim` (no GPU), against the reference interpreter.
//!
//! Every stdlib rule in every flag set and rank class, clipped by the global norm, loss-scaled
//! and both at its default flags, the kernel variants of its default flag set (loss-scaled too),
//! and the hand-built kernels of `ptx_kernels`: every stage through its vector, scalar (with
//! buffers only 4-byte aligned) and multi-tensor entries (two tensors in one launch, the table
//! built as `runtime/src/cuda/table.rs` builds it), or, for a factored kernel, its cols then rows
//! entries (as `runtime/src/cuda/factored.rs` launches them), on 33 elements (a 3x11 matrix),
//! plus 1 and 4099 elements (matrices 67x37, 2x4099 and 3 of 5x7) at each rule's default flags
//! (loss-scaled too), and 77 (7x11) with special values. Each stage's stores, untouched buffers
//! and block partials are compared with `interp::run_stage_matrix` (its partials are
//! `optc_kernel::reduce::block_partial` / `row_partials` / `col_partials`, the order
//! `docs/stages.md` fixes):
//!
//! - **bit for bit** (NaN matching NaN) when the module uses only correctly rounded ops (no
//!   `.approx`/`.full` op, no fast math: the body has no contraction, the emulator's `.rn` ops
//!   are IEEE);
//! - else within the fidelity budget of `docs/fidelity.md` (scaled error 1e-5 per buffer), since
//!   the emulator computes `ex2/lg2/rsqrt/sqrt.approx` and `div.full` exactly and cannot know
//!   how ptxas contracts fast-math `mul`+`add`.

mod ptx_kernels;
mod ptxsim;
mod storage_settings;

use optc_compiler::backend::interp::{run_stage_matrix, Buffers};
use optc_compiler::backend::ptx::{emit, Options};
use optc_compiler::passes::CompileOptions;
use optc_compiler::{stdlib, Kernel};
use optc_kernel::abi::Param;
use optc_kernel::artifact::{PtxEntry, PtxModule, StageEntries};
use optc_kernel::factored::{partials_layout, Geometry};
use optc_kernel::reduce::{combine, REDUCE_BLOCK};
use optc_kernel::table::{TableLayout, CHUNK_RECORD_BYTES, FLAG_ALIGNED};
use optc_kernel::{dtype, Dtype, MatrixDims, RankClass, StateShape, VecShape};
use ptxsim::{launch, Arg, Device};
use std::sync::atomic::{AtomicU64, Ordering::Relaxed};

/// A launch's result: every buffer after it, and the partials buffer.
type Run = (Vec<Vec<f32>>, Vec<f32>);
/// Partials split per reduce output.
type PerOutput = Vec<Vec<f32>>;

thread_local! {
    /// Whether [`inputs`] puts zeros, subnormals, infinities and NaNs among p and g (1), the
    /// same without subnormals (2), or not (0).
    static SPECIALS: std::cell::Cell<u8> = const { std::cell::Cell::new(0) };
}

/// Instructions the emulator executed (for the summary line).
static INSTRUCTIONS: AtomicU64 = AtomicU64::new(0);

/// Deterministic values in [lo, lo + 2).
fn data(n: usize, seed: u64, lo: f32) -> Vec<f32> {
    let mut s = seed.wrapping_mul(6364136223846793005) | 1;
    (0..n)
        .map(|_| {
            s = s
                .wrapping_mul(6364136223846793005)
                .wrapping_add(1442695040888963407);
            ((s >> 40) as f32 / (1u64 << 24) as f32) * 2.0 + lo
        })
        .collect()
}

/// Whether every float op of the module is correctly rounded (so the emulator is bit exact).
fn exact(source: &str) -> bool {
    !source.contains(".approx") && !source.contains(".full") && !source.contains(".ftz")
}

/// Compares one buffer; `Err` says where it differs.
fn compare(what: &str, got: &[f32], want: &[f32], exact: bool) -> Result<(), String> {
    if got.len() != want.len() {
        return Err(format!("{what}: {} values, want {}", got.len(), want.len()));
    }
    let scale = want
        .iter()
        .filter(|x| x.is_finite())
        .fold(0f32, |m, x| m.max(x.abs()))
        .max(f32::MIN_POSITIVE);
    for (i, (g, w)) in got.iter().zip(want).enumerate() {
        let same = g.to_bits() == w.to_bits() || (g.is_nan() && w.is_nan());
        if same {
            continue;
        }
        let close = !exact
            && g.is_finite() == w.is_finite()
            && (g == w || ((g - w).abs() / scale) as f64 <= 1e-5);
        if !close {
            return Err(format!(
                "{what}[{i}]: got {g:e} ({:#010x}), want {w:e} ({:#010x}){}",
                g.to_bits(),
                w.to_bits(),
                if exact {
                    " (bit for bit)"
                } else {
                    " (scaled error 1e-5)"
                }
            ));
        }
    }
    Ok(())
}

/// One tensor's inputs for a stage.
struct Inputs {
    /// Every buffer's values (a 16-bit buffer's are values of its dtype).
    bufs: Vec<Vec<f32>>,
    vectors: Vec<Vec<f32>>,
    uniforms: Vec<f32>,
    dims: MatrixDims,
    /// The tensor's stochastic-rounding key (`Storage::sr_key`; 0 without).
    sr_key: u32,
}

/// The storage dtype of buffer `b` ([`Kernel::buffers`] order) as the stage's entries see it:
/// an int8 state is f32 outside the `_q8` entries (a tensor under 4096 elements keeps f32
/// states).
fn dtype_of(kernel: &Kernel, b: usize) -> Dtype {
    match kernel
        .buffers()
        .get(b)
        .map(|x| kernel.storage.dtype(x.slot))
    {
        Some(Dtype::Int8) | None => Dtype::F32,
        Some(d) => d,
    }
}

/// The bits of `x`, a value of the 16-bit dtype `d`, or `None` for a NaN.
fn bits16(d: Dtype, x: f32) -> Option<u16> {
    if x.is_nan() {
        return None;
    }
    Some(if d == Dtype::F16 {
        dtype::narrow_f16(x)
    } else {
        dtype::narrow_bf16(x)
    })
}

/// Allocates buffer `b` of `kernel` holding `xs` in its storage dtype.
fn put(dev: &mut Device, kernel: &Kernel, b: usize, xs: &[f32], misalign: u64) -> u64 {
    match dtype_of(kernel, b) {
        d @ (Dtype::Bf16 | Dtype::F16) => {
            let bytes: Vec<u8> = xs
                .iter()
                .flat_map(|&x| {
                    let h = if d == Dtype::F16 {
                        dtype::narrow_f16(x)
                    } else {
                        dtype::narrow_bf16(x)
                    };
                    h.to_le_bytes()
                })
                .collect();
            dev.alloc(&bytes, misalign)
        }
        _ => dev.alloc_f32(xs, misalign),
    }
}

/// Buffer `b` of `kernel` at `ptr`, widened to f32.
fn get(dev: &Device, kernel: &Kernel, b: usize, ptr: u64) -> Vec<f32> {
    match dtype_of(kernel, b) {
        d @ (Dtype::Bf16 | Dtype::F16) => dev
            .bytes(ptr)
            .chunks_exact(2)
            .map(|c| {
                let h = u16::from_le_bytes([c[0], c[1]]);
                if d == Dtype::F16 {
                    dtype::widen_f16(h)
                } else {
                    dtype::widen_bf16(h)
                }
            })
            .collect(),
        _ => dev.read_f32(ptr),
    }
}

/// Compares buffer `b`: a 16-bit buffer as its dtype's bits (NaN matching NaN: payloads are not
/// part of the contract), an f32 one with [`compare`].
fn compare_buf(
    kernel: &Kernel,
    b: usize,
    what: &str,
    got: &[f32],
    want: &[f32],
    exact: bool,
) -> Result<(), String> {
    let d = dtype_of(kernel, b);
    if d == Dtype::F32 {
        return compare(what, got, want, exact);
    }
    if got.len() != want.len() {
        return Err(format!("{what}: {} values, want {}", got.len(), want.len()));
    }
    for (i, (g, w)) in got.iter().zip(want).enumerate() {
        if dtype::Dtype::round(d, *w).to_bits() != w.to_bits() && !w.is_nan() {
            return Err(format!("{what}[{i}]: the interpreter's {w:e} is not a {d}"));
        }
        let (gb, wb) = (bits16(d, *g), bits16(d, *w));
        if gb != wb {
            return Err(format!(
                "{what}[{i}]: got {d} {gb:#06x?}, want {wb:#06x?} (bit for bit)"
            ));
        }
    }
    Ok(())
}

/// The interpreter's stage: buffers after it, and its partials per reduce output.
fn reference(kernel: &Kernel, stage: usize, inp: &Inputs) -> (Vec<Vec<f32>>, Vec<Vec<f32>>) {
    let mut bufs = inp.bufs.clone();
    let (p, rest) = bufs.split_at_mut(1);
    let (g, states) = rest.split_at_mut(1);
    let dims = kernel.is_factored().then_some(inp.dims);
    let parts = run_stage_matrix(
        kernel,
        stage,
        &inp.uniforms,
        &inp.vectors,
        dims,
        Buffers {
            param: &mut p[0],
            grad: &g[0],
            states: states.iter_mut().map(|s| &mut s[..]).collect(),
        },
        inp.sr_key,
    )
    .unwrap_or_else(|e| panic!("{}: interpreter stage {stage}: {e}", kernel.rule));
    (bufs, parts)
}

/// Arguments of a single-tensor or factored entry.
fn args(params: &[Param], ptrs: &[u64], inp: &Inputs, vecs: &[u64], partials: u64) -> Vec<Arg> {
    params
        .iter()
        .map(|p| match *p {
            Param::Buffer { index } => Arg::U64(ptrs[index]),
            Param::Len => Arg::U64(inp.dims.numel() as u64),
            Param::Partials => Arg::U64(partials),
            Param::Uniform { index } => Arg::F32(inp.uniforms[index]),
            Param::Batch => Arg::U64(inp.dims.batch as u64),
            Param::Rows => Arg::U64(inp.dims.rows as u64),
            Param::Cols => Arg::U64(inp.dims.cols as u64),
            Param::Vector { index } => Arg::U64(vecs[index]),
            Param::SrKey => Arg::U32(inp.sr_key),
            other => panic!("unexpected parameter {other:?}"),
        })
        .collect()
}

/// Runs a single-tensor entry (vector or scalar) and returns the buffers and partials.
fn run_single(
    m: &ptxsim::Module,
    kernel: &Kernel,
    stage: usize,
    entry: &PtxEntry,
    inp: &Inputs,
    misalign: u64,
    (grid, block): (u32, u32),
) -> Result<Run, String> {
    let mut dev = Device::default();
    let ptrs: Vec<u64> = inp
        .bufs
        .iter()
        .enumerate()
        .map(|(b, xs)| put(&mut dev, kernel, b, xs, misalign))
        .collect();
    let np = optc_kernel::abi::partials_len(kernel, stage, inp.dims.numel());
    let parts = dev.alloc_f32(&vec![f32::NAN; np], 0);
    let a = args(&entry.params, &ptrs, inp, &[], parts);
    INSTRUCTIONS.fetch_add(
        launch(m, &entry.name, grid, block, &a, &mut dev)?.instructions,
        Relaxed,
    );
    Ok((
        ptrs.iter()
            .enumerate()
            .map(|(b, p)| get(&dev, kernel, b, *p))
            .collect(),
        dev.read_f32(parts),
    ))
}

/// Runs the multi-tensor entry over `tensors` in one launch, building the table and chunk list
/// as `runtime/src/cuda/table.rs::build` does (pointers, len, flags, partials pointer and
/// uniforms at the record layout's offsets; one (tensor u32, chunk u32) record per chunk).
fn run_multi(
    m: &ptxsim::Module,
    kernel: &Kernel,
    e: &StageEntries,
    outputs: usize,
    tensors: &[(&Inputs, u64)],
    chunk_elems: usize,
) -> Result<Vec<Run>, String> {
    let mut dev = Device::default();
    let layout: &TableLayout = &e.record;
    let mut ranges = Vec::new();
    let mut total = 0;
    for (inp, _) in tensors {
        let n = outputs * inp.dims.numel().div_ceil(REDUCE_BLOCK);
        ranges.push(total..total + n);
        total += n;
    }
    let parts = dev.alloc_f32(&vec![f32::NAN; total.max(1)], 0);
    let stride = layout.stride();
    let mut records = vec![0u8; stride * tensors.len()];
    let mut chunks = Vec::new();
    let mut ptrs_all = Vec::new();
    for (ti, (inp, misalign)) in tensors.iter().enumerate() {
        let ptrs: Vec<u64> = inp
            .bufs
            .iter()
            .enumerate()
            .map(|(b, xs)| put(&mut dev, kernel, b, xs, *misalign))
            .collect();
        let rec = &mut records[ti * stride..(ti + 1) * stride];
        let mut put = |off: usize, bytes: &[u8]| rec[off..off + bytes.len()].copy_from_slice(bytes);
        for (i, p) in ptrs.iter().enumerate() {
            put(layout.pointer_offset(i), &p.to_le_bytes());
        }
        let n = inp.dims.numel();
        put(layout.len_offset(), &(n as u64).to_le_bytes());
        let flags = if ptrs.iter().all(|p| p % 16 == 0) {
            FLAG_ALIGNED
        } else {
            0
        };
        put(layout.flags_offset(), &flags.to_le_bytes());
        if let Some(off) = layout.partials_offset() {
            put(off, &(parts + 4 * ranges[ti].start as u64).to_le_bytes());
        }
        for (u, v) in inp.uniforms.iter().enumerate() {
            put(layout.uniform_offset(u), &v.to_le_bytes());
        }
        if let Some(off) = layout.sr_key_offset() {
            put(off, &inp.sr_key.to_le_bytes());
        }
        for k in 0..n.div_ceil(chunk_elems) {
            chunks.extend_from_slice(&(ti as u32).to_le_bytes());
            chunks.extend_from_slice(&(k as u32).to_le_bytes());
        }
        ptrs_all.push(ptrs);
    }
    let num_chunks = chunks.len() / CHUNK_RECORD_BYTES;
    let table = dev.alloc(&records, 0);
    let chunk_ptr = dev.alloc(&chunks, 0);
    let a: Vec<Arg> = e
        .multi
        .params
        .iter()
        .map(|p| match p {
            Param::Table => Arg::U64(table),
            Param::Chunks => Arg::U64(chunk_ptr),
            Param::NumChunks => Arg::U64(num_chunks as u64),
            Param::ChunkElems => Arg::U64(chunk_elems as u64),
            other => panic!("multi entry parameter {other:?}"),
        })
        .collect();
    // The launcher's grid: blocks rounded up to the block multiple, at most 3 blocks here.
    let bm = e.block_multiple.max(1);
    let block = 64u32.div_ceil(bm) * bm;
    let grid = (num_chunks as u32).clamp(1, 3);
    if num_chunks > 0 {
        INSTRUCTIONS.fetch_add(
            launch(m, &e.multi.name, grid, block, &a, &mut dev)?.instructions,
            Relaxed,
        );
    }
    let all = dev.read_f32(parts);
    Ok(ptrs_all
        .iter()
        .zip(&ranges)
        .map(|(ptrs, r)| {
            (
                ptrs.iter()
                    .enumerate()
                    .map(|(b, p)| get(&dev, kernel, b, *p))
                    .collect(),
                all[r.clone()].to_vec(),
            )
        })
        .collect())
}

/// Runs a factored stage's cols entry (if any) then its rows entry, as the CUDA executor
/// launches them (`Grids::new` with 64 threads, at most 3 blocks), into one partials buffer laid
/// out by `optc_kernel::factored::partials_layout`.
fn run_factored(
    m: &ptxsim::Module,
    module: &PtxModule,
    kernel: &Kernel,
    stage: usize,
    inp: &Inputs,
) -> Result<(Vec<Vec<f32>>, PerOutput), String> {
    let e = &module.factored[stage];
    let mut dev = Device::default();
    let ptrs: Vec<u64> = inp
        .bufs
        .iter()
        .enumerate()
        .map(|(b, xs)| put(&mut dev, kernel, b, xs, 0))
        .collect();
    let vecs: Vec<u64> = inp.vectors.iter().map(|v| dev.alloc_f32(v, 0)).collect();
    let layout = partials_layout(kernel, stage, inp.dims);
    let parts = dev.alloc_f32(&vec![f32::NAN; layout.len.max(1)], 0);
    let g = Geometry { dims: inp.dims };
    let block = 64u32;
    let fit = |items: usize, per: usize| (items.div_ceil(per) as u32).min(3);
    if let Some(cols) = &e.cols {
        let blocks = fit(g.col_threads(), block as usize);
        let a = args(
            &cols.params,
            &ptrs,
            inp,
            &vecs,
            parts + 4 * layout.cols_start as u64,
        );
        if blocks > 0 {
            INSTRUCTIONS.fetch_add(
                launch(m, &cols.name, blocks, block, &a, &mut dev)?.instructions,
                Relaxed,
            );
        }
    }
    let blocks = fit(g.row_blocks(), block as usize / 32);
    let a = args(&e.rows.params, &ptrs, inp, &vecs, parts);
    if blocks > 0 {
        INSTRUCTIONS.fetch_add(
            launch(m, &e.rows.name, blocks, block, &a, &mut dev)?.instructions,
            Relaxed,
        );
    }
    let all = dev.read_f32(parts);
    Ok((
        ptrs.iter()
            .enumerate()
            .map(|(b, p)| get(&dev, kernel, b, *p))
            .collect(),
        layout
            .outputs
            .iter()
            .map(|r| all[r.clone()].to_vec())
            .collect(),
    ))
}

/// The inputs of stage `stage` for a tensor of `dims`: p, g in [-1, 1), states in [0.05,
/// 2.05) (so square roots of states are real), vectors in [0.5, 2.5), uniforms from the host
/// program at step `t` with the reductions of the earlier stages from `reduced`.
fn inputs(
    kernel: &Kernel,
    stage: usize,
    dims: MatrixDims,
    seed: u64,
    t: u64,
    reduced: &[f64],
) -> Inputs {
    let n = dims.numel();
    let mut bufs = vec![data(n, seed, -1.0), data(n, seed + 1, -1.0)];
    if SPECIALS.with(|s| s.get()) > 0 {
        // Every 7th gradient and every 11th parameter a special value.
        // Fast math flushes subnormals to zero (`docs/cuda.md`): no subnormals there.
        let (tiny, neg_tiny) = if SPECIALS.with(|s| s.get()) == 2 {
            (1e-30, -1e-30)
        } else {
            (1e-40, -1e-39)
        };
        let sp = [
            0.0,
            -0.0,
            tiny,
            neg_tiny,
            f32::NAN,
            f32::INFINITY,
            f32::NEG_INFINITY,
            3e38,
            1.0,
        ];
        for (i, x) in bufs[1].iter_mut().enumerate().filter(|(i, _)| i % 7 == 3) {
            *x = sp[(i / 7) % sp.len()];
        }
        for (i, x) in bufs[0].iter_mut().enumerate().filter(|(i, _)| i % 11 == 5) {
            *x = sp[(i / 11 + 3) % sp.len()];
        }
    }
    for (i, s) in kernel.states.iter().enumerate() {
        let len = if kernel.is_factored() {
            dims.len(s.shape)
        } else {
            n
        };
        bufs.push(data(len, seed + 2 + i as u64, 0.05));
    }
    let shapes = kernel.stage_vector_shapes(stage).expect("shapes");
    let vectors = shapes
        .iter()
        .enumerate()
        .map(|(i, s)| {
            let len = match s {
                VecShape::Rows => dims.len(StateShape::Rows),
                VecShape::Cols => dims.len(StateShape::Cols),
                VecShape::One => 1,
            };
            data(len, seed + 50 + i as u64, 0.5)
        })
        .collect();
    let hypers = kernel.default_hypers();
    let scalars = kernel.initial_scalars(&hypers).expect("scalars");
    let view = Some(optc_kernel::matrix::WideView {
        rows: dims.batch * dims.rows,
        cols: dims.cols,
    });
    let host = kernel
        .eval_host_for(&hypers, t, &scalars, reduced, view)
        .expect("host program");
    // A 16-bit buffer holds values of its dtype.
    for (b, xs) in bufs.iter_mut().enumerate() {
        let d = dtype_of(kernel, b);
        if d != Dtype::F32 {
            xs.iter_mut().for_each(|x| *x = d.round(*x));
        }
    }
    Inputs {
        bufs,
        vectors,
        uniforms: host.uniforms[stage].iter().map(|u| *u as f32).collect(),
        dims,
        // The tensor's index in an optimizer: its seed.
        sr_key: kernel.storage.sr_key(t, seed),
    }
}

/// Checks every stage of `kernel` compiled with `opts` on tensors of `dims`; `Err` names the
/// first difference.
fn check(kernel: &Kernel, opts: &Options, dims: &[MatrixDims]) -> Result<u64, String> {
    let module = emit(kernel, opts).map_err(|e| e.to_string())?;
    check_module(kernel, &module, dims)
}

fn check_module(kernel: &Kernel, module: &PtxModule, dims: &[MatrixDims]) -> Result<u64, String> {
    let m = ptxsim::parse(&module.source)?;
    let ex = exact(&module.source);
    let mut checked = 0;
    for &d in dims {
        let mut reduced = vec![1.5f64; kernel.reductions.len()];
        for stage in 0..kernel.stages.len() {
            let inp = inputs(kernel, stage, d, 11 + stage as u64, 2, &reduced);
            let (want, want_parts) = reference(kernel, stage, &inp);
            for (r, parts) in kernel.stages[stage].reduce.iter().zip(&want_parts) {
                let op = kernel.reductions[r.reduction.index()].op;
                reduced[r.reduction.index()] = combine(op, parts.iter().copied()).abs() + 0.5;
            }
            let ctx =
                |what: &str| format!("stage {stage}, {}x{}x{} {what}", d.batch, d.rows, d.cols);
            let cmp_all =
                |what: &str, got: &[Vec<f32>], parts: &[Vec<f32>]| -> Result<(), String> {
                    for (b, (g, w)) in got.iter().zip(&want).enumerate() {
                        compare_buf(kernel, b, &format!("{} buffer {b}", ctx(what)), g, w, ex)?;
                    }
                    for (o, (g, w)) in parts.iter().zip(&want_parts).enumerate() {
                        compare(&format!("{} partials of output {o}", ctx(what)), g, w, ex)?;
                    }
                    Ok(())
                };
            if kernel.is_factored() {
                let (got, parts) = run_factored(&m, module, kernel, stage, &inp)?;
                cmp_all("rows/cols", &got, &parts)?;
                checked += 1;
                continue;
            }
            let e = &module.stages[stage];
            let split = |flat: Vec<f32>| split_partials(&flat, want_parts.len());
            // The vector entry with one warp (it strides over every reduce block), the scalar
            // entry with two CTAs of two warps.
            let (got, parts) = run_single(&m, kernel, stage, &e.vector, &inp, 0, (1, 32))?;
            cmp_all("vector", &got, &split(parts))?;
            let (got, parts) = run_single(&m, kernel, stage, &e.scalar, &inp, 4, (2, 64))?;
            cmp_all("scalar (4-byte aligned)", &got, &split(parts))?;
            // A second tensor with other values and uniforms in the same launch, its buffers
            // 4-byte aligned (the record's flag sends it down the scalar path).
            let d2 = MatrixDims {
                batch: 1,
                rows: 1,
                cols: 37,
            };
            let inp2 = inputs(kernel, stage, d2, 99 + stage as u64, 3, &reduced);
            let (want2, want_parts2) = reference(kernel, stage, &inp2);
            // Chunks of one and of three times the stage's chunk multiple.
            for chunk in [1, 3].map(|c| c * e.chunk_multiple.max(1)) {
                let res = run_multi(
                    &m,
                    kernel,
                    e,
                    want_parts.len(),
                    &[(&inp, 0), (&inp2, 4)],
                    chunk,
                )?;
                cmp_all("multi", &res[0].0, &split(res[0].1.clone()))?;
                for (b, (g, w)) in res[1].0.iter().zip(&want2).enumerate() {
                    compare_buf(
                        kernel,
                        b,
                        &format!("{} buffer {b}", ctx("multi, 2nd tensor")),
                        g,
                        w,
                        ex,
                    )?;
                }
                let parts2 = split_partials(&res[1].1, want_parts2.len());
                for (o, (g, w)) in parts2.iter().zip(&want_parts2).enumerate() {
                    compare(
                        &format!("{} partials {o}", ctx("multi, 2nd tensor")),
                        g,
                        w,
                        ex,
                    )?;
                }
            }
            checked += 4;
        }
    }
    Ok(checked)
}

/// A tensor's partials of `outs` reduce outputs (one run of blocks each), split per output.
fn split_partials(flat: &[f32], outs: usize) -> Vec<Vec<f32>> {
    match flat.len().checked_div(outs) {
        Some(per) => flat.chunks(per.max(1)).map(<[f32]>::to_vec).collect(),
        None => Vec::new(),
    }
}

fn flat(n: usize) -> MatrixDims {
    MatrixDims {
        batch: 1,
        rows: 1,
        cols: n,
    }
}

#[test]
fn every_stdlib_rule_and_hand_built_kernel_computes_what_the_interpreter_does() {
    let mut failures = Vec::new();
    let (mut launches, mut modules, mut exact_modules) = (0, 0, 0);
    let all = ptx_kernels::every::kernels();
    let stdlib_count = all.len() - ptx_kernels::all().len();
    for (i, (label, kernel, default)) in all.into_iter().enumerate() {
        for fast_math in [false, true] {
            let opts = Options {
                fast_math,
                ..Options::default()
            };
            let mut dims = vec![if kernel.is_factored() {
                MatrixDims {
                    batch: 1,
                    rows: 3,
                    cols: 11,
                }
            } else {
                flat(33)
            }];
            if default && !fast_math {
                dims.push(flat(1));
                if kernel.is_factored() {
                    // Two column blocks; two row blocks per row; a batch of matrices.
                    for (batch, rows, cols) in [(1, 67, 37), (1, 2, 4099), (3, 5, 7)] {
                        dims.push(MatrixDims { batch, rows, cols });
                    }
                } else {
                    dims.push(flat(4099));
                }
            }
            modules += 1;
            let source = emit(&kernel, &opts).map(|m| m.source).unwrap_or_default();
            exact_modules += usize::from(exact(&source));
            // docs/cuda.md: without fast math every stdlib module is correctly rounded, so
            // compared bit for bit.
            if i < stdlib_count && !fast_math && !exact(&source) {
                failures.push(format!("{label}: uses an approximate op without fast math"));
            }
            match check(&kernel, &opts, &dims) {
                Ok(n) => launches += n,
                Err(e) => failures.push(format!(
                    "{label}{}: {e}",
                    if fast_math { " (fast math)" } else { "" }
                )),
            }
        }
        // Below sm_80, min/max have no `.NaN` form: the lowering selects on `setp.nan`.
        if default {
            let opts = Options {
                version: "7.0".into(),
                target: "sm_70".into(),
                fast_math: false,
            };
            let dims = [if kernel.is_factored() {
                MatrixDims {
                    batch: 1,
                    rows: 3,
                    cols: 11,
                }
            } else {
                flat(33)
            }];
            modules += 1;
            let source = emit(&kernel, &opts).map(|m| m.source).unwrap_or_default();
            exact_modules += usize::from(exact(&source));
            match check(&kernel, &opts, &dims) {
                Ok(n) => launches += n,
                Err(e) => failures.push(format!("{label} (sm_70): {e}")),
            }
        }
    }
    assert!(
        failures.is_empty(),
        "{} failures:\n{}",
        failures.len(),
        failures.join("\n")
    );
    eprintln!(
        "ptxsim: {modules} modules ({exact_modules} compared bit for bit), {launches} stage runs, \
         {} instructions emulated",
        INSTRUCTIONS.load(Relaxed)
    );
}

/// The same walk on 77 elements (a 7x11 matrix) with zeros of both signs, subnormals,
/// infinities, NaNs and huge values among p and g: NaN and infinity propagation, signed zeros
/// and subnormals must agree too (bit for bit where the module is exact; fast-math modules,
/// which flush subnormals, get no subnormal inputs).
#[test]
fn special_values_propagate_as_in_the_interpreter() {
    let mut failures = Vec::new();
    for (label, kernel, _) in ptx_kernels::every::kernels() {
        for fast_math in [false, true] {
            SPECIALS.with(|s| s.set(if fast_math { 2 } else { 1 }));
            let opts = Options {
                fast_math,
                ..Options::default()
            };
            let dims = [if kernel.is_factored() {
                MatrixDims {
                    batch: 1,
                    rows: 7,
                    cols: 11,
                }
            } else {
                flat(77)
            }];
            if let Err(e) = check(&kernel, &opts, &dims) {
                let fast = if fast_math { " (fast math)" } else { "" };
                failures.push(format!("{label}{fast}: {e}"));
            }
        }
    }
    assert!(
        failures.is_empty(),
        "{} failures:\n{}",
        failures.len(),
        failures.join("\n")
    );
}

/// The storage settings of `runtime/tests/api_dtypes.rs` (`settings()`: bf16/bf16, f16/f32,
/// f32/bf16, masters, stochastic rounding with bf16 and f16 parameters) and int8 states with f32
/// and 16-bit parameters (whose tensors here, under 4096 elements, keep f32 states and take the
/// vector, scalar and multi entries; `int8_entries_compute_what_the_interpreter_does` runs the
/// `_q8` ones).
fn storage_settings() -> Vec<optc_kernel::Precision> {
    let mut out = storage_settings::api_dtypes();
    out.push(storage_settings::precision(
        Dtype::F16,
        Dtype::Int8,
        false,
        Some(5),
    ));
    out
}

/// Every stdlib rule at its default flags (both rank classes, loss-scaled too, and its kernel
/// variants) under every storage setting: the vector, scalar and multi-tensor entries of every
/// stage (or a factored kernel's cols and rows entries) on 33 elements (3x11), and the first
/// kernel of each rule also on 1 and 4099 elements (factored: 67x37, 2x4099, 3 of 5x7), against
/// the interpreter with the same storage and stochastic-rounding keys: 16-bit buffers bit for
/// bit as their dtype's bits, f32 buffers and partials bit for bit. Kernels that round
/// stochastically also run on 77 elements with special values among p and g.
#[test]
fn every_stdlib_rule_under_every_storage_setting_computes_what_the_interpreter_does() {
    let mut failures = Vec::new();
    let (mut runs, mut stochastic) = (0, 0);
    let mut first = std::collections::BTreeSet::new();
    for (label, base, default) in ptx_kernels::every::kernels() {
        if !default || !stdlib::names().any(|r| r == base.rule) {
            continue;
        }
        let big = first.insert(base.rule.clone());
        for precision in storage_settings() {
            let kernel = match precision.apply(&base) {
                Ok(k) => k,
                Err(e) => {
                    failures.push(format!("{label} {precision:?}: {e}"));
                    continue;
                }
            };
            let mut dims = vec![if kernel.is_factored() {
                MatrixDims {
                    batch: 1,
                    rows: 3,
                    cols: 11,
                }
            } else {
                flat(33)
            }];
            if big {
                dims.push(flat(1));
                if kernel.is_factored() {
                    for (batch, rows, cols) in [(1, 67, 37), (1, 2, 4099), (3, 5, 7)] {
                        dims.push(MatrixDims { batch, rows, cols });
                    }
                } else if !kernel.storage.states.contains(&Dtype::Int8) {
                    dims.push(flat(4099));
                }
            }
            stochastic += usize::from(optc_kernel::abi::stochastic(&kernel));
            match check(&kernel, &Options::default(), &dims) {
                Ok(n) => runs += n,
                Err(e) => failures.push(format!("{label} {precision:?}: {e}")),
            }
            // Zeros, subnormals, infinities, NaNs and huge values among p and g (77 elements,
            // 7x11), with stochastic rounding.
            if optc_kernel::abi::stochastic(&kernel) {
                SPECIALS.with(|s| s.set(1));
                let dims = [if kernel.is_factored() {
                    MatrixDims {
                        batch: 1,
                        rows: 7,
                        cols: 11,
                    }
                } else {
                    flat(77)
                }];
                let res = check(&kernel, &Options::default(), &dims);
                SPECIALS.with(|s| s.set(0));
                match res {
                    Ok(n) => runs += n,
                    Err(e) => failures.push(format!("{label} {precision:?} (special values): {e}")),
                }
            }
        }
    }
    assert!(
        failures.is_empty(),
        "{} failures:\n{}",
        failures.len(),
        failures.join("\n")
    );
    assert_eq!(first.len(), stdlib::names().count(), "{first:?}");
    assert!(stochastic > 0);
    eprintln!("ptxsim: {runs} storage-setting stage runs ({stochastic} stochastic kernels)");
}

/// The comparison can fail: AdamW's module with one `add.rn.f32` of the body turned into a
/// `sub.rn.f32` no longer matches, and neither does one whose reduction tree shuffles by the
/// wrong lane distance.
#[test]
fn a_mutated_instruction_fails_the_comparison() {
    let k = ptx_kernels::adamw();
    let mut module = emit(&k, &Options::default()).expect("emit");
    check_module(&k, &module, &[flat(33)]).expect("the unmutated module matches");
    let at = module.source.find("add.rn.f32").expect("an add");
    module.source.replace_range(at..at + 3, "sub");
    let err = check_module(&k, &module, &[flat(33)]).expect_err("a mutated add must not match");
    assert!(err.contains("buffer"), "{err}");

    let k = ptx_kernels::trust_ratio();
    let mut module = emit(&k, &Options::default()).expect("emit");
    check_module(&k, &module, &[flat(4099)]).expect("the unmutated module matches");
    let at = module.source.find("shfl.sync.down.b32").expect("a shuffle");
    let line_end = at + module.source[at..].find(';').expect("end");
    let line = module.source[at..line_end].replace(", 16, 31", ", 8, 31");
    assert_ne!(line, &module.source[at..line_end]);
    module.source.replace_range(at..line_end, &line);
    let err = check_module(&k, &module, &[flat(4099)]).expect_err("a wrong shuffle must not match");
    assert!(err.contains("partials"), "{err}");

    // LAMB's stage 0 transposes its v4 partial sums through shared memory: without the warp
    // barrier between the stores and the loads, the emulator reports the race.
    let rule = stdlib::rule("lamb").and_then(Result::ok).expect("lamb");
    let k = rule.specialize(&[]).expect("lamb");
    let mut module = emit(&k, &Options::default()).expect("emit");
    check_module(&k, &module, &[flat(4099)]).expect("the unmutated module matches");
    let at = module
        .source
        .find("bar.warp.sync -1;")
        .expect("a warp barrier");
    module
        .source
        .replace_range(at..at + "bar.warp.sync -1;".len(), "");
    let err = check_module(&k, &module, &[flat(4099)]).expect_err("a missing barrier must fail");
    assert!(err.contains("shared-memory race"), "{err}");

    // AdamW's multi-tensor entry reading its first uniform 4 bytes too far into the record
    // (so every tensor gets its second uniform).
    let k = ptx_kernels::adamw();
    let mut module = emit(&k, &Options::default()).expect("emit");
    let entry = module.source.find("_multi(").expect("a multi entry");
    let at = entry
        + module.source[entry..]
            .find("ld.global.f32 %f1, [")
            .expect("the first uniform load");
    let close = at + module.source[at..].find(']').expect("]");
    let plus = at + module.source[at..close].find('+').expect("an offset");
    let off: usize = module.source[plus + 1..close].parse().expect("offset");
    module
        .source
        .replace_range(plus + 1..close, &(off + 4).to_string());
    let err = check_module(&k, &module, &[flat(33)]).expect_err("a wrong record offset");
    assert!(err.contains("multi"), "{err}");

    // Adafactor's first rows entry with one multiplication turned into an addition.
    let rule = stdlib::rule("adafactor")
        .and_then(Result::ok)
        .expect("adafactor");
    let k = rule
        .specialize_with(
            &[],
            &CompileOptions {
                clip: false,
                loss_scale: false,
                rank: RankClass::Matrix,
            },
        )
        .expect("adafactor");
    assert!(k.is_factored());
    let dims = [MatrixDims {
        batch: 1,
        rows: 67,
        cols: 37,
    }];
    let mut module = emit(&k, &Options::default()).expect("emit");
    check_module(&k, &module, &dims).expect("the unmutated module matches");
    let rows = module.source.find("_s0_rows(").expect("a rows entry");
    let at = rows + module.source[rows..].find("mul.rn.f32").expect("a mul");
    module.source.replace_range(at..at + 3, "add");
    let err = check_module(&k, &module, &dims).expect_err("a mutated factored entry must fail");
    assert!(err.contains("rows/cols"), "{err}");
}

/// Stochastic rounding is compared bit for bit: AdamW's module with a bf16 (f16) parameter
/// rounded stochastically no longer matches with one constant of the narrowing or of the hash
/// changed, nor with the multi-tensor record's key read from the wrong offset, nor when the
/// interpreter's key is another tensor's.
#[test]
fn a_mutated_stochastic_rounding_fails_the_comparison() {
    use optc_kernel::Precision;
    let rule = stdlib::rule("adamw").and_then(Result::ok).expect("adamw");
    let base = rule.specialize(&[]).expect("adamw");
    let sr = |param| Precision {
        param,
        stochastic_rounding: Some(9),
        ..Precision::default()
    };
    let mutate = |param, from: &str, to: &str, dims: &[MatrixDims]| {
        let k = sr(param).apply(&base).expect("applies");
        let mut module = emit(&k, &Options::default()).expect("emit");
        check_module(&k, &module, dims).expect("the unmutated module matches");
        assert!(module.source.contains(from), "{from}");
        module.source = module.source.replacen(from, to, 1);
        let err = check_module(&k, &module, dims).expect_err(&format!("{from} -> {to}"));
        assert!(err.contains("buffer 0"), "{err}");
    };
    let dims = [flat(33)];
    // The bf16 rule's low half of the random word, the f16 rule's 2^24 and its `r >> 8`.
    mutate(Dtype::Bf16, ", 65535;", ", 32767;", &dims);
    mutate(Dtype::F16, "0f4B800000", "0f4B000000", &dims);
    mutate(Dtype::F16, ", 8;\n", ", 9;\n", &dims);
    // lowbias32's first multiplier.
    mutate(Dtype::Bf16, "2146121005", "2146121007", &dims);
    // The record's key at the flags' offset (the multi entry reads the flags instead).
    let k = sr(Dtype::Bf16).apply(&base).expect("applies");
    let layout = optc_kernel::table::TableLayout::of_stage(&k, 0);
    let key_off = layout.sr_key_offset().expect("a key");
    mutate(
        Dtype::Bf16,
        &format!("+{key_off}];"),
        &format!("+{}];", layout.flags_offset()),
        &dims,
    );
    // The interpreter with another key than the entry's.
    let module = emit(&k, &Options::default()).expect("emit");
    let m = ptxsim::parse(&module.source).expect("parses");
    let mut inp = inputs(&k, 0, flat(33), 11, 2, &[]);
    let (got, _) = run_single(&m, &k, 0, &module.stages[0].scalar, &inp, 4, (1, 32)).expect("runs");
    let (want, _) = reference(&k, 0, &inp);
    compare_buf(&k, 0, "p", &got[0], &want[0], true).expect("the same key matches");
    inp.sr_key ^= 1;
    let (want, _) = reference(&k, 0, &inp);
    compare_buf(&k, 0, "p", &got[0], &want[0], true).expect_err("another key must not match");
}

/// The stochastic narrowing of `convert.rs` against `optc_kernel::dtype` itself, at the rounding
/// boundary of every finite magnitude: a kernel storing `g` (f32) to `p` (bf16 or f16, rounded
/// stochastically), whose element `i` is, for the random word `r` of element `i`, the value just
/// at and one step past the point where `r` turns the rounding up. For bf16 that is the low half
/// `0x10000 - (r & 0xFFFF)` (and one less) under each bf16 magnitude; for f16 the fraction
/// `j / 2^13` of the gap above each f16 magnitude with `j = (r >> 8) >> 11` (and `j + 1`), the
/// finest fraction an f32 holds over the whole normal range. Every magnitude, with alternating
/// signs, plus zeros, subnormals, the f16 overflow edge, infinities and NaN; the vector and
/// scalar entries; bits compared exactly (NaN matching NaN).
#[test]
fn stochastic_narrowing_equals_the_reference_at_every_rounding_boundary() {
    use optc_kernel::Precision;
    let mut b = ptx_kernels::Builder::new("sr_copy", &[]);
    let g = b.load(optc_kernel::Slot::Grad);
    b.store(optc_kernel::Slot::Param, g);
    let base = b.finish();
    for param in [Dtype::Bf16, Dtype::F16] {
        let mut k = Precision {
            param,
            stochastic_rounding: Some(77),
            ..Precision::default()
        }
        .apply(&base)
        .expect("applies");
        k.storage.grad = Dtype::F32;
        k.validate().expect("valid");
        let key = k.storage.sr_key(5, 1);
        let r = |i: usize| dtype::sr_bits(key, i as u64);
        let mut xs: Vec<f32> = Vec::new();
        let sign = |m: u32| if m % 2 == 1 { -1.0f32 } else { 1.0 };
        if param == Dtype::Bf16 {
            for m in 0u32..0x7F7F {
                for extra in [0u32, 1] {
                    let low = (0x1_0000 - (r(xs.len()) & 0xFFFF)) - extra;
                    let bits = (m << 16) + (low & 0xFFFF);
                    xs.push(sign(m) * f32::from_bits(bits));
                }
            }
        } else {
            for m in 0u16..0x7BFF {
                let lo = dtype::widen_f16(m);
                let gap = dtype::widen_f16(m + 1) - lo;
                for extra in [0u32, 1] {
                    let j = ((r(xs.len()) >> 8) >> 11) + extra;
                    let x = lo + gap * (j as f32 / 8192.0);
                    xs.push(sign(u32::from(m)) * x);
                }
            }
            xs.extend([
                65504.0, 65505.0, 65519.0, 65520.0, 65536.0, 70000.0, -65519.9,
            ]);
        }
        xs.extend([
            0.0,
            -0.0,
            1e-40,
            -1e-45,
            2f32.powi(-26),
            -2f32.powi(-25),
            3.4e38,
            f32::MAX,
            f32::INFINITY,
            f32::NEG_INFINITY,
            f32::NAN,
        ]);
        let n = xs.len();
        let want: Vec<Option<u16>> = xs
            .iter()
            .enumerate()
            .map(|(i, &x)| {
                let h = if param == Dtype::F16 {
                    dtype::narrow_f16_stochastic(x, r(i))
                } else {
                    dtype::narrow_bf16_stochastic(x, r(i))
                };
                let w = if param == Dtype::F16 {
                    dtype::widen_f16(h)
                } else {
                    dtype::widen_bf16(h)
                };
                bits16(param, w)
            })
            .collect();
        // Both outcomes occur at the boundaries (the test is not one-sided).
        let ups = xs
            .iter()
            .zip(&want)
            .filter(|(x, w)| x.is_finite() && **w != bits16(param, param.round(**x)))
            .count();
        assert!(
            ups > n / 8,
            "{param}: {ups} of {n} differ from rounding to nearest"
        );
        let module = emit(&k, &Options::default()).expect("emit");
        let m = ptxsim::parse(&module.source).expect("parses");
        let inp = Inputs {
            bufs: vec![vec![0.0; n], xs.clone()],
            vectors: Vec::new(),
            uniforms: Vec::new(),
            dims: flat(n),
            sr_key: key,
        };
        for entry in [&module.stages[0].vector, &module.stages[0].scalar] {
            let (got, _) = run_single(&m, &k, 0, entry, &inp, 0, (4, 64)).expect("runs");
            for (i, (g, w)) in got[0].iter().zip(&want).enumerate() {
                assert_eq!(
                    bits16(param, *g),
                    *w,
                    "{param} {}: x = {:e} ({:#010x}), r = {:#010x}",
                    entry.name,
                    xs[i],
                    xs[i].to_bits(),
                    r(i)
                );
            }
        }
    }
}

/// An instruction outside the emulated subset is an error naming it, not a silent skip.
#[test]
fn unknown_instructions_are_errors_that_name_them() {
    let src = ".version 8.0\n.target sm_80\n.address_size 64\n\
               .visible .entry e(\n\t.param .u64 e_p\n)\n{\n\t.reg .f32 %f<3>;\n\
               \ttanh.approx.f32 %f1, %f2;\n\tret;\n}\n";
    let err = ptxsim::parse(src).expect_err("tanh is not emulated");
    assert!(err.contains("tanh.approx.f32 %f1, %f2"), "{err}");
}

/// Runs `body` (instructions over `%rd1` = the output pointer, `%r1` = the lane) in one warp of
/// 32 threads and returns the 32-bit words it stored, `words` per lane at `%rd1 + 4 * (lane *
/// words + k)`.
fn run_snippet(decls: &str, body: &str, words: usize) -> Result<Vec<u32>, String> {
    let src = format!(
        ".version 8.0\n.target sm_80\n.address_size 64\n{decls}\n\
         .visible .entry t(\n\t.param .u64 t_out\n)\n{{\n\
         \t.reg .pred %p<8>;\n\t.reg .f32 %f<16>;\n\t.reg .b32 %r<16>;\n\t.reg .b64 %rd<16>;\n\
         \t.reg .b16 %h<8>;\n\
         \tld.param.u64 %rd1, [t_out];\n\tmov.u32 %r1, %tid.x;\n\
         \tmul.wide.u32 %rd2, %r1, {};\n\tadd.s64 %rd1, %rd1, %rd2;\n{body}\n\tret;\n}}\n",
        4 * words
    );
    let m = ptxsim::parse(&src)?;
    let mut dev = Device::default();
    let out = dev.alloc(&vec![0u8; 32 * 4 * words], 0);
    launch(&m, "t", 1, 32, &[Arg::U64(out)], &mut dev)?;
    Ok(dev
        .bytes(out)
        .chunks_exact(4)
        .map(|c| u32::from_le_bytes([c[0], c[1], c[2], c[3]]))
        .collect())
}

/// The emulator's semantics against values stated by the PTX ISA (and IEEE 754).
#[test]
fn the_emulator_follows_the_ptx_isa() {
    // shfl.sync.down by 1 with clamp 31: lane l gets lane l+1's value, lane 31 its own; bfly by
    // 16 swaps halves; up by 2 (clamp 0) takes lane l-2, lanes 0 and 1 keep theirs.
    let w = run_snippet(
        "",
        "\tshfl.sync.down.b32 %r2, %r1, 1, 31, -1;\n\tst.global.u32 [%rd1], %r2;\n\
         \tshfl.sync.bfly.b32 %r3, %r1, 16, 31, -1;\n\tst.global.u32 [%rd1+4], %r3;\n\
         \tshfl.sync.up.b32 %r4, %r1, 2, 0, -1;\n\tst.global.u32 [%rd1+8], %r4;",
        3,
    )
    .expect("runs");
    for l in 0..32u32 {
        let at = 3 * l as usize;
        assert_eq!(w[at], if l == 31 { 31 } else { l + 1 }, "down, lane {l}");
        assert_eq!(w[at + 1], l ^ 16, "bfly, lane {l}");
        assert_eq!(w[at + 2], if l < 2 { l } else { l - 2 }, "up, lane {l}");
    }
    // min/max: plain ones drop a NaN, .NaN ones give the canonical NaN; copysign
    // takes the sign of its first operand; setp.ne is ordered, setp.neu unordered.
    let nan = "0f7FC00000";
    let w = run_snippet(
        "",
        &format!(
            "\tmin.f32 %f1, {nan}, 0f3F800000;\n\tst.global.f32 [%rd1], %f1;\n\
             \tmax.NaN.f32 %f2, 0f3F800000, {nan};\n\tst.global.f32 [%rd1+4], %f2;\n\
             \tmin.f32 %f3, 0f00000000, 0f80000000;\n\tst.global.f32 [%rd1+8], %f3;\n\
             \tmax.f32 %f4, 0f80000000, 0f00000000;\n\tst.global.f32 [%rd1+12], %f4;\n\
             \tcopysign.f32 %f5, 0fBF800000, 0f40000000;\n\tst.global.f32 [%rd1+16], %f5;\n\
             \tsetp.ne.f32 %p1, {nan}, 0f3F800000;\n\tselp.u32 %r2, 1, 0, %p1;\n\
             \tst.global.u32 [%rd1+20], %r2;\n\
             \tsetp.neu.f32 %p2, {nan}, 0f3F800000;\n\tselp.u32 %r3, 1, 0, %p2;\n\
             \tst.global.u32 [%rd1+24], %r3;\n\
             \tmul.ftz.f32 %f6, 0f00400000, 0f3F800000;\n\tst.global.f32 [%rd1+28], %f6;\n\
             \tmul.rn.f32 %f7, 0f00400000, 0f3F800000;\n\tst.global.f32 [%rd1+32], %f7;\n\
             \tfma.rn.f32 %f8, 0f3F800001, 0f3F800001, 0fBF800002;\n\tst.global.f32 [%rd1+36], %f8;"
        ),
        10,
    )
    .expect("runs");
    assert_eq!(f32::from_bits(w[0]), 1.0);
    assert_eq!(w[1], 0x7FFF_FFFF);
    // The sign of min/max of +0 and -0 is left to the lowering: the emulator gives the first
    // operand (so a lowering that relies on the hardware's choice shows).
    assert_eq!(w[2], 0x0000_0000);
    assert_eq!(w[3], 0x8000_0000);
    assert_eq!(f32::from_bits(w[4]), -2.0);
    assert_eq!((w[5], w[6]), (0, 1));
    assert_eq!(w[7], 0, ".ftz flushes a subnormal");
    assert_eq!(w[8], 0x0040_0000, "without .ftz it is kept");
    // (1 + 2^-23)^2 - (1 + 2^-22) = 2^-46, exact only when fused.
    assert_eq!(f32::from_bits(w[9]), 2f32.powi(-46));
    // Conversions: 1 + 2^-8 + 2^-9 rounds to bf16 1 + 2^-7 (nearest), and 1/3 to f16 0x3555;
    // widening is exact; f32 -> s32 truncates toward zero and saturates.
    let w = run_snippet(
        "",
        "\tcvt.rn.bf16.f32 %h1, 0f3F80C000;\n\tcvt.f32.bf16 %f1, %h1;\n\
         \tst.global.f32 [%rd1], %f1;\n\
         \tcvt.rn.f16.f32 %h2, 0f3EAAAAAB;\n\tcvt.u32.u16 %r2, %h2;\n\
         \tst.global.u32 [%rd1+4], %r2;\n\tcvt.f32.f16 %f2, %h2;\n\tst.global.f32 [%rd1+8], %f2;\n\
         \tcvt.rzi.s32.f32 %r3, 0fC0300000;\n\tst.global.u32 [%rd1+12], %r3;\n\
         \tcvt.rzi.s32.f32 %r4, 0f7F800000;\n\tst.global.u32 [%rd1+16], %r4;",
        5,
    )
    .expect("runs");
    assert_eq!(f32::from_bits(w[0]), 1.0 + 2f32.powi(-7));
    assert_eq!(w[1], 0x3555);
    assert_eq!(f32::from_bits(w[2]), 0.333_251_95);
    assert_eq!(w[3] as i32, -2);
    assert_eq!(w[4] as i32, i32::MAX);
    // A .const table, read per lane.
    let w = run_snippet(
        ".const .align 4 .b32 table[4] = {10, 20, 30, 40};",
        "\tand.b32 %r2, %r1, 3;\n\tmul.wide.u32 %rd3, %r2, 4;\n\tmov.u64 %rd4, table;\n\
         \tadd.s64 %rd4, %rd4, %rd3;\n\tld.const.u32 %r3, [%rd4];\n\tst.global.u32 [%rd1], %r3;",
        1,
    )
    .expect("runs");
    assert!(w
        .iter()
        .enumerate()
        .all(|(l, v)| *v == 10 * (1 + l as u32 % 4)));
    // vote.sync.any: whether the predicate holds on some lane (lane 5 only: every lane sees
    // true; no lane: false).
    let w = run_snippet(
        "",
        "\tsetp.eq.u32 %p1, %r1, 5;\n\tvote.sync.any.pred %p2, %p1, -1;\n\
         \tselp.u32 %r2, 1, 0, %p2;\n\tst.global.u32 [%rd1], %r2;\n\
         \tsetp.gt.u32 %p3, %r1, 40;\n\tvote.sync.any.pred %p4, %p3, -1;\n\
         \tselp.u32 %r3, 1, 0, %p4;\n\tst.global.u32 [%rd1+4], %r3;",
        2,
    )
    .expect("runs");
    for l in 0..32 {
        assert_eq!((w[2 * l], w[2 * l + 1]), (1, 0), "vote, lane {l}");
    }
    // Sub-word ld/st through 32-bit registers (the ISA allows wider data operands): st.u8
    // writes the low byte, ld.u8 zero-extends, ld.s8 sign-extends.
    let w = run_snippet(
        "",
        "\tmov.u32 %r2, 0x1FF;\n\tst.global.u8 [%rd1], %r2;\n\
         \tld.global.u8 %r3, [%rd1];\n\tst.global.u32 [%rd1+4], %r3;\n\
         \tld.global.s8 %r4, [%rd1];\n\tst.global.u32 [%rd1+8], %r4;",
        3,
    )
    .expect("runs");
    for l in 0..32 {
        assert_eq!(
            &w[3 * l..3 * l + 3],
            &[0xFF, 0xFF, 0xFFFF_FFFF],
            "sub-word, lane {l}"
        );
    }
    // Errors, never silent: misaligned v4, out of bounds, a shuffle some lanes skip.
    let e = run_snippet("", "\tld.global.v4.f32 {%f1, %f2, %f3, %f4}, [%rd1+4];", 8)
        .expect_err("misaligned");
    assert!(e.contains("misaligned"), "{e}");
    let e = run_snippet("", "\tst.global.u32 [%rd1+4], %r1;", 1).expect_err("out of bounds");
    assert!(e.contains("outside every allocation"), "{e}");
    let e = run_snippet(
        "",
        "\tsetp.eq.u32 %p1, %r1, 0;\n\t@%p1 bra $L_end;\n\
         \tshfl.sync.down.b32 %r2, %r1, 1, 31, -1;\n$L_end:",
        1,
    )
    .expect_err("divergent shuffle");
    assert!(e.contains("only 31 of 32 lanes"), "{e}");
    let e = run_snippet("", "\tadd.rn.f32 %f1, %f2, 0f3F800000;", 1).expect_err("undefined");
    assert!(e.contains("reads `%f2` before anything wrote it"), "{e}");
}

/// The ops of the 16-bit storage conversions and the stochastic-rounding hash, against values
/// the PTX ISA states: `mul.lo.u32` keeps the low 32 bits of the product (an immediate above
/// 2^31 included), `cvt.u32.u64` the low half, `cvt.u16.u32` the low 16 bits, `selp.b16` and
/// `mov.b16` move 16-bit values, and `ld/st.global.v4.b16` move four of them at once.
#[test]
fn the_emulator_follows_the_ptx_isa_for_16_bit_and_hash_ops() {
    let w = run_snippet(
        "",
        "\tmov.u32 %r2, 0x12345679;\n\tmul.lo.u32 %r3, %r2, 2221713035;\n\
         \tst.global.u32 [%rd1], %r3;\n\
         \tmov.u64 %rd3, 0x123456789;\n\tcvt.u32.u64 %r4, %rd3;\n\tst.global.u32 [%rd1+4], %r4;\n\
         \tshr.u64 %rd4, %rd3, 32;\n\tcvt.u32.u64 %r5, %rd4;\n\tst.global.u32 [%rd1+8], %r5;\n\
         \tmov.u32 %r6, 0x1ABCD;\n\tcvt.u16.u32 %h1, %r6;\n\tmov.b16 %h2, 7;\n\
         \tsetp.eq.u32 %p1, %r1, 3;\n\tselp.b16 %h3, %h1, %h2, %p1;\n\
         \tcvt.u32.u16 %r7, %h3;\n\tst.global.u32 [%rd1+12], %r7;\n\
         \tst.global.v4.b16 [%rd1+16], {%h1, %h2, %h3, %h1};\n\
         \tld.global.v4.b16 {%h4, %h5, %h6, %h7}, [%rd1+16];\n\
         \tcvt.u32.u16 %r8, %h6;\n\tst.global.u32 [%rd1+24], %r8;\n\
         \txor.b32 %r9, %r6, 0xFFFF;\n\tst.global.u32 [%rd1+28], %r9;",
        8,
    )
    .expect("runs");
    for l in 0..32usize {
        let at = 8 * l;
        assert_eq!(
            w[at],
            0x1234_5679u32.wrapping_mul(0x846c_a68b),
            "mul.lo, lane {l}"
        );
        assert_eq!(
            (w[at + 1], w[at + 2]),
            (0x2345_6789, 1),
            "cvt.u32.u64, lane {l}"
        );
        let sel = if l == 3 { 0xABCD } else { 7 };
        assert_eq!(w[at + 3], sel, "selp.b16, lane {l}");
        // The v4.b16 store: halves 0xABCD, 7, sel, 0xABCD in little-endian order.
        assert_eq!(w[at + 4], 0x0007_ABCD, "st.v4.b16, lane {l}");
        assert_eq!(w[at + 5], 0xABCD_0000 | sel, "st.v4.b16, lane {l}");
        assert_eq!(w[at + 6], sel, "ld.v4.b16, lane {l}");
        assert_eq!(w[at + 7], 0x1ABCD ^ 0xFFFF, "xor, lane {l}");
    }
}

/// The `_q8` entries (int8 states, `backend/ptx/quant.rs`): every stdlib rule with per-element
/// states at its default flags (loss-scaled too), with `state: Int8` and f32 parameters, and with
/// 16-bit ones (a bf16 parameter with an f32 master, f16 and bf16 rounded stochastically), each
/// stage run on a tensor of two reduction blocks and a partial quantization block (8229
/// elements; its int8 states as codes and scales together, the device layout) against the
/// interpreter, whose int8 store quantizes each block (`optc_kernel::int8::round_trip`): every
/// f32 buffer, every 16-bit buffer's bits, every int8 state's codes and scales, and the partials
/// equal bit for bit.
#[test]
fn int8_entries_compute_what_the_interpreter_does() {
    use optc_kernel::{int8, Precision};
    let int8 = |param, master_weights, stochastic_rounding| Precision {
        param,
        state: Dtype::Int8,
        master_weights,
        stochastic_rounding,
    };
    let settings = [
        int8(Dtype::F32, false, None),
        int8(Dtype::Bf16, true, None),
        int8(Dtype::F16, false, Some(5)),
        int8(Dtype::Bf16, false, Some(6)),
    ];
    let n = 2 * REDUCE_BLOCK + 37;
    let mut failures = Vec::new();
    let mut checked = 0;
    for ((label, base, default), precision) in ptx_kernels::every::kernels()
        .into_iter()
        .flat_map(|k| settings.map(|p| (k.clone(), p)))
    {
        // Stdlib kernels only (at default math every one is exact, so compared bit for bit);
        // with 16-bit parameters, the first rank class and no loss scaling (time).
        if !default || !stdlib::names().any(|r| r == base.rule) {
            continue;
        }
        if precision.param != Dtype::F32 && (label.contains("-scale") || label.contains("Vector")) {
            continue;
        }
        let Ok(kernel) = precision.apply(&base) else {
            continue;
        };
        if !kernel.storage.states.contains(&Dtype::Int8) {
            continue;
        }
        let module = emit(&kernel, &Options::default()).unwrap_or_else(|e| panic!("{label}: {e}"));
        let m = ptxsim::parse(&module.source).unwrap_or_else(|e| panic!("{label}: {e}"));
        let mut reduced = vec![1.5f64; kernel.reductions.len()];
        let result = (|| -> Result<(), String> {
            for stage in 0..kernel.stages.len() {
                let mut inp = inputs(&kernel, stage, flat(n), 21 + stage as u64, 2, &reduced);
                let int8_state = |i: usize| kernel.storage.states[i] == Dtype::Int8;
                // An int8 state holds what its codes and scales load as.
                for (i, b) in inp.bufs[2..].iter_mut().enumerate() {
                    if int8_state(i) {
                        int8::round_trip(b);
                    }
                }
                let (want, want_parts) = reference(&kernel, stage, &inp);
                for (r, parts) in kernel.stages[stage].reduce.iter().zip(&want_parts) {
                    let op = kernel.reductions[r.reduction.index()].op;
                    reduced[r.reduction.index()] = combine(op, parts.iter().copied()).abs() + 0.5;
                }
                let entry = module.stages[stage]
                    .int8
                    .as_ref()
                    .ok_or_else(|| format!("stage {stage} has no _q8 entry"))?;
                let mut dev = Device::default();
                let encode = |xs: &[f32]| {
                    let mut codes = vec![0u8; xs.len()];
                    let mut scales = vec![0f32; int8::scale_count(xs.len())];
                    int8::store(xs, &mut codes, &mut scales);
                    let mut bytes = codes;
                    bytes.resize(int8::device_scales_offset(xs.len()), 0);
                    bytes.extend(scales.iter().flat_map(|s| s.to_le_bytes()));
                    bytes
                };
                let ptrs: Vec<u64> = inp
                    .bufs
                    .iter()
                    .enumerate()
                    .map(|(b, xs)| {
                        if b >= 2 && int8_state(b - 2) {
                            dev.alloc(&encode(xs), 0)
                        } else {
                            put(&mut dev, &kernel, b, xs, 0)
                        }
                    })
                    .collect();
                let np = optc_kernel::abi::partials_len(&kernel, stage, n);
                let parts = dev.alloc_f32(&vec![f32::NAN; np], 0);
                let a = args(&entry.params, &ptrs, &inp, &[], parts);
                // Two CTAs of two warps: fewer warps than units, so each strides.
                INSTRUCTIONS.fetch_add(
                    launch(&m, &entry.name, 2, 64, &a, &mut dev)?.instructions,
                    Relaxed,
                );
                for (b, w) in want.iter().enumerate() {
                    let what = format!("stage {stage} buffer {b}");
                    if b >= 2 && int8_state(b - 2) {
                        let got = dev.bytes(ptrs[b]).to_vec();
                        let mut want_bytes = encode(w);
                        // Codes and scales of the interpreter's values (what they load as
                        // quantizes to itself).
                        want_bytes.truncate(got.len());
                        if got != want_bytes {
                            let i = got.iter().zip(&want_bytes).position(|(x, y)| x != y);
                            return Err(format!("{what}: int8 bytes differ at {i:?}"));
                        }
                    } else {
                        compare_buf(&kernel, b, &what, &get(&dev, &kernel, b, ptrs[b]), w, true)?;
                    }
                }
                let got_parts = split_partials(&dev.read_f32(parts), want_parts.len());
                for (o, (g, w)) in got_parts.iter().zip(&want_parts).enumerate() {
                    compare(&format!("stage {stage} partials {o}"), g, w, true)?;
                }
                checked += 1;
            }
            Ok(())
        })();
        if let Err(e) = result {
            failures.push(format!("{label} {precision:?}: {e}"));
        }
    }
    assert!(
        failures.is_empty(),
        "{} failures:\n{}",
        failures.len(),
        failures.join("\n")
    );
    assert!(checked >= 60, "{checked} stages");
    eprintln!("ptxsim: {checked} int8 stage runs");
}
