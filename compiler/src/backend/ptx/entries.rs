//! The three entries of an elementwise stage (one without reduce outputs; see `reduce.rs` for
//! the others): vector (`ld/st.global.v4.f32` grid-stride loop with a scalar
//! tail), scalar (grid-stride loop of single elements, for buffers that are not 16-byte aligned),
//! and multi-tensor (blocks walk a chunk list over a device-side tensor table).
//!
//! Takes the [`Lowering`] of a stage; gives each entry's complete `.entry` text. Every buffer
//! that the body reads is loaded once per element, every written buffer stored once. The
//! parameters of every entry are declared from [`optc_kernel::abi`], the list the artifact
//! carries.

use super::asm::{Asm, Reg};
use super::body::{Env, Lowering};
use super::layout::{TableLayout, CHUNK_RECORD_BYTES, FLAG_ALIGNED};
use super::Error;
use optc_kernel::abi::{multi_params, single_params, Param};
use optc_kernel::{BufferUse, Slot};

/// A buffer that the body touches, with its global base address register.
struct Base {
    use_: BufferUse,
    reg: Reg,
}

/// Registers shared by the sections of one entry.
pub(crate) struct Frame {
    bases: Vec<Base>,
    uniforms: Vec<Option<Reg>>,
    /// The tensor's stochastic-rounding key (`.b32`), for a kernel that rounds stochastically.
    sr_key: Option<Reg>,
    prologue: Env,
}

/// The `.entry` line and its parameter declarations.
pub(crate) fn header(name: &str, params: &[String]) -> String {
    let list: Vec<String> = params.iter().map(|p| format!("\t{p}")).collect();
    format!(".visible .entry {name}(\n{}\n)\n", list.join(",\n"))
}

/// The complete `.entry` text: the header with the parameter declarations `params`, then the
/// body `asm`.
pub(crate) fn entry_text(name: &str, params: &[String], asm: Asm) -> String {
    format!("{}{{\n{}}}\n", header(name, params), asm.finish())
}

/// The declarations of `params`, the parameters of entry `name`.
pub(crate) fn param_decls(name: &str, params: &[Param]) -> Vec<String> {
    params
        .iter()
        .map(|p| format!(".param .{} {}", p.ptx_type(), p.ptx_name(name)))
        .collect()
}

impl Lowering<'_> {
    /// The declarations of the single-tensor entries' parameters.
    pub(crate) fn single_param_decls(&self, name: &str) -> Vec<String> {
        param_decls(name, &single_params(self.kernel, self.stage_index))
    }

    /// The declarations of the multi-tensor entry's parameters.
    pub(crate) fn multi_param_decls(&self, name: &str) -> Vec<String> {
        param_decls(name, &multi_params())
    }

    fn used_buffers(&self) -> Vec<(usize, BufferUse)> {
        self.kernel
            .stage_buffers(self.stage_index)
            .into_iter()
            .enumerate()
            .filter(|(_, b)| b.read || b.written)
            .collect()
    }

    /// Loads the single-tensor parameters and lowers the uniform nodes. Gives the frame, `n`
    /// and, in a reducing stage, the partials address.
    pub(crate) fn single_frame(
        &self,
        asm: &mut Asm,
        name: &str,
    ) -> Result<(Frame, Reg, Option<Reg>), Error> {
        let mut bases = Vec::new();
        for (i, use_) in self.used_buffers() {
            let reg = global_param(asm, &Param::Buffer { index: i }.ptx_name(name));
            bases.push(Base { use_, reg });
        }
        let n = asm.rd();
        asm.ins(format!("ld.param.u64 {n}, [{}]", Param::Len.ptx_name(name)));
        let tail = self.single_tail(asm, name);
        let frame = self.frame(asm, bases, tail.uniforms, tail.sr_key)?;
        Ok((frame, n, tail.partials))
    }

    /// Loads the single-tensor parameters after the buffers and `n`: the partials address (in a
    /// reducing stage), the used uniforms and the stochastic-rounding key.
    pub(crate) fn single_tail(&self, asm: &mut Asm, name: &str) -> SingleTail {
        let partials = (!self.stage.reduce.is_empty())
            .then(|| global_param(asm, &Param::Partials.ptx_name(name)));
        let mut uniforms = vec![None; self.stage.uniforms.len()];
        for (u, used) in self.plan.uniform_used.iter().enumerate() {
            if *used {
                let r = asm.f();
                let param = Param::Uniform { index: u }.ptx_name(name);
                asm.ins(format!("ld.param.f32 {r}, [{param}]"));
                uniforms[u] = Some(r);
            }
        }
        let sr_key = optc_kernel::abi::stochastic(self.kernel).then(|| {
            let r = asm.r();
            asm.ins(format!(
                "ld.param.u32 {r}, [{}]",
                Param::SrKey.ptx_name(name)
            ));
            r
        });
        SingleTail {
            partials,
            uniforms,
            sr_key,
        }
    }

    /// Lowers the uniform nodes (once per tensor, before any element) into a fresh environment.
    pub(crate) fn uniform_nodes(
        &self,
        asm: &mut Asm,
        uniforms: &[Option<Reg>],
    ) -> Result<Env, Error> {
        let mut prologue = Env::new(&self.stage.body);
        asm.comment("uniform nodes");
        self.lower(asm, &mut prologue, false, uniforms, &|_| None)?;
        Ok(prologue)
    }

    fn frame(
        &self,
        asm: &mut Asm,
        bases: Vec<Base>,
        uniforms: Vec<Option<Reg>>,
        sr_key: Option<Reg>,
    ) -> Result<Frame, Error> {
        let prologue = self.uniform_nodes(asm, &uniforms)?;
        Ok(Frame {
            bases,
            uniforms,
            sr_key,
            prologue,
        })
    }

    /// `(gid, stride)`: this thread's index in the grid and the number of threads in the grid.
    pub(crate) fn grid_index(&self, asm: &mut Asm) -> (Reg, Reg) {
        let Ids {
            ctaid,
            ntid,
            tid,
            nctaid,
        } = thread_ids(asm);
        let (tid64, gid, stride) = (asm.rd(), asm.rd(), asm.rd());
        asm.ins(format!("cvt.u64.u32 {tid64}, {tid}"));
        asm.ins(format!("mad.wide.u32 {gid}, {ctaid}, {ntid}, {tid64}"));
        asm.ins(format!("mul.wide.u32 {stride}, {nctaid}, {ntid}"));
        (gid, stride)
    }

    /// The body on `lanes` (4 or 1) consecutive elements at byte offset `off` (16-byte aligned
    /// for 4): loads, the body, stores. Gives the f32 register of each reduce output (in the
    /// stage's order) for each of the elements.
    pub(crate) fn elements(
        &self,
        asm: &mut Asm,
        frame: &Frame,
        off: &Reg,
        lanes: usize,
    ) -> Result<Vec<Vec<Reg>>, Error> {
        let (ld, st) = if lanes == 4 {
            ("ld.global.v4.f32", "st.global.v4.f32")
        } else {
            ("ld.global.f32", "st.global.f32")
        };
        let mut addrs: Vec<(Slot, Reg)> = Vec::new();
        let mut loaded: Vec<(Slot, Vec<Reg>)> = Vec::new();
        // `off` counts 4-byte values; a 16-bit buffer's offset is half of it.
        let mut half_off: Option<Reg> = None;
        for base in &frame.bases {
            let dtype = self.kernel.storage.dtype(base.use_.slot);
            let addr = asm.rd();
            if super::convert::is_half(dtype) {
                let h = half_off.get_or_insert_with(|| {
                    let h = asm.rd();
                    asm.ins(format!("shr.u64 {h}, {off}, 1"));
                    h
                });
                asm.ins(format!("add.s64 {addr}, {}, {h}", base.reg));
            } else {
                asm.ins(format!("add.s64 {addr}, {}, {off}", base.reg));
            }
            if base.use_.read {
                let regs = if super::convert::is_half(dtype) {
                    super::convert::load(asm, dtype, &addr, lanes)
                } else {
                    let regs: Vec<Reg> = (0..lanes).map(|_| asm.f()).collect();
                    asm.ins(format!("{ld} {}, [{addr}]", vector(&regs)));
                    regs
                };
                loaded.push((base.use_.slot, regs));
            }
            addrs.push((base.use_.slot, addr));
        }
        let mut envs = Vec::with_capacity(lanes);
        for lane in 0..lanes {
            let mut env = frame.prologue.clone();
            let load = |slot: Slot| {
                loaded
                    .iter()
                    .find(|(s, _)| *s == slot)
                    .and_then(|(_, regs)| regs.get(lane).cloned())
            };
            if lanes > 1 {
                asm.comment(format!("lane {lane}"));
            }
            self.lower(asm, &mut env, true, &frame.uniforms, &load)?;
            envs.push(env);
        }
        for store in &self.stage.stores {
            let addr = addrs
                .iter()
                .find(|(s, _)| *s == store.slot)
                .map(|(_, a)| a)
                .ok_or_else(|| Error::Internal("a stored buffer has no address".into()))?;
            let regs = envs
                .iter()
                .map(|env| env.f(store.value).cloned())
                .collect::<Result<Vec<Reg>, Error>>()?;
            let dtype = self.kernel.storage.dtype(store.slot);
            if super::convert::is_half(dtype) {
                let rs = match &frame.sr_key {
                    Some(key) if self.kernel.storage.is_stochastic(store.slot) => {
                        Some(self.sr_words(asm, key, off, lanes))
                    }
                    _ => None,
                };
                super::convert::store(asm, dtype, addr, &regs, rs.as_deref());
            } else {
                asm.ins(format!("{st} [{addr}], {}", vector(&regs)));
            }
        }
        self.stage
            .reduce
            .iter()
            .map(|r| envs.iter().map(|env| env.f(r.value).cloned()).collect())
            .collect()
    }

    /// The random words of the `lanes` elements at byte offset `off` (4 bytes per element).
    fn sr_words(&self, asm: &mut Asm, key: &Reg, off: &Reg, lanes: usize) -> Vec<Reg> {
        let e0 = asm.rd();
        asm.ins(format!("shr.u64 {e0}, {off}, 2"));
        (0..lanes)
            .map(|k| {
                let e = if k == 0 {
                    e0.clone()
                } else {
                    let e = asm.rd();
                    asm.ins(format!("add.s64 {e}, {e0}, {k}"));
                    e
                };
                super::convert::sr_bits(asm, key, &e)
            })
            .collect()
    }

    /// The vector entry: a grid-stride loop over groups of 4 elements, then the `n % 4` tail
    /// elements, one per thread of the first threads of the grid.
    pub(crate) fn vector_entry(&self, name: &str) -> Result<String, Error> {
        let mut asm = Asm::default();
        let (frame, n, _) = self.single_frame(&mut asm, name)?;
        let (gid, stride) = self.grid_index(&mut asm);
        let (groups, i, off, p) = (asm.rd(), asm.rd(), asm.rd(), asm.p());
        let (body, tail, done) = (asm.label("vec_body"), asm.label("tail"), asm.label("done"));
        asm.ins(format!("shr.u64 {groups}, {n}, 2"));
        asm.ins(format!("mov.u64 {i}, {gid}"));
        asm.ins(format!("setp.ge.u64 {p}, {i}, {groups}"));
        asm.ins(format!("@{p} bra {tail}"));
        asm.place(&body);
        asm.ins(format!("shl.b64 {off}, {i}, 4"));
        self.elements(&mut asm, &frame, &off, 4)?;
        asm.loop_back(&i, &stride, &groups, &p, &body);
        asm.place(&tail);
        let (j, toff, q) = (asm.rd(), asm.rd(), asm.p());
        asm.ins(format!("shl.b64 {j}, {groups}, 2"));
        asm.ins(format!("add.s64 {j}, {j}, {gid}"));
        asm.ins(format!("setp.ge.u64 {q}, {j}, {n}"));
        asm.ins(format!("@{q} bra {done}"));
        asm.ins(format!("shl.b64 {toff}, {j}, 2"));
        self.elements(&mut asm, &frame, &toff, 1)?;
        asm.place(&done);
        asm.ins("ret");
        Ok(entry_text(name, &self.single_param_decls(name), asm))
    }

    /// The scalar entry: a grid-stride loop over single elements; any alignment of 4 bytes.
    pub(crate) fn scalar_entry(&self, name: &str) -> Result<String, Error> {
        let mut asm = Asm::default();
        let (frame, n, _) = self.single_frame(&mut asm, name)?;
        let (gid, stride) = self.grid_index(&mut asm);
        let (i, off, p) = (asm.rd(), asm.rd(), asm.p());
        let (body, done) = (asm.label("body"), asm.label("done"));
        asm.ins(format!("mov.u64 {i}, {gid}"));
        asm.ins(format!("setp.ge.u64 {p}, {i}, {n}"));
        asm.ins(format!("@{p} bra {done}"));
        asm.place(&body);
        asm.ins(format!("shl.b64 {off}, {i}, 2"));
        self.elements(&mut asm, &frame, &off, 1)?;
        asm.loop_back(&i, &stride, &n, &p, &body);
        asm.place(&done);
        asm.ins("ret");
        Ok(entry_text(name, &self.single_param_decls(name), asm))
    }

    /// Reads chunk `c`'s record: gives the address of its tensor's record and the chunk's index
    /// within the tensor (u64).
    pub(crate) fn chunk_record(
        &self,
        asm: &mut Asm,
        layout: &TableLayout,
        chunks: &Reg,
        table: &Reg,
        c: &Reg,
    ) -> (Reg, Reg) {
        let (crec, ti, ki, ti64, ki64, rec) =
            (asm.rd(), asm.r(), asm.r(), asm.rd(), asm.rd(), asm.rd());
        asm.ins(format!(
            "mad.lo.u64 {crec}, {c}, {CHUNK_RECORD_BYTES}, {chunks}"
        ));
        asm.ins(format!("ld.global.u32 {ti}, [{crec}]"));
        asm.ins(format!("ld.global.u32 {ki}, [{crec}+4]"));
        asm.ins(format!("cvt.u64.u32 {ti64}, {ti}"));
        asm.ins(format!("cvt.u64.u32 {ki64}, {ki}"));
        asm.ins(format!(
            "mad.lo.u64 {rec}, {ti64}, {}, {table}",
            layout.stride()
        ));
        (rec, ki64)
    }

    /// Reads a tensor record at `rec` (buffer pointers, `n`, flags, uniforms) and lowers the
    /// uniform nodes. Gives the frame, `n` and the flags.
    pub(crate) fn record_frame(
        &self,
        asm: &mut Asm,
        layout: &TableLayout,
        rec: &Reg,
    ) -> Result<(Frame, Reg, Reg), Error> {
        let mut bases = Vec::new();
        for (i, use_) in self.used_buffers() {
            let (raw, reg) = (asm.rd(), asm.rd());
            asm.ins(format!(
                "ld.global.u64 {raw}, [{rec}+{}]",
                layout.pointer_offset(i)
            ));
            asm.ins(format!("cvta.to.global.u64 {reg}, {raw}"));
            bases.push(Base { use_, reg });
        }
        let (n, flags) = (asm.rd(), asm.r());
        asm.ins(format!(
            "ld.global.u64 {n}, [{rec}+{}]",
            layout.len_offset()
        ));
        asm.ins(format!(
            "ld.global.u32 {flags}, [{rec}+{}]",
            layout.flags_offset()
        ));
        let mut uniforms = vec![None; self.stage.uniforms.len()];
        for (u, used) in self.plan.uniform_used.iter().enumerate() {
            if *used {
                let r = asm.f();
                asm.ins(format!(
                    "ld.global.f32 {r}, [{rec}+{}]",
                    layout.uniform_offset(u)
                ));
                uniforms[u] = Some(r);
            }
        }
        let sr_key = layout.sr_key_offset().map(|off| {
            let r = asm.r();
            asm.ins(format!("ld.global.u32 {r}, [{rec}+{off}]"));
            r
        });
        let frame = self.frame(asm, bases, uniforms, sr_key)?;
        Ok((frame, n, flags))
    }

    /// The multi-tensor entry. Parameters: the tensor table, the chunk list, the number of
    /// chunks, and the chunk size in elements (a multiple of 4). Each block takes chunks
    /// `blockIdx.x, blockIdx.x + gridDim.x, ...`; for each it reads the tensor's record, computes
    /// the tensor's uniform nodes, and steps the chunk's elements: groups of 4 when the record
    /// says the tensor is aligned, then single elements.
    pub(crate) fn multi_entry(&self, name: &str) -> Result<String, Error> {
        let layout = TableLayout::of_stage(self.kernel, self.stage_index);
        let params = self.multi_param_decls(name);
        let mut asm = Asm::default();
        let MultiParams {
            table,
            chunks,
            num_chunks,
            chunk_elems,
        } = multi_prologue(&mut asm, name);
        let Ids {
            ctaid,
            ntid,
            tid,
            nctaid,
        } = thread_ids(&mut asm);
        let (c, tid64, ntid64, nctaid64) = (asm.rd(), asm.rd(), asm.rd(), asm.rd());
        asm.ins(format!("cvt.u64.u32 {c}, {ctaid}"));
        asm.ins(format!("cvt.u64.u32 {tid64}, {tid}"));
        asm.ins(format!("cvt.u64.u32 {ntid64}, {ntid}"));
        asm.ins(format!("cvt.u64.u32 {nctaid64}, {nctaid}"));
        let p = asm.p();
        let (chunk_loop, done) = (asm.label("chunk"), asm.label("done"));
        asm.ins(format!("setp.ge.u64 {p}, {c}, {num_chunks}"));
        asm.ins(format!("@{p} bra {done}"));
        asm.place(&chunk_loop);

        let (rec, ki64) = self.chunk_record(&mut asm, &layout, &chunks, &table, &c);
        let (frame, n, flags) = self.record_frame(&mut asm, &layout, &rec)?;

        // The chunk's range [start, end) and its vector part [start, vend).
        let (start, end0, end, len, vlen, vend) =
            (asm.rd(), asm.rd(), asm.rd(), asm.rd(), asm.rd(), asm.rd());
        let (aligned_bit, aligned) = (asm.r(), asm.p());
        asm.ins(format!("mul.lo.u64 {start}, {ki64}, {chunk_elems}"));
        asm.ins(format!("add.s64 {end0}, {start}, {chunk_elems}"));
        asm.ins(format!("min.u64 {end}, {end0}, {n}"));
        asm.ins(format!("sub.s64 {len}, {end}, {start}"));
        asm.ins(format!("and.b64 {vlen}, {len}, -4"));
        asm.ins(format!("and.b32 {aligned_bit}, {flags}, {FLAG_ALIGNED}"));
        asm.ins(format!("setp.ne.u32 {aligned}, {aligned_bit}, 0"));
        asm.ins(format!("selp.b64 {vlen}, {vlen}, 0, {aligned}"));
        asm.ins(format!("add.s64 {vend}, {start}, {vlen}"));

        // Groups of 4: i = start + 4 * tid, step 4 * ntid.
        let (i, vstep, off, q) = (asm.rd(), asm.rd(), asm.rd(), asm.p());
        let (vbody, scalar) = (asm.label("vec_body"), asm.label("scalar"));
        asm.ins(format!("shl.b64 {i}, {tid64}, 2"));
        asm.ins(format!("add.s64 {i}, {i}, {start}"));
        asm.ins(format!("shl.b64 {vstep}, {ntid64}, 2"));
        asm.ins(format!("setp.ge.u64 {q}, {i}, {vend}"));
        asm.ins(format!("@{q} bra {scalar}"));
        asm.place(&vbody);
        asm.ins(format!("shl.b64 {off}, {i}, 2"));
        self.elements(&mut asm, &frame, &off, 4)?;
        asm.loop_back(&i, &vstep, &vend, &q, &vbody);

        // Single elements: j = vend + tid, step ntid.
        asm.place(&scalar);
        let (j, soff, r) = (asm.rd(), asm.rd(), asm.p());
        let (sbody, next) = (asm.label("scalar_body"), asm.label("next"));
        asm.ins(format!("add.s64 {j}, {vend}, {tid64}"));
        asm.ins(format!("setp.ge.u64 {r}, {j}, {end}"));
        asm.ins(format!("@{r} bra {next}"));
        asm.place(&sbody);
        asm.ins(format!("shl.b64 {soff}, {j}, 2"));
        self.elements(&mut asm, &frame, &soff, 1)?;
        asm.loop_back(&j, &ntid64, &end, &r, &sbody);

        asm.place(&next);
        asm.loop_back(&c, &nctaid64, &num_chunks, &p, &chunk_loop);
        asm.place(&done);
        asm.ins("ret");
        Ok(entry_text(name, &params, asm))
    }
}

/// The single-tensor parameters that follow the buffers and `n` ([`Lowering::single_tail`]).
pub(crate) struct SingleTail {
    /// The partials address, in a reducing stage.
    pub(crate) partials: Option<Reg>,
    /// The register of each used uniform.
    pub(crate) uniforms: Vec<Option<Reg>>,
    /// The stochastic-rounding key, for a kernel that rounds stochastically.
    pub(crate) sr_key: Option<Reg>,
}

/// A thread's special registers (u32).
pub(crate) struct Ids {
    /// `%ctaid.x`.
    pub(crate) ctaid: Reg,
    /// `%ntid.x`.
    pub(crate) ntid: Reg,
    /// `%tid.x`.
    pub(crate) tid: Reg,
    /// `%nctaid.x`.
    pub(crate) nctaid: Reg,
}

/// Moves `%ctaid.x`, `%ntid.x`, `%tid.x` and `%nctaid.x` into fresh registers.
pub(crate) fn thread_ids(asm: &mut Asm) -> Ids {
    let (ctaid, ntid, tid, nctaid) = (asm.r(), asm.r(), asm.r(), asm.r());
    asm.ins(format!("mov.u32 {ctaid}, %ctaid.x"));
    asm.ins(format!("mov.u32 {ntid}, %ntid.x"));
    asm.ins(format!("mov.u32 {tid}, %tid.x"));
    asm.ins(format!("mov.u32 {nctaid}, %nctaid.x"));
    Ids {
        ctaid,
        ntid,
        tid,
        nctaid,
    }
}

/// Loads a `.u64` pointer parameter and converts it to a global address.
pub(crate) fn global_param(asm: &mut Asm, param: &str) -> Reg {
    let (raw, reg) = (asm.rd(), asm.rd());
    asm.ins(format!("ld.param.u64 {raw}, [{param}]"));
    asm.ins(format!("cvta.to.global.u64 {reg}, {raw}"));
    reg
}

/// The parameters of a multi-tensor entry, loaded.
pub(crate) struct MultiParams {
    /// The tensor table (global address).
    pub(crate) table: Reg,
    /// The chunk list (global address).
    pub(crate) chunks: Reg,
    /// The number of chunks.
    pub(crate) num_chunks: Reg,
    /// The chunk size in elements.
    pub(crate) chunk_elems: Reg,
}

/// Loads the parameters of multi-tensor entry `name`.
pub(crate) fn multi_prologue(asm: &mut Asm, name: &str) -> MultiParams {
    let (table, chunks, raw_t, raw_c, num_chunks, chunk_elems) =
        (asm.rd(), asm.rd(), asm.rd(), asm.rd(), asm.rd(), asm.rd());
    asm.ins(format!("ld.param.u64 {raw_t}, [{name}_table]"));
    asm.ins(format!("cvta.to.global.u64 {table}, {raw_t}"));
    asm.ins(format!("ld.param.u64 {raw_c}, [{name}_chunks]"));
    asm.ins(format!("cvta.to.global.u64 {chunks}, {raw_c}"));
    asm.ins(format!("ld.param.u64 {num_chunks}, [{name}_num_chunks]"));
    asm.ins(format!("ld.param.u64 {chunk_elems}, [{name}_chunk_elems]"));
    MultiParams {
        table,
        chunks,
        num_chunks,
        chunk_elems,
    }
}

/// `{a, b, c, d}` for a vector operand, or the register alone for one lane.
fn vector(regs: &[Reg]) -> String {
    if regs.len() == 1 {
        return regs[0].to_string();
    }
    let names: Vec<&str> = regs.iter().map(Reg::as_str).collect();
    format!("{{{}}}", names.join(", "))
}
