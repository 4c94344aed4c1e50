//! The per-element body: which nodes run where, and the PTX of every op.
//!
//! Takes one [`Stage`] of a validated [`Kernel`] and gives, for one entry, the instructions of
//! the stage's body for one element (one lane). Nodes that do not depend on any load ("uniform" nodes: constants,
//! uniforms and what is computed from them only) are lowered once per launch (or once per tensor
//! in the multi-tensor entry) by [`Lowering::lower`] with `varying = false`; the others once per
//! lane with `varying = true`.
//!
//! Every node has a natural form: a predicate for comparisons and `and`/`or`/`not`, an f32
//! register for everything else. A node gets its other form (`setp.ne` against 0, or
//! `selp` of 1.0/0.0) right after it is computed, only if some user needs it, so a boolean
//! uniform is turned into a predicate once, not per element.

use super::asm::{f32_imm, Asm, Reg};
use super::{Error, Options};
use optc_kernel::{Arena, BinaryOp, Expr, Handle, Kernel, Slot, Stage, UnaryOp};

/// The largest `|n|` for which `x ^ n` with a constant integer `n` becomes multiplications.
const MAX_POWI: f64 = 64.0;
const NAN: &str = "0f7FFFFFFF";
const ONE: &str = "0f3F800000";
const ZERO: &str = "0f00000000";

/// What the emitter learned about a stage's body once, shared by every entry of the stage.
pub(crate) struct Plan {
    /// The node is reachable from a store or a reduce output.
    pub live: Vec<bool>,
    /// The node depends on a load.
    pub varying: Vec<bool>,
    /// Some user needs the node as an f32 register.
    pub want_f: Vec<bool>,
    /// Some user needs the node as a predicate.
    pub want_p: Vec<bool>,
    /// The uniforms that a live node reads.
    pub uniform_used: Vec<bool>,
}

/// `x ^ n` with a constant integer `n` small enough for multiplications.
fn const_int_exponent(body: &Arena<Expr>, b: Handle<Expr>) -> Option<i64> {
    match body.get(b) {
        Some(Expr::Const(c)) if c.fract() == 0.0 && c.abs() <= MAX_POWI => Some(*c as i64),
        _ => None,
    }
}

fn natural_pred(e: &Expr) -> bool {
    match e {
        Expr::Binary(op, ..) => op.is_comparison() || op.is_logical(),
        Expr::Unary(op, _) => op.is_logical(),
        _ => false,
    }
}

impl Plan {
    /// Analyses the body of a stage of a validated kernel.
    pub(crate) fn new(stage: &Stage) -> Result<Plan, Error> {
        let body = &stage.body;
        let n = body.len();
        let mut live = vec![false; n];
        let outputs = || {
            let stores = stage.stores.iter().map(|s| s.value);
            stores.chain(stage.reduce.iter().map(|r| r.value))
        };
        for v in outputs() {
            live[v.index()] = true;
        }
        for (h, e) in body.iter().rev() {
            if !live[h.index()] {
                continue;
            }
            match *e {
                // A constant integer exponent becomes multiplications: it needs no register.
                Expr::Binary(BinaryOp::Pow, a, b) if const_int_exponent(body, b).is_some() => {
                    live[a.index()] = true;
                }
                _ => e.operands().for_each(|o| live[o.index()] = true),
            }
        }
        let mut varying = vec![false; n];
        let mut want_f = vec![false; n];
        let mut want_p = vec![false; n];
        let mut uniform_used = vec![false; stage.uniforms.len()];
        for (h, e) in body.iter() {
            let i = h.index();
            varying[i] = match e {
                // A stage vector's value depends on the element's row or column.
                Expr::Load(_) | Expr::Vector(_) => true,
                Expr::Const(_) | Expr::Bool(_) | Expr::Uniform(_) => false,
                Expr::Unary(..) | Expr::Binary(..) | Expr::Select(..) => {
                    e.operands().any(|o| varying[o.index()])
                }
                other => {
                    return Err(Error::Internal(format!(
                        "body node %{i} is a host-only leaf: {other:?}"
                    )))
                }
            };
            if !live[i] {
                continue;
            }
            if let Expr::Uniform(u) = e {
                if let Some(slot) = uniform_used.get_mut(u.index()) {
                    *slot = true;
                }
            }
            match *e {
                Expr::Unary(op, a) => {
                    if op.is_logical() {
                        want_p[a.index()] = true;
                    } else {
                        want_f[a.index()] = true;
                    }
                }
                Expr::Binary(op, a, b) => {
                    let want = if op.is_logical() {
                        &mut want_p
                    } else {
                        &mut want_f
                    };
                    want[a.index()] = true;
                    let skip_b = op == BinaryOp::Pow && const_int_exponent(body, b).is_some();
                    if !skip_b {
                        want[b.index()] = true;
                    }
                }
                Expr::Select(c, a, b) => {
                    want_p[c.index()] = true;
                    want_f[a.index()] = true;
                    want_f[b.index()] = true;
                }
                _ => {}
            }
        }
        for v in outputs() {
            want_f[v.index()] = true;
        }
        Ok(Plan {
            live,
            varying,
            want_f,
            want_p,
            uniform_used,
        })
    }
}

/// A node's registers: its f32 form, its predicate form, or both.
#[derive(Clone, Debug, Default)]
pub(crate) struct Val {
    f: Option<Reg>,
    p: Option<Reg>,
}

/// The registers of the nodes lowered so far in one section of an entry.
#[derive(Clone, Debug)]
pub(crate) struct Env {
    vals: Vec<Val>,
}

impl Env {
    /// No node of `body` lowered yet.
    pub(crate) fn new(body: &Arena<Expr>) -> Env {
        Env {
            vals: vec![Val::default(); body.len()],
        }
    }

    /// The f32 register of node `h`.
    pub(crate) fn f(&self, h: Handle<Expr>) -> Result<&Reg, Error> {
        self.vals
            .get(h.index())
            .and_then(|v| v.f.as_ref())
            .ok_or_else(|| Error::Internal(format!("node %{} has no f32 register", h.index())))
    }

    fn p(&self, h: Handle<Expr>) -> Result<&Reg, Error> {
        self.vals
            .get(h.index())
            .and_then(|v| v.p.as_ref())
            .ok_or_else(|| Error::Internal(format!("node %{} has no predicate", h.index())))
    }
}

/// Lowers the body nodes of one stage of a kernel under one set of options.
pub(crate) struct Lowering<'k> {
    pub kernel: &'k Kernel,
    /// The stage being lowered, and its position in the kernel.
    pub stage: &'k Stage,
    pub stage_index: usize,
    pub plan: &'k Plan,
    pub opts: &'k Options,
    /// `min.NaN`/`max.NaN` exist (sm_80 and later).
    pub nan_minmax: bool,
}

impl Lowering<'_> {
    /// Lowers every live node whose `varying` flag equals `varying`, in order, into `env`.
    /// `uniform` gives the f32 register of each used uniform; `load` that of each read buffer.
    pub(crate) fn lower(
        &self,
        asm: &mut Asm,
        env: &mut Env,
        varying: bool,
        uniform: &[Option<Reg>],
        load: &dyn Fn(Slot) -> Option<Reg>,
    ) -> Result<(), Error> {
        self.lower_with(asm, env, varying, uniform, load, &|_| None)
    }

    /// [`Lowering::lower`] where `vector` gives the f32 register of each stage vector
    /// (`Expr::Vector`) at the element (factored kernels).
    pub(crate) fn lower_with(
        &self,
        asm: &mut Asm,
        env: &mut Env,
        varying: bool,
        uniform: &[Option<Reg>],
        load: &dyn Fn(Slot) -> Option<Reg>,
        vector: &dyn Fn(usize) -> Option<Reg>,
    ) -> Result<(), Error> {
        for (h, e) in self.stage.body.iter() {
            let i = h.index();
            if !self.plan.live[i] || self.plan.varying[i] != varying {
                continue;
            }
            let natural = self.node(asm, env, e, uniform, load, vector)?;
            let mut val = if natural_pred(e) {
                Val {
                    f: None,
                    p: Some(natural),
                }
            } else {
                Val {
                    f: Some(natural),
                    p: None,
                }
            };
            if self.plan.want_p[i] && val.p.is_none() {
                let p = asm.p();
                if let Some(f) = &val.f {
                    asm.ins(format!("setp.ne.f32 {p}, {f}, {ZERO}"));
                }
                val.p = Some(p);
            }
            if self.plan.want_f[i] && val.f.is_none() {
                let f = asm.f();
                if let Some(p) = &val.p {
                    asm.ins(format!("selp.f32 {f}, {ONE}, {ZERO}, {p}"));
                }
                val.f = Some(f);
            }
            env.vals[i] = val;
        }
        Ok(())
    }

    fn node(
        &self,
        asm: &mut Asm,
        env: &Env,
        e: &Expr,
        uniform: &[Option<Reg>],
        load: &dyn Fn(Slot) -> Option<Reg>,
        vector: &dyn Fn(usize) -> Option<Reg>,
    ) -> Result<Reg, Error> {
        Ok(match *e {
            Expr::Vector(v) => vector(v.index()).ok_or_else(|| {
                Error::Internal(format!("stage vector v{} is not loaded", v.index()))
            })?,
            Expr::Const(c) => self.mov_imm(asm, &f32_imm(c)),
            Expr::Bool(b) => self.mov_imm(asm, if b { ONE } else { ZERO }),
            Expr::Uniform(u) => {
                uniform.get(u.index()).cloned().flatten().ok_or_else(|| {
                    Error::Internal(format!("uniform u{} is not loaded", u.index()))
                })?
            }
            Expr::Load(slot) => load(slot).ok_or_else(|| {
                Error::Internal(format!(
                    "buffer `{}` is not loaded",
                    self.kernel.slot_name(slot)
                ))
            })?,
            Expr::Unary(op, a) => {
                if op.is_logical() {
                    let d = asm.p();
                    asm.ins(format!("not.pred {d}, {}", env.p(a)?));
                    d
                } else {
                    self.unary(asm, op, env.f(a)?)
                }
            }
            Expr::Binary(op, a, b) => {
                if op.is_logical() {
                    let d = asm.p();
                    let name = if op == BinaryOp::And { "and" } else { "or" };
                    asm.ins(format!("{name}.pred {d}, {}, {}", env.p(a)?, env.p(b)?));
                    d
                } else if let (BinaryOp::Pow, Some(n)) =
                    (op, const_int_exponent(&self.stage.body, b))
                {
                    self.powi(asm, env.f(a)?, n)
                } else {
                    self.binary(asm, op, env.f(a)?, env.f(b)?)
                }
            }
            Expr::Select(c, a, b) => {
                let d = asm.f();
                asm.ins(format!(
                    "selp.f32 {d}, {}, {}, {}",
                    env.f(a)?,
                    env.f(b)?,
                    env.p(c)?
                ));
                d
            }
            ref other => return Err(Error::Internal(format!("not a body node: {other:?}"))),
        })
    }

    fn mov_imm(&self, asm: &mut Asm, imm: &str) -> Reg {
        let d = asm.f();
        asm.ins(format!("mov.f32 {d}, {imm}"));
        d
    }

    /// `.rn` by default; with fast math, no rounding modifier (ptxas may contract to fma) and ftz.
    fn arith(&self) -> &'static str {
        if self.opts.fast_math {
            ".ftz"
        } else {
            ".rn"
        }
    }

    fn ftz(&self) -> &'static str {
        if self.opts.fast_math {
            ".ftz"
        } else {
            ""
        }
    }

    fn unary(&self, asm: &mut Asm, op: UnaryOp, x: &Reg) -> Reg {
        let fast = self.opts.fast_math;
        let d = asm.f();
        match op {
            UnaryOp::Neg => asm.ins(format!("neg.f32 {d}, {x}")),
            UnaryOp::Abs => asm.ins(format!("abs.f32 {d}, {x}")),
            UnaryOp::Sqrt if fast => asm.ins(format!("sqrt.approx.ftz.f32 {d}, {x}")),
            UnaryOp::Sqrt => asm.ins(format!("sqrt.rn.f32 {d}, {x}")),
            UnaryOp::Rsqrt if fast => asm.ins(format!("rsqrt.approx.ftz.f32 {d}, {x}")),
            UnaryOp::Rsqrt => {
                let s = asm.f();
                asm.ins(format!("sqrt.rn.f32 {s}, {x}"));
                asm.ins(format!("rcp.rn.f32 {d}, {s}"));
            }
            UnaryOp::Sign => {
                // ±1 with x's sign, except that ±0 and NaN give x itself.
                let one = asm.f();
                let keep = asm.p();
                asm.ins(format!("copysign.f32 {one}, {x}, {ONE}"));
                asm.ins(format!("setp.equ.f32 {keep}, {x}, {ZERO}"));
                asm.ins(format!("selp.f32 {d}, {x}, {one}, {keep}"));
            }
            UnaryOp::Exp => self.exp(asm, x, &d),
            UnaryOp::Log => {
                // ln x = log2(x) * ln 2.
                let l = asm.f();
                asm.ins(format!("lg2.approx{}.f32 {l}, {x}", self.ftz()));
                asm.ins(format!(
                    "mul{}.f32 {d}, {l}, {}",
                    self.arith(),
                    f32_imm(LN_2)
                ));
            }
            UnaryOp::Not => asm.ins(format!("// unreachable: not on f32 {d}")),
            UnaryOp::RoundBf16 => asm.ins(format!("// unreachable: round_bf16 is host-only {d}")),
        }
        d
    }

    /// `exp(x) = 2^(x log2 e)`. By default the product is carried in two parts (the rounding error
    /// of `x * L_HI` is recovered exactly with an fma), so that the argument error does not grow
    /// with `|x|`: `exp(x) = 2^th * 2^tl ≈ 2^th * (1 + tl ln 2)`. `x` is first clamped to
    /// `[-104, 89]`, outside of which exp is 0 or inf in f32 anyway; NaN passes through.
    fn exp(&self, asm: &mut Asm, x: &Reg, d: &Reg) {
        let l_hi = LOG2_E as f32;
        let l_lo = LOG2_E - f64::from(l_hi);
        if self.opts.fast_math {
            let t = asm.f();
            asm.ins(format!("mul.ftz.f32 {t}, {x}, {}", f32_imm(LOG2_E)));
            asm.ins(format!("ex2.approx.ftz.f32 {d}, {t}"));
            return;
        }
        let c = self.clamp(asm, x, -104.0, 89.0);
        let (th, nth, tl, tl2, e, s) = (asm.f(), asm.f(), asm.f(), asm.f(), asm.f(), asm.f());
        let hi = f32_imm(f64::from(l_hi));
        asm.ins(format!("mul.rn.f32 {th}, {c}, {hi}"));
        asm.ins(format!("neg.f32 {nth}, {th}"));
        asm.ins(format!("fma.rn.f32 {tl}, {c}, {hi}, {nth}"));
        asm.ins(format!("fma.rn.f32 {tl2}, {c}, {}, {tl}", f32_imm(l_lo)));
        asm.ins(format!("ex2.approx.f32 {e}, {th}"));
        asm.ins(format!("fma.rn.f32 {s}, {tl2}, {}, {ONE}", f32_imm(LN_2)));
        asm.ins(format!("mul.rn.f32 {d}, {e}, {s}"));
    }

    /// `x` clamped to `[lo, hi]`, NaN kept.
    fn clamp(&self, asm: &mut Asm, x: &Reg, lo: f64, hi: f64) -> Reg {
        let (a, b) = (asm.f(), asm.f());
        if self.nan_minmax {
            asm.ins(format!("max.NaN.f32 {a}, {x}, {}", f32_imm(lo)));
            asm.ins(format!("min.NaN.f32 {b}, {a}, {}", f32_imm(hi)));
            return b;
        }
        let (c, nan) = (asm.f(), asm.p());
        asm.ins(format!("max.f32 {a}, {x}, {}", f32_imm(lo)));
        asm.ins(format!("min.f32 {b}, {a}, {}", f32_imm(hi)));
        asm.ins(format!("setp.nan.f32 {nan}, {x}, {x}"));
        asm.ins(format!("selp.f32 {c}, {x}, {b}, {nan}"));
        c
    }

    /// `x ^ n` by repeated squaring; a negative `n` takes the reciprocal at the end.
    fn powi(&self, asm: &mut Asm, x: &Reg, n: i64) -> Reg {
        if n == 0 {
            return self.mov_imm(asm, ONE);
        }
        let mut m = n.unsigned_abs();
        let mut base = x.clone();
        let mut acc: Option<Reg> = None;
        while m > 0 {
            if m & 1 == 1 {
                acc = Some(match acc {
                    None => base.clone(),
                    Some(a) => {
                        let d = asm.f();
                        asm.ins(format!("mul{}.f32 {d}, {a}, {base}", self.arith()));
                        d
                    }
                });
            }
            m >>= 1;
            if m > 0 {
                let d = asm.f();
                asm.ins(format!("mul{}.f32 {d}, {base}, {base}", self.arith()));
                base = d;
            }
        }
        let acc = acc.unwrap_or(base);
        if n > 0 {
            if acc == *x {
                // x ^ 1: a copy keeps one register per node.
                let d = asm.f();
                asm.ins(format!("mov.f32 {d}, {x}"));
                return d;
            }
            return acc;
        }
        let d = asm.f();
        asm.ins(format!("{} {d}, {ONE}, {acc}", self.div_op()));
        d
    }

    fn div_op(&self) -> &'static str {
        if self.opts.fast_math {
            // div.full: 2 ulp over the whole range (div.approx gives 0 for |b| > 2^126).
            "div.full.ftz.f32"
        } else {
            "div.rn.f32"
        }
    }

    fn binary(&self, asm: &mut Asm, op: BinaryOp, a: &Reg, b: &Reg) -> Reg {
        let r = self.arith();
        match op {
            BinaryOp::Add | BinaryOp::Sub | BinaryOp::Mul => {
                let d = asm.f();
                asm.ins(format!("{}{r}.f32 {d}, {a}, {b}", op.name()));
                d
            }
            BinaryOp::Div => {
                let d = asm.f();
                asm.ins(format!("{} {d}, {a}, {b}", self.div_op()));
                d
            }
            BinaryOp::Min | BinaryOp::Max => self.min_max(asm, op == BinaryOp::Max, a, b),
            BinaryOp::Pow => self.pow(asm, a, b),
            BinaryOp::Lt
            | BinaryOp::Le
            | BinaryOp::Gt
            | BinaryOp::Ge
            | BinaryOp::Eq
            | BinaryOp::Ne => {
                let cmp = match op {
                    BinaryOp::Lt => "lt",
                    BinaryOp::Le => "le",
                    BinaryOp::Gt => "gt",
                    BinaryOp::Ge => "ge",
                    BinaryOp::Eq => "eq",
                    // `a != b` is true when either is NaN.
                    _ => "neu",
                };
                let d = asm.p();
                asm.ins(format!("setp.{cmp}.f32 {d}, {a}, {b}"));
                d
            }
            BinaryOp::And | BinaryOp::Or => {
                let d = asm.p();
                asm.ins(format!("// unreachable: logical op on f32 {d}"));
                d
            }
        }
    }

    /// NaN-propagating min/max with `-0 < +0`. When `a == b` (which includes `+0 == -0`), the
    /// result is `a & b` for max and `a | b` for min, bitwise: that picks +0 (max) or -0 (min)
    /// from a pair of zeros and is `a` otherwise, whatever the hardware does with zero signs.
    fn min_max(&self, asm: &mut Asm, max: bool, a: &Reg, b: &Reg) -> Reg {
        self.min_max_with(asm, max, a, b, self.ftz())
    }

    /// `max` as `op.rs` defines it whatever the options (no flush to zero): the fold of a Max
    /// reduction.
    pub(crate) fn exact_max(&self, asm: &mut Asm, a: &Reg, b: &Reg) -> Reg {
        self.min_max_with(asm, true, a, b, "")
    }

    fn min_max_with(&self, asm: &mut Asm, max: bool, a: &Reg, b: &Reg, ftz: &str) -> Reg {
        let name = if max { "max" } else { "min" };
        let m = asm.f();
        if self.nan_minmax {
            asm.ins(format!("{name}{ftz}.NaN.f32 {m}, {a}, {b}"));
        } else {
            let (raw, nan) = (asm.f(), asm.p());
            asm.ins(format!("{name}{ftz}.f32 {raw}, {a}, {b}"));
            asm.ins(format!("setp.nan.f32 {nan}, {a}, {b}"));
            asm.ins(format!("selp.f32 {m}, {NAN}, {raw}, {nan}"));
        }
        let (eq, bits, d) = (asm.p(), asm.f(), asm.f());
        asm.ins(format!("setp.eq.f32 {eq}, {a}, {b}"));
        asm.ins(format!(
            "{}.b32 {bits}, {a}, {b}",
            if max { "and" } else { "or" }
        ));
        asm.ins(format!("selp.f32 {d}, {bits}, {m}, {eq}"));
        d
    }

    /// `a ^ b` for a non-constant or non-integer `b`: `2^(b log2|a|)` with powf's special cases
    /// (odd integer `b` keeps `a`'s sign, negative finite `a` with non-integer `b` is NaN,
    /// `b == 0`, `a == 1` and `a == -1` with infinite `b` give 1).
    fn pow(&self, asm: &mut Asm, a: &Reg, b: &Reg) -> Reg {
        let ftz = self.ftz();
        let inf = f32_imm(f64::INFINITY);
        let (ax, l, t, mag) = (asm.f(), asm.f(), asm.f(), asm.f());
        asm.ins(format!("abs.f32 {ax}, {a}"));
        asm.ins(format!("lg2.approx{ftz}.f32 {l}, {ax}"));
        asm.ins(format!("mul.rn.f32 {t}, {b}, {l}"));
        asm.ins(format!("ex2.approx{ftz}.f32 {mag}, {t}"));
        let (bi, h, hi) = (asm.f(), asm.f(), asm.f());
        let (isint, halfodd, odd) = (asm.p(), asm.p(), asm.p());
        asm.ins(format!("cvt.rzi.f32.f32 {bi}, {b}"));
        asm.ins(format!("setp.eq.f32 {isint}, {bi}, {b}"));
        asm.ins(format!("mul.rn.f32 {h}, {b}, 0f3F000000"));
        asm.ins(format!("cvt.rzi.f32.f32 {hi}, {h}"));
        asm.ins(format!("setp.neu.f32 {halfodd}, {h}, {hi}"));
        asm.ins(format!("and.pred {odd}, {isint}, {halfodd}"));
        let (signed, r1) = (asm.f(), asm.f());
        asm.ins(format!("copysign.f32 {signed}, {a}, {mag}"));
        asm.ins(format!("selp.f32 {r1}, {signed}, {mag}, {odd}"));
        let (neg, finite, bad, r2) = (asm.p(), asm.p(), asm.p(), asm.f());
        asm.ins(format!("setp.lt.f32 {neg}, {a}, {ZERO}"));
        asm.ins(format!("setp.ne.f32 {finite}, {ax}, {inf}"));
        asm.ins(format!("and.pred {neg}, {neg}, {finite}"));
        asm.ins(format!("not.pred {bad}, {isint}"));
        asm.ins(format!("and.pred {bad}, {bad}, {neg}"));
        asm.ins(format!("selp.f32 {r2}, {NAN}, {r1}, {bad}"));
        let (b0, one, ab, binf, am1, d) = (asm.p(), asm.p(), asm.f(), asm.p(), asm.p(), asm.f());
        asm.ins(format!("setp.eq.f32 {b0}, {b}, {ZERO}"));
        asm.ins(format!("setp.eq.f32 {one}, {a}, {ONE}"));
        asm.ins(format!("or.pred {one}, {one}, {b0}"));
        asm.ins(format!("abs.f32 {ab}, {b}"));
        asm.ins(format!("setp.eq.f32 {binf}, {ab}, {inf}"));
        asm.ins(format!("setp.eq.f32 {am1}, {a}, 0fBF800000"));
        asm.ins(format!("and.pred {am1}, {am1}, {binf}"));
        asm.ins(format!("or.pred {one}, {one}, {am1}"));
        asm.ins(format!("selp.f32 {d}, {ONE}, {r2}, {one}"));
        d
    }
}

const LOG2_E: f64 = std::f64::consts::LOG2_E;
const LN_2: f64 = std::f64::consts::LN_2;
