//! Hand-built kernels for the PTX tests, covering every op, boolean uniforms, scalar states,
//! both state inits, and staged kernels with Sum and Max reductions of Tensor and Step scope.
#![allow(dead_code)]

pub mod every;

use optc_kernel::{
    Arena, BinaryOp as B, Expr, FlagValue, Handle, HyperDecl, HyperId, Init, Kernel, ReduceOp,
    ReduceOutput, ReductionDecl, ReductionId, ScalarDecl, ScalarId, ScalarUpdate, Scope, Slot,
    Stage, StateDecl, StateId, Store, UnaryOp as U, UniformId,
};

/// Builds a kernel node by node, stage by stage (body nodes, uniforms and stores go to the
/// current stage).
pub struct Builder {
    pub k: Kernel,
    cur: usize,
}

impl Builder {
    pub fn new(rule: &str, hypers: &[(&str, f64)]) -> Builder {
        Builder {
            k: Kernel {
                rule: rule.into(),
                flags: vec![FlagValue {
                    name: "test".into(),
                    value: true,
                }],
                hypers: hypers
                    .iter()
                    .map(|(n, d)| HyperDecl {
                        name: (*n).into(),
                        default: *d,
                    })
                    .collect(),
                states: vec![],
                scalars: vec![],
                init: Arena::new(),
                rank: Default::default(),
                host: Arena::new(),
                variant: Vec::new(),
                storage: Default::default(),
                scalar_updates: vec![],
                vectors: Default::default(),
                reductions: vec![],
                stages: vec![Stage::default()],
            },
            cur: 0,
        }
    }
    /// Starts the next stage.
    pub fn next_stage(&mut self) {
        self.k.stages.push(Stage::default());
        self.cur = self.k.stages.len() - 1;
    }
    /// Folds body value `value` of the current stage into a new reduction; returns its host
    /// leaf.
    pub fn reduce(&mut self, op: ReduceOp, scope: Scope, value: Handle<Expr>) -> Handle<Expr> {
        let id = ReductionId::new(self.k.reductions.len());
        self.k.reductions.push(ReductionDecl {
            name: format!("r{}", id.index()),
            op,
            scope,
            stage: self.cur,
        });
        self.k.stages[self.cur].reduce.push(ReduceOutput {
            reduction: id,
            value,
        });
        self.host(Expr::Reduced(id))
    }
    /// A state starting at `Some(value)`, or at a copy of `p` for `None`.
    pub fn state(&mut self, name: &str, init: Option<f64>) -> Slot {
        let init = match init {
            Some(v) => Init::Value(self.k.init.append(Expr::Const(v))),
            None => Init::Param,
        };
        self.k.states.push(StateDecl {
            name: name.into(),
            init,
            shape: Default::default(),
        });
        Slot::State(StateId::new(self.k.states.len() - 1))
    }
    pub fn scalar(&mut self, name: &str, init: f64) -> Handle<Expr> {
        let init = self.k.init.append(Expr::Const(init));
        self.k.scalars.push(ScalarDecl {
            name: name.into(),
            init,
        });
        self.host(Expr::Scalar(ScalarId::new(self.k.scalars.len() - 1)))
    }
    pub fn scalar_update(&mut self, index: usize, value: Handle<Expr>) {
        self.k.scalar_updates.push(ScalarUpdate {
            scalar: ScalarId::new(index),
            value,
        });
    }
    pub fn host(&mut self, e: Expr) -> Handle<Expr> {
        self.k.host.append(e)
    }
    pub fn hyper(&mut self, i: usize) -> Handle<Expr> {
        self.host(Expr::Hyper(HyperId::new(i)))
    }
    pub fn hb(&mut self, op: B, a: Handle<Expr>, b: Handle<Expr>) -> Handle<Expr> {
        self.host(Expr::Binary(op, a, b))
    }
    pub fn hc(&mut self, c: f64) -> Handle<Expr> {
        self.host(Expr::Const(c))
    }
    /// Makes host node `h` a uniform and returns its body leaf.
    pub fn uniform(&mut self, h: Handle<Expr>) -> Handle<Expr> {
        self.k.stages[self.cur].uniforms.push(h);
        self.b(Expr::Uniform(UniformId::new(
            self.k.stages[self.cur].uniforms.len() - 1,
        )))
    }
    pub fn b(&mut self, e: Expr) -> Handle<Expr> {
        self.k.stages[self.cur].body.append(e)
    }
    pub fn load(&mut self, s: Slot) -> Handle<Expr> {
        self.b(Expr::Load(s))
    }
    pub fn c(&mut self, c: f64) -> Handle<Expr> {
        self.b(Expr::Const(c))
    }
    pub fn bin(&mut self, op: B, a: Handle<Expr>, b: Handle<Expr>) -> Handle<Expr> {
        self.b(Expr::Binary(op, a, b))
    }
    pub fn un(&mut self, op: U, a: Handle<Expr>) -> Handle<Expr> {
        self.b(Expr::Unary(op, a))
    }
    pub fn sel(&mut self, c: Handle<Expr>, a: Handle<Expr>, b: Handle<Expr>) -> Handle<Expr> {
        self.b(Expr::Select(c, a, b))
    }
    pub fn store(&mut self, slot: Slot, value: Handle<Expr>) {
        self.k.stages[self.cur].stores.push(Store { slot, value });
    }
    pub fn finish(self) -> Kernel {
        if let Err(e) = self.k.validate() {
            panic!("test kernel is invalid: {e}");
        }
        self.k
    }
}

/// torch.optim.AdamW: uniforms beta1, 1-beta1, beta2, 1-beta2, lr/bc1, 1/sqrt(bc2), eps, lr*wd.
pub fn adamw() -> Kernel {
    let mut k = Builder::new(
        "adamw",
        &[
            ("lr", 1e-3),
            ("beta1", 0.9),
            ("beta2", 0.999),
            ("eps", 1e-8),
            ("weight_decay", 1e-2),
        ],
    );
    let m = k.state("m", Some(0.0));
    let v = k.state("v", Some(0.0));
    let (lr, b1, b2, eps, wd) = (k.hyper(0), k.hyper(1), k.hyper(2), k.hyper(3), k.hyper(4));
    let t = k.host(Expr::Step);
    let one = k.hc(1.0);
    let omb1 = k.hb(B::Sub, one, b1);
    let omb2 = k.hb(B::Sub, one, b2);
    let b1t = k.hb(B::Pow, b1, t);
    let bc1 = k.hb(B::Sub, one, b1t);
    let b2t = k.hb(B::Pow, b2, t);
    let bc2 = k.hb(B::Sub, one, b2t);
    let step = k.hb(B::Div, lr, bc1);
    let inv = k.host(Expr::Unary(U::Rsqrt, bc2));
    let lrwd = k.hb(B::Mul, lr, wd);
    let [ub1, uomb1, ub2, uomb2, ustep, uinv, ueps, ulrwd] =
        [b1, omb1, b2, omb2, step, inv, eps, lrwd].map(|h| k.uniform(h));
    let p = k.load(Slot::Param);
    let g = k.load(Slot::Grad);
    let mm = k.load(m);
    let vv = k.load(v);
    let decay = k.bin(B::Mul, ulrwd, p);
    let p1 = k.bin(B::Sub, p, decay);
    let m1a = k.bin(B::Mul, ub1, mm);
    let m1b = k.bin(B::Mul, uomb1, g);
    let m1 = k.bin(B::Add, m1a, m1b);
    let gg = k.bin(B::Mul, g, g);
    let v1a = k.bin(B::Mul, ub2, vv);
    let v1b = k.bin(B::Mul, uomb2, gg);
    let v1 = k.bin(B::Add, v1a, v1b);
    let sv = k.un(U::Sqrt, v1);
    let sd = k.bin(B::Mul, sv, uinv);
    let denom = k.bin(B::Add, sd, ueps);
    let ratio = k.bin(B::Div, m1, denom);
    let upd = k.bin(B::Mul, ustep, ratio);
    let p2 = k.bin(B::Sub, p1, upd);
    k.store(Slot::Param, p2);
    k.store(m, m1);
    k.store(v, v1);
    k.finish()
}

/// SGD with momentum, nesterov and maximize as boolean uniforms (selects on predicates), and a
/// `dampening` that is skipped on the first step (a boolean uniform computed from `t`).
pub fn sgd_selects() -> Kernel {
    let mut k = Builder::new(
        "sgd_selects",
        &[
            ("lr", 0.1),
            ("momentum", 0.9),
            ("dampening", 0.1),
            ("nesterov", 1.0),
            ("maximize", 0.0),
        ],
    );
    let buf = k.state("momentum_buffer", Some(0.0));
    let (lr, mu, damp, nest, maxi) = (k.hyper(0), k.hyper(1), k.hyper(2), k.hyper(3), k.hyper(4));
    let t = k.host(Expr::Step);
    let one = k.hc(1.0);
    let first = k.hb(B::Eq, t, one);
    let omd = k.hb(B::Sub, one, damp);
    let [ulr, umu, uomd, unest, umaxi, ufirst] =
        [lr, mu, omd, nest, maxi, first].map(|h| k.uniform(h));
    let p = k.load(Slot::Param);
    let g0 = k.load(Slot::Grad);
    let b = k.load(buf);
    let ng = k.un(U::Neg, g0);
    let g = k.sel(umaxi, ng, g0);
    let bm = k.bin(B::Mul, umu, b);
    let gd = k.bin(B::Mul, uomd, g);
    let b1 = k.bin(B::Add, bm, gd);
    let b_new = k.sel(ufirst, g, b1);
    let nb = k.bin(B::Mul, umu, b_new);
    let gn = k.bin(B::Add, g, nb);
    let dir = k.sel(unest, gn, b_new);
    let step = k.bin(B::Mul, ulr, dir);
    let p1 = k.bin(B::Sub, p, step);
    k.store(Slot::Param, p1);
    k.store(buf, b_new);
    k.finish()
}

/// Lion-like: sign, min/max (clipping), comparisons, and/or/not, a boolean stored as 1.0/0.0.
pub fn lion_minmax_sign() -> Kernel {
    let mut k = Builder::new(
        "lion_minmax",
        &[("lr", 1e-4), ("beta1", 0.9), ("beta2", 0.99), ("clip", 1.0)],
    );
    let m = k.state("exp_avg", Some(0.0));
    let mask = k.state("mask", Some(0.0));
    let (lr, b1, b2, clip) = (k.hyper(0), k.hyper(1), k.hyper(2), k.hyper(3));
    let [ulr, ub1, ub2, uclip] = [lr, b1, b2, clip].map(|h| k.uniform(h));
    let p = k.load(Slot::Param);
    let g = k.load(Slot::Grad);
    let mm = k.load(m);
    let one = k.c(1.0);
    let omb1 = k.bin(B::Sub, one, ub1);
    let omb2 = k.bin(B::Sub, one, ub2);
    let nclip = k.un(U::Neg, uclip);
    let gmax = k.bin(B::Max, g, nclip);
    let gc = k.bin(B::Min, gmax, uclip);
    let ca = k.bin(B::Mul, ub1, mm);
    let cb = k.bin(B::Mul, omb1, gc);
    let c = k.bin(B::Add, ca, cb);
    let s = k.un(U::Sign, c);
    let upd = k.bin(B::Mul, ulr, s);
    let p1 = k.bin(B::Sub, p, upd);
    let na = k.bin(B::Mul, ub2, mm);
    let nb = k.bin(B::Mul, omb2, gc);
    let m1 = k.bin(B::Add, na, nb);
    let zero = k.c(0.0);
    let pos = k.bin(B::Gt, g, zero);
    let le = k.bin(B::Le, p, p1);
    let ne = k.bin(B::Ne, g, gc);
    let both = k.bin(B::And, pos, le);
    let not_ne = k.un(U::Not, ne);
    let any = k.bin(B::Or, both, not_ne);
    let ge = k.bin(B::Ge, mm, m1);
    let lt = k.bin(B::Lt, gc, g);
    let x = k.bin(B::And, ge, lt);
    let flag = k.bin(B::Or, any, x);
    k.store(Slot::Param, p1);
    k.store(m, m1);
    k.store(mask, flag);
    k.finish()
}

/// exp, log, pow (constant integer and general exponents), abs, rsqrt, a boolean constant, and a
/// scalar state updated by the host program.
pub fn exp_log_pow() -> Kernel {
    let mut k = Builder::new("exp_log_pow", &[("lr", 0.01), ("power", 0.75)]);
    let acc = k.state("acc", Some(1.0));
    let (lr, power) = (k.hyper(0), k.hyper(1));
    let s = k.scalar("decay", 1.0);
    let half = k.hc(0.5);
    let s1 = k.hb(B::Mul, s, half);
    k.scalar_update(0, s1);
    let [ulr, upow, us] = [lr, power, s].map(|h| k.uniform(h));
    let p = k.load(Slot::Param);
    let g = k.load(Slot::Grad);
    let a = k.load(acc);
    let g2 = {
        let two = k.c(2.0);
        k.bin(B::Pow, g, two)
    };
    let g3inv = {
        let m3 = k.c(-3.0);
        k.bin(B::Pow, g, m3)
    };
    let a1 = k.bin(B::Add, a, g2);
    let la = k.un(U::Log, a1);
    let ea = {
        let ng = k.un(U::Neg, la);
        k.un(U::Exp, ng)
    };
    let ab = k.un(U::Abs, g);
    let pw = k.bin(B::Pow, ab, upow);
    let r = k.un(U::Rsqrt, a1);
    let t = k.bin(B::Mul, ea, pw);
    let t2 = k.bin(B::Mul, t, r);
    let t3 = k.bin(B::Mul, t2, us);
    let tru = k.b(Expr::Bool(true));
    let small = k.bin(B::Div, t3, g3inv);
    let pick = k.sel(tru, t3, small);
    let upd = k.bin(B::Mul, ulr, pick);
    let p1 = k.bin(B::Sub, p, upd);
    k.store(Slot::Param, p1);
    k.store(acc, a1);
    k.finish()
}

/// Lookahead-like: a state that starts as a copy of `p`; `p` itself is only read (one store).
pub fn slow_weights() -> Kernel {
    let mut k = Builder::new("slow weights", &[("alpha", 0.5)]);
    let slow = k.state("slow", None);
    let alpha = k.hyper(0);
    let ua = k.uniform(alpha);
    let p = k.load(Slot::Param);
    let s = k.load(slow);
    let d = k.bin(B::Sub, p, s);
    let ad = k.bin(B::Mul, ua, d);
    let s1 = k.bin(B::Add, s, ad);
    k.store(slow, s1);
    k.finish()
}

/// LAMB-like trust ratio in two stages. Stage 0 reads p and g and reduces `sum(p*p)`,
/// `sum(g*g)` (Tensor scope) and `max(|g|)`; the host computes `ratio = |p| / |g|` (1 when either
/// norm is 0); stage 1 writes `p - lr * ratio * g / (1 + max|g|)`.
pub fn trust_ratio() -> Kernel {
    let mut k = Builder::new("trust ratio", &[("lr", 0.1)]);
    let p = k.load(Slot::Param);
    let g = k.load(Slot::Grad);
    let pp = k.bin(B::Mul, p, p);
    let gg = k.bin(B::Mul, g, g);
    let ag = k.un(U::Abs, g);
    let sp = k.reduce(ReduceOp::Sum, Scope::Tensor, pp);
    let sg = k.reduce(ReduceOp::Sum, Scope::Tensor, gg);
    let mg = k.reduce(ReduceOp::Max, Scope::Tensor, ag);
    let lr = k.hyper(0);
    let (pn, gn) = (
        k.host(Expr::Unary(U::Sqrt, sp)),
        k.host(Expr::Unary(U::Sqrt, sg)),
    );
    let zero = k.hc(0.0);
    let one = k.hc(1.0);
    let p_pos = k.hb(B::Gt, pn, zero);
    let g_pos = k.hb(B::Gt, gn, zero);
    let both = k.hb(B::And, p_pos, g_pos);
    let q = k.hb(B::Div, pn, gn);
    let ratio = k.host(Expr::Select(both, q, one));
    let step = k.hb(B::Mul, lr, ratio);
    let den = k.hb(B::Add, one, mg);
    let inv = k.hb(B::Div, one, den);
    k.next_stage();
    let us = k.uniform(step);
    let ui = k.uniform(inv);
    let p = k.load(Slot::Param);
    let g = k.load(Slot::Grad);
    let sg = k.bin(B::Mul, us, g);
    let d = k.bin(B::Mul, sg, ui);
    let p1 = k.bin(B::Sub, p, d);
    k.store(Slot::Param, p1);
    k.finish()
}

/// SGD with momentum, clipped by the global norm: stage 0 reduces `sum(g*g)` over the step
/// (Step scope); stage 1 writes `m = mu m + clip g` and `p - lr m` with
/// `clip = min(1, max_norm / (sqrt(total) + 1e-6))`.
pub fn clipped_momentum() -> Kernel {
    let mut k = Builder::new(
        "clipped momentum",
        &[("lr", 0.1), ("momentum", 0.9), ("max_grad_norm", 1.0)],
    );
    let m = k.state("m", Some(0.0));
    let g = k.load(Slot::Grad);
    let gg = k.bin(B::Mul, g, g);
    let total = k.reduce(ReduceOp::Sum, Scope::Step, gg);
    let (lr, mu, max_norm) = (k.hyper(0), k.hyper(1), k.hyper(2));
    let norm = k.host(Expr::Unary(U::Sqrt, total));
    let tiny = k.hc(1e-6);
    let den = k.hb(B::Add, norm, tiny);
    let q = k.hb(B::Div, max_norm, den);
    let one = k.hc(1.0);
    let clip = k.hb(B::Min, one, q);
    k.next_stage();
    let (ulr, umu, uclip) = (k.uniform(lr), k.uniform(mu), k.uniform(clip));
    let p = k.load(Slot::Param);
    let g = k.load(Slot::Grad);
    let mv = k.load(m);
    let cg = k.bin(B::Mul, uclip, g);
    let mm = k.bin(B::Mul, umu, mv);
    let m1 = k.bin(B::Add, mm, cg);
    let step = k.bin(B::Mul, ulr, m1);
    let p1 = k.bin(B::Sub, p, step);
    k.store(m, m1);
    k.store(Slot::Param, p1);
    k.finish()
}

/// One stage that both stores and reduces: `m = g`, with `max(-|p| - 1)` (every value negative,
/// so a zero-filled tail would show) and `sum(g * -0.0)` (a sum of signed zeros) kept in scalar
/// states after the step.
pub fn store_and_reduce() -> Kernel {
    let mut k = Builder::new("store and reduce", &[]);
    let m = k.state("m", Some(0.0));
    let seen_max = k.scalar("seen_max", 0.0);
    let _ = seen_max;
    let seen_sum = k.scalar("seen_sum", 0.0);
    let _ = seen_sum;
    let p = k.load(Slot::Param);
    let g = k.load(Slot::Grad);
    let ap = k.un(U::Abs, p);
    let nap = k.un(U::Neg, ap);
    let one = k.c(1.0);
    let neg = k.bin(B::Sub, nap, one);
    let nz = k.c(-0.0);
    let z = k.bin(B::Mul, g, nz);
    let mx = k.reduce(ReduceOp::Max, Scope::Tensor, neg);
    let sm = k.reduce(ReduceOp::Sum, Scope::Tensor, z);
    k.store(m, g);
    k.scalar_update(0, mx);
    k.scalar_update(1, sm);
    k.finish()
}

/// Every hand-built kernel without reductions.
pub fn elementwise() -> Vec<Kernel> {
    vec![
        adamw(),
        sgd_selects(),
        lion_minmax_sign(),
        exp_log_pow(),
        slow_weights(),
    ]
}

/// Every hand-built staged kernel with reductions.
pub fn staged() -> Vec<Kernel> {
    vec![trust_ratio(), clipped_momentum(), store_and_reduce()]
}

/// Every hand-built kernel.
pub fn all() -> Vec<Kernel> {
    let mut all = elementwise();
    all.extend(staged());
    all
}
