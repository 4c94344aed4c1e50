//! Builds the function of one stage: the entry block (buffer pointers, uniforms, loop-invariant
//! nodes), then the loops: for a stage without reduce outputs, the unrolled f32x4 main loop, one
//! more f32x4 step when unrolled, and the tail through a stack copy; for a stage with reduce outputs,
//! the blocked loops of [`super::reduce`].

use super::convert;
use super::gen::Gen;
use super::math;
use super::plan::{buffer_index, Fused, Kind, Plan, StageView};
use super::Options;
use cranelift_codegen::ir::condcodes::{FloatCC, IntCC};
use cranelift_codegen::ir::types::{F32, F32X4, I64};
use cranelift_codegen::ir::{
    AbiParam, Block, BlockArg, Function, InstBuilder, MemFlagsData, Signature, StackSlotData,
    StackSlotKind, UserFuncName, Value,
};
use cranelift_codegen::isa::TargetFrontendConfig;
use cranelift_frontend::{FunctionBuilder, FunctionBuilderContext};
use optc_kernel::{BinaryOp, Dtype, Expr, Handle, UnaryOp};

/// Buffer element loads and stores: may be unaligned (any f32 address), never trap.
pub(super) fn elem_flags() -> MemFlagsData {
    MemFlagsData::new().with_notrap()
}

/// The lowered values of the body nodes for one vector of elements.
#[derive(Clone)]
pub(super) struct Env {
    num: Vec<Option<Value>>,
    mask: Vec<Option<Value>>,
    /// For a stochastic stage: the key (an i32x4 splat) and the call's first element index.
    sr: Option<(Value, Value)>,
}

/// A stage and its analysis.
pub(super) struct Lower<'k> {
    /// The stage.
    pub stage: StageView<'k>,
    /// Its analysis.
    pub plan: Plan,
}

impl Lower<'_> {
    fn num(&self, g: &mut Gen, env: &mut Env, h: Handle<Expr>) -> Value {
        let i = h.index();
        if let Some(v) = env.num[i] {
            return v;
        }
        // A boolean used as a number: 1.0 / 0.0. Every live node has its native form already.
        let m = env.mask[i].unwrap_or_else(|| g.i32s(0));
        let v = g.mask_to_num(m);
        env.num[i] = Some(v);
        v
    }

    fn mask(&self, g: &mut Gen, env: &mut Env, h: Handle<Expr>) -> Value {
        let i = h.index();
        if let Some(m) = env.mask[i] {
            return m;
        }
        let x = env.num[i].unwrap_or_else(|| g.f32s(0.0));
        let m = g.num_to_mask(x);
        env.mask[i] = Some(m);
        m
    }

    /// Lowers node `h` into `env`; `loaded` gives the f32x4 of each loaded buffer.
    fn node(
        &self,
        g: &mut Gen,
        env: &mut Env,
        h: Handle<Expr>,
        uniforms: Value,
        loaded: &[Option<Value>],
    ) {
        let i = h.index();
        if let Some(f) = self.plan.fused[i] {
            let (x, y, c, neg_c, neg_x) = match f {
                Fused::MulAdd(x, y, c) => (x, y, c, false, false),
                Fused::MulSub(x, y, c) => (x, y, c, true, false),
                Fused::NegMulAdd(x, y, c) => (x, y, c, false, true),
            };
            // Cranelift's `vfmadd213` overwrites its first factor. A loop-invariant factor (a
            // splat that lives across the loop) there costs a register copy per use, and copies
            // of this kind made the loop of AdamW several times slower than its arithmetic, so
            // the per-element factor goes first (the product is the same either way).
            let (x, y) = if self.plan.invariant[x.index()] && !self.plan.invariant[y.index()] {
                (y, x)
            } else {
                (x, y)
            };
            let mut xv = self.num(g, env, x);
            let yv = self.num(g, env, y);
            let mut cv = self.num(g, env, c);
            if neg_x {
                xv = g.b.ins().fneg(xv);
            }
            if neg_c {
                cv = g.b.ins().fneg(cv);
            }
            env.num[i] = Some(g.b.ins().fma(xv, yv, cv));
            return;
        }
        let e = self.stage.body[h];
        match e {
            Expr::Const(c) => env.num[i] = Some(g.f32s(c as f32)),
            Expr::Bool(b) => env.mask[i] = Some(g.i32s(if b { -1 } else { 0 })),
            Expr::Uniform(u) => {
                let off = i32::try_from(4 * u.index()).unwrap_or(i32::MAX);
                let s = g.b.ins().load(F32, MemFlagsData::trusted(), uniforms, off);
                env.num[i] = Some(g.b.ins().splat(F32X4, s));
            }
            Expr::Load(slot) => env.num[i] = loaded[buffer_index(slot)],
            Expr::Unary(op, a) => self.unary(g, env, i, op, a),
            Expr::Binary(op, a, b) => self.binary(g, env, i, op, a, b),
            Expr::Select(c, a, b) => {
                let m = self.mask(g, env, c);
                if self.plan.kind[i] == Kind::Mask {
                    let (av, bv) = (self.mask(g, env, a), self.mask(g, env, b));
                    env.mask[i] = Some(g.b.ins().bitselect(m, av, bv));
                } else {
                    let (av, bv) = (self.num(g, env, a), self.num(g, env, b));
                    env.num[i] = Some(g.sel(m, av, bv));
                }
            }
            // Not allowed in a validated body.
            Expr::Hyper(_)
            | Expr::Flag(_)
            | Expr::Step
            | Expr::Scalar(_)
            | Expr::Reduced(_)
            | Expr::Vector(_)
            | Expr::VecMean(_) => {
                env.num[i] = Some(g.f32s(f32::NAN));
            }
        }
        // Make the forms the users want, so invariant nodes get both before the loop.
        if self.plan.need_num[i] {
            self.num(g, env, h);
        }
        if self.plan.need_mask[i] {
            self.mask(g, env, h);
        }
    }

    fn unary(&self, g: &mut Gen, env: &mut Env, i: usize, op: UnaryOp, a: Handle<Expr>) {
        if op == UnaryOp::Not {
            let m = self.mask(g, env, a);
            env.mask[i] = Some(g.b.ins().bnot(m));
            return;
        }
        let x = self.num(g, env, a);
        let v = match op {
            UnaryOp::Neg => g.b.ins().fneg(x),
            UnaryOp::Sqrt => g.b.ins().sqrt(x),
            UnaryOp::Rsqrt => {
                let s = g.b.ins().sqrt(x);
                let one = g.f32s(1.0);
                g.b.ins().fdiv(one, s)
            }
            UnaryOp::Abs => g.b.ins().fabs(x),
            UnaryOp::Sign => {
                let (zero, one, minus_one) = (g.f32s(0.0), g.f32s(1.0), g.f32s(-1.0));
                let pos = g.cmp(FloatCC::GreaterThan, x, zero);
                let neg = g.cmp(FloatCC::LessThan, x, zero);
                let r = g.sel(neg, minus_one, x);
                g.sel(pos, one, r)
            }
            UnaryOp::Exp => math::exp(g, x),
            UnaryOp::Log => math::log(g, x),
            // Host-only ops: `Kernel::validate` refuses them in a body.
            UnaryOp::Not | UnaryOp::RoundBf16 => x,
        };
        env.num[i] = Some(v);
    }

    fn binary(
        &self,
        g: &mut Gen,
        env: &mut Env,
        i: usize,
        op: BinaryOp,
        a: Handle<Expr>,
        b: Handle<Expr>,
    ) {
        if op.is_logical() {
            let (am, bm) = (self.mask(g, env, a), self.mask(g, env, b));
            env.mask[i] = Some(match op {
                BinaryOp::And => g.b.ins().band(am, bm),
                _ => g.b.ins().bor(am, bm),
            });
            return;
        }
        if op == BinaryOp::Pow {
            if let Expr::Const(c) = self.stage.body[b] {
                if let Some(n) = math::small_int(c) {
                    let x = self.num(g, env, a);
                    env.num[i] = Some(math::powi(g, x, n));
                    return;
                }
            }
        }
        let (x, y) = (self.num(g, env, a), self.num(g, env, b));
        let cc = match op {
            BinaryOp::Lt => FloatCC::LessThan,
            BinaryOp::Le => FloatCC::LessThanOrEqual,
            BinaryOp::Gt => FloatCC::GreaterThan,
            BinaryOp::Ge => FloatCC::GreaterThanOrEqual,
            BinaryOp::Eq => FloatCC::Equal,
            BinaryOp::Ne => FloatCC::NotEqual,
            _ => {
                let v = match op {
                    BinaryOp::Add => g.b.ins().fadd(x, y),
                    BinaryOp::Sub => g.b.ins().fsub(x, y),
                    BinaryOp::Mul => g.b.ins().fmul(x, y),
                    BinaryOp::Div => g.b.ins().fdiv(x, y),
                    BinaryOp::Min => g.b.ins().fmin(x, y),
                    BinaryOp::Max => g.b.ins().fmax(x, y),
                    _ => math::pow(g, x, y),
                };
                env.num[i] = Some(v);
                return;
            }
        };
        env.mask[i] = Some(g.cmp(cc, x, y));
    }

    /// One vector of elements: loads every live-read buffer at element `offset` from `addrs[k]`,
    /// computes the per-element nodes, stores every written buffer. `index` (an i64) is the
    /// element index, from the call's first element, of `addrs`' elements (for stochastic
    /// rounding). Returns the f32x4 value of each reduce output, in stage order.
    pub fn vector(
        &self,
        g: &mut Gen,
        inv: &Env,
        addrs: &[Option<Value>],
        offset: i32,
        uniforms: Value,
        index: Value,
    ) -> Vec<Value> {
        let dtypes = &self.stage.dtypes;
        let loaded: Vec<Option<Value>> = addrs
            .iter()
            .zip(&self.plan.read)
            .zip(dtypes)
            .map(|((a, &r), &d)| match (a, r) {
                (Some(a), true) => Some(convert::load(g, d, *a, offset << convert::shift(d))),
                _ => None,
            })
            .collect();
        let mut env = inv.clone();
        for h in self.stage.body.handles() {
            if self.plan.live[h.index()] && !self.plan.invariant[h.index()] {
                self.node(g, &mut env, h, uniforms, &loaded);
            }
        }
        for s in self.stage.stores {
            let v = self.num(g, &mut env, s.value);
            let k = buffer_index(s.slot);
            if let Some(a) = addrs[k] {
                let r = match env.sr {
                    Some((key, base)) if s.slot == optc_kernel::Slot::Param => {
                        let first = g.b.ins().iadd(base, index);
                        let first = g.b.ins().iadd_imm_s(first, i64::from(offset));
                        Some(convert::sr_bits(g, key, first))
                    }
                    _ => None,
                };
                convert::store(g, dtypes[k], v, a, offset << convert::shift(dtypes[k]), r);
            }
        }
        self.stage
            .reduce
            .iter()
            .map(|&(_, v)| self.num(g, &mut env, v))
            .collect()
    }
}

pub(super) fn args(vals: &[Value]) -> Vec<BlockArg> {
    vals.iter().map(|&v| BlockArg::Value(v)).collect()
}

/// What the entry block made: the function's arguments, each used buffer's pointer, and the
/// loop-invariant nodes.
pub(super) struct Entry {
    /// The number of elements.
    pub n: Value,
    /// The uniforms' address.
    pub uniforms: Value,
    /// The partials' address and the distance between two reduce outputs' partials (in f32s),
    /// for a stage with reduce outputs.
    pub partials: Option<(Value, Value)>,
    /// The address of each buffer the stage reads or writes (in buffer order).
    pub ptrs: Vec<Option<Value>>,
    /// Whether each buffer is read or written.
    pub used: Vec<bool>,
    /// The invariant nodes' values.
    pub inv: Env,
}

/// Builds the whole function for one stage of a validated kernel.
pub(super) fn build(stage: StageView<'_>, opts: &Options, name: UserFuncName) -> Function {
    let reduces = !stage.reduce.is_empty();
    let mut sig = Signature::new(opts.call_conv);
    sig.params = vec![AbiParam::new(I64); if reduces { 5 } else { 3 }];
    let mut func = Function::with_name_signature(name, sig);
    let mut fctx = FunctionBuilderContext::new();
    let mut g = Gen::new(FunctionBuilder::new(&mut func, &mut fctx));
    let plan = Plan::new(&stage, opts.fma);
    let lower = Lower { stage, plan };

    // Entry: buffer pointers, uniforms and every loop-invariant node.
    let entry_block = g.b.create_block();
    g.b.append_block_params_for_function_params(entry_block);
    g.b.switch_to_block(entry_block);
    let params = g.b.block_params(entry_block).to_vec();
    let (bufs, n, uniforms) = (params[0], params[1], params[2]);
    let nbuf = lower.plan.read.len();
    let used: Vec<bool> = (0..nbuf)
        .map(|k| lower.plan.read[k] || lower.plan.written[k])
        .collect();
    let ptrs: Vec<Option<Value>> = (0..nbuf)
        .map(|k| {
            used[k].then(|| {
                let off = i32::try_from(8 * k).unwrap_or(i32::MAX);
                g.b.ins().load(I64, MemFlagsData::trusted(), bufs, off)
            })
        })
        .collect();
    let n_nodes = lower.stage.body.len();
    let sr = lower
        .stage
        .stochastic
        .map(|nu| convert::sr_args(&mut g, uniforms, nu));
    let mut inv = Env {
        num: vec![None; n_nodes],
        mask: vec![None; n_nodes],
        sr,
    };
    for h in lower.stage.body.handles() {
        if lower.plan.live[h.index()] && lower.plan.invariant[h.index()] {
            lower.node(&mut g, &mut inv, h, uniforms, &[]);
        }
    }
    let entry = Entry {
        n,
        uniforms,
        partials: reduces.then(|| (params[3], params[4])),
        ptrs,
        used,
        inv,
    };
    if let Some((partials, stride)) = entry.partials {
        super::reduce::loops(&mut g, &lower, &entry, partials, stride);
    } else {
        elementwise(&mut g, &lower, &entry, opts.unroll);
    }

    g.b.seal_all_blocks();
    g.b.finalize(TargetFrontendConfig {
        default_call_conv: opts.call_conv,
        pointer_width: target_lexicon::PointerWidth::U64,
        page_size_align_log2: 12,
    });
    func
}

/// Moves every buffer pointer on by `elems` elements (an i64) of its dtype.
pub(super) fn offset_ptrs(
    g: &mut Gen,
    ptrs: &[Option<Value>],
    dtypes: &[Dtype],
    elems: Value,
) -> Vec<Option<Value>> {
    // One byte offset per value size, made where the first pointer needs it.
    let mut offs: Vec<(i64, Value)> = Vec::new();
    ptrs.iter()
        .zip(dtypes)
        .map(|(p, &d)| {
            p.map(|p| {
                let sh = convert::shift(d);
                let off = match offs.iter().find(|(s, _)| *s == sh) {
                    Some(&(_, off)) => off,
                    None => {
                        let off = g.b.ins().ishl_imm_u(elems, sh);
                        offs.push((sh, off));
                        off
                    }
                };
                g.b.ins().iadd(p, off)
            })
        })
        .collect()
}

/// Stack buffers of `bytes` bytes, one per used buffer, zeroed; returns their addresses.
pub(super) fn zeroed_slots(g: &mut Gen, used: &[bool], bytes: u32) -> Vec<Option<Value>> {
    let slots: Vec<Option<Value>> = used
        .iter()
        .map(|&u| {
            u.then(|| {
                let ss = g.b.create_sized_stack_slot(StackSlotData::new(
                    StackSlotKind::ExplicitSlot,
                    bytes,
                    4,
                ));
                g.b.ins().stack_addr(I64, ss, 0)
            })
        })
        .collect();
    let zero_v = g.f32s(0.0);
    for s in slots.iter().flatten() {
        for k in 0..bytes / 16 {
            g.b.ins()
                .store(MemFlagsData::trusted(), zero_v, *s, 16 * k as i32);
        }
    }
    slots
}

/// Copies elements `[first, first + count)` of each buffer with `which[k]` between the buffer
/// and its stack slot (into the slots when `into_slots`, else back out), in a loop made of the
/// blocks `hdr` and `body`; continues at `done`. The current block must end with a jump to
/// `hdr` passing `0`.
#[allow(clippy::too_many_arguments)]
pub(super) fn copy_loop(
    g: &mut Gen,
    dtypes: &[Dtype],
    ptrs: &[Option<Value>],
    slots: &[Option<Value>],
    first: Value,
    count: Value,
    which: &[bool],
    into_slots: bool,
    (hdr, body, done): (Block, Block, Block),
) {
    let j = g.b.append_block_param(hdr, I64);
    g.b.switch_to_block(hdr);
    let more = g.b.ins().icmp(IntCC::UnsignedLessThan, j, count);
    g.b.ins().brif(more, body, &[], done, &[]);
    g.b.switch_to_block(body);
    let idx = g.b.ins().iadd(first, j);
    // The byte offsets in the buffers and in the slots, one pair per value size.
    let mut offs: Vec<(i64, Value, Value)> = Vec::new();
    for k in 0..ptrs.len() {
        if let (true, Some(p), Some(s)) = (which[k], ptrs[k], slots[k]) {
            let sh = convert::shift(dtypes[k]);
            let (off, soff) = match offs.iter().find(|(s, _, _)| *s == sh) {
                Some(&(_, off, soff)) => (off, soff),
                None => {
                    let off = g.b.ins().ishl_imm_u(idx, sh);
                    let soff = g.b.ins().ishl_imm_u(j, sh);
                    offs.push((sh, off, soff));
                    (off, soff)
                }
            };
            let ea = g.b.ins().iadd(p, off);
            let sa = g.b.ins().iadd(s, soff);
            let (from, to, ff, tf) = if into_slots {
                (ea, sa, elem_flags(), MemFlagsData::trusted())
            } else {
                (sa, ea, MemFlagsData::trusted(), elem_flags())
            };
            convert::copy_one(g, dtypes[k], from, to, (ff, tf));
        }
    }
    let next = g.b.ins().iadd_imm_s(j, 1);
    g.b.ins().jump(hdr, &args(&[next]));
}

/// The loops of a stage without reduce outputs: `unroll` vectors per iteration, one more vector
/// when unrolled, and the last `n % 4` elements through a zeroed 4-lane stack copy of each buffer.
fn elementwise(g: &mut Gen, lower: &Lower<'_>, e: &Entry, unroll: u32) {
    let plan = &lower.plan;
    let step = 4 * i64::from(unroll);
    let (n, uniforms, inv) = (e.n, e.uniforms, &e.inv);

    let main_hdr = g.b.create_block();
    let main_body = g.b.create_block();
    let after_main = g.b.create_block();
    let one_body = g.b.create_block();
    let tail_hdr = g.b.create_block();
    let tail_body = g.b.create_block();
    let cin_hdr = g.b.create_block();
    let cin_body = g.b.create_block();
    let compute = g.b.create_block();
    let cout_hdr = g.b.create_block();
    let cout_body = g.b.create_block();
    let exit = g.b.create_block();

    let n_main = g.b.ins().band_imm_s(n, -step);
    let zero = g.b.ins().iconst(I64, 0);
    let jump = g.b.ins().jump(main_hdr, &args(&[zero]));
    g.hoist = Some(jump);

    // Main loop: `unroll` vectors per iteration while a whole iteration fits.
    let i = g.b.append_block_param(main_hdr, I64);
    g.b.switch_to_block(main_hdr);
    let more = g.b.ins().icmp(IntCC::UnsignedLessThan, i, n_main);
    g.b.ins()
        .brif(more, main_body, &[], after_main, &args(&[i]));

    g.b.switch_to_block(main_body);
    let dtypes = &lower.stage.dtypes;
    let addrs = offset_ptrs(g, &e.ptrs, dtypes, i);
    for k in 0..unroll {
        lower.vector(g, inv, &addrs, 4 * k as i32, uniforms, i);
    }
    let next = g.b.ins().iadd_imm_s(i, step);
    g.b.ins().jump(main_hdr, &args(&[next]));

    // One more single vector when unrolled.
    let i = g.b.append_block_param(after_main, I64);
    g.b.switch_to_block(after_main);
    if unroll > 1 {
        let rem = g.b.ins().isub(n, i);
        let fits =
            g.b.ins()
                .icmp_imm_u(IntCC::UnsignedGreaterThanOrEqual, rem, 4);
        g.b.ins().brif(fits, one_body, &[], tail_hdr, &args(&[i]));
        g.b.switch_to_block(one_body);
        let addrs = offset_ptrs(g, &e.ptrs, dtypes, i);
        lower.vector(g, inv, &addrs, 0, uniforms, i);
        let next = g.b.ins().iadd_imm_s(i, 4);
        g.b.ins().jump(tail_hdr, &args(&[next]));
    } else {
        g.b.ins().jump(tail_hdr, &args(&[i]));
        g.b.switch_to_block(one_body);
        g.b.ins().jump(exit, &[]);
    }

    // Tail: the last `n % 4` elements go through a zeroed 4-lane stack copy of each buffer.
    let i = g.b.append_block_param(tail_hdr, I64);
    g.b.switch_to_block(tail_hdr);
    let rem = g.b.ins().isub(n, i);
    g.b.ins().brif(rem, tail_body, &[], exit, &[]);

    g.b.switch_to_block(tail_body);
    let slots = zeroed_slots(g, &e.used, 16);
    let zero = g.b.ins().iconst(I64, 0);
    g.b.ins().jump(cin_hdr, &args(&[zero]));
    let ptrs = &e.ptrs;
    copy_loop(
        g,
        dtypes,
        ptrs,
        &slots,
        i,
        rem,
        &plan.read,
        true,
        (cin_hdr, cin_body, compute),
    );

    g.b.switch_to_block(compute);
    lower.vector(g, inv, &slots, 0, uniforms, i);
    let zero = g.b.ins().iconst(I64, 0);
    g.b.ins().jump(cout_hdr, &args(&[zero]));
    copy_loop(
        g,
        dtypes,
        ptrs,
        &slots,
        i,
        rem,
        &plan.written,
        false,
        (cout_hdr, cout_body, exit),
    );

    g.b.switch_to_block(exit);
    g.b.ins().return_(&[]);
}
