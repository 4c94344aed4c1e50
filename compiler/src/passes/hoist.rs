//! Hoisting and stage splitting: splits a specialized, live function into the host program and
//! the kernel's stages.
//!
//! **Stages.** The update is cut at its reductions. A node's level is the number of reductions
//! between it and the step's inputs; a reduction of a level-`k` value is produced by stage `k`,
//! and its result is a host value from stage `k + 1` on. Work of one level shares one pass. A
//! store goes in the earliest stage that can compute it, unless a later stage loads the
//! buffer's old value: then in the last such stage (a fixed point). A later stage that needs a
//! value stored by an earlier one loads the buffer (the new value) instead of recomputing it;
//! anything else it recomputes from the buffers' old values.
//!
//! **Host and bodies.** Every uniform value that a per-element node, a store or a reduce output
//! needs, other than a literal, is computed by the host program (f64, once per step, reading
//! finalized reductions as `Expr::Reduced`) and passed as a uniform of that stage; literals stay in
//! the body as immediates. Scalar-state updates are host values, taken after the last stage.

use super::dce::Live;
use crate::check::Uniformity;
use crate::diag::Diagnostic;
use crate::ir::{Builder, Program};
use optc_kernel::matrix::{Coef, MatExpr};
use optc_kernel::{
    Arena, BinaryOp, Expr, FlagValue, Handle, HyperDecl, Init, Kernel, RankClass, ReduceOutput,
    ReductionDecl, ReductionId, ScalarDecl, ScalarUpdate, Slot, Stage, StateDecl, StateShape,
    Store, UnaryOp, UniformId, VectorProgram,
};
use std::collections::{BTreeSet, HashMap};

/// What one stage computes: its per-element nodes, the buffers whose old value it loads, and the
/// nodes it reads as a buffer stored by an earlier stage.
struct StagePlan {
    /// `nodes[i]`: node `i` of the function is computed in this stage's body.
    nodes: Vec<bool>,
    /// Buffers this stage loads as they were when the step began.
    loads_old: BTreeSet<Slot>,
    /// Per-element nodes that are the stored value of a buffer written by an earlier stage: the
    /// stage loads that buffer instead of recomputing the value.
    stored_before: HashMap<usize, Slot>,
}

/// The plan of stage `j`, given where each store and reduction goes.
fn plan_stage(
    f: &crate::ir::Function,
    cls: &[Uniformity],
    j: usize,
    store_stage: &[usize],
    reps: &[usize],
    red_stage: &[usize],
) -> StagePlan {
    let mut plan = StagePlan {
        nodes: vec![false; f.exprs.len()],
        loads_old: BTreeSet::new(),
        stored_before: HashMap::new(),
    };
    let mut earlier: HashMap<usize, Slot> = HashMap::new();
    for ((slot, h), &s) in f.stores.iter().zip(store_stage) {
        if s < j {
            earlier.entry(h.index()).or_insert(*slot);
        }
    }
    let mut roots: Vec<Handle<Expr>> = f
        .stores
        .iter()
        .zip(store_stage)
        .filter(|(_, &s)| s == j)
        .map(|((_, h), _)| *h)
        .collect();
    roots.extend(
        reps.iter()
            .filter(|&&i| red_stage[i] == j)
            .map(|&i| f.reductions[i].arg),
    );
    while let Some(h) = roots.pop() {
        if cls[h.index()] != Uniformity::PerElement || plan.nodes[h.index()] {
            continue;
        }
        if let Some(slot) = earlier.get(&h.index()) {
            plan.stored_before.insert(h.index(), *slot);
            continue;
        }
        plan.nodes[h.index()] = true;
        match f.exprs[h] {
            Expr::Load(slot) => {
                plan.loads_old.insert(slot);
            }
            ref e => roots.extend(e.operands()),
        }
    }
    plan
}

/// The uniformity of every node of `f`: `[rows]`/`[cols]` for loads of such states, for Row- and
/// Col-scope reductions and for what is computed from them (a `[rows]` with a `[cols]` value is
/// per element), per element for other loads, uniform otherwise.
fn domains(f: &crate::ir::Function, state_shapes: &[StateShape]) -> Vec<Uniformity> {
    let mut out: Vec<Uniformity> = Vec::with_capacity(f.exprs.len());
    for (_, e) in f.exprs.iter() {
        let u = match *e {
            Expr::Load(Slot::State(s)) => match state_shapes.get(s.index()) {
                Some(StateShape::Rows) => Uniformity::Rows,
                Some(StateShape::Cols) => Uniformity::Cols,
                _ => Uniformity::PerElement,
            },
            Expr::Load(_) => Uniformity::PerElement,
            Expr::Reduced(r) => match f.reductions.get(r.index()).map(|r| r.scope) {
                Some(optc_kernel::Scope::Row) => Uniformity::Rows,
                Some(optc_kernel::Scope::Col) => Uniformity::Cols,
                _ => Uniformity::Uniform,
            },
            ref e => e
                .operands()
                .map(|o| out[o.index()])
                .fold(Uniformity::Uniform, Uniformity::join),
        };
        out.push(u);
    }
    out
}

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
pub fn hoist(
    program: &Program,
    flags: &[bool],
    live: &Live,
    rank: RankClass,
) -> Result<Kernel, Diagnostic> {
    let f = &live.func;
    let state_shapes: Vec<StateShape> = live
        .states
        .iter()
        .map(|&i| program.states[i].shape)
        .collect();
    let cls = domains(f, &state_shapes);
    let n = f.exprs.len();
    let per_element = |h: Handle<Expr>| cls[h.index()] == Uniformity::PerElement;
    let is_vector = |h: Handle<Expr>| cls[h.index()].is_vector();
    if rank != RankClass::Matrix {
        if let Some((h, _)) = f.exprs.iter().find(|(h, _)| is_vector(*h)) {
            return Err(Diagnostic::error(
                "E0505",
                "a [rows] or [cols] value reaches tensors of rank 0 or 1",
                f.span(h),
                "used where the tensor may have rank 0 or 1",
            )
            .hint("use it under `if matrix { ... }` (or `matrix ? ... : ...`) and give tensors of rank 0 or 1 their own update, as torch's Adafactor does"));
        }
    }
    // Stores of [rows]/[cols] states are made by the host's vector program, after the last
    // stage; the others by a stage. (The matrix pass's scratch states, after the live ones, are
    // full.)
    let vector_store = |slot: &Slot| match slot {
        Slot::State(s) => state_shapes
            .get(s.index())
            .is_some_and(|&shape| shape != StateShape::Full),
        _ => false,
    };

    // Identical reductions (same op, scope and argument after CSE) are one.
    let rep: Vec<usize> = (0..f.reductions.len())
        .map(|i| {
            let r = &f.reductions[i];
            (0..i)
                .find(|&j| {
                    let o = &f.reductions[j];
                    o.op == r.op && o.scope == r.scope && o.arg == r.arg
                })
                .unwrap_or(i)
        })
        .collect();
    let reps: Vec<usize> = (0..rep.len()).filter(|&i| rep[i] == i).collect();
    let kernel_red =
        |i: usize| ReductionId::new(reps.iter().position(|&r| r == rep[i]).unwrap_or(0));

    // The level of a node: how many reductions stand between it and the step's inputs. A
    // per-element node of level k is computable in stage k or later; a reduction of a level-k
    // argument is produced by stage k.
    let mut level = vec![0usize; n];
    for (h, e) in f.exprs.iter() {
        level[h.index()] = match *e {
            Expr::Reduced(r) => f
                .reductions
                .get(r.index())
                .map_or(0, |red| level[red.arg.index()] + 1),
            // A matrix output is known from its matrix stage on (`passes::matrix`).
            Expr::Load(slot) => live.matrix.load_level(slot),
            ref e => e.operands().map(|o| level[o.index()]).max().unwrap_or(0),
        };
    }
    let red_stage: Vec<usize> = f.reductions.iter().map(|r| level[r.arg.index()]).collect();
    // With loss scaling, nothing is stored until the inf/NaN check is known (a skipped step
    // writes nothing): every store waits for the stage after the check's.
    let first_store = f
        .reductions
        .iter()
        .zip(&red_stage)
        .filter(|(r, _)| r.name == optc_kernel::NONFINITE_REDUCTION)
        .map(|(_, &s)| s + 1)
        .max()
        .unwrap_or(0);
    // A matrix program runs at the start of its stage, on values earlier stages stored: those
    // stores cannot move past the check unless the program comes later still.
    if let Some(p) = live
        .matrix
        .programs
        .iter()
        .find(|p| first_store > 0 && p.stage <= first_store)
    {
        return Err(Diagnostic::error(
            "E0704",
            format!(
                "with loss scaling, the matrix program of stage {} would read values stored before the inf/NaN check is known",
                p.stage
            ),
            Default::default(),
            "here",
        )
        .hint("compute the program's input from the gradient, or compile without loss scaling"));
    }
    // Each store goes in the earliest stage that can compute it, unless a later stage needs the
    // buffer's old value: then in that later stage (a fixed point, since stages only grow).
    let mut store_stage: Vec<usize> = f
        .stores
        .iter()
        .map(|(slot, h)| {
            if vector_store(slot) {
                usize::MAX
            } else {
                level[h.index()].max(first_store)
            }
        })
        .collect();
    let stages = 1 + store_stage
        .iter()
        .filter(|&&s| s != usize::MAX)
        .chain(reps.iter().map(|&i| &red_stage[i]))
        .chain(live.matrix.programs.iter().map(|p| &p.stage))
        .copied()
        .max()
        .unwrap_or(0);
    let plan = loop {
        let plan: Vec<StagePlan> = (0..stages)
            .map(|j| plan_stage(f, &cls, j, &store_stage, &reps, &red_stage))
            .collect();
        let mut changed = false;
        for (i, (slot, _)) in f.stores.iter().enumerate() {
            let last_old = (0..stages)
                .rev()
                .find(|&j| plan[j].loads_old.contains(slot));
            if let Some(j) =
                last_old.filter(|&j| j > store_stage[i] && store_stage[i] != usize::MAX)
            {
                store_stage[i] = j;
                changed = true;
            }
        }
        if !changed {
            break plan;
        }
    };

    // Which [rows]/[cols] nodes the vector program computes: those a body, a store or a
    // vector-state store reads, and their [rows]/[cols] operands.
    let is_literal = |h: Handle<Expr>| matches!(f.exprs[h], Expr::Const(_) | Expr::Bool(_));
    let mut vec_needed = vec![false; n];
    let mut vec_roots: Vec<Handle<Expr>> = Vec::new();
    for st in &plan {
        for (h, e) in f.exprs.iter() {
            if st.nodes[h.index()] {
                vec_roots.extend(e.operands().filter(|&o| is_vector(o)));
            }
        }
    }
    vec_roots.extend(f.stores.iter().map(|(_, h)| *h).filter(|&h| is_vector(h)));
    for h in vec_roots {
        vec_needed[h.index()] = true;
    }
    for (h, e) in f.exprs.iter().rev() {
        if vec_needed[h.index()] {
            for o in e.operands().filter(|&o| is_vector(o)) {
                vec_needed[o.index()] = true;
            }
        }
    }
    // Which uniform nodes the host must compute.
    let mut needed = vec![false; n];
    let mut wanted = Vec::new();
    for st in &plan {
        for (h, e) in f.exprs.iter() {
            if st.nodes[h.index()] {
                wanted.extend(
                    e.operands()
                        .filter(|&o| !per_element(o) && !is_vector(o) && !is_literal(o)),
                );
            }
        }
    }
    for (h, e) in f.exprs.iter() {
        if vec_needed[h.index()] {
            wanted.extend(
                e.operands()
                    .filter(|&o| !per_element(o) && !is_vector(o) && !is_literal(o)),
            );
        }
    }
    for (_, h) in &f.stores {
        if !per_element(*h) && !is_vector(*h) && !is_literal(*h) {
            wanted.push(*h);
        }
    }
    for &i in &reps {
        let a = f.reductions[i].arg;
        if !per_element(a) && !is_literal(a) {
            wanted.push(a);
        }
    }
    wanted.extend(f.scalar_stores.iter().map(|(_, h)| *h));
    wanted.extend(
        live.matrix
            .programs
            .iter()
            .flat_map(|p| p.coefs.iter().copied()),
    );
    for h in wanted {
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
            let e = match *e {
                Expr::Reduced(r) => Expr::Reduced(kernel_red(r.index())),
                ref e => e.map_operands(|o| host_of.get(&o.index()).copied().unwrap_or(o)),
            };
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
            let divides_elements = per_element(h) && per_element(a);
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
    // The vector program: every needed [rows]/[cols] node, its uniform operands read as inputs.
    let mut vec_b = Builder::sharing();
    let mut vec_inputs: Vec<Handle<Expr>> = Vec::new();
    let mut vec_of: HashMap<usize, Handle<Expr>> = HashMap::new();
    for (h, e) in f.exprs.iter() {
        if !vec_needed[h.index()] {
            continue;
        }
        let sp = f.span(h);
        let e = match *e {
            Expr::Reduced(r) => Expr::Reduced(kernel_red(r.index())),
            ref e => e.map_operands(|o| {
                if let Some(v) = vec_of.get(&o.index()) {
                    return *v;
                }
                let leaf = match f.exprs[o] {
                    c @ (Expr::Const(_) | Expr::Bool(_)) => c,
                    _ => match host_of.get(&o.index()) {
                        Some(hh) => Expr::Uniform(uniform_of(&mut vec_inputs, *hh)),
                        None => Expr::Const(f64::NAN),
                    },
                };
                vec_b.add(leaf, f.span(o))
            }),
        };
        vec_of.insert(h.index(), vec_b.add(e, sp));
    }
    // A store of a uniform value into a [rows]/[cols] state: the value as an input.
    let mut vec_stores: Vec<Store> = Vec::new();
    for (slot, h) in f.stores.iter().filter(|(s, _)| vector_store(s)) {
        let value = match vec_of.get(&h.index()) {
            Some(v) => *v,
            None => {
                let leaf = match f.exprs[*h] {
                    c @ (Expr::Const(_) | Expr::Bool(_)) => c,
                    _ => match host_of.get(&h.index()) {
                        Some(hh) => Expr::Uniform(uniform_of(&mut vec_inputs, *hh)),
                        None => Expr::Const(f64::NAN),
                    },
                };
                vec_b.add(leaf, f.span(*h))
            }
        };
        vec_stores.push(Store { slot: *slot, value });
    }
    let mut vec_stages: Vec<Vec<Handle<Expr>>> = Vec::with_capacity(stages);
    fn uniform_of(uniforms: &mut Vec<Handle<Expr>>, host_h: Handle<Expr>) -> UniformId {
        match uniforms.iter().position(|u| *u == host_h) {
            Some(i) => UniformId::new(i),
            None => {
                uniforms.push(host_h);
                UniformId::new(uniforms.len() - 1)
            }
        }
    }

    // Stage bodies.
    let mut kernel_stages = Vec::with_capacity(stages);
    for (j, st) in plan.iter().enumerate() {
        let mut uniforms: Vec<Handle<Expr>> = Vec::new();
        let mut vectors: Vec<Handle<Expr>> = Vec::new();
        let mut body = Builder::sharing();
        let mut body_of: HashMap<usize, Handle<Expr>> = HashMap::new();
        let to_body = |h: Handle<Expr>,
                       body: &mut Builder,
                       body_of: &HashMap<usize, Handle<Expr>>,
                       uniforms: &mut Vec<Handle<Expr>>,
                       vectors: &mut Vec<Handle<Expr>>|
         -> Handle<Expr> {
            if let Some(b) = body_of.get(&h.index()) {
                return *b;
            }
            if let Some(v) = vec_of.get(&h.index()) {
                let id = optc_kernel::VectorId::new(uniform_of(vectors, *v).index());
                return body.add(Expr::Vector(id), f.span(h));
            }
            if let Some(slot) = st.stored_before.get(&h.index()) {
                return body.add(Expr::Load(*slot), f.span(h));
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
            if !st.nodes[h.index()] {
                continue;
            }
            let e = match *e {
                Expr::Binary(BinaryOp::Div, a, b) if recip_of.contains_key(&b.index()) => {
                    let (scaled, scale) = recip_of[&b.index()];
                    let a = to_body(a, &mut body, &body_of, &mut uniforms, &mut vectors);
                    let r = body.add(Expr::Uniform(uniform_of(&mut uniforms, scaled)), f.span(b));
                    let s = body.add(Expr::Uniform(uniform_of(&mut uniforms, scale)), f.span(b));
                    let ar = body.add(Expr::Binary(BinaryOp::Mul, a, r), f.span(h));
                    Expr::Binary(BinaryOp::Mul, ar, s)
                }
                Expr::Binary(BinaryOp::Div, a, b) if exact_reciprocal(&f.exprs[b]).is_some() => {
                    let a = to_body(a, &mut body, &body_of, &mut uniforms, &mut vectors);
                    let r = exact_reciprocal(&f.exprs[b]).unwrap_or(1.0);
                    let r = body.add(Expr::Const(r), f.span(b));
                    Expr::Binary(BinaryOp::Mul, a, r)
                }
                ref other => other
                    .map_operands(|o| to_body(o, &mut body, &body_of, &mut uniforms, &mut vectors)),
            };
            let nb = body.add(e, f.span(h));
            body_of.insert(h.index(), nb);
        }
        let stores: Vec<Store> = f
            .stores
            .iter()
            .zip(&store_stage)
            .filter(|(_, &s)| s == j)
            .map(|(&(slot, h), _)| Store {
                slot,
                value: to_body(h, &mut body, &body_of, &mut uniforms, &mut vectors),
            })
            .collect();
        let reduce: Vec<ReduceOutput> = reps
            .iter()
            .filter(|&&i| red_stage[i] == j)
            .map(|&i| ReduceOutput {
                reduction: kernel_red(i),
                value: to_body(
                    f.reductions[i].arg,
                    &mut body,
                    &body_of,
                    &mut uniforms,
                    &mut vectors,
                ),
            })
            .collect();
        vec_stages.push(vectors);
        kernel_stages.push(Stage {
            matrix: None,
            uniforms,
            body: body.func.exprs,
            stores,
            reduce,
        });
    }
    // Matrix programs run at the start of their stage; their coefficients are stage uniforms.
    for planned in &live.matrix.programs {
        let Some(stage) = kernel_stages.get_mut(planned.stage) else {
            continue;
        };
        let mut program = planned.program.clone();
        for node in &mut program.nodes {
            if let MatExpr::Scale(Coef::Uniform(u), a) = *node {
                let c = planned.coefs[u.index()];
                let coef = match host_of.get(&c.index()) {
                    Some(hh) => Coef::Uniform(uniform_of(&mut stage.uniforms, *hh)),
                    None => Coef::Const(f64::NAN),
                };
                *node = MatExpr::Scale(coef, a);
            }
        }
        stage.matrix = Some(program);
    }
    let reductions: Vec<ReductionDecl> = reps
        .iter()
        .map(|&i| {
            let r = &f.reductions[i];
            ReductionDecl {
                name: r.name.clone(),
                op: r.op,
                scope: r.scope,
                stage: red_stage[i],
            }
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
                shape: st.shape,
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

    let mut states: Vec<StateDecl> = states;
    if !live.matrix.scratch.is_empty() {
        let zero = init.append(Expr::Const(0.0));
        states.extend(live.matrix.scratch.iter().map(|name| StateDecl {
            name: name.clone(),
            init: Init::Value(zero),
            shape: StateShape::Full,
        }));
    }
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
        rank,
        host: host.func.exprs,
        variant: Vec::new(),
        storage: Default::default(),
        scalar_updates,
        reductions,
        stages: kernel_stages,
        vectors: VectorProgram {
            nodes: vec_b.func.exprs,
            inputs: vec_inputs,
            stages: if vec_stages.iter().all(Vec::is_empty) {
                Vec::new()
            } else {
                vec_stages
            },
            stores: vec_stores,
        },
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
