//! The entries of a factored stage (a kernel with `[rows]`/`[cols]` values; `docs/stages.md`,
//! "Row and column values"): the whole tensor in one launch, every element's row and column
//! known, partials in exactly the orders of `optc_kernel::reduce::{row_partials, col_partials}`.
//! [`optc_kernel::factored`] states the index math on the host; this file emits the same math.
//!
//! - **rows** (`<base>_rows`): warps take row blocks `rb` (a run of at most 4096 elements of one
//!   row: block `rb % per` of row `rb / per`) in a grid-stride loop. The `[rows]` values of the
//!   row are loaded once per block, the `[cols]` values per element (at `matrix · cols + col`).
//!   Lane `k` folds the block's elements `k + 32 i` in increasing `i` from the identity, then
//!   `shfl.down` by 16, 8, 4, 2, 1 and lane 0 stores output `q`'s partial at `q · row_blocks +
//!   rb`: `block_partial` of each block of each row. This entry does every store of the stage.
//! - **cols** (`<base>_cols`, only when the stage has Col-scope outputs; the runtime launches it
//!   *before* the rows entry, because it reads the stage's inputs before the rows entry stores):
//!   threads take column blocks `t = (m · blocks + blk) · cols + c` in a grid-stride loop; each
//!   folds the Col-scope outputs of rows `64 blk ..` of column `c` of matrix `m` in increasing row
//!   order from the identity and stores output `q`'s partial at `q · col_threads + t`. It stores
//!   nothing else.
//!
//! No atomics: every partial is written by one lane, so the bits do not depend on the grid.
//! The folds are `add.rn.f32` or the NaN-propagating max, as in `reduce.rs`. Elements are loaded
//! one per lane (rows are not 16-byte aligned in general). Launches use whole warps.

use super::asm::{Asm, Reg};
use super::body::{Env, Lowering, Plan};
use super::convert::{self, is_half};
use super::entries::{entry_text, global_param as global, param_decls, thread_ids};
use super::reduce::{grid_warp, lanes, warps_per_block};
use super::{Error, Options};
use optc_kernel::abi::{factored_params, has_cols_entry, FactoredEntry, Param};
use optc_kernel::artifact::{FactoredEntries, PtxEntry};
use optc_kernel::reduce::{Scope, COL_BLOCK_ROWS, REDUCE_BLOCK, REDUCE_LANES};
use optc_kernel::{Expr, Kernel, Slot, Stage, VecShape};

/// The part of `stage` that `entry` runs: the rows entry keeps the stores and the outputs that
/// are not Col-scope, the cols entry only the Col-scope outputs.
fn part(kernel: &Kernel, stage: &Stage, entry: FactoredEntry) -> Stage {
    let col = |r: &&optc_kernel::ReduceOutput| {
        kernel
            .reductions
            .get(r.reduction.index())
            .is_some_and(|d| d.scope == Scope::Col)
    };
    let cols = entry == FactoredEntry::Cols;
    Stage {
        stores: if cols {
            Vec::new()
        } else {
            stage.stores.clone()
        },
        reduce: stage
            .reduce
            .iter()
            .filter(|r| col(r) == cols)
            .cloned()
            .collect(),
        ..stage.clone()
    }
}

/// The PTX text of stage `k`'s entries and their list, `base` the entries' common name prefix.
pub(super) fn stage_entries(
    kernel: &Kernel,
    k: usize,
    base: &str,
    opts: &Options,
    nan_minmax: bool,
) -> Result<(String, FactoredEntries), Error> {
    let stage = kernel
        .stages
        .get(k)
        .ok_or_else(|| Error::Internal(format!("no stage {k}")))?;
    let shapes = kernel.stage_vector_shapes(k)?;
    if shapes.contains(&VecShape::One) {
        return Err(Error::Unsupported(format!(
            "stage {k} reads a stage vector with one value per tensor; expected [rows] or [cols]"
        )));
    }
    let mut text = String::new();
    let mut entry = |which: FactoredEntry, name: String| -> Result<PtxEntry, Error> {
        let sub = part(kernel, stage, which);
        let plan = Plan::new(&sub)?;
        let low = Lowering {
            kernel,
            stage: &sub,
            stage_index: k,
            plan: &plan,
            opts,
            nan_minmax,
        };
        let params = factored_params(kernel, k, which);
        let entry = Entry {
            low: &low,
            shapes: &shapes,
            params: &params,
            name: &name,
        };
        text.push_str(&match which {
            FactoredEntry::Rows => entry.rows()?,
            FactoredEntry::Cols => entry.cols()?,
        });
        text.push('\n');
        Ok(PtxEntry { name, params })
    };
    let cols = if has_cols_entry(kernel, k) {
        Some(entry(FactoredEntry::Cols, format!("{base}_cols"))?)
    } else {
        None
    };
    let rows = entry(FactoredEntry::Rows, format!("{base}_rows"))?;
    Ok((
        text,
        FactoredEntries {
            rows,
            cols,
            block_multiple: REDUCE_LANES as u32,
        },
    ))
}

/// One entry being written.
struct Entry<'a> {
    low: &'a Lowering<'a>,
    shapes: &'a [VecShape],
    params: &'a [Param],
    name: &'a str,
}

/// The registers read from an entry's parameters.
struct Frame {
    /// The buffers the entry's body loads or stores: slot, loaded, stored, global base.
    bases: Vec<(Slot, bool, bool, Reg)>,
    /// Each stage vector's global base.
    vectors: Vec<Reg>,
    batch: Reg,
    rows: Reg,
    cols: Reg,
    partials: Option<Reg>,
    uniforms: Vec<Option<Reg>>,
    /// The stochastic-rounding key (`Param::SrKey`), for a kernel that rounds stochastically.
    sr_key: Option<Reg>,
    prologue: Env,
}

impl Entry<'_> {
    fn frame(&self, asm: &mut Asm) -> Result<Frame, Error> {
        let low = self.low;
        let buffers = low.kernel.buffers();
        // A buffer is loaded when a live node loads it (the cols entry reads only what its
        // outputs need).
        let live_load = |slot: Slot| {
            low.stage
                .body
                .iter()
                .any(|(h, e)| matches!(e, Expr::Load(s) if *s == slot) && low.plan.live[h.index()])
        };
        let (batch, rows, cols) = (asm.rd(), asm.rd(), asm.rd());
        let mut bases = Vec::new();
        let mut vectors = Vec::new();
        let mut partials = None;
        let mut uniforms = vec![None; low.stage.uniforms.len()];
        let mut sr_key = None;
        for p in self.params {
            let pname = p.ptx_name(self.name);
            match *p {
                Param::Buffer { index } => {
                    let slot = buffers
                        .get(index)
                        .ok_or_else(|| Error::Internal(format!("no buffer {index}")))?
                        .slot;
                    let (read, written) = (live_load(slot), low.stage.stores_slot(slot));
                    if read || written {
                        bases.push((slot, read, written, global(asm, &pname)));
                    }
                }
                Param::Batch => asm.ins(format!("ld.param.u64 {batch}, [{pname}]")),
                Param::Rows => asm.ins(format!("ld.param.u64 {rows}, [{pname}]")),
                Param::Cols => asm.ins(format!("ld.param.u64 {cols}, [{pname}]")),
                Param::Vector { .. } => vectors.push(global(asm, &pname)),
                Param::Partials => partials = Some(global(asm, &pname)),
                Param::Uniform { index } => {
                    if low.plan.uniform_used.get(index).copied().unwrap_or(false) {
                        let r = asm.f();
                        asm.ins(format!("ld.param.f32 {r}, [{pname}]"));
                        uniforms[index] = Some(r);
                    }
                }
                Param::SrKey => {
                    let r = asm.r();
                    asm.ins(format!("ld.param.u32 {r}, [{pname}]"));
                    sr_key = Some(r);
                }
                other => {
                    return Err(Error::Internal(format!(
                        "a factored entry takes no {other:?}"
                    )))
                }
            }
        }
        let prologue = low.uniform_nodes(asm, &uniforms)?;
        Ok(Frame {
            bases,
            vectors,
            batch,
            rows,
            cols,
            partials,
            uniforms,
            sr_key,
            prologue,
        })
    }

    /// Loads the stage vectors of `shape` at byte offset `off` into `vals`.
    fn load_vectors(
        &self,
        asm: &mut Asm,
        frame: &Frame,
        shape: VecShape,
        off: &Reg,
        vals: &mut [Option<Reg>],
    ) {
        for (i, (s, base)) in self.shapes.iter().zip(&frame.vectors).enumerate() {
            if *s == shape {
                let (addr, r) = (asm.rd(), asm.f());
                asm.ins(format!("add.s64 {addr}, {base}, {off}"));
                asm.ins(format!("ld.global.f32 {r}, [{addr}]"));
                vals[i] = Some(r);
            }
        }
    }

    /// The body on the element at byte offset `off`, its stage vectors in `vals`: loads, body,
    /// stores. Gives the register of each of the entry's reduce outputs.
    fn element(
        &self,
        asm: &mut Asm,
        frame: &Frame,
        off: &Reg,
        vals: &[Option<Reg>],
    ) -> Result<Vec<Reg>, Error> {
        let low = self.low;
        let storage = &low.kernel.storage;
        let mut addrs = Vec::new();
        let mut loaded: Vec<(Slot, Reg)> = Vec::new();
        // `off` counts 4-byte values; a 16-bit buffer's offset is half of it.
        let mut half_off: Option<Reg> = None;
        for (slot, read, _, base) in &frame.bases {
            let dtype = storage.dtype(*slot);
            let addr = asm.rd();
            if is_half(dtype) {
                let h = half_off.get_or_insert_with(|| {
                    let h = asm.rd();
                    asm.ins(format!("shr.u64 {h}, {off}, 1"));
                    h
                });
                asm.ins(format!("add.s64 {addr}, {base}, {h}"));
            } else {
                asm.ins(format!("add.s64 {addr}, {base}, {off}"));
            }
            if *read {
                let r = if is_half(dtype) {
                    convert::load(asm, dtype, &addr, 1).remove(0)
                } else {
                    let r = asm.f();
                    asm.ins(format!("ld.global.f32 {r}, [{addr}]"));
                    r
                };
                loaded.push((*slot, r));
            }
            addrs.push((*slot, addr));
        }
        let mut env = frame.prologue.clone();
        let load = |slot: Slot| {
            loaded
                .iter()
                .find(|(s, _)| *s == slot)
                .map(|(_, r)| r.clone())
        };
        let vector = |i: usize| vals.get(i).cloned().flatten();
        low.lower_with(asm, &mut env, true, &frame.uniforms, &load, &vector)?;
        for store in &low.stage.stores {
            let addr = addrs
                .iter()
                .find(|(s, _)| *s == store.slot)
                .map(|(_, a)| a)
                .ok_or_else(|| Error::Internal("a stored buffer has no address".into()))?;
            let x = env.f(store.value)?;
            let dtype = storage.dtype(store.slot);
            if is_half(dtype) {
                let r = match &frame.sr_key {
                    Some(key) if storage.is_stochastic(store.slot) => {
                        let e = asm.rd();
                        asm.ins(format!("shr.u64 {e}, {off}, 2"));
                        Some(convert::sr_bits(asm, key, &e))
                    }
                    _ => None,
                };
                let rs = r.as_ref().map(std::slice::from_ref);
                convert::store(asm, dtype, addr, std::slice::from_ref(x), rs);
            } else {
                asm.ins(format!("st.global.f32 [{addr}], {x}"));
            }
        }
        low.stage
            .reduce
            .iter()
            .map(|r| env.f(r.value).cloned())
            .collect()
    }

    fn accumulators(&self, asm: &mut Asm) -> Vec<Reg> {
        self.low.accumulators(asm, &self.low.ops())
    }

    /// Stores output `q`'s accumulator at `partials[q * len + at]`.
    fn store_partials(&self, asm: &mut Asm, frame: &Frame, accs: &[Reg], len: &Reg, at: &Reg) {
        if let Some(partials) = &frame.partials {
            super::reduce::store_partials(asm, partials, accs, len, at, None);
        }
    }

    fn finish(&self, asm: Asm) -> String {
        entry_text(self.name, &param_decls(self.name, self.params), asm)
    }

    /// The rows entry. See the module docs.
    fn rows(&self) -> Result<String, Error> {
        let mut asm = Asm::default();
        let frame = self.frame(&mut asm)?;
        let ids = thread_ids(&mut asm);
        let wpb = warps_per_block(&mut asm, &ids);
        let lanes = lanes(&mut asm, &ids.tid);
        let (lane, lane64) = (&lanes.lane, &lanes.lane64);
        let (rb, warps) = grid_warp(&mut asm, &ids, &wpb, &lanes.wib64);
        let (t, per, nrows, total) = (asm.rd(), asm.rd(), asm.rd(), asm.rd());
        asm.ins(format!("add.s64 {t}, {}, {}", frame.cols, REDUCE_BLOCK - 1));
        asm.ins(format!("shr.u64 {per}, {t}, 12"));
        asm.ins(format!(
            "mul.lo.u64 {nrows}, {}, {}",
            frame.batch, frame.rows
        ));
        asm.ins(format!("mul.lo.u64 {total}, {nrows}, {per}"));
        let (p, lp, done) = (asm.p(), asm.label("row_block"), asm.label("done"));
        asm.ins(format!("setp.ge.u64 {p}, {rb}, {total}"));
        asm.ins(format!("@{p} bra {done}"));
        asm.place(&lp);
        // Row block rb: block j of row `row` of matrix m.
        let (row, j, m, cstart, rem, lim) =
            (asm.rd(), asm.rd(), asm.rd(), asm.rd(), asm.rd(), asm.rd());
        let (rowbase, colbase, roff) = (asm.rd(), asm.rd(), asm.rd());
        asm.ins(format!("div.u64 {row}, {rb}, {per}"));
        asm.ins(format!("mul.lo.u64 {j}, {row}, {per}"));
        asm.ins(format!("sub.s64 {j}, {rb}, {j}"));
        asm.ins(format!("div.u64 {m}, {row}, {}", frame.rows));
        asm.ins(format!("shl.b64 {cstart}, {j}, 12"));
        asm.ins(format!("sub.s64 {rem}, {}, {cstart}", frame.cols));
        asm.ins(format!("min.u64 {lim}, {rem}, {REDUCE_BLOCK}"));
        asm.ins(format!("mul.lo.u64 {rowbase}, {row}, {}", frame.cols));
        asm.ins(format!("mul.lo.u64 {colbase}, {m}, {}", frame.cols));
        asm.ins(format!("shl.b64 {roff}, {row}, 2"));
        let mut row_vals = vec![None; self.shapes.len()];
        self.load_vectors(&mut asm, &frame, VecShape::Rows, &roff, &mut row_vals);
        let accs = self.accumulators(&mut asm);
        let (i, more, eloop, tree) = (asm.rd(), asm.p(), asm.label("elem"), asm.label("tree"));
        asm.ins(format!("mov.u64 {i}, {lane64}"));
        asm.ins(format!("setp.ge.u64 {more}, {i}, {lim}"));
        asm.ins(format!("@{more} bra {tree}"));
        asm.place(&eloop);
        let (c, e, off, cidx, coff) = (asm.rd(), asm.rd(), asm.rd(), asm.rd(), asm.rd());
        asm.ins(format!("add.s64 {c}, {cstart}, {i}"));
        asm.ins(format!("add.s64 {e}, {rowbase}, {c}"));
        asm.ins(format!("shl.b64 {off}, {e}, 2"));
        asm.ins(format!("add.s64 {cidx}, {colbase}, {c}"));
        asm.ins(format!("shl.b64 {coff}, {cidx}, 2"));
        let mut vals = row_vals.clone();
        self.load_vectors(&mut asm, &frame, VecShape::Cols, &coff, &mut vals);
        let xs = self.element(&mut asm, &frame, &off, &vals)?;
        self.low.fold_into(&mut asm, &self.low.ops(), &accs, &xs);
        asm.loop_back(&i, REDUCE_LANES, &lim, &more, &eloop);
        // The tree over the lanes (every lane of the warp is here again).
        asm.place(&tree);
        if !accs.is_empty() {
            self.low.lane_tree(&mut asm, &self.low.ops(), &accs);
            let (first, skip) = (asm.p(), asm.label("partial_done"));
            asm.ins(format!("setp.ne.u32 {first}, {lane}, 0"));
            asm.ins(format!("@{first} bra {skip}"));
            self.store_partials(&mut asm, &frame, &accs, &total, &rb);
            asm.place(&skip);
        }
        asm.loop_back(&rb, &warps, &total, &p, &lp);
        asm.place(&done);
        asm.ins("ret");
        Ok(self.finish(asm))
    }

    /// The cols entry. See the module docs.
    fn cols(&self) -> Result<String, Error> {
        let mut asm = Asm::default();
        let frame = self.frame(&mut asm)?;
        let (t, stride) = self.low.grid_index(&mut asm);
        let (x, blocks, q0, total) = (asm.rd(), asm.rd(), asm.rd(), asm.rd());
        asm.ins(format!(
            "add.s64 {x}, {}, {}",
            frame.rows,
            COL_BLOCK_ROWS - 1
        ));
        asm.ins(format!(
            "shr.u64 {blocks}, {x}, {}",
            COL_BLOCK_ROWS.trailing_zeros()
        ));
        asm.ins(format!("mul.lo.u64 {q0}, {}, {blocks}", frame.batch));
        asm.ins(format!("mul.lo.u64 {total}, {q0}, {}", frame.cols));
        let (p, lp, done) = (asm.p(), asm.label("col_block"), asm.label("done"));
        asm.ins(format!("setp.ge.u64 {p}, {t}, {total}"));
        asm.ins(format!("@{p} bra {done}"));
        asm.place(&lp);
        // Column block t: column c of rows [r0, r1) of matrix m.
        let (c, q, blk, m, r0, r1, row, e, cidx, coff) = (
            asm.rd(),
            asm.rd(),
            asm.rd(),
            asm.rd(),
            asm.rd(),
            asm.rd(),
            asm.rd(),
            asm.rd(),
            asm.rd(),
            asm.rd(),
        );
        asm.ins(format!("rem.u64 {c}, {t}, {}", frame.cols));
        asm.ins(format!("div.u64 {q}, {t}, {}", frame.cols));
        asm.ins(format!("rem.u64 {blk}, {q}, {blocks}"));
        asm.ins(format!("div.u64 {m}, {q}, {blocks}"));
        asm.ins(format!(
            "shl.b64 {r0}, {blk}, {}",
            COL_BLOCK_ROWS.trailing_zeros()
        ));
        asm.ins(format!("add.s64 {r1}, {r0}, {COL_BLOCK_ROWS}"));
        asm.ins(format!("min.u64 {r1}, {r1}, {}", frame.rows));
        asm.ins(format!("mad.lo.u64 {row}, {m}, {}, {r0}", frame.rows));
        asm.ins(format!("mad.lo.u64 {e}, {row}, {}, {c}", frame.cols));
        asm.ins(format!("mad.lo.u64 {cidx}, {m}, {}, {c}", frame.cols));
        asm.ins(format!("shl.b64 {coff}, {cidx}, 2"));
        let mut col_vals = vec![None; self.shapes.len()];
        self.load_vectors(&mut asm, &frame, VecShape::Cols, &coff, &mut col_vals);
        let accs = self.accumulators(&mut asm);
        // r0 < r1 always: blk < blocks.
        let (rr, more, rloop, off, roff) =
            (asm.rd(), asm.p(), asm.label("row"), asm.rd(), asm.rd());
        asm.ins(format!("mov.u64 {rr}, {r0}"));
        asm.place(&rloop);
        asm.ins(format!("shl.b64 {off}, {e}, 2"));
        asm.ins(format!("shl.b64 {roff}, {row}, 2"));
        let mut vals = col_vals.clone();
        self.load_vectors(&mut asm, &frame, VecShape::Rows, &roff, &mut vals);
        let xs = self.element(&mut asm, &frame, &off, &vals)?;
        self.low.fold_into(&mut asm, &self.low.ops(), &accs, &xs);
        asm.ins(format!("add.s64 {e}, {e}, {}", frame.cols));
        asm.ins(format!("add.s64 {row}, {row}, 1"));
        asm.loop_back(&rr, 1, &r1, &more, &rloop);
        self.store_partials(&mut asm, &frame, &accs, &total, &t);
        asm.loop_back(&t, &stride, &total, &p, &lp);
        asm.place(&done);
        asm.ins("ret");
        Ok(self.finish(asm))
    }
}
