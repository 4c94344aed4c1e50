//! The int8 entry of a stage (`<base>_s<k>_q8`) for a kernel with int8 states
//! (`optc_kernel::int8`, `docs/dtypes.md`): it steps a tensor whose int8 states are block
//! quantized (tensors of at least `quant::MIN_QUANT_ELEMENTS` elements; smaller ones keep f32
//! states and take the stage's other entries, which see every state as f32).
//!
//! Parameters: those of the scalar entry ([`optc_kernel::abi::single_params`]). The pointer of an
//! int8 state is its **codes and scales stored together**: `n` code bytes, then, from byte
//! [`optc_kernel::int8::device_scales_offset`]`(n)`, one f32 scale word per block of 256.
//!
//! **A warp per quantization block**: lane `l` takes the block's elements `32 j + l`, `j < 8`
//! (32 lanes × 8 values). A load reads the code (`ld.global.u8`) and the block's scale, and looks
//! the code up in a `.const` table of both maps (the scale's sign bit picks the map). The body
//! runs on the 8 elements; then the block's absmax is a `shfl.sync.bfly` max over the lanes, its
//! sign and NaN flags `vote.sync.any`, each value's code a binary search over the map's midpoints
//! (a `.const` table), and the codes and the scale word are stored together. Every step is the
//! arithmetic of `optc_kernel::int8::store_block` and `load_block`: `div.rn`, `mul.rn`, the
//! NaN-ignoring `max.f32`, the sign bit set with integer ops.
//!
//! In a stage with reduce outputs a warp takes a whole reduction block (4096 elements, 16
//! quantization blocks in turn), so lane `l` folds the block's elements `l + 32 i` in increasing
//! `i` and the partials are those of `reduce.rs` (`docs/stages.md`). Launches use whole warps.

use super::asm::{f32_imm, Asm, Reg};
use super::body::Lowering;
use super::convert::{self, is_half};
use super::entries::{entry_text, global_param, param_decls, thread_ids};
use super::reduce::{grid_warp, lanes, store_partials, warps_per_block};
use super::Error;
use optc_kernel::abi::{single_params, Param};
use optc_kernel::quant::{DynamicMap, QUANT_BLOCK};
use optc_kernel::reduce::{ReduceOp, REDUCE_BLOCK, REDUCE_LANES};
use optc_kernel::{Dtype, Kernel, Slot};

/// The `.const` table of both maps' values (signed at 0, unsigned at 256).
const VALUES: &str = "optc_q8_values";
/// The `.const` table of both maps' midpoints (signed at 0, unsigned at 256; 255 each, padded).
const MIDS: &str = "optc_q8_mids";
/// Values per lane per quantization block.
const PER_LANE: usize = QUANT_BLOCK / REDUCE_LANES;

/// Whether `kernel` stores some state as int8 (and so has `_q8` entries).
pub(crate) fn has_int8(kernel: &Kernel) -> bool {
    kernel.storage.states.contains(&Dtype::Int8)
}

/// The module-scope `.const` tables the `_q8` entries read.
pub(crate) fn tables() -> String {
    let (signed, unsigned) = (DynamicMap::signed(), DynamicMap::unsigned());
    let hex = |x: f32| format!("0x{:08X}", x.to_bits());
    let mut values = Vec::with_capacity(512);
    let mut mids = Vec::with_capacity(512);
    for map in [&signed, &unsigned] {
        let v = map.values();
        values.extend(v.iter().map(|&x| hex(x)));
        mids.extend(v.windows(2).map(|w| hex((w[0] + w[1]) / 2.0)));
        mids.push(hex(f32::INFINITY));
    }
    format!(
        ".const .align 4 .b32 {VALUES}[512] = {{{}}};\n.const .align 4 .b32 {MIDS}[512] = {{{}}};\n\n",
        values.join(", "),
        mids.join(", ")
    )
}

/// One buffer the stage touches in the `_q8` entry.
struct Buf {
    slot: Slot,
    read: bool,
    written: bool,
    /// The buffer's base address.
    base: Reg,
    /// For an int8 state, the address of its scales.
    scales: Option<Reg>,
}

impl Lowering<'_> {
    /// The `_q8` entry of this stage.
    pub(crate) fn int8_entry(&self, name: &str) -> Result<String, Error> {
        let mut asm = Asm::default();
        let n = asm.rd();
        asm.ins(format!("ld.param.u64 {n}, [{}]", Param::Len.ptx_name(name)));
        // Scales start after the codes, at the next multiple of 16 bytes.
        let soff = asm.rd();
        asm.ins(format!("add.s64 {soff}, {n}, 15"));
        asm.ins(format!("and.b64 {soff}, {soff}, -16"));
        let mut bufs = Vec::new();
        for (i, b) in self
            .kernel
            .stage_buffers(self.stage_index)
            .into_iter()
            .enumerate()
        {
            if !(b.read || b.written) {
                continue;
            }
            let base = global_param(&mut asm, &Param::Buffer { index: i }.ptx_name(name));
            let scales = (self.kernel.storage.dtype(b.slot) == Dtype::Int8).then(|| {
                let s = asm.rd();
                asm.ins(format!("add.s64 {s}, {base}, {soff}"));
                s
            });
            bufs.push(Buf {
                slot: b.slot,
                read: b.read,
                written: b.written,
                base,
                scales,
            });
        }
        let tail = self.single_tail(&mut asm, name);
        let (partials, uniforms, sr_key) = (tail.partials, tail.uniforms, tail.sr_key);
        let prologue = self.uniform_nodes(&mut asm, &uniforms)?;

        // Warps: this warp's global index and the number of warps in the grid.
        let ids = thread_ids(&mut asm);
        let wpb = warps_per_block(&mut asm, &ids);
        let lanes = lanes(&mut asm, &ids.tid);
        let (w, warps) = grid_warp(&mut asm, &ids, &wpb, &lanes.wib64);
        let lane64 = lanes.lane64;
        let lane0 = asm.p();
        asm.ins(format!("setp.eq.u32 {lane0}, {}, 0", lanes.lane));

        // A warp's unit: one quantization block, or one reduction block in a reducing stage.
        let unit = if partials.is_some() {
            REDUCE_BLOCK
        } else {
            QUANT_BLOCK
        };
        let (units, t, qblocks) = (asm.rd(), asm.rd(), asm.rd());
        asm.ins(format!("add.s64 {t}, {n}, {}", unit - 1));
        asm.ins(format!("shr.u64 {units}, {t}, {}", unit.trailing_zeros()));
        asm.ins(format!("add.s64 {t}, {n}, {}", QUANT_BLOCK - 1));
        asm.ins(format!("shr.u64 {qblocks}, {t}, 8"));
        let (p, unit_loop, done) = (asm.p(), asm.label("unit"), asm.label("done"));
        asm.ins(format!("setp.ge.u64 {p}, {w}, {units}"));
        asm.ins(format!("@{p} bra {done}"));
        asm.place(&unit_loop);

        let ops = self.ops();
        let accs = self.accumulators(&mut asm, &ops);
        // The unit's quantization blocks [qb, qend).
        let (qb, qend) = (asm.rd(), asm.rd());
        asm.ins(format!("mul.lo.u64 {qb}, {w}, {}", unit / QUANT_BLOCK));
        asm.ins(format!("add.s64 {qend}, {qb}, {}", unit / QUANT_BLOCK));
        asm.ins(format!("min.u64 {qend}, {qend}, {qblocks}"));
        let (q_loop, q_done) = (asm.label("qblock"), asm.label("qblock_done"));
        asm.place(&q_loop);
        self.quant_block(
            &mut asm,
            &bufs,
            &prologue,
            &uniforms,
            sr_key.as_ref(),
            &qb,
            &n,
            &lane64,
            &lane0,
            &ops,
            &accs,
        )?;
        asm.loop_back(&qb, 1, &qend, &p, &q_loop);
        asm.place(&q_done);

        if let Some(partials) = &partials {
            self.lane_tree(&mut asm, &ops, &accs);
            let (blocks, t) = (asm.rd(), asm.rd());
            asm.ins(format!("add.s64 {t}, {n}, {}", REDUCE_BLOCK - 1));
            asm.ins(format!("shr.u64 {blocks}, {t}, 12"));
            store_partials(&mut asm, partials, &accs, &blocks, &w, Some(&lane0));
        }
        asm.loop_back(&w, &warps, &units, &p, &unit_loop);
        asm.place(&done);
        asm.ins("ret");
        let params = param_decls(name, &single_params(self.kernel, self.stage_index));
        Ok(entry_text(name, &params, asm))
    }

    /// Quantization block `qb`: loads (int8 states dequantized), the body on the lane's 8
    /// elements, the reduce folds, the stores (int8 states quantized, the scale by lane 0).
    #[allow(clippy::too_many_arguments)]
    fn quant_block(
        &self,
        asm: &mut Asm,
        bufs: &[Buf],
        prologue: &super::body::Env,
        uniforms: &[Option<Reg>],
        sr_key: Option<&Reg>,
        qb: &Reg,
        n: &Reg,
        lane64: &Reg,
        lane0: &Reg,
        ops: &[ReduceOp],
        accs: &[Reg],
    ) -> Result<(), Error> {
        // The scales of the block's int8 states, and their map offsets and magnitudes.
        let mut scale_of: Vec<Option<(Reg, Reg)>> = Vec::new();
        for b in bufs {
            scale_of.push(match (&b.scales, b.read) {
                (Some(s), true) => {
                    let (addr, bits, mapoff, mag, signed) =
                        (asm.rd(), asm.r(), asm.r(), asm.f(), asm.p());
                    asm.ins(format!("mad.lo.u64 {addr}, {qb}, 4, {s}"));
                    asm.ins(format!("ld.global.b32 {bits}, [{addr}]"));
                    asm.ins(format!("setp.lt.s32 {signed}, {bits}, 0"));
                    asm.ins(format!("selp.b32 {mapoff}, 0, 1024, {signed}"));
                    let m = asm.r();
                    asm.ins(format!("and.b32 {m}, {bits}, 2147483647"));
                    asm.ins(format!("mov.b32 {mag}, {m}"));
                    let mapoff64 = asm.rd();
                    asm.ins(format!("cvt.u64.u32 {mapoff64}, {mapoff}"));
                    Some((mapoff64, mag))
                }
                _ => None,
            });
        }
        let (start, values_base, mids_base) = (asm.rd(), asm.rd(), asm.rd());
        asm.ins(format!("shl.b64 {start}, {qb}, 8"));
        asm.ins(format!("mov.u64 {values_base}, {VALUES}"));
        asm.ins(format!("mov.u64 {mids_base}, {MIDS}"));
        // Per int8 state the stage stores: its 8 new values.
        let mut new_values: Vec<Vec<Reg>> = bufs.iter().map(|_| Vec::new()).collect();
        let mut valid_of = Vec::with_capacity(PER_LANE);
        let mut elems = Vec::with_capacity(PER_LANE);
        for j in 0..PER_LANE {
            asm.comment(format!("element {j} of the lane"));
            let (e, valid) = (asm.rd(), asm.p());
            asm.ins(format!("add.s64 {e}, {start}, {}", REDUCE_LANES * j));
            asm.ins(format!("add.s64 {e}, {e}, {lane64}"));
            asm.ins(format!("setp.lt.u64 {valid}, {e}, {n}"));
            let mut loaded: Vec<(Slot, Reg)> = Vec::new();
            for (b, sc) in bufs.iter().zip(&scale_of) {
                if !b.read {
                    continue;
                }
                let x = asm.f();
                asm.ins(format!("mov.f32 {x}, 0f00000000"));
                match (&b.scales, sc) {
                    (Some(_), Some((mapoff, mag))) => {
                        let (addr, code, code64, taddr, v) =
                            (asm.rd(), asm.r(), asm.rd(), asm.rd(), asm.f());
                        asm.ins(format!("add.s64 {addr}, {}, {e}", b.base));
                        asm.ins(format!("mov.u32 {code}, 0"));
                        asm.ins(format!("@{valid} ld.global.u8 {code}, [{addr}]"));
                        asm.ins(format!("cvt.u64.u32 {code64}, {code}"));
                        asm.ins(format!("mad.lo.u64 {taddr}, {code64}, 4, {mapoff}"));
                        asm.ins(format!("add.s64 {taddr}, {taddr}, {values_base}"));
                        asm.ins(format!("ld.const.f32 {v}, [{taddr}]"));
                        asm.ins(format!("mul.rn.f32 {x}, {v}, {mag}"));
                    }
                    _ => {
                        let d = self.kernel.storage.dtype(b.slot);
                        let addr = asm.rd();
                        if is_half(d) {
                            asm.ins(format!("mad.lo.u64 {addr}, {e}, 2, {}", b.base));
                            let w = convert::load_guarded(asm, d, &addr, &valid);
                            asm.ins(format!("mov.f32 {x}, {w}"));
                        } else {
                            asm.ins(format!("mad.lo.u64 {addr}, {e}, 4, {}", b.base));
                            asm.ins(format!("@{valid} ld.global.f32 {x}, [{addr}]"));
                        }
                    }
                }
                loaded.push((b.slot, x));
            }
            let mut env = prologue.clone();
            let load = |slot: Slot| {
                loaded
                    .iter()
                    .find(|(s, _)| *s == slot)
                    .map(|(_, r)| r.clone())
            };
            self.lower(asm, &mut env, true, uniforms, &load)?;
            for ((op, acc), r) in ops.iter().zip(accs).zip(&self.stage.reduce) {
                let x = env.f(r.value)?.clone();
                let d = self.fold(asm, *op, acc, &x);
                asm.ins(format!("selp.f32 {acc}, {d}, {acc}, {valid}"));
            }
            for store in &self.stage.stores {
                let (bi, b) = bufs
                    .iter()
                    .enumerate()
                    .find(|(_, b)| b.slot == store.slot && b.written)
                    .ok_or_else(|| Error::Internal("a stored buffer has no address".into()))?;
                let x = env.f(store.value)?.clone();
                if b.scales.is_some() {
                    // Out-of-range elements count as +0 (neither negative nor larger).
                    let v = asm.f();
                    asm.ins(format!("selp.f32 {v}, {x}, 0f00000000, {valid}"));
                    new_values[bi].push(v);
                } else {
                    let d = self.kernel.storage.dtype(store.slot);
                    let addr = asm.rd();
                    if is_half(d) {
                        asm.ins(format!("mad.lo.u64 {addr}, {e}, 2, {}", b.base));
                        let r = match sr_key {
                            Some(key) if self.kernel.storage.is_stochastic(store.slot) => {
                                Some(convert::sr_bits(asm, key, &e))
                            }
                            _ => None,
                        };
                        convert::store_guarded(asm, d, &addr, &x, r.as_ref(), &valid);
                    } else {
                        asm.ins(format!("mad.lo.u64 {addr}, {e}, 4, {}", b.base));
                        asm.ins(format!("@{valid} st.global.f32 [{addr}], {x}"));
                    }
                }
            }
            valid_of.push(valid);
            elems.push(e);
        }
        for (b, xs) in bufs.iter().zip(&new_values) {
            if let (Some(scales), false) = (&b.scales, xs.is_empty()) {
                self.store_quantized(asm, b, scales, xs, &valid_of, &elems, qb, lane0, &mids_base);
            }
        }
        Ok(())
    }

    /// Quantizes the warp's 256 new values of one int8 state (`xs`: this lane's 8) and stores
    /// the codes and, from lane 0, the scale word: `optc_kernel::int8::store_block`.
    #[allow(clippy::too_many_arguments)]
    fn store_quantized(
        &self,
        asm: &mut Asm,
        b: &Buf,
        scales: &Reg,
        xs: &[Reg],
        valid: &[Reg],
        elems: &[Reg],
        qb: &Reg,
        lane0: &Reg,
        mids_base: &Reg,
    ) {
        asm.comment("quantize the block");
        let (m, neg, nan) = (asm.f(), asm.p(), asm.p());
        asm.ins(format!("mov.f32 {m}, 0f00000000"));
        asm.ins(format!("setp.ne.u32 {neg}, 0, 0"));
        asm.ins(format!("setp.ne.u32 {nan}, 0, 0"));
        for x in xs {
            let (a, pn, pz) = (asm.f(), asm.p(), asm.p());
            asm.ins(format!("abs.f32 {a}, {x}"));
            asm.ins(format!("max.f32 {m}, {m}, {a}"));
            asm.ins(format!("setp.lt.f32 {pn}, {x}, 0f00000000"));
            asm.ins(format!("or.pred {neg}, {neg}, {pn}"));
            asm.ins(format!("setp.nan.f32 {pz}, {x}, {x}"));
            asm.ins(format!("or.pred {nan}, {nan}, {pz}"));
        }
        for s in [16, 8, 4, 2, 1] {
            let o = asm.f();
            asm.ins(format!("shfl.sync.bfly.b32 {o}, {m}, {s}, 31, -1"));
            asm.ins(format!("max.f32 {m}, {m}, {o}"));
        }
        let (any_neg, any_nan, signed) = (asm.p(), asm.p(), asm.p());
        asm.ins(format!("vote.sync.any.pred {any_neg}, {neg}, -1"));
        asm.ins(format!("vote.sync.any.pred {any_nan}, {nan}, -1"));
        asm.ins(format!("or.pred {signed}, {any_neg}, {any_nan}"));
        // absmax (NaN if a value is NaN), the reciprocal of max(absmax, 1e-38).
        let (absmax, t, inv) = (asm.f(), asm.f(), asm.f());
        asm.ins(format!("selp.f32 {absmax}, 0f7FC00000, {m}, {any_nan}"));
        asm.ins(format!("max.f32 {t}, {absmax}, {}", f32_imm(1e-38)));
        asm.ins(format!("div.rn.f32 {inv}, 0f3F800000, {t}"));
        let (mapoff, mapoff64, mids) = (asm.r(), asm.rd(), asm.rd());
        asm.ins(format!("selp.b32 {mapoff}, 0, 1024, {signed}"));
        asm.ins(format!("cvt.u64.u32 {mapoff64}, {mapoff}"));
        asm.ins(format!("add.s64 {mids}, {mids_base}, {mapoff64}"));
        for ((x, e), v) in xs.iter().zip(elems).zip(valid) {
            // clamp(x · inv, -1, 1), NaN staying NaN.
            let (s, lo, hi) = (asm.f(), asm.p(), asm.p());
            asm.ins(format!("mul.rn.f32 {s}, {x}, {inv}"));
            asm.ins(format!("setp.lt.f32 {lo}, {s}, 0fBF800000"));
            asm.ins(format!("selp.f32 {s}, 0fBF800000, {s}, {lo}"));
            asm.ins(format!("setp.gt.f32 {hi}, {s}, 0f3F800000"));
            asm.ins(format!("selp.f32 {s}, 0f3F800000, {s}, {hi}"));
            // The number of midpoints below s: binary lifting over the sorted 255.
            let code = asm.r();
            asm.ins(format!("mov.u32 {code}, 0"));
            for step in [128u32, 64, 32, 16, 8, 4, 2, 1] {
                let (idx, idx64, addr, mid, below, cand) =
                    (asm.r(), asm.rd(), asm.rd(), asm.f(), asm.p(), asm.r());
                asm.ins(format!("add.u32 {idx}, {code}, {}", step - 1));
                asm.ins(format!("cvt.u64.u32 {idx64}, {idx}"));
                asm.ins(format!("mad.lo.u64 {addr}, {idx64}, 4, {mids}"));
                asm.ins(format!("ld.const.f32 {mid}, [{addr}]"));
                asm.ins(format!("setp.lt.f32 {below}, {mid}, {s}"));
                asm.ins(format!("add.u32 {cand}, {code}, {step}"));
                asm.ins(format!("selp.b32 {code}, {cand}, {code}, {below}"));
            }
            let addr = asm.rd();
            asm.ins(format!("add.s64 {addr}, {}, {e}", b.base));
            asm.ins(format!("@{v} st.global.u8 [{addr}], {code}"));
        }
        // The scale word: absmax with the sign bit set for the signed map.
        let (bits, sbits, addr) = (asm.r(), asm.r(), asm.rd());
        asm.ins(format!("mov.b32 {bits}, {absmax}"));
        asm.ins(format!("or.b32 {sbits}, {bits}, -2147483648"));
        asm.ins(format!("selp.b32 {bits}, {sbits}, {bits}, {signed}"));
        asm.ins(format!("mad.lo.u64 {addr}, {qb}, 4, {scales}"));
        asm.ins(format!("@{lane0} st.global.b32 [{addr}], {bits}"));
    }
}
