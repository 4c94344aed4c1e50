//! Hand-built kernels for the CPU backend's tests (shared with `runtime/tests/cpu_*.rs` through
//! `#[path]`). Each is what the frontend would produce for a small rule.
#![allow(dead_code)]

use optc_kernel::{
    Arena, BinaryOp as B, Expr, Handle, HyperDecl, Init, Kernel, ReduceOp, ReduceOutput,
    ReductionDecl, ReductionId, Scope, Slot, Stage, StateDecl, StateId, Store, UnaryOp as U,
    UniformId,
};

/// A small builder for kernels.
pub struct Kb {
    k: Kernel,
}

pub type H = Handle<Expr>;

impl Kb {
    pub fn new(rule: &str, hypers: &[(&str, f64)], states: &[&str]) -> Kb {
        let mut init = Arena::new();
        let zero = init.append(Expr::Const(0.0));
        Kb {
            k: Kernel {
                rule: rule.into(),
                flags: vec![],
                hypers: hypers
                    .iter()
                    .map(|(n, d)| HyperDecl {
                        name: (*n).into(),
                        default: *d,
                    })
                    .collect(),
                states: states
                    .iter()
                    .map(|n| StateDecl {
                        name: (*n).into(),
                        init: Init::Value(zero),
                        shape: Default::default(),
                    })
                    .collect(),
                scalars: vec![],
                init,
                rank: Default::default(),
                host: Arena::new(),
                variant: Vec::new(),
                storage: Default::default(),
                scalar_updates: vec![],
                vectors: Default::default(),
                reductions: vec![],
                stages: vec![Stage::default()],
            },
        }
    }
    /// A host node.
    pub fn h(&mut self, e: Expr) -> H {
        self.k.host.append(e)
    }
    pub fn hyper(&mut self, i: usize) -> H {
        self.h(Expr::Hyper(optc_kernel::HyperId::new(i)))
    }
    pub fn hc(&mut self, c: f64) -> H {
        self.h(Expr::Const(c))
    }
    pub fn hb(&mut self, op: B, a: H, b: H) -> H {
        self.h(Expr::Binary(op, a, b))
    }
    /// Makes host node `h` a uniform and returns a body node reading it.
    pub fn uniform(&mut self, h: H) -> H {
        let id = UniformId::new(self.cur().uniforms.len());
        self.cur().uniforms.push(h);
        self.e(Expr::Uniform(id))
    }
    /// A body node.
    pub fn e(&mut self, e: Expr) -> H {
        self.cur().body.append(e)
    }
    pub fn c(&mut self, c: f64) -> H {
        self.e(Expr::Const(c))
    }
    pub fn load(&mut self, s: Slot) -> H {
        self.e(Expr::Load(s))
    }
    pub fn un(&mut self, op: U, a: H) -> H {
        self.e(Expr::Unary(op, a))
    }
    pub fn bin(&mut self, op: B, a: H, b: H) -> H {
        self.e(Expr::Binary(op, a, b))
    }
    pub fn sel(&mut self, c: H, a: H, b: H) -> H {
        self.e(Expr::Select(c, a, b))
    }
    pub fn store(&mut self, slot: Slot, value: H) {
        self.cur().stores.push(Store { slot, value });
    }
    /// The stage being built (the last).
    fn cur(&mut self) -> &mut Stage {
        let last = self.k.stages.len() - 1;
        &mut self.k.stages[last]
    }
    /// Makes the kernel one for matrices (so that it may have Row and Col scopes).
    pub fn matrix(&mut self) {
        self.k.rank = optc_kernel::RankClass::Matrix;
    }
    /// Starts the next stage: later body nodes, uniforms, stores and reduce outputs go to it.
    pub fn next_stage(&mut self) {
        self.k.stages.push(Stage::default());
    }
    /// Folds body node `value` of the current stage into a new reduction; returns the host node
    /// of its finalized value.
    pub fn reduce(&mut self, op: ReduceOp, scope: Scope, value: H) -> H {
        let stage = self.k.stages.len() - 1;
        let id = ReductionId::new(self.k.reductions.len());
        self.k.reductions.push(ReductionDecl {
            name: format!("r{}", id.index()),
            op,
            scope,
            stage,
        });
        self.cur().reduce.push(ReduceOutput {
            reduction: id,
            value,
        });
        // Row and Col results are vectors: only the vector program may read them.
        if matches!(scope, Scope::Row | Scope::Col) {
            return self.h(Expr::Const(0.0));
        }
        self.h(Expr::Reduced(id))
    }
    pub fn finish(self) -> Kernel {
        self.k.validate().expect("hand-built kernel is valid");
        self.k
    }
}

pub fn st(i: usize) -> Slot {
    Slot::State(StateId::new(i))
}

/// Plain AdamW (4 reads, 3 writes): the benchmark kernel.
pub fn adamw() -> Kernel {
    adam(false)
}

/// AdamW (decoupled weight decay, bias corrections in the host program) with an amsgrad-style
/// running max of `v`.
pub fn adamw_amsgrad() -> Kernel {
    adam(true)
}

fn adam(amsgrad: bool) -> Kernel {
    let states: &[&str] = if amsgrad {
        &["exp_avg", "exp_avg_sq", "max_exp_avg_sq"]
    } else {
        &["exp_avg", "exp_avg_sq"]
    };
    let mut k = Kb::new(
        if amsgrad { "adamw_amsgrad" } else { "adamw" },
        &[
            ("lr", 1e-3),
            ("beta1", 0.9),
            ("beta2", 0.999),
            ("eps", 1e-8),
            ("weight_decay", 1e-2),
        ],
        states,
    );
    let (lr, b1, b2, eps, wd) = (k.hyper(0), k.hyper(1), k.hyper(2), k.hyper(3), k.hyper(4));
    let one = k.hc(1.0);
    let t = k.h(Expr::Step);
    let omb1 = k.hb(B::Sub, one, b1);
    let omb2 = k.hb(B::Sub, one, b2);
    let b1t = k.hb(B::Pow, b1, t);
    let b2t = k.hb(B::Pow, b2, t);
    let bc1 = k.hb(B::Sub, one, b1t);
    let bc2 = k.hb(B::Sub, one, b2t);
    let step_size = k.hb(B::Div, lr, bc1);
    let sq = k.h(Expr::Unary(U::Sqrt, bc2));
    let inv_sq = k.hb(B::Div, one, sq);
    let lrwd = k.hb(B::Mul, lr, wd);
    let (ub1, uomb1, ub2, uomb2) = (
        k.uniform(b1),
        k.uniform(omb1),
        k.uniform(b2),
        k.uniform(omb2),
    );
    let (ustep, uinv, ueps, ulrwd) = (
        k.uniform(step_size),
        k.uniform(inv_sq),
        k.uniform(eps),
        k.uniform(lrwd),
    );
    let p = k.load(Slot::Param);
    let g = k.load(Slot::Grad);
    let m = k.load(st(0));
    let v = k.load(st(1));
    let decay = k.bin(B::Mul, ulrwd, p);
    let p1 = k.bin(B::Sub, p, decay);
    let bm = k.bin(B::Mul, ub1, m);
    let gg = k.bin(B::Mul, uomb1, g);
    let m2 = k.bin(B::Add, bm, gg);
    let bv = k.bin(B::Mul, ub2, v);
    let g2 = k.bin(B::Mul, g, g);
    let g2s = k.bin(B::Mul, uomb2, g2);
    let v2 = k.bin(B::Add, bv, g2s);
    let vm2 = if amsgrad {
        let vmax = k.load(st(2));
        k.bin(B::Max, vmax, v2)
    } else {
        v2
    };
    let root = k.un(U::Sqrt, vm2);
    let scaled = k.bin(B::Mul, root, uinv);
    let denom = k.bin(B::Add, scaled, ueps);
    let ratio = k.bin(B::Div, m2, denom);
    let upd = k.bin(B::Mul, ustep, ratio);
    let p2 = k.bin(B::Sub, p1, upd);
    k.store(Slot::Param, p2);
    k.store(st(0), m2);
    k.store(st(1), v2);
    if amsgrad {
        k.store(st(2), vm2);
    }
    k.finish()
}

/// Plain SGD: `p -= lr * g`, no state.
pub fn sgd() -> Kernel {
    let mut k = Kb::new("sgd", &[("lr", 0.01)], &[]);
    let lr = k.hyper(0);
    let ulr = k.uniform(lr);
    let p = k.load(Slot::Param);
    let g = k.load(Slot::Grad);
    let upd = k.bin(B::Mul, ulr, g);
    let p2 = k.bin(B::Sub, p, upd);
    k.store(Slot::Param, p2);
    k.finish()
}

/// Comparisons, logic, selects on masks and on numbers, a boolean uniform, booleans stored as
/// numbers and numbers used as booleans.
pub fn logic() -> Kernel {
    let mut k = Kb::new(
        "logic",
        &[("threshold", 0.5), ("nesterov", 1.0)],
        &["flag", "s"],
    );
    let th = k.hyper(0);
    let nest = k.hyper(1);
    let zero = k.hc(0.0);
    let nest_b = k.hb(B::Ne, nest, zero);
    let uth = k.uniform(th);
    let unest = k.uniform(nest_b);
    let p = k.load(Slot::Param);
    let g = k.load(Slot::Grad);
    let flag = k.load(st(0));
    let s = k.load(st(1));
    let gt = k.bin(B::Gt, g, uth);
    let le = k.bin(B::Le, p, s);
    let both = k.bin(B::And, gt, le);
    let eq = k.bin(B::Eq, g, p);
    let not_eq = k.un(U::Not, eq);
    let any = k.bin(B::Or, both, not_eq);
    let two = k.c(2.0);
    let p2x = k.bin(B::Mul, p, two);
    let negp = k.un(U::Neg, p);
    let a = k.sel(any, p2x, negp);
    // A number used as a condition (flag != 0), and the boolean uniform.
    let b = k.sel(flag, a, g);
    let c = k.sel(unest, b, s);
    k.store(Slot::Param, c);
    // Booleans stored as numbers; a select between booleans; a boolean in arithmetic.
    let lt = k.bin(B::Lt, g, s);
    let ge = k.bin(B::Ge, p, g);
    let ne = k.bin(B::Ne, s, flag);
    let bsel = k.sel(ne, lt, ge);
    k.store(st(0), bsel);
    let t = k.e(Expr::Bool(true));
    let fl = k.e(Expr::Bool(false));
    let tf = k.bin(B::Or, fl, t);
    let plus = k.bin(B::Add, s, tf);
    let plus2 = k.bin(B::Add, plus, gt);
    k.store(st(1), plus2);
    k.finish()
}

/// sign, abs, min, max, division, rsqrt, neg, sqrt, and constants.
pub fn elementary() -> Kernel {
    let mut k = Kb::new("elementary", &[("scale", 3.0)], &["a", "b"]);
    let sc = k.hyper(0);
    let usc = k.uniform(sc);
    let p = k.load(Slot::Param);
    let g = k.load(Slot::Grad);
    let a = k.load(st(0));
    let b = k.load(st(1));
    let sg = k.un(U::Sign, g);
    let ab = k.un(U::Abs, p);
    let mn = k.bin(B::Min, a, b);
    let mx = k.bin(B::Max, g, a);
    let dv = k.bin(B::Div, p, g);
    let rs = k.un(U::Rsqrt, ab);
    let sq = k.un(U::Sqrt, b);
    let ng = k.un(U::Neg, mx);
    let s1 = k.bin(B::Mul, sg, usc);
    let s2 = k.bin(B::Add, s1, rs);
    let s3 = k.bin(B::Sub, s2, dv);
    k.store(Slot::Param, s3);
    let m2 = k.bin(B::Sub, mn, ng);
    k.store(st(0), m2);
    let c = k.c(0.1);
    let q = k.bin(B::Mul, sq, c);
    let mm = k.bin(B::Min, q, mn);
    k.store(st(1), mm);
    k.finish()
}

/// Stores `op(g)` (or `g op s`) into `p`: one op at a time, for per-op error measurement.
pub fn unary_op(op: U) -> Kernel {
    let mut k = Kb::new(&format!("unary_{op}"), &[], &[]);
    let g = k.load(Slot::Grad);
    let r = k.un(op, g);
    k.store(Slot::Param, r);
    k.finish()
}

/// `p = g op s` for a binary op.
pub fn binary_op(op: B) -> Kernel {
    let mut k = Kb::new(&format!("binary_{op}"), &[], &["s"]);
    let g = k.load(Slot::Grad);
    let s = k.load(st(0));
    let r = k.bin(op, g, s);
    k.store(Slot::Param, r);
    k.finish()
}

/// `p = g ^ n` for a constant exponent.
pub fn pow_const(n: f64) -> Kernel {
    let mut k = Kb::new(&format!("pow_const_{n}"), &[], &[]);
    let g = k.load(Slot::Grad);
    let c = k.c(n);
    let r = k.bin(B::Pow, g, c);
    k.store(Slot::Param, r);
    k.finish()
}

/// exp, log, pow with a uniform exponent, a constant integer and a constant fraction, in one
/// body (one op per stored value, so each store's error is that op's).
pub fn transcendental() -> Kernel {
    let mut k = Kb::new("transcendental", &[("power", 0.75)], &["a", "b", "c", "d"]);
    let pw = k.hyper(0);
    let upw = k.uniform(pw);
    let p = k.load(Slot::Param);
    let g = k.load(Slot::Grad);
    let a = k.load(st(0));
    let b = k.load(st(1));
    let d = k.load(st(3));
    let e = k.un(U::Exp, g);
    k.store(Slot::Param, e);
    let l = k.un(U::Log, a);
    k.store(st(0), l);
    let pu = k.bin(B::Pow, b, upw);
    k.store(st(1), pu);
    let two = k.c(2.0);
    let p2 = k.bin(B::Pow, p, two);
    k.store(st(2), p2);
    let half = k.c(0.5);
    let ph = k.bin(B::Pow, d, half);
    k.store(st(3), ph);
    k.finish()
}

/// One stage that stores `p - lr * g` and folds five values: `sum(g)`, `max(g)` (Tensor scope),
/// `sum(g * g)` (Step scope), `sum(g > p)` (a boolean as a number) and `max(p * g)`.
pub fn reducer() -> Kernel {
    let mut k = Kb::new("reducer", &[("lr", 0.5)], &[]);
    let lr = k.hyper(0);
    let ulr = k.uniform(lr);
    let p = k.load(Slot::Param);
    let g = k.load(Slot::Grad);
    let step = k.bin(B::Mul, ulr, g);
    let p2 = k.bin(B::Sub, p, step);
    k.store(Slot::Param, p2);
    k.reduce(ReduceOp::Sum, Scope::Tensor, g);
    k.reduce(ReduceOp::Max, Scope::Tensor, g);
    let gg = k.bin(B::Mul, g, g);
    k.reduce(ReduceOp::Sum, Scope::Step, gg);
    let gt = k.bin(B::Gt, g, p);
    k.reduce(ReduceOp::Sum, Scope::Tensor, gt);
    let pg = k.bin(B::Mul, p, g);
    k.reduce(ReduceOp::Max, Scope::Tensor, pg);
    k.finish()
}

/// Two stages, LAMB-like: stage 0 updates `m = beta * m + g` and folds `sum(p * p)` and
/// `sum(m' * m')`; the host makes `ratio = lr * sqrt(sum p²) / sqrt(sum m²)` (or `lr` when a norm
/// is 0); stage 1 steps `p = p - ratio * m` (reading the `m` stage 0 stored).
pub fn two_stage() -> Kernel {
    let mut k = Kb::new("two_stage", &[("lr", 0.1), ("beta", 0.9)], &["m"]);
    let (lr, beta) = (k.hyper(0), k.hyper(1));
    let ubeta = k.uniform(beta);
    let p = k.load(Slot::Param);
    let g = k.load(Slot::Grad);
    let m = k.load(st(0));
    let bm = k.bin(B::Mul, ubeta, m);
    let m2 = k.bin(B::Add, bm, g);
    k.store(st(0), m2);
    let pp = k.bin(B::Mul, p, p);
    let p_sq = k.reduce(ReduceOp::Sum, Scope::Tensor, pp);
    let mm = k.bin(B::Mul, m2, m2);
    let m_sq = k.reduce(ReduceOp::Sum, Scope::Tensor, mm);
    let pn = k.h(Expr::Unary(U::Sqrt, p_sq));
    let mn = k.h(Expr::Unary(U::Sqrt, m_sq));
    let zero = k.hc(0.0);
    let both = k.hb(B::Mul, pn, mn);
    let ok = k.hb(B::Gt, both, zero);
    let trust = k.hb(B::Div, pn, mn);
    let scaled = k.hb(B::Mul, lr, trust);
    let ratio = k.h(Expr::Select(ok, scaled, lr));
    k.next_stage();
    let uratio = k.uniform(ratio);
    let p = k.load(Slot::Param);
    let m = k.load(st(0));
    let upd = k.bin(B::Mul, uratio, m);
    let p2 = k.bin(B::Sub, p, upd);
    k.store(Slot::Param, p2);
    k.finish()
}

/// SGD with clipping by the global norm, as the compiler adds it: stage 0 folds the Step-scope
/// `sum(g * g)`; the host makes `clip = min(1, max_norm / (sqrt(total) + 1e-6))`; stage 1 steps
/// `p = p - (lr * clip) * g`.
pub fn clipped_sgd() -> Kernel {
    let mut k = Kb::new("clipped_sgd", &[("lr", 0.1), ("max_grad_norm", 1.0)], &[]);
    let (lr, max_norm) = (k.hyper(0), k.hyper(1));
    let g = k.load(Slot::Grad);
    let gg = k.bin(B::Mul, g, g);
    let total = k.reduce(ReduceOp::Sum, Scope::Step, gg);
    let norm = k.h(Expr::Unary(U::Sqrt, total));
    let tiny = k.hc(1e-6);
    let one = k.hc(1.0);
    let denom = k.hb(B::Add, norm, tiny);
    let ratio = k.hb(B::Div, max_norm, denom);
    let clip = k.hb(B::Min, one, ratio);
    let step = k.hb(B::Mul, lr, clip);
    k.next_stage();
    let ustep = k.uniform(step);
    let p = k.load(Slot::Param);
    let g = k.load(Slot::Grad);
    let upd = k.bin(B::Mul, ustep, g);
    let p2 = k.bin(B::Sub, p, upd);
    k.store(Slot::Param, p2);
    k.finish()
}

/// A kernel for matrices with a Row-scope sum of `g * g` (Adafactor's row statistics).
pub fn row_sum() -> Kernel {
    let mut k = Kb::new("row_sum", &[], &[]);
    k.matrix();
    let p = k.load(Slot::Param);
    let g = k.load(Slot::Grad);
    k.store(Slot::Param, p);
    let gg = k.bin(B::Mul, g, g);
    k.reduce(ReduceOp::Sum, Scope::Row, gg);
    k.finish()
}

/// Every hand-built kernel, by name.
pub fn all() -> Vec<Kernel> {
    vec![
        adamw(),
        adamw_amsgrad(),
        sgd(),
        logic(),
        elementary(),
        transcendental(),
        reducer(),
        two_stage(),
        clipped_sgd(),
    ]
}
