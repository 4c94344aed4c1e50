//! Hoisting: splits a specialized, live function into the host program and the kernel body.
//!
//! Every uniform value that a per-element node or a store needs, other than a literal, is computed
//! by the host program (f64, once per step) and passed as a kernel argument; literals stay in the
//! body as immediates. The body therefore holds per-element nodes only, plus argument and literal
//! leaves. Scalar-state updates are host values.

use super::classify::classify;
use super::dce::Live;
use crate::check::Uniformity;
use crate::diag::Diagnostic;
use crate::ir::{Builder, Program};
use optc_kernel::{
    Arena, BinaryOp, Expr, FlagValue, Handle, HyperDecl, Init, Kernel, RankClass, ScalarDecl,
    ScalarUpdate, Stage, StateDecl, StateShape, Store, UnaryOp, UniformId,
};
use std::collections::HashMap;

/// `1 / c` when the literal `c` is a power of two whose reciprocal is a normal f32, so that
/// `x / c == x * (1 / c)` exactly.
fn exact_reciprocal(e: &Expr) -> Option<f64> {
    match *e {
        Expr::Const(c) if c != 0.0 && c.is_finite() => {
            let r = 1.0 / c;
            let is_pow2 = (c.abs().log2()).fract() == 0.0;
            (is_pow2 && (r.abs() as f32).is_normal() && (c.abs() as f32).is_normal()).then_some(r)
        }
        _ => None,
    }
}

/// Builds the kernel for `program` specialized with `flags`, from the live function.
pub fn hoist(program: &Program, flags: &[bool], live: &Live) -> Result<Kernel, Diagnostic> {
    let f = &live.func;
    let cls = classify(f);
    let is_literal = |h: Handle<Expr>| matches!(f.exprs[h], Expr::Const(_) | Expr::Bool(_));

    // Which uniform nodes the host must compute.
    let mut needed = vec![false; f.exprs.len()];
    let mut wanted_by_body = Vec::new();
    for (h, e) in f.exprs.iter() {
        if cls[h.index()] == Uniformity::PerElement {
            for o in e.operands() {
                if cls[o.index()] == Uniformity::Uniform && !is_literal(o) {
                    wanted_by_body.push(o);
                }
            }
        }
    }
    for (_, h) in &f.stores {
        if cls[h.index()] == Uniformity::Uniform && !is_literal(*h) {
            wanted_by_body.push(*h);
        }
    }
    for h in wanted_by_body
        .iter()
        .chain(f.scalar_stores.iter().map(|(_, h)| h))
    {
        needed[h.index()] = true;
    }
    for (h, e) in f.exprs.iter().rev() {
        if needed[h.index()] {
            for o in e.operands() {
                needed[o.index()] = true;
            }
        }
    }

    // Host program.
    let mut host = Builder::sharing();
    let mut host_of: HashMap<usize, Handle<Expr>> = HashMap::new();
    for (h, e) in f.exprs.iter() {
        if needed[h.index()] && cls[h.index()] == Uniformity::Uniform {
            let e = e.map_operands(|o| host_of.get(&o.index()).copied().unwrap_or(o));
            host_of.insert(h.index(), host.add(e, f.span(h)));
        }
    }
    // Division by a uniform becomes multiplication by its reciprocal, computed by the host in f64:
    // a per-element `divps` costs several times a `mulps`, and AdamW's body is otherwise bound by
    // its two divisions, not by memory. The reciprocal is passed as `r / s` and `s`, where `s` is
    // 1, or 2^64 or 2^-64 when `r` is outside 2^-100..2^100, so that `x * (r / s) * s` neither
    // overflows nor loses precision where `x / u` would not (multiplying by `s` is exact).
    let mut recip_of: HashMap<usize, (Handle<Expr>, Handle<Expr>)> = HashMap::new();
    for (h, e) in f.exprs.iter() {
        if let Expr::Binary(BinaryOp::Div, a, b) = *e {
            let divides_elements = cls[h.index()] == Uniformity::PerElement
                && cls[a.index()] == Uniformity::PerElement;
            if let (true, Some(hb)) = (divides_elements, host_of.get(&b.index())) {
                recip_of.entry(b.index()).or_insert_with(|| {
                    let sp = f.span(b);
                    let mut c = |v: f64| host.add(Expr::Const(v), sp);
                    let (one, hi, lo, up, down) = (
                        c(1.0),
                        c(2f64.powi(100)),
                        c(2f64.powi(-100)),
                        c(2f64.powi(64)),
                        c(2f64.powi(-64)),
                    );
                    let r = host.add(Expr::Binary(BinaryOp::Div, one, *hb), sp);
                    let mag = host.add(Expr::Unary(UnaryOp::Abs, r), sp);
                    let big = host.add(Expr::Binary(BinaryOp::Gt, mag, hi), sp);
                    let small = host.add(Expr::Binary(BinaryOp::Lt, mag, lo), sp);
                    let inner = host.add(Expr::Select(small, down, one), sp);
                    let scale = host.add(Expr::Select(big, up, inner), sp);
                    let scaled = host.add(Expr::Binary(BinaryOp::Div, r, scale), sp);
                    (scaled, scale)
                });
            }
        }
    }
    let mut uniforms: Vec<Handle<Expr>> = Vec::new();
    fn uniform_of(uniforms: &mut Vec<Handle<Expr>>, host_h: Handle<Expr>) -> UniformId {
        match uniforms.iter().position(|u| *u == host_h) {
            Some(i) => UniformId::new(i),
            None => {
                uniforms.push(host_h);
                UniformId::new(uniforms.len() - 1)
            }
        }
    }

    // Body.
    let mut body = Builder::sharing();
    let mut body_of: HashMap<usize, Handle<Expr>> = HashMap::new();
    let to_body = |h: Handle<Expr>,
                   body: &mut Builder,
                   body_of: &HashMap<usize, Handle<Expr>>,
                   uniforms: &mut Vec<Handle<Expr>>|
     -> Handle<Expr> {
        if let Some(b) = body_of.get(&h.index()) {
            return *b;
        }
        let e = f.exprs[h];
        let node = match e {
            Expr::Const(_) | Expr::Bool(_) => e,
            _ => match host_of.get(&h.index()) {
                Some(hh) => Expr::Uniform(uniform_of(uniforms, *hh)),
                None => Expr::Const(f64::NAN),
            },
        };
        body.add(node, f.span(h))
    };
    for (h, e) in f.exprs.iter() {
        if cls[h.index()] != Uniformity::PerElement {
            continue;
        }
        let e = match *e {
            Expr::Binary(BinaryOp::Div, a, b) if recip_of.contains_key(&b.index()) => {
                let (scaled, scale) = recip_of[&b.index()];
                let a = to_body(a, &mut body, &body_of, &mut uniforms);
                let r = body.add(Expr::Uniform(uniform_of(&mut uniforms, scaled)), f.span(b));
                let s = body.add(Expr::Uniform(uniform_of(&mut uniforms, scale)), f.span(b));
                let ar = body.add(Expr::Binary(BinaryOp::Mul, a, r), f.span(h));
                Expr::Binary(BinaryOp::Mul, ar, s)
            }
            Expr::Binary(BinaryOp::Div, a, b) if exact_reciprocal(&f.exprs[b]).is_some() => {
                let a = to_body(a, &mut body, &body_of, &mut uniforms);
                let r = exact_reciprocal(&f.exprs[b]).unwrap_or(1.0);
                let r = body.add(Expr::Const(r), f.span(b));
                Expr::Binary(BinaryOp::Mul, a, r)
            }
            ref other => other.map_operands(|o| to_body(o, &mut body, &body_of, &mut uniforms)),
        };
        let nb = body.add(e, f.span(h));
        body_of.insert(h.index(), nb);
    }
    let stores: Vec<Store> = f
        .stores
        .iter()
        .map(|&(slot, h)| Store {
            slot,
            value: to_body(h, &mut body, &body_of, &mut uniforms),
        })
        .collect();
    let scalar_updates: Vec<ScalarUpdate> = f
        .scalar_stores
        .iter()
        .filter_map(|&(scalar, h)| {
            host_of
                .get(&h.index())
                .map(|v| ScalarUpdate { scalar, value: *v })
        })
        .collect();

    // Initial values, copied from the declaration arena.
    let mut init = Arena::new();
    let mut init_of: HashMap<usize, Handle<Expr>> = HashMap::new();
    let mut copy_init = |root: Handle<Expr>| -> Handle<Expr> {
        let mut stack = vec![root];
        let mut order = Vec::new();
        while let Some(h) = stack.pop() {
            if init_of.contains_key(&h.index()) || order.contains(&h) {
                continue;
            }
            order.push(h);
            stack.extend(program.decl[h].operands());
        }
        order.sort();
        for h in order {
            if !init_of.contains_key(&h.index()) {
                let e =
                    program.decl[h].map_operands(|o| init_of.get(&o.index()).copied().unwrap_or(o));
                init_of.insert(h.index(), init.append(e));
            }
        }
        init_of.get(&root.index()).copied().unwrap_or(root)
    };
    let states = live
        .states
        .iter()
        .map(|&i| {
            let st = &program.states[i];
            StateDecl {
                name: st.name.clone(),
                init: match st.init {
                    Init::Param => Init::Param,
                    Init::Value(h) => Init::Value(copy_init(h)),
                },
                shape: StateShape::Full,
            }
        })
        .collect();
    let scalars = live
        .scalars
        .iter()
        .map(|&i| ScalarDecl {
            name: program.scalars[i].name.clone(),
            init: copy_init(program.scalars[i].init),
        })
        .collect();

    let kernel = Kernel {
        rule: program.name.clone(),
        flags: program
            .flags
            .iter()
            .zip(flags)
            .map(|(fl, v)| FlagValue {
                name: fl.name.clone(),
                value: *v,
            })
            .collect(),
        hypers: program
            .hypers
            .iter()
            .map(|h| HyperDecl {
                name: h.name.clone(),
                default: h.default,
            })
            .collect(),
        states,
        scalars,
        init,
        rank: RankClass::Any,
        host: host.func.exprs,
        scalar_updates,
        reductions: Vec::new(),
        stages: vec![Stage {
            uniforms,
            body: body.func.exprs,
            stores,
            reduce: Vec::new(),
        }],
    };
    kernel.validate().map_err(|e| {
        Diagnostic::error(
            "E0900",
            format!("internal compiler error: {e}"),
            Default::default(),
            "here",
        )
        .hint("please report this with the rule file")
    })?;
    Ok(kernel)
}
