//! The entries of a stage with reduce outputs: the stage's body on every element, plus one f32
//! partial per block of [`REDUCE_BLOCK`] elements per reduce output, in exactly the order of
//! `docs/stages.md` (the order [`optc_kernel::reduce::block_partial`] defines):
//!
//! - one warp per block (warps take blocks in a grid-stride loop), lanes starting at the op's
//!   identity; lane `k` folds block elements `k + 32 i` in increasing `i`;
//! - then `shfl.down` by 16, 8, 4, 2, 1: `lane[k] = lane[k] ⊕ lane[k + s]`; lane 0 stores the
//!   block partial to `partials[r * blocks + b]` (`r` the reduce output's position in the stage,
//!   `blocks = ceil(n / 4096)`).
//!
//! A full block of a tensor whose buffers are 16-byte aligned is stepped 4 elements per lane
//! (`ld/st.global.v4.f32`): lane `m` computes elements `128 j + 4 m .. + 3`, writes their reduce
//! values to the warp's 128-float slot of shared memory, and lane `k` reads back elements
//! `128 j + k + 32 c` for `c = 0..4`: the same fold order as one element per lane. A partial block
//! (the last of a tensor) and unaligned tensors go one element per lane, lane `k` taking
//! elements `k + 32 i` directly. A missing element is never folded (folding the identity would
//! give the same bits, but nothing is folded past the end).
//!
//! The folds use `add.rn.f32` (Sum) or the NaN-propagating `max` of `op.rs` (Max) even under
//! fast math, so the order alone fixes the result. Launches must use a block size that is a
//! multiple of 32 (whole warps).

use super::asm::{f32_imm, Asm, Reg};
use super::body::Lowering;
use super::entries::{entry_text, multi_prologue, thread_ids, Frame, Ids, MultiParams};
use super::layout::{TableLayout, FLAG_ALIGNED};
use super::Error;
use optc_kernel::reduce::{ReduceOp, REDUCE_BLOCK, REDUCE_LANES};

/// Bytes of shared memory per warp: one group of 32 lanes × 4 elements.
const SLOT_BYTES: usize = 4 * 4 * REDUCE_LANES;
/// The most warps in a block (1024 threads).
const MAX_WARPS: usize = 32;

/// When a block may take the 4-wide path (it must also be full).
#[derive(Clone, Copy)]
enum Vector<'a> {
    /// Never (the scalar entry).
    Never,
    /// Always (the vector entry: the launcher checked the alignment).
    Always,
    /// When this predicate (the record's aligned flag) is set.
    If(&'a Reg),
}

/// This thread's lane and its warp's index in the block.
pub(super) struct Lanes {
    /// This lane, `0..32` (u32).
    pub(super) lane: Reg,
    /// This lane (u64).
    pub(super) lane64: Reg,
    /// The warp's index in its block (u64).
    pub(super) wib64: Reg,
}

/// This thread's lane and warp in block from `tid`.
pub(super) fn lanes(asm: &mut Asm, tid: &Reg) -> Lanes {
    let (lane, wib) = (asm.r(), asm.r());
    let (lane64, wib64) = (asm.rd(), asm.rd());
    asm.ins(format!("and.b32 {lane}, {tid}, {}", REDUCE_LANES - 1));
    asm.ins(format!("shr.u32 {wib}, {tid}, 5"));
    asm.ins(format!("cvt.u64.u32 {lane64}, {lane}"));
    asm.ins(format!("cvt.u64.u32 {wib64}, {wib}"));
    Lanes {
        lane,
        lane64,
        wib64,
    }
}

/// The number of warps in a block (u32).
pub(super) fn warps_per_block(asm: &mut Asm, ids: &Ids) -> Reg {
    let wpb = asm.r();
    asm.ins(format!("shr.u32 {wpb}, {}, 5", ids.ntid));
    wpb
}

/// `(w, warps)`: this warp's index in the grid and the number of warps in the grid (u64).
pub(super) fn grid_warp(asm: &mut Asm, ids: &Ids, wpb: &Reg, wib64: &Reg) -> (Reg, Reg) {
    let (w, warps) = (asm.rd(), asm.rd());
    asm.ins(format!("mad.wide.u32 {w}, {}, {wpb}, 0", ids.ctaid));
    asm.ins(format!("add.s64 {w}, {w}, {wib64}"));
    asm.ins(format!("mul.wide.u32 {warps}, {}, {wpb}", ids.nctaid));
    (w, warps)
}

/// Stores output `q`'s accumulator at `partials[q * len + at]`, under `guard` when given.
pub(super) fn store_partials(
    asm: &mut Asm,
    partials: &Reg,
    accs: &[Reg],
    len: &Reg,
    at: &Reg,
    guard: Option<&Reg>,
) {
    let guard = guard.map(|g| format!("@{g} ")).unwrap_or_default();
    for (q, acc) in accs.iter().enumerate() {
        let (idx, addr) = (asm.rd(), asm.rd());
        asm.ins(format!("mad.lo.u64 {idx}, {len}, {q}, {at}"));
        asm.ins(format!("mad.lo.u64 {addr}, {idx}, 4, {partials}"));
        asm.ins(format!("{guard}st.global.f32 [{addr}], {acc}"));
    }
}

/// Registers every block of a reducing entry uses.
struct Warp {
    /// This lane and warp in block.
    lanes: Lanes,
    /// The shared-memory addresses this lane stores its 4 values to and reads its 4 values
    /// from (entries with the 4-wide path only).
    slot: Option<(Reg, Reg)>,
}

impl Lowering<'_> {
    pub(super) fn ops(&self) -> Vec<ReduceOp> {
        self.stage
            .reduce
            .iter()
            .map(|r| self.kernel.reductions[r.reduction.index()].op)
            .collect()
    }

    /// `acc ⊕ x` into a fresh register.
    pub(super) fn fold(&self, asm: &mut Asm, op: ReduceOp, acc: &Reg, x: &Reg) -> Reg {
        match op {
            ReduceOp::Sum => {
                let d = asm.f();
                asm.ins(format!("add.rn.f32 {d}, {acc}, {x}"));
                d
            }
            ReduceOp::Max => self.exact_max(asm, acc, x),
        }
    }

    /// Folds `x` into the accumulators in place (`mov` keeps each accumulator one register,
    /// so loops can carry it).
    pub(super) fn fold_into(&self, asm: &mut Asm, ops: &[ReduceOp], accs: &[Reg], xs: &[Reg]) {
        for ((op, acc), x) in ops.iter().zip(accs).zip(xs) {
            let d = self.fold(asm, *op, acc, x);
            asm.ins(format!("mov.f32 {acc}, {d}"));
        }
    }

    /// Accumulators for `ops`, each at its op's identity.
    pub(super) fn accumulators(&self, asm: &mut Asm, ops: &[ReduceOp]) -> Vec<Reg> {
        let accs: Vec<Reg> = ops.iter().map(|_| asm.f()).collect();
        for (op, acc) in ops.iter().zip(&accs) {
            asm.ins(format!("mov.f32 {acc}, {}", f32_imm(op.identity())));
        }
        accs
    }

    /// The tree over the lanes: `shfl.down` by 16, 8, 4, 2, 1, folding into the accumulators
    /// (lane 0 ends with the warp's fold).
    pub(super) fn lane_tree(&self, asm: &mut Asm, ops: &[ReduceOp], accs: &[Reg]) {
        let mut s = REDUCE_LANES / 2;
        while s >= 1 {
            for (op, acc) in ops.iter().zip(accs) {
                let o = asm.f();
                asm.ins(format!(
                    "shfl.sync.down.b32 {o}, {acc}, {s}, {}, -1",
                    REDUCE_LANES - 1
                ));
                let d = self.fold(asm, *op, acc, &o);
                asm.ins(format!("mov.f32 {acc}, {d}"));
            }
            s /= 2;
        }
    }

    /// The warp's lane and, when `xpose` names the entry's shared array, its slot in it.
    fn warp(&self, asm: &mut Asm, tid: &Reg, xpose: Option<&str>) -> Warp {
        let lanes = lanes(asm, tid);
        let (lane64, wib64) = (&lanes.lane64, &lanes.wib64);
        let slot = xpose.map(|xpose| {
            let (base, slot, st, ld) = (asm.rd(), asm.rd(), asm.rd(), asm.rd());
            asm.ins(format!("mov.u64 {base}, {xpose}"));
            asm.ins(format!("mad.lo.u64 {slot}, {wib64}, {SLOT_BYTES}, {base}"));
            asm.ins(format!("mad.lo.u64 {st}, {lane64}, 16, {slot}"));
            asm.ins(format!("mad.lo.u64 {ld}, {lane64}, 4, {slot}"));
            (st, ld)
        });
        Warp { lanes, slot }
    }

    /// One block `b` of a tensor of `n` elements: the body on each of its elements and the
    /// block partial of every reduce output, stored by lane 0. `vector` says when a full block
    /// takes the 4-wide path.
    #[allow(clippy::too_many_arguments)]
    fn reduce_block(
        &self,
        asm: &mut Asm,
        frame: &Frame,
        warp: &Warp,
        b: &Reg,
        n: &Reg,
        blocks: &Reg,
        partials: &Reg,
        vector: Vector<'_>,
    ) -> Result<(), Error> {
        let ops = self.ops();
        let accs = self.accumulators(asm, &ops);
        let (start, rem, lim) = (asm.rd(), asm.rd(), asm.rd());
        asm.ins(format!("shl.b64 {start}, {b}, 12"));
        asm.ins(format!("sub.s64 {rem}, {n}, {start}"));
        asm.ins(format!("min.u64 {lim}, {rem}, {REDUCE_BLOCK}"));
        let (tree, scalar) = (asm.label("tree"), asm.label("block_scalar"));
        if let (false, Some((st, ld))) = (matches!(vector, Vector::Never), &warp.slot) {
            let full = asm.p();
            asm.ins(format!("setp.ge.u64 {full}, {rem}, {REDUCE_BLOCK}"));
            let go = match vector {
                Vector::If(aligned) => {
                    let go = asm.p();
                    asm.ins(format!("and.pred {go}, {full}, {aligned}"));
                    go
                }
                _ => full,
            };
            asm.ins(format!("@!{go} bra {scalar}"));
            // Groups of 4: lane m takes elements start + 128 j + 4 m.
            let (e, end, off, more) = (asm.rd(), asm.rd(), asm.rd(), asm.p());
            let vloop = asm.label("block_v4");
            asm.ins(format!("mad.lo.u64 {e}, {}, 4, {start}", warp.lanes.lane64));
            asm.ins(format!("add.s64 {end}, {start}, {REDUCE_BLOCK}"));
            asm.place(&vloop);
            asm.ins(format!("shl.b64 {off}, {e}, 2"));
            let values = self.elements(asm, frame, &off, 4)?;
            for ((op, acc), lanes) in ops.iter().zip(&accs).zip(&values) {
                asm.ins(format!(
                    "st.shared.v4.f32 [{st}], {{{}}}",
                    lanes.iter().map(Reg::as_str).collect::<Vec<_>>().join(", ")
                ));
                asm.ins("bar.warp.sync -1");
                for c in 0..4 {
                    let x = asm.f();
                    asm.ins(format!(
                        "ld.shared.f32 {x}, [{ld}+{}]",
                        4 * REDUCE_LANES * c
                    ));
                    let d = self.fold(asm, *op, acc, &x);
                    asm.ins(format!("mov.f32 {acc}, {d}"));
                }
                asm.ins("bar.warp.sync -1");
            }
            asm.loop_back(&e, 4 * REDUCE_LANES, &end, &more, &vloop);
            asm.ins(format!("bra {tree}"));
        }
        // One element per lane: lane k takes elements start + k + 32 i, i < lim.
        asm.place(&scalar);
        let (i, e, off, more) = (asm.rd(), asm.rd(), asm.rd(), asm.p());
        let sloop = asm.label("block_elem");
        asm.ins(format!("mov.u64 {i}, {}", warp.lanes.lane64));
        asm.ins(format!("setp.ge.u64 {more}, {i}, {lim}"));
        asm.ins(format!("@{more} bra {tree}"));
        asm.place(&sloop);
        asm.ins(format!("add.s64 {e}, {start}, {i}"));
        asm.ins(format!("shl.b64 {off}, {e}, 2"));
        let values = self.elements(asm, frame, &off, 1)?;
        let xs: Vec<Reg> = values.iter().map(|v| v[0].clone()).collect();
        self.fold_into(asm, &ops, &accs, &xs);
        asm.loop_back(&i, REDUCE_LANES, &lim, &more, &sloop);
        // The tree over the lanes (every lane of the warp is here again).
        asm.place(&tree);
        self.lane_tree(asm, &ops, &accs);
        let (first, skip) = (asm.p(), asm.label("partial_done"));
        asm.ins(format!("setp.ne.u32 {first}, {}, 0", warp.lanes.lane));
        asm.ins(format!("@{first} bra {skip}"));
        store_partials(asm, partials, &accs, blocks, b, None);
        asm.place(&skip);
        Ok(())
    }

    /// `ceil(n / REDUCE_BLOCK)`.
    fn block_count(&self, asm: &mut Asm, n: &Reg) -> Reg {
        let (t, blocks) = (asm.rd(), asm.rd());
        asm.ins(format!("add.s64 {t}, {n}, {}", REDUCE_BLOCK - 1));
        asm.ins(format!("shr.u64 {blocks}, {t}, 12"));
        blocks
    }

    /// The shared array of an entry, declared before it.
    fn shared_decl(xpose: &str) -> String {
        format!(
            ".shared .align 16 .b8 {xpose}[{}];\n\n",
            SLOT_BYTES * MAX_WARPS
        )
    }

    /// A single-tensor entry of a reducing stage: the vector entry (`vector`, every buffer
    /// 16-byte aligned) or the scalar one. Warps take blocks `w, w + warps, ...`.
    pub(crate) fn reduce_single_entry(&self, name: &str, vector: bool) -> Result<String, Error> {
        let xpose = vector.then(|| format!("{name}_xpose"));
        let mut asm = Asm::default();
        let (frame, n, partials) = self.single_frame(&mut asm, name)?;
        let partials =
            partials.ok_or_else(|| Error::Internal("a reducing stage without partials".into()))?;
        let ids = thread_ids(&mut asm);
        let wpb = warps_per_block(&mut asm, &ids);
        let warp = self.warp(&mut asm, &ids.tid, xpose.as_deref());
        // This warp's first block: ctaid * warps per block + warp in block.
        let (b, warps) = grid_warp(&mut asm, &ids, &wpb, &warp.lanes.wib64);
        let blocks = self.block_count(&mut asm, &n);
        let (p, lp, done) = (asm.p(), asm.label("block"), asm.label("done"));
        asm.ins(format!("setp.ge.u64 {p}, {b}, {blocks}"));
        asm.ins(format!("@{p} bra {done}"));
        asm.place(&lp);
        self.reduce_block(
            &mut asm,
            &frame,
            &warp,
            &b,
            &n,
            &blocks,
            &partials,
            if vector {
                Vector::Always
            } else {
                Vector::Never
            },
        )?;
        asm.loop_back(&b, &warps, &blocks, &p, &lp);
        asm.place(&done);
        asm.ins("ret");
        let params = self.single_param_decls(name);
        Ok(format!(
            "{}{}",
            xpose.as_deref().map(Self::shared_decl).unwrap_or_default(),
            entry_text(name, &params, asm)
        ))
    }

    /// The multi-tensor entry of a reducing stage. Chunks are whole blocks (`chunk_elems` is a
    /// multiple of [`REDUCE_BLOCK`]); the warps of a block take the chunk's blocks in turn; each
    /// tensor's record holds the address of its partials.
    pub(crate) fn reduce_multi_entry(&self, name: &str) -> Result<String, Error> {
        let xpose = format!("{name}_xpose");
        let layout = TableLayout::of_stage(self.kernel, self.stage_index);
        let partials_offset = layout
            .partials_offset()
            .ok_or_else(|| Error::Internal("a reducing stage's record has no partials".into()))?;
        let mut asm = Asm::default();
        let MultiParams {
            table,
            chunks,
            num_chunks,
            chunk_elems,
        } = multi_prologue(&mut asm, name);
        let ids = thread_ids(&mut asm);
        let wpb = warps_per_block(&mut asm, &ids);
        let (c, nctaid64, wpb64) = (asm.rd(), asm.rd(), asm.rd());
        asm.ins(format!("cvt.u64.u32 {c}, {}", ids.ctaid));
        asm.ins(format!("cvt.u64.u32 {nctaid64}, {}", ids.nctaid));
        asm.ins(format!("cvt.u64.u32 {wpb64}, {wpb}"));
        let warp = self.warp(&mut asm, &ids.tid, Some(&xpose));
        let p = asm.p();
        let (chunk_loop, done) = (asm.label("chunk"), asm.label("done"));
        asm.ins(format!("setp.ge.u64 {p}, {c}, {num_chunks}"));
        asm.ins(format!("@{p} bra {done}"));
        asm.place(&chunk_loop);
        let (rec, ki64) = self.chunk_record(&mut asm, &layout, &chunks, &table, &c);
        let (frame, n, flags) = self.record_frame(&mut asm, &layout, &rec)?;
        let (raw_p, partials) = (asm.rd(), asm.rd());
        asm.ins(format!("ld.global.u64 {raw_p}, [{rec}+{partials_offset}]"));
        asm.ins(format!("cvta.to.global.u64 {partials}, {raw_p}"));
        let (aligned_bit, aligned) = (asm.r(), asm.p());
        asm.ins(format!("and.b32 {aligned_bit}, {flags}, {FLAG_ALIGNED}"));
        asm.ins(format!("setp.ne.u32 {aligned}, {aligned_bit}, 0"));
        let blocks = self.block_count(&mut asm, &n);
        // This chunk's blocks [first, last): chunk k covers elements [k * chunk_elems, ...).
        let (start, end0, end, first, last, t, b) = (
            asm.rd(),
            asm.rd(),
            asm.rd(),
            asm.rd(),
            asm.rd(),
            asm.rd(),
            asm.rd(),
        );
        asm.ins(format!("mul.lo.u64 {start}, {ki64}, {chunk_elems}"));
        asm.ins(format!("add.s64 {end0}, {start}, {chunk_elems}"));
        asm.ins(format!("min.u64 {end}, {end0}, {n}"));
        asm.ins(format!("shr.u64 {first}, {start}, 12"));
        asm.ins(format!("add.s64 {t}, {end}, {}", REDUCE_BLOCK - 1));
        asm.ins(format!("shr.u64 {last}, {t}, 12"));
        asm.ins(format!("add.s64 {b}, {first}, {}", warp.lanes.wib64));
        let (q, lp, next) = (asm.p(), asm.label("block"), asm.label("next"));
        asm.ins(format!("setp.ge.u64 {q}, {b}, {last}"));
        asm.ins(format!("@{q} bra {next}"));
        asm.place(&lp);
        self.reduce_block(
            &mut asm,
            &frame,
            &warp,
            &b,
            &n,
            &blocks,
            &partials,
            Vector::If(&aligned),
        )?;
        asm.loop_back(&b, &wpb64, &last, &q, &lp);
        asm.place(&next);
        asm.loop_back(&c, &nctaid64, &num_chunks, &p, &chunk_loop);
        asm.place(&done);
        asm.ins("ret");
        Ok(format!(
            "{}{}",
            Self::shared_decl(&xpose),
            entry_text(name, &self.multi_param_decls(name), asm)
        ))
    }
}
