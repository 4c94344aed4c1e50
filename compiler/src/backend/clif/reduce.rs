//! The loops of a stage with reduce outputs, in exactly the order of `docs/stages.md`.
//!
//! The range `[0, n)` given to the function starts on a block boundary (the runtime cuts work at
//! multiples of `REDUCE_BLOCK`), so its blocks are the tensor's blocks. For each block of
//! `REDUCE_BLOCK` elements (the last may be short):
//!
//! 1. every reduce output gets 8 f32x4 accumulators (32 lanes) at the op's identity;
//! 2. each iteration of the group loop computes the body on 32 consecutive elements, as 8
//!    vectors, and folds vector `v` into accumulator `v`: lane `k = 4v + l` folds elements
//!    `k + 32i` in increasing `i`;
//! 3. the last `len % 32` elements of a short block go through zeroed 32-element stack copies
//!    of the buffers and the very same 8-vector code, and a lane past the end keeps its
//!    accumulator (it folds the identity, never `f(0)`); only the first `len % 32` written
//!    lanes are copied back;
//! 4. the lanes are combined by the tree `lane[k] ⊕= lane[k + s]` for `s = 16, 8, 4, 2, 1`, and
//!    `lane[0]` is stored as the block's partial of that output.
//!
//! Reduce output `r`'s partial of block `b` goes to `partials[r * stride + b]`.

use super::body::{args, copy_loop, elem_flags, offset_ptrs, zeroed_slots, Entry, Lower};
use super::gen::Gen;
use super::plan::Fold;
use cranelift_codegen::ir::condcodes::IntCC;
use cranelift_codegen::ir::types::{F32X4, I32, I32X4, I64};
use cranelift_codegen::ir::{ConstantData, InstBuilder, Value};
use cranelift_frontend::Variable;
use optc_kernel::{REDUCE_BLOCK, REDUCE_LANES};

/// f32x4 accumulators per reduce output: one per 4 lanes.
const VECTORS: usize = REDUCE_LANES / 4;

/// `acc ⊕ x` for `fold`.
fn fold(g: &mut Gen, f: Fold, acc: Value, x: Value) -> Value {
    match f {
        Fold::Sum => g.b.ins().fadd(acc, x),
        Fold::Max => g.b.ins().fmax(acc, x),
    }
}

/// `fold`'s identity in every lane.
fn identity(g: &mut Gen, f: Fold) -> Value {
    match f {
        Fold::Sum => g.f32s(-0.0),
        Fold::Max => g.f32s(f32::NEG_INFINITY),
    }
}

/// The blocked loops of a stage with reduce outputs (see the module documentation).
pub(super) fn loops(g: &mut Gen, lower: &Lower<'_>, e: &Entry, partials: Value, stride: Value) {
    let plan = &lower.plan;
    let folds: Vec<Fold> = lower.stage.reduce.iter().map(|&(f, _)| f).collect();
    let (n, uniforms, inv) = (e.n, e.uniforms, &e.inv);
    let block = i64::try_from(REDUCE_BLOCK).unwrap_or(i64::MAX);
    let group = i64::try_from(REDUCE_LANES).unwrap_or(i64::MAX);

    let blk_hdr = g.b.create_block();
    let blk_init = g.b.create_block();
    let grp_hdr = g.b.create_block();
    let grp_body = g.b.create_block();
    let rest = g.b.create_block();
    let tail_body = g.b.create_block();
    let cin_hdr = g.b.create_block();
    let cin_body = g.b.create_block();
    let compute = g.b.create_block();
    let cout_hdr = g.b.create_block();
    let cout_body = g.b.create_block();
    let tree = g.b.create_block();
    let exit = g.b.create_block();

    let acc: Vec<[Variable; VECTORS]> = folds
        .iter()
        .map(|_| std::array::from_fn(|_| g.b.declare_var(F32X4)))
        .collect();

    let stride_bytes = g.b.ins().ishl_imm_u(stride, 2);
    let zero = g.b.ins().iconst(I64, 0);
    let jump = g.b.ins().jump(blk_hdr, &args(&[zero, partials]));
    g.hoist = Some(jump);

    // Block loop: `bs` is the block's first element, `pp` the address of its first partial.
    let bs = g.b.append_block_param(blk_hdr, I64);
    let pp = g.b.append_block_param(blk_hdr, I64);
    g.b.switch_to_block(blk_hdr);
    let more = g.b.ins().icmp(IntCC::UnsignedLessThan, bs, n);
    g.b.ins().brif(more, blk_init, &[], exit, &[]);

    g.b.switch_to_block(blk_init);
    let left = g.b.ins().isub(n, bs);
    let full_block = g.b.ins().iconst(I64, block);
    let len = g.b.ins().umin(left, full_block);
    let n_groups = g.b.ins().band_imm_s(len, -group);
    for (f, vars) in folds.iter().zip(&acc) {
        let id = identity(g, *f);
        for &v in vars {
            g.b.def_var(v, id);
        }
    }
    let zero = g.b.ins().iconst(I64, 0);
    g.b.ins().jump(grp_hdr, &args(&[zero]));

    // Group loop: 32 elements, 8 vectors, vector `v` into accumulator `v`.
    let j = g.b.append_block_param(grp_hdr, I64);
    g.b.switch_to_block(grp_hdr);
    let more = g.b.ins().icmp(IntCC::UnsignedLessThan, j, n_groups);
    g.b.ins().brif(more, grp_body, &[], rest, &[]);

    g.b.switch_to_block(grp_body);
    let idx = g.b.ins().iadd(bs, j);
    let dtypes = &lower.stage.dtypes;
    let addrs = offset_ptrs(g, &e.ptrs, dtypes, idx);
    for v in 0..VECTORS {
        let vals = lower.vector(g, inv, &addrs, 4 * v as i32, uniforms, idx);
        for ((f, vars), x) in folds.iter().zip(&acc).zip(vals) {
            let a = g.b.use_var(vars[v]);
            let a = fold(g, *f, a, x);
            g.b.def_var(vars[v], a);
        }
    }
    let next = g.b.ins().iadd_imm_s(j, group);
    g.b.ins().jump(grp_hdr, &args(&[next]));

    // The last `len % 32` elements of a short block.
    g.b.switch_to_block(rest);
    let rem = g.b.ins().isub(len, n_groups);
    g.b.ins().brif(rem, tail_body, &[], tree, &[]);

    g.b.switch_to_block(tail_body);
    let slots = zeroed_slots(g, &e.used, 4 * REDUCE_LANES as u32);
    let first = g.b.ins().iadd(bs, n_groups);
    let zero = g.b.ins().iconst(I64, 0);
    g.b.ins().jump(cin_hdr, &args(&[zero]));
    let ptrs = &e.ptrs;
    copy_loop(
        g,
        dtypes,
        ptrs,
        &slots,
        first,
        rem,
        &plan.read,
        true,
        (cin_hdr, cin_body, compute),
    );

    g.b.switch_to_block(compute);
    let rem32 = g.b.ins().ireduce(I32, rem);
    let limit = g.b.ins().splat(I32X4, rem32);
    for v in 0..VECTORS {
        let vals = lower.vector(g, inv, &slots, 4 * v as i32, uniforms, first);
        let lane0 = 4 * v as u32;
        let bytes: Vec<u8> = (lane0..lane0 + 4).flat_map(u32::to_le_bytes).collect();
        let c = g.b.func.dfg.constants.insert(ConstantData::from(bytes));
        let lanes = g.b.ins().vconst(I32X4, c);
        let inside = g.b.ins().icmp(IntCC::UnsignedLessThan, lanes, limit);
        for ((f, vars), x) in folds.iter().zip(&acc).zip(vals) {
            let a = g.b.use_var(vars[v]);
            let folded = fold(g, *f, a, x);
            let a = g.sel(inside, folded, a);
            g.b.def_var(vars[v], a);
        }
    }
    let zero = g.b.ins().iconst(I64, 0);
    g.b.ins().jump(cout_hdr, &args(&[zero]));
    copy_loop(
        g,
        dtypes,
        ptrs,
        &slots,
        first,
        rem,
        &plan.written,
        false,
        (cout_hdr, cout_body, tree),
    );

    // The tree over the 32 lanes, then one partial per reduce output.
    g.b.switch_to_block(tree);
    let mut at = pp;
    for (r, (f, vars)) in folds.iter().zip(&acc).enumerate() {
        let mut a: Vec<Value> = vars.iter().map(|&v| g.b.use_var(v)).collect();
        // s = 16, 8, 4: lane k + s is in the vector s / 4 further on, same position.
        let mut half = VECTORS / 2;
        while half > 0 {
            for v in 0..half {
                a[v] = fold(g, *f, a[v], a[v + half]);
            }
            half /= 2;
        }
        // s = 2, 1: within the vector.
        let hi = g.lanes(a[0], [2, 3, 2, 3]);
        let x = fold(g, *f, a[0], hi);
        let hi = g.lanes(x, [1, 1, 1, 1]);
        let x = fold(g, *f, x, hi);
        let partial = g.b.ins().extractlane(x, 0);
        if r > 0 {
            at = g.b.ins().iadd(at, stride_bytes);
        }
        g.b.ins().store(elem_flags(), partial, at, 0);
    }
    let next_bs = g.b.ins().iadd_imm_s(bs, block);
    let next_pp = g.b.ins().iadd_imm_s(pp, 4);
    g.b.ins().jump(blk_hdr, &args(&[next_bs, next_pp]));

    g.b.switch_to_block(exit);
    g.b.ins().return_(&[]);
}
