//! Dead-code and dead-state elimination.
//!
//! `p` is live. A state or scalar state is live when a live store's value reads it; a store is
//! live when its slot is live; this runs to a fixed point, so a state that only feeds itself (and
//! never `p`) is dropped with its store and is not allocated. Nodes no live store reaches are
//! dropped. A live state whose flag condition is false for this flag set is an error.
//!
//! For a kernel variant ([`dce_keeping`]) the states and scalars live in the flag set's kernel
//! stay live wherever the variant still changes them: a variant must leave every buffer as the
//! kernel with the selects would, so a state updated on every step but read only under a
//! condition keeps being updated while the condition is false. A state whose store became its
//! own old value (the untaken branch of `if momentum != 0 { buf = ... }`) is neither read nor
//! written by the variant, and is not allocated until a variant needs it.

use crate::diag::Diagnostic;
use crate::ir::{matrix_of, Builder, Function, Program, Reduction};
use optc_kernel::eval::eval_arena;
use optc_kernel::{Expr, Handle, ReductionId, ScalarId, Slot, StateId};

/// The function after elimination, with states and scalars renumbered densely.
#[derive(Clone, Debug)]
pub struct Live {
    /// The function; `Slot::State(i)` and `Expr::Scalar(i)` index `states` and `scalars`.
    pub func: Function,
    /// The program's index of each live state.
    pub states: Vec<usize>,
    /// The program's index of each live scalar state.
    pub scalars: Vec<usize>,
    /// Which nodes of the input function survive, indexed like it.
    pub reached: Vec<bool>,
    /// The matrix stages, once `passes::matrix` has planned them.
    pub matrix: super::matrix::MatrixPlan,
}

/// Removes dead nodes, stores and states from `f`.
pub fn dce(
    f: &Function,
    program: &Program,
    flags: &[bool],
    matrix: bool,
) -> Result<Live, Diagnostic> {
    dce_with(f, program, flags, matrix, None)
}

/// Like [`dce`] for a variant of the flag set whose elimination gave `base`: every store of a
/// state or scalar live in `base` is kept (see the module docs).
pub fn dce_keeping(
    f: &Function,
    program: &Program,
    flags: &[bool],
    matrix: bool,
    base: &Live,
) -> Result<Live, Diagnostic> {
    dce_with(f, program, flags, matrix, Some(base))
}

fn dce_with(
    f: &Function,
    program: &Program,
    flags: &[bool],
    matrix: bool,
    base: Option<&Live>,
) -> Result<Live, Diagnostic> {
    let n = f.exprs.len();
    let mut reached = vec![false; n];
    let mut live_states = vec![false; program.states.len()];
    let mut live_scalars = vec![false; program.scalars.len()];
    let mut roots: Vec<Handle<Expr>> = f
        .stores
        .iter()
        .filter(|(s, _)| *s == Slot::Param)
        .map(|(_, h)| *h)
        .collect();
    // The loss-scale check is read by the runtime, not by a node (`passes::loss_scale`).
    let kept = |r: &Reduction| r.name == optc_kernel::NONFINITE_REDUCTION;
    roots.extend(f.reductions.iter().filter(|r| kept(r)).map(|r| r.arg));
    if let Some(base) = base {
        // `rebuild` already dropped the stores that became their slot's old value.
        for (s, h) in &f.stores {
            if let Slot::State(id) = s {
                if base.states.contains(&id.index()) {
                    live_states[id.index()] = true;
                    roots.push(*h);
                }
            }
        }
        for &i in &base.scalars {
            live_scalars[i] = true;
        }
    }
    loop {
        // Mark everything the current roots reach.
        while let Some(h) = roots.pop() {
            if std::mem::replace(&mut reached[h.index()], true) {
                continue;
            }
            if let Some(m) = matrix_of(&f.exprs[h]).and_then(|k| f.matrices.get(k)) {
                // A choice made by flags keeps only the branch it picks.
                let picked = match *m {
                    crate::ir::MatNode::Select(c, a, b) => match f.exprs[c] {
                        Expr::Bool(v) => Some((c, if v { a } else { b })),
                        Expr::Const(x) => Some((c, if x != 0.0 { a } else { b })),
                        _ => None,
                    },
                    _ => None,
                };
                match picked {
                    Some((c, x)) => roots.extend([c, x]),
                    None => roots.extend(m.handles()),
                }
                continue;
            }
            match f.exprs[h] {
                Expr::Load(Slot::State(s)) => live_states[s.index()] = true,
                Expr::Scalar(s) => live_scalars[s.index()] = true,
                Expr::Reduced(r) => {
                    if let Some(red) = f.reductions.get(r.index()) {
                        roots.push(red.arg);
                    }
                }
                ref e => roots.extend(e.operands()),
            }
        }
        // Stores of newly live slots add roots.
        for (s, h) in &f.stores {
            if let Slot::State(id) = s {
                if live_states[id.index()] && !reached[h.index()] {
                    roots.push(*h);
                }
            }
        }
        for (s, h) in &f.scalar_stores {
            if live_scalars[s.index()] && !reached[h.index()] {
                roots.push(*h);
            }
        }
        if roots.is_empty() {
            break;
        }
    }

    check_conditions(f, program, flags, matrix, &reached, &live_states)?;

    let states: Vec<usize> = (0..live_states.len()).filter(|&i| live_states[i]).collect();
    let scalars: Vec<usize> = (0..live_scalars.len())
        .filter(|&i| live_scalars[i])
        .collect();
    let state_id =
        |old: StateId| StateId::new(states.iter().position(|&s| s == old.index()).unwrap_or(0));
    let scalar_id =
        |old: ScalarId| ScalarId::new(scalars.iter().position(|&s| s == old.index()).unwrap_or(0));

    // Live reductions, renumbered densely.
    let live_reductions: Vec<usize> = (0..f.reductions.len())
        .filter(|&i| {
            kept(&f.reductions[i])
                || f.exprs
                    .iter()
                    .any(|(h, e)| reached[h.index()] && *e == Expr::Reduced(ReductionId::new(i)))
        })
        .collect();
    let reduction_id = |old: ReductionId| {
        ReductionId::new(
            live_reductions
                .iter()
                .position(|&r| r == old.index())
                .unwrap_or(0),
        )
    };

    let mut b = Builder::default();
    let mut new_of: Vec<Option<Handle<Expr>>> = vec![None; n];
    for (h, e) in f.exprs.iter() {
        if !reached[h.index()] {
            continue;
        }
        let e = match *e {
            ref leaf if matrix_of(leaf).is_some() => *leaf,
            Expr::Load(Slot::State(s)) => Expr::Load(Slot::State(state_id(s))),
            Expr::Scalar(s) => Expr::Scalar(scalar_id(s)),
            Expr::Reduced(r) => Expr::Reduced(reduction_id(r)),
            // Operands of a reached node are reached.
            ref other => other.map_operands(|o| new_of[o.index()].unwrap_or(o)),
        };
        new_of[h.index()] = Some(b.add(e, f.span(h)));
    }
    let mut out = b.func;
    for (s, h) in &f.stores {
        let keep = match s {
            Slot::Param => true,
            Slot::Grad => false,
            Slot::State(id) => live_states[id.index()],
        };
        if let (true, Some(nh)) = (keep, new_of[h.index()]) {
            let slot = match s {
                Slot::State(id) => Slot::State(state_id(*id)),
                other => *other,
            };
            out.stores.push((slot, nh));
        }
    }
    for (s, h) in &f.scalar_stores {
        if let (true, Some(nh)) = (live_scalars[s.index()], new_of[h.index()]) {
            out.scalar_stores.push((scalar_id(*s), nh));
        }
    }
    for &i in &live_reductions {
        let r = &f.reductions[i];
        if let Some(arg) = new_of[r.arg.index()] {
            out.reductions.push(Reduction { arg, ..r.clone() });
        }
    }
    out.matrices = f
        .matrices
        .iter()
        .map(|m| m.map(|h| new_of[h.index()].unwrap_or(h)))
        .collect();
    Ok(Live {
        func: out,
        states,
        scalars,
        reached,
        matrix: Default::default(),
    })
}

/// Errors when a live state does not exist under this flag set.
fn check_conditions(
    f: &Function,
    program: &Program,
    flags: &[bool],
    matrix: bool,
    reached: &[bool],
    live_states: &[bool],
) -> Result<(), Diagnostic> {
    let mut values: Vec<f64> = Vec::new();
    let ok = eval_arena(&program.decl, &mut values, |e| match e {
        Expr::Hyper(_) => Ok(f64::NAN),
        Expr::Flag(crate::ir::MATRIX_FLAG) => Ok(if matrix { 1.0 } else { 0.0 }),
        Expr::Flag(i) => Ok(if flags.get(i.index()).copied().unwrap_or(false) {
            1.0
        } else {
            0.0
        }),
        _ => Err(()),
    });
    if ok.is_err() {
        return Ok(());
    }
    for (i, st) in program.states.iter().enumerate() {
        let Some(cond) = st.condition else { continue };
        if !live_states[i] || values[cond.index()] != 0.0 {
            continue;
        }
        let use_span = f
            .exprs
            .iter()
            .find(|(h, e)| {
                reached[h.index()]
                    && **e == Expr::Load(Slot::State(StateId::new(i)))
                    && f.span(*h) != Default::default()
            })
            .map(|(h, _)| f.span(h))
            .unwrap_or(st.span);
        let setting: Vec<String> = program
            .flags
            .iter()
            .zip(flags)
            .map(|(fl, v)| format!("{}={}", fl.name, v))
            .collect();
        return Err(Diagnostic::error(
            "E0601",
            format!(
                "state `{}` does not exist with these flags, but its value is used",
                st.name
            ),
            use_span,
            format!("used with {}", setting.join(", ")),
        )
        .with(st.span, "declared with a flag condition here")
        .hint(format!(
            "guard the use with the same flags, as in `if FLAG {{ ... }}` or `FLAG ? {} : other`",
            st.name
        )));
    }
    Ok(())
}
