//! Matrix stages: turns the matrix values of a live function into matrix programs of the stages
//! (`docs/stages.md`, "Matrix stages").
//!
//! Runs after dead-code elimination, before [`super::hoist`]. The *level* of a matrix value is
//! the first stage that can compute it: one more than the level of each per-element value it
//! reads (those are stored into a scratch state by an earlier stage, or read straight from a
//! buffer no stage writes), and at least the level of each uniform coefficient (a reduction's
//! result is known from the stage after the reduction). A matrix value used per element (an
//! `m × n` one: stored, or an operand of a per-element node) is an **output**: the program of its
//! level computes it, with every matrix value it needs, and writes it to a scratch state that the
//! per-element pass of that stage, and later ones, load. Scratch states are allocated like other
//! states (zero at first) and hold nothing between steps.
//!
//! Errors: E0803 (a matrix value in a kernel for vectors), E0805 (a choice between matrices that
//! does not fold to a constant).

use super::dce::Live;
use crate::diag::Diagnostic;
use crate::ir::{matrix_of, MatNode};
use optc_kernel::matrix::{Coef, MatExpr, MatOutput, MatrixProgram};
use optc_kernel::{Arena, Expr, Handle, Slot, StateId, UniformId};
use std::collections::HashMap;

/// The matrix stages of a function, for [`super::hoist`].
#[derive(Clone, Debug, Default)]
pub struct MatrixPlan {
    /// Names of the scratch states, appended after the live states in this order.
    pub scratch: Vec<String>,
    /// The stage from which each matrix output's scratch state can be loaded.
    pub load_level: Vec<(Slot, usize)>,
    /// Per stage that has one, its program; `Coef::Uniform(i)` names `coefs[i]` of the plan
    /// entry (a uniform node of the function), which hoisting turns into a stage uniform.
    pub programs: Vec<PlannedProgram>,
    /// Whether the kernel is for matrices (its host program may read `rows` and `cols`).
    pub for_matrices: bool,
}

/// One stage's matrix program before hoisting.
#[derive(Clone, Debug)]
pub struct PlannedProgram {
    /// The stage.
    pub stage: usize,
    /// The program, with coefficients indexing `coefs`.
    pub program: MatrixProgram,
    /// The uniform nodes its coefficients read.
    pub coefs: Vec<Handle<Expr>>,
}

impl MatrixPlan {
    /// The level an `Expr::Load(slot)` has: that of the matrix output it holds, or 0.
    pub fn load_level(&self, slot: Slot) -> usize {
        self.load_level
            .iter()
            .find(|(s, _)| *s == slot)
            .map_or(0, |(_, l)| *l)
    }
}

fn located(
    code: &'static str,
    msg: &str,
    span: crate::diag::Span,
    label: &str,
    hint: &str,
) -> Diagnostic {
    Diagnostic::error(code, msg.to_string(), span, label.to_string()).hint(hint.to_string())
}

/// Plans the matrix stages of `live` (for a kernel for matrices when `matrix`).
pub fn plan(mut live: Live, matrix: bool) -> Result<Live, Diagnostic> {
    live.matrix.for_matrices = matrix;
    let f = &live.func;
    let leaf_of: HashMap<usize, Handle<Expr>> = f
        .exprs
        .iter()
        .filter_map(|(h, e)| matrix_of(e).map(|k| (k, h)))
        .collect();
    let shape_leaf = |e: &Expr| {
        matches!(
            e,
            Expr::Hyper(optc_kernel::matrix::ROWS | optc_kernel::matrix::COLS)
        )
    };
    if let (false, Some((h, _))) = (matrix, f.exprs.iter().find(|(_, e)| shape_leaf(e))) {
        return Err(located(
            "E0803",
            "`rows` or `cols` of a tensor with fewer than 2 dims",
            f.span(h),
            "reached for vectors",
            "use `rows` and `cols` under `if matrix { ... }`",
        ));
    }
    let Some(first) = f.exprs.iter().find(|(_, e)| matrix_of(e).is_some()) else {
        return Ok(live);
    };
    if !matrix {
        return Err(located(
            "E0803",
            "a matrix operation on a tensor with fewer than 2 dims",
            f.span(first.0),
            "reached for vectors",
            "guard it with `if matrix { ... }` or `matrix ? ... : ...` and give vectors a fallback",
        ));
    }
    let node_of = |h: Handle<Expr>| matrix_of(&f.exprs[h]).and_then(|k| f.matrices.get(k));
    // Follow compile-time choices to the matrix they pick.
    let resolve = |mut h: Handle<Expr>| -> Result<Handle<Expr>, Diagnostic> {
        while let Some(MatNode::Select(c, a, b)) = node_of(h) {
            h = match f.exprs[*c] {
                Expr::Bool(v) => {
                    if v {
                        *a
                    } else {
                        *b
                    }
                }
                Expr::Const(x) => {
                    if x != 0.0 {
                        *a
                    } else {
                        *b
                    }
                }
                _ => {
                    return Err(located(
                        "E0805",
                        "a choice between matrices must be made when the rule is compiled",
                        f.span(h),
                        "this condition is known only at run time",
                        "choose between matrices with flags (and `matrix`) only",
                    ))
                }
            };
        }
        Ok(h)
    };

    // Levels, as hoisting computes them, with matrix values at their stage.
    let n = f.exprs.len();
    let mut level = vec![0usize; n];
    for (h, e) in f.exprs.iter() {
        level[h.index()] = if let Some(m) = node_of(h) {
            match *m {
                MatNode::Elems(x) => level[x.index()] + 1,
                MatNode::Select(..) => level[resolve(h)?.index()],
                other => other
                    .handles()
                    .iter()
                    .map(|o| level[o.index()])
                    .max()
                    .unwrap_or(0),
            }
        } else {
            match *e {
                Expr::Reduced(r) => f
                    .reductions
                    .get(r.index())
                    .map_or(0, |red| level[red.arg.index()] + 1),
                ref e => e.operands().map(|o| level[o.index()]).max().unwrap_or(0),
            }
        };
    }

    // The matrix values used per element.
    let mut used = vec![false; n];
    for (_, e) in f.exprs.iter() {
        for o in e.operands() {
            used[o.index()] = true;
        }
    }
    for (_, h) in &f.stores {
        used[h.index()] = true;
    }
    for r in &f.reductions {
        used[r.arg.index()] = true;
    }
    let mut outputs: Vec<Handle<Expr>> = Vec::new();
    for (h, _) in f.exprs.iter() {
        if node_of(h).is_some() && used[h.index()] {
            outputs.push(h);
        }
    }

    let written: Vec<Slot> = f.stores.iter().map(|(s, _)| *s).collect();
    let base = live.states.len();
    let mut scratch: Vec<String> = Vec::new();
    let mut new_stores: Vec<(Slot, Handle<Expr>)> = Vec::new();
    let mut input_slot: HashMap<usize, Slot> = HashMap::new();
    let mut replace: HashMap<usize, Slot> = HashMap::new();
    let mut load_level = Vec::new();
    let mut programs: Vec<PlannedProgram> = Vec::new();
    let mut levels: Vec<usize> = outputs.iter().map(|h| level[h.index()]).collect();
    levels.sort_unstable();
    levels.dedup();
    for stage in levels {
        let mut prog = PlannedProgram {
            stage,
            program: MatrixProgram::default(),
            coefs: Vec::new(),
        };
        let mut index_of: HashMap<usize, u32> = HashMap::new();
        // Depth-first, operands before users, from each output of this stage.
        let emit = |root: Handle<Expr>,
                    prog: &mut PlannedProgram,
                    index_of: &mut HashMap<usize, u32>,
                    scratch: &mut Vec<String>,
                    new_stores: &mut Vec<(Slot, Handle<Expr>)>,
                    input_slot: &mut HashMap<usize, Slot>|
         -> Result<u32, Diagnostic> {
            let mut stack = vec![(root, false)];
            while let Some((h, ready)) = stack.pop() {
                let h = resolve(h)?;
                if index_of.contains_key(&h.index()) {
                    continue;
                }
                let Some(m) = node_of(h).copied() else {
                    continue;
                };
                let subs: Vec<Handle<Expr>> = match m {
                    MatNode::Elems(_) => vec![],
                    MatNode::Scale(_, a) => vec![a],
                    other => other.handles(),
                };
                if !ready {
                    stack.push((h, true));
                    for s in subs {
                        stack.push((s, false));
                    }
                    continue;
                }
                let idx = |x: Handle<Expr>| -> Result<u32, Diagnostic> {
                    let x = resolve(x)?;
                    Ok(index_of.get(&x.index()).copied().unwrap_or(0))
                };
                let e = match m {
                    MatNode::Elems(x) => {
                        let slot = match f.exprs[x] {
                            Expr::Load(s)
                                if matrix_of(&f.exprs[x]).is_none() && !written.contains(&s) =>
                            {
                                s
                            }
                            _ => *input_slot.entry(x.index()).or_insert_with(|| {
                                let slot = Slot::State(StateId::new(base + scratch.len()));
                                scratch.push(format!("matrix_in{}", scratch.len()));
                                new_stores.push((slot, x));
                                slot
                            }),
                        };
                        MatExpr::Buffer(slot)
                    }
                    MatNode::Transpose(a) => MatExpr::Transpose(idx(a)?),
                    MatNode::MatMul(a, b) => MatExpr::MatMul(idx(a)?, idx(b)?),
                    MatNode::Scale(c, a) => {
                        let coef = match f.exprs[c] {
                            Expr::Const(x) => Coef::Const(x),
                            _ => {
                                prog.coefs.push(c);
                                Coef::Uniform(UniformId::new(prog.coefs.len() - 1))
                            }
                        };
                        MatExpr::Scale(coef, idx(a)?)
                    }
                    MatNode::Add(a, b) => MatExpr::Add(idx(a)?, idx(b)?),
                    MatNode::Sub(a, b) => MatExpr::Sub(idx(a)?, idx(b)?),
                    MatNode::Neg(a) => MatExpr::Neg(idx(a)?),
                    MatNode::RoundBf16(a) => MatExpr::RoundBf16(idx(a)?),
                    MatNode::Select(..) => continue,
                };
                prog.program.nodes.push(e);
                index_of.insert(h.index(), (prog.program.nodes.len() - 1) as u32);
            }
            let r = resolve(root)?;
            Ok(index_of.get(&r.index()).copied().unwrap_or(0))
        };
        for &out in outputs.iter().filter(|h| level[h.index()] == stage) {
            let node = emit(
                out,
                &mut prog,
                &mut index_of,
                &mut scratch,
                &mut new_stores,
                &mut input_slot,
            )?;
            let slot = Slot::State(StateId::new(base + scratch.len()));
            scratch.push(format!("matrix_out{}", scratch.len()));
            prog.program.outputs.push(MatOutput { slot, node });
            replace.insert(out.index(), slot);
            load_level.push((slot, stage));
        }
        programs.push(prog);
    }
    let _ = leaf_of;

    // The function with each output leaf a load of its scratch state, and the scratch stores.
    let mut exprs = Arena::new();
    for (h, e) in f.exprs.iter() {
        exprs.append(match replace.get(&h.index()) {
            Some(slot) => Expr::Load(*slot),
            None => *e,
        });
    }
    live.func.exprs = exprs;
    live.func.stores.extend(new_stores);
    live.matrix = MatrixPlan {
        scratch,
        load_level,
        programs,
        for_matrices: matrix,
    };
    Ok(live)
}
