//! The passes keep the meaning of a rule.
//!
//! Property: for random well-formed update blocks over `p`, `g`, states, a scalar state, hypers,
//! `t` and literals (arithmetic, `^`, `sqrt`/`abs`/`sign`/`min`/`max`/`clamp`/`lerp`, ternaries on
//! comparisons and flags, `if` on hyper comparisons and flags), and for every flag set, the
//! unoptimized program (lowered IR after `passes::specialize` only), evaluated here in f64, gives
//! the same `p`, states and scalar state as the reference interpreter
//! (`backend::interp::step_f64`) running the final kernel.
//!
//! Tolerance: `|a - b| <= 1e-9 * max(1, |a|, |b|)`; NaN equals NaN and infinities must match
//! exactly. Both sides compute in f64, so the only legitimate differences are the folds that
//! replace `x ^ 3` by `x * x * x` (and `x ^ 2`, `x ^ -1` by a product and a quotient), a few ulps
//! that later cancellation can scale up a little.
//!
//! Then small rules check that each pass does its job: CSE shares, fold folds, DCE drops a state
//! that only feeds itself and does not allocate a flag-off state, and hoisting leaves no uniform
//! work in the body.

use optc_compiler::backend::interp::{step_f64, Buffers};
use optc_compiler::ir::Function;
use optc_compiler::passes::specialize::specialize;
use optc_compiler::Rule;
use optc_kernel::{BinaryOp, Expr, Kernel, Real, Slot};
use proptest::prelude::*;

// ---------------------------------------------------------------------------------------------
// Random rules.

/// A numeric expression over `leaves`, with bounded depth.
fn num(leaves: &'static [&'static str]) -> BoxedStrategy<String> {
    let lit = prop_oneof![
        Just("0".to_string()),
        Just("1".to_string()),
        Just("0.5".to_string()),
        Just("2".to_string()),
        Just("3.25".to_string()),
        Just("1e-8".to_string()),
    ];
    let leaf = prop_oneof![
        3 => proptest::sample::select(leaves).prop_map(str::to_string),
        1 => lit,
    ];
    leaf.prop_recursive(4, 24, 3, |inner| {
        let cmp = (
            inner.clone(),
            proptest::sample::select(&["<", "<=", ">", ">=", "==", "!="][..]),
            inner.clone(),
        )
            .prop_map(|(a, op, b)| format!("{a} {op} {b}"));
        let cond = prop_oneof![
            3 => cmp.clone(),
            1 => Just("sw".to_string()),
            1 => Just("!sw".to_string()),
            1 => (cmp.clone(), cmp).prop_map(|(a, b)| format!("({a} && {b})")),
            1 => inner.clone().prop_map(|a| format!("(sw || {a} > 0)")),
        ];
        let f1 = proptest::sample::select(&["sqrt", "abs", "sign"][..]);
        let f2 = proptest::sample::select(&["min", "max"][..]);
        let f3 = proptest::sample::select(&["clamp", "lerp"][..]);
        let exponent = proptest::sample::select(&["0", "1", "2", "3", "-1", "0.5", "t"][..]);
        prop_oneof![
            4 => (
                inner.clone(),
                proptest::sample::select(&["+", "-", "*", "/"][..]),
                inner.clone()
            )
                .prop_map(|(a, op, b)| format!("({a} {op} {b})")),
            1 => inner.clone().prop_map(|a| format!("(-{a})")),
            1 => (inner.clone(), exponent).prop_map(|(a, e)| format!("({a} ^ {e})")),
            1 => (f1, inner.clone()).prop_map(|(f, a)| format!("{f}({a})")),
            1 => (f2, inner.clone(), inner.clone()).prop_map(|(f, a, b)| format!("{f}({a}, {b})")),
            1 => (f3, inner.clone(), inner.clone(), inner.clone())
                .prop_map(|(f, a, b, c)| format!("{f}({a}, {b}, {c})")),
            1 => (cond, inner.clone(), inner).prop_map(|(c, a, b)| format!("({c} ? {a} : {b})")),
        ]
    })
    .boxed()
}

const ELEMENT: &[&str] = &["p", "g", "m", "lr", "beta", "t", "s"];
const UNIFORM: &[&str] = &["lr", "beta", "t", "s"];

/// A uniform `if` condition: hyper comparisons and flags.
fn uniform_cond() -> impl Strategy<Value = String> {
    prop_oneof![
        Just("sw".to_string()),
        Just("!sw".to_string()),
        Just("fl".to_string()),
        (
            proptest::sample::select(UNIFORM),
            proptest::sample::select(&["<", ">", "!="][..]),
            proptest::sample::select(&["0.5", "1", "beta"][..])
        )
            .prop_map(|(a, op, b)| format!("{a} {op} {b}")),
        Just("sw && lr > beta".to_string()),
    ]
}

/// A whole rule: a `let`, an `if`/`else` on a uniform condition, a flag-guarded state, a scalar
/// state and the final `p`.
fn rule_source() -> impl Strategy<Value = String> {
    (
        num(ELEMENT),
        uniform_cond(),
        num(ELEMENT),
        num(ELEMENT),
        num(ELEMENT),
        num(UNIFORM),
        num(ELEMENT),
        any::<bool>(),
    )
        .prop_map(|(x, c, m1, m2, v, s, pe, use_v)| {
            let v_term = if use_v { " + (fl ? v : 0)" } else { "" };
            format!(
                "optimizer prop\n\
                 hyper lr = 1e-3\n\
                 hyper beta = 0.9\n\
                 flag sw = false\n\
                 flag fl = false\n\
                 state m = 0\n\
                 state v = 0 if fl\n\
                 scalar s = 1\n\
                 update {{\n\
                 \x20   let x = {x}\n\
                 \x20   if {c} {{ m = {m1} }} else {{ m = {m2} + x }}\n\
                 \x20   if fl {{ v = {v} }}\n\
                 \x20   s = {s}\n\
                 \x20   p = {pe}{v_term} - x\n\
                 }}\n"
            )
        })
}

// ---------------------------------------------------------------------------------------------
// The unoptimized program, evaluated directly.

/// New values of the program's slots after one step on one element: `(p, states, scalars)`.
fn eval_program(
    f: &Function,
    hypers: &[f64],
    t: f64,
    scalars: &[f64],
    p: f64,
    g: f64,
    states: &[f64],
) -> (f64, Vec<f64>, Vec<f64>) {
    let mut v: Vec<f64> = Vec::with_capacity(f.exprs.len());
    for (_, e) in f.exprs.iter() {
        let x = match *e {
            Expr::Const(c) => c,
            Expr::Bool(b) => f64::from(u8::from(b)),
            Expr::Hyper(i) => hypers[i.index()],
            Expr::Step => t,
            Expr::Scalar(i) => scalars[i.index()],
            Expr::Load(Slot::Param) => p,
            Expr::Load(Slot::Grad) => g,
            Expr::Load(Slot::State(i)) => states[i.index()],
            Expr::Unary(op, a) => f64::unary(op, v[a.index()]),
            Expr::Binary(op, a, b) => f64::binary(op, v[a.index()], v[b.index()]),
            Expr::Select(c, a, b) => {
                if v[c.index()] != 0.0 {
                    v[a.index()]
                } else {
                    v[b.index()]
                }
            }
            Expr::Flag(_)
            | Expr::Uniform(_)
            | Expr::Reduced(_)
            | Expr::Vector(_)
            | Expr::VecMean(_) => {
                panic!("unexpected leaf {e:?} after specialize")
            }
        };
        v.push(x);
    }
    let mut new_p = p;
    let mut new_states = states.to_vec();
    for (slot, h) in &f.stores {
        match slot {
            Slot::Param => new_p = v[h.index()],
            Slot::State(i) => new_states[i.index()] = v[h.index()],
            Slot::Grad => panic!("a store to g"),
        }
    }
    let mut new_scalars = scalars.to_vec();
    for (i, h) in &f.scalar_stores {
        new_scalars[i.index()] = v[h.index()];
    }
    (new_p, new_states, new_scalars)
}

/// Whether `a` and `b` agree within the stated tolerance.
fn close(a: f64, b: f64) -> bool {
    if a.is_nan() || b.is_nan() {
        return a.is_nan() && b.is_nan();
    }
    if a.is_infinite() || b.is_infinite() {
        return a == b;
    }
    (a - b).abs() <= 1e-9 * 1f64.max(a.abs()).max(b.abs())
}

/// Inputs for one step.
#[derive(Clone, Debug)]
struct Inputs {
    hypers: [f64; 2],
    t: u64,
    scalar: f64,
    /// `(p, g, m, v)` per element.
    elements: Vec<[f64; 4]>,
}

fn inputs() -> impl Strategy<Value = Inputs> {
    let value = prop_oneof![
        8 => -4.0..4.0f64,
        1 => Just(0.0),
        1 => Just(-0.0),
        1 => Just(1.0),
    ];
    (
        [0.01..2.0f64, 0.01..2.0f64],
        1..60u64,
        -2.0..2.0f64,
        proptest::collection::vec([value.clone(), value.clone(), value.clone(), value], 1..6),
    )
        .prop_map(|(hypers, t, scalar, elements)| Inputs {
            hypers,
            t,
            scalar,
            elements,
        })
}

/// Runs both sides for every flag set; an error message on the first disagreement.
fn compare(rule: &Rule, inp: &Inputs) -> Result<(), String> {
    let program = rule.program();
    let state_names: Vec<&str> = program.states.iter().map(|s| s.name.as_str()).collect();
    for flags in rule.flag_sets() {
        let kernel: Kernel = rule
            .specialize_values(&flags)
            .map_err(|e| format!("{flags:?}: {e}"))?;
        let unopt = specialize(&program.update, &flags);

        // Expected, element by element.
        let mut want_p = Vec::new();
        let mut want_states = Vec::new();
        let mut want_scalars = Vec::new();
        for el in &inp.elements {
            let (p, st, sc) = eval_program(
                &unopt,
                &inp.hypers,
                inp.t as f64,
                &[inp.scalar],
                el[0],
                el[1],
                &el[2..],
            );
            want_p.push(p);
            want_states.push(st);
            want_scalars = sc;
        }

        // The kernel, on its own (live) states.
        let live: Vec<usize> = kernel
            .states
            .iter()
            .map(|s| {
                state_names
                    .iter()
                    .position(|n| *n == s.name)
                    .ok_or_else(|| format!("kernel state {} unknown", s.name))
            })
            .collect::<Result<_, _>>()?;
        let mut param: Vec<f64> = inp.elements.iter().map(|e| e[0]).collect();
        let grad: Vec<f64> = inp.elements.iter().map(|e| e[1]).collect();
        let mut states: Vec<Vec<f64>> = live
            .iter()
            .map(|&i| inp.elements.iter().map(|e| e[2 + i]).collect())
            .collect();
        let mut scalars: Vec<f64> = kernel.scalars.iter().map(|_| inp.scalar).collect();
        step_f64(
            &kernel,
            &inp.hypers,
            inp.t,
            &mut scalars,
            Buffers {
                param: &mut param,
                grad: &grad,
                states: states.iter_mut().map(|s| s.as_mut_slice()).collect(),
            },
        )
        .map_err(|e| format!("{flags:?}: {e}"))?;

        for (i, (&got, &want)) in param.iter().zip(&want_p).enumerate() {
            if !close(got, want) {
                return Err(format!(
                    "{flags:?}: p[{i}] = {got:e}, unoptimized {want:e}\n{kernel}"
                ));
            }
        }
        for (k, &prog_i) in live.iter().enumerate() {
            for (i, got) in states[k].iter().enumerate() {
                let want = want_states[i][prog_i];
                if !close(*got, want) {
                    return Err(format!(
                        "{flags:?}: {}[{i}] = {got:e}, unoptimized {want:e}\n{kernel}",
                        state_names[prog_i]
                    ));
                }
            }
        }
        for (k, sc) in kernel.scalars.iter().enumerate() {
            let prog_i = program
                .scalars
                .iter()
                .position(|s| s.name == sc.name)
                .ok_or("unknown scalar")?;
            if !close(scalars[k], want_scalars[prog_i]) {
                return Err(format!(
                    "{flags:?}: scalar {} = {:e}, unoptimized {:e}\n{kernel}",
                    sc.name, scalars[k], want_scalars[prog_i]
                ));
            }
        }
    }
    Ok(())
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 512, ..ProptestConfig::default() })]

    #[test]
    fn passes_keep_the_meaning(src in rule_source(), inp in inputs()) {
        let rule = match Rule::parse("prop.opt", &src) {
            Ok(r) => r,
            Err(d) => return Err(TestCaseError::fail(format!("generated rule rejected:\n{src}\n{d}"))),
        };
        if let Err(e) = compare(&rule, &inp) {
            return Err(TestCaseError::fail(format!("{src}\n{e}")));
        }
    }
}

/// The tolerance is not so loose that a wrong pass would pass: one changed operator is caught.
#[test]
fn comparison_catches_a_wrong_kernel() {
    let src = "optimizer one\nhyper lr = 0.5\nupdate { p = p - lr * g }\n";
    let rule = Rule::parse("one.opt", src).unwrap_or_else(|d| panic!("{d}"));
    let mut kernel = rule.specialize(&[]).unwrap_or_else(|e| panic!("{e}"));
    let unopt = specialize(&rule.program().update, &[]);
    let (want, _, _) = eval_program(&unopt, &[0.5], 1.0, &[], 1.0, 2.0, &[]);
    assert_eq!(want, 0.0);
    // Rebuild the body with its subtraction turned into an addition.
    let mut body = optc_kernel::Arena::new();
    for (_, e) in kernel.stages[0].body.iter() {
        body.append(match *e {
            Expr::Binary(BinaryOp::Sub, a, b) => Expr::Binary(BinaryOp::Add, a, b),
            other => other,
        });
    }
    kernel.stages[0].body = body;
    let mut p = [1.0];
    step_f64(
        &kernel,
        &[0.5],
        1,
        &mut [],
        Buffers {
            param: &mut p,
            grad: &[2.0],
            states: vec![],
        },
    )
    .unwrap_or_else(|e| panic!("{e}"));
    assert!(!close(p[0], want), "{} vs {want}", p[0]);
    // And one part in 1e8 is already a disagreement.
    assert!(!close(1.0, 1.0 + 1e-8));
    assert!(!close(f64::NAN, 0.0));
    assert!(close(f64::NAN, f64::NAN));
}

// ---------------------------------------------------------------------------------------------
// Each pass does its job.

fn compile(src: &str, flags: &[(&str, bool)]) -> (Rule, Kernel) {
    let rule = Rule::parse("unit.opt", src).unwrap_or_else(|d| panic!("{d}"));
    let kernel = rule.specialize(flags).unwrap_or_else(|e| panic!("{e}"));
    (rule, kernel)
}

/// How many nodes of `arena` are `op` over the loads of `a` and `b` (in either order).
fn count_binary(arena: &optc_kernel::Arena<Expr>, op: BinaryOp, a: Slot, b: Slot) -> usize {
    let is = |h: optc_kernel::Handle<Expr>, s: Slot| arena[h] == Expr::Load(s);
    arena
        .iter()
        .filter(|(_, e)| match **e {
            Expr::Binary(o, x, y) => o == op && ((is(x, a) && is(y, b)) || (is(x, b) && is(y, a))),
            _ => false,
        })
        .count()
}

#[test]
fn cse_shares_repeated_and_commuted_work() {
    let src = "optimizer c\nhyper lr = 0.1\n\
               update { p = p - lr * (g * g) / (1 + g * g) - (g * p + p * g) }\n";
    let (rule, k) = compile(src, &[]);
    let unopt = specialize(&rule.program().update, &[]);
    // Lowering keeps each written occurrence (loads are made per use)...
    let before = unopt
        .exprs
        .iter()
        .filter(|(_, e)| matches!(e, Expr::Binary(BinaryOp::Mul, ..)))
        .count();
    assert!(before >= 5, "{before} products before the passes");
    // ...and the kernel computes g*g once and g*p once.
    assert_eq!(
        count_binary(&k.stages[0].body, BinaryOp::Mul, Slot::Grad, Slot::Grad),
        1,
        "{k}"
    );
    assert_eq!(
        count_binary(&k.stages[0].body, BinaryOp::Mul, Slot::Grad, Slot::Param),
        1,
        "{k}"
    );
    // Each buffer is loaded once.
    for slot in [Slot::Param, Slot::Grad] {
        let loads = k.stages[0]
            .body
            .iter()
            .filter(|(_, e)| **e == Expr::Load(slot))
            .count();
        assert_eq!(loads, 1, "{slot:?} loaded {loads} times\n{k}");
    }
}

#[test]
fn fold_evaluates_literals_and_drops_dead_branches() {
    let src = "optimizer f\nflag sw = false\n\
               update { p = (p - (2 * 3) * g * 1 - 0) / (sw ? g : 1) }\n";
    let (_, k) = compile(src, &[]);
    let literal = |h: optc_kernel::Handle<Expr>| {
        matches!(k.stages[0].body[h], Expr::Const(_) | Expr::Bool(_))
    };
    assert!(
        k.stages[0].body.iter().any(|(_, e)| *e == Expr::Const(6.0)),
        "2 * 3 not folded\n{k}"
    );
    for (_, e) in k.stages[0].body.iter() {
        let ops: Vec<_> = e.operands().collect();
        assert!(
            ops.is_empty() || !ops.iter().all(|&o| literal(o)),
            "literal-only node {e:?} left\n{k}"
        );
        assert!(!matches!(e, Expr::Select(..)), "flag select left\n{k}");
        assert!(
            !matches!(e, Expr::Binary(BinaryOp::Div, ..)),
            "division by the folded 1 left\n{k}"
        );
    }
    // Nothing uniform is left to compute on the host: no hypers, and literals stay immediates.
    assert!(k.stages[0].uniforms.is_empty(), "{k}");
    // p - 6 * g: one mul and one sub.
    let ops = k.stages[0]
        .body
        .iter()
        .filter(|(_, e)| matches!(e, Expr::Binary(..)))
        .count();
    assert_eq!(ops, 2, "{k}");
}

const DCE_RULE: &str = "optimizer d
hyper lr = 0.1
flag ams = false
/// Only feeds itself (and b): dead.
state a = 0
/// Only feeds a: dead.
state b = 0
state m = 0
state vmax = 0 if ams
scalar unused = 1
update {
    a = a * 0.9 + g + b
    b = b + a
    unused = unused * 2
    m = m * 0.9 + g
    if ams { vmax = max(vmax, m) }
    p = p - lr * (ams ? vmax : m)
}
";

#[test]
fn dce_drops_self_feeding_states_and_flag_off_states() {
    let names = |k: &Kernel| k.states.iter().map(|s| s.name.clone()).collect::<Vec<_>>();
    let (rule, off) = compile(DCE_RULE, &[("ams", false)]);
    assert!(rule.warnings().is_empty(), "{}", rule.warnings());
    assert_eq!(names(&off), ["m"], "{off}");
    assert!(off.scalars.is_empty(), "{off}");
    // p and m read and written, g read: 5 f32 accesses.
    assert_eq!(off.bytes_per_element(), 20, "{off}");
    let (_, on) = compile(DCE_RULE, &[("ams", true)]);
    assert_eq!(names(&on), ["m", "vmax"], "{on}");
    assert_eq!(on.bytes_per_element(), 28, "{on}");
    // No body node refers to a dropped state.
    for k in [&off, &on] {
        for (_, e) in k.stages[0].body.iter() {
            if let Expr::Load(Slot::State(s)) = e {
                assert!(s.index() < k.states.len(), "{k}");
            }
        }
    }
}

#[test]
fn hoisting_leaves_no_uniform_work_in_the_body() {
    let src = "optimizer h
hyper lr = 1e-3
hyper beta = 0.9
scalar prod = 1
state m = 0
update {
    prod = prod * beta
    m = beta * m + (1 - beta) * g
    let bc = 1 - beta ^ t
    p = p - lr / bc * m / (sqrt((1 - beta ^ t) / (1 - prod)) + 1e-8)
}
";
    let (_, k) = compile(src, &[]);
    let leafish = |h: optc_kernel::Handle<Expr>| {
        matches!(
            k.stages[0].body[h],
            Expr::Uniform(_) | Expr::Const(_) | Expr::Bool(_)
        )
    };
    for (_, e) in k.stages[0].body.iter() {
        assert!(
            !matches!(
                e,
                Expr::Hyper(_) | Expr::Step | Expr::Scalar(_) | Expr::Flag(_)
            ),
            "uniform leaf {e:?} in the body\n{k}"
        );
        let ops: Vec<_> = e.operands().collect();
        assert!(
            ops.is_empty() || !ops.iter().all(|&o| leafish(o)),
            "uniform work {e:?} in the body\n{k}"
        );
        assert!(!matches!(e, Expr::Binary(BinaryOp::Pow, ..)), "{k}");
    }
    // The host computes the bias correction, once: one pow of beta by t.
    let pows = k
        .host
        .iter()
        .filter(|(_, e)| matches!(e, Expr::Binary(BinaryOp::Pow, ..)))
        .count();
    assert_eq!(pows, 1, "{k}");
    assert_eq!(k.scalar_updates.len(), 1, "{k}");
}
