//! Rank classes: a rule that reads the built-in `matrix` condition has one kernel per rank class,
//! and the optimizer runs each parameter with the kernel of its shape (`Matrix` for 2 or more
//! dims, `Vector` for 0 or 1), in one step call, with Step-scope reductions combined over both.
//! Expected values come from the interpreter target (the meaning), from stated math (LARS as
//! pytorch_optimizer defines it, in f64) and from `optc_kernel::reduce` (the summation order).
#![cfg(feature = "compiler")]

mod api_support;

use api_support::{bits, data};
use optc_kernel::reduce::{combine_totals, reduce, ReduceOp};
use optc_kernel::RankClass;
use optc_runtime::{GroupId, Optimizer, Options, Rule, Target, Update};

/// A rule whose two rank classes have different states: matrices keep `v`, vectors none.
const RANKED: &str = "optimizer ranked

hyper lr = 0.1

/// Second moment, kept for matrices only.
state v = 0

update {
    if matrix { v = v + g * g }
    let d = matrix ? g / (sqrt(v) + 1e-8) : g
    p = p - lr * d
}
";

/// The model: (name, shape, group). Two matrices (one 4-D, one with a short second block of
/// `REDUCE_BLOCK`), a bias, a 0-dim scalar; group 1 holds a matrix and a vector.
const MODEL: &[(&str, &[usize], usize)] = &[
    ("w", &[37, 129], 0),
    ("b", &[129], 0),
    ("conv", &[2, 3, 5, 7], 0),
    ("scale", &[], 0),
    ("head.w", &[5, 11], 1),
    ("head.b", &[11], 1),
];

fn len(shape: &[usize]) -> usize {
    shape.iter().product()
}

fn build(rule: Rule, target: Target, threads: Option<usize>, clip: Option<f64>) -> Optimizer {
    let options = Options {
        target,
        threads,
        allow_fma: false,
        max_grad_norm: clip,
        ..Options::default()
    };
    let mut opt = Optimizer::with_options(rule, options).expect("optimizer");
    let flags: &[(&str, bool)] = if opt.rule().flags().iter().any(|f| f.name == "nesterov") {
        &[("nesterov", true)]
    } else {
        &[]
    };
    let head = opt.add_group(flags).expect("group");
    for &(name, shape, group) in MODEL {
        let g = if group == 0 { GroupId::DEFAULT } else { head };
        opt.add_param_to(g, name, shape).expect("add");
    }
    opt
}

fn lars() -> Rule {
    Rule::stdlib("lars").expect("lars")
}

fn init_params() -> Vec<Vec<f32>> {
    MODEL
        .iter()
        .enumerate()
        .map(|(i, (_, s, _))| data(len(s), 100 + i as u32))
        .collect()
}

fn grads(step: u32) -> Vec<Vec<f32>> {
    MODEL
        .iter()
        .enumerate()
        .map(|(i, (_, s, _))| data(len(s), 1000 * step + i as u32))
        .collect()
}

/// Steps every parameter once (in an order other than registration order, to show that the
/// Step-scope combine follows registration order); returns the reported gradient norms.
fn run(opt: &mut Optimizer, params: &mut [Vec<f32>], steps: u32) -> Vec<Option<f64>> {
    (1..=steps)
        .map(|s| {
            let g = grads(s);
            let updates = params
                .iter_mut()
                .zip(&g)
                .zip(MODEL)
                .rev()
                .map(|((p, g), (name, _, _))| Update::new(name, p, g));
            opt.step(updates).expect("step").grad_norm
        })
        .collect()
}

/// Every parameter's bits and its states' names and bits.
type Snapshot = Vec<(Vec<u32>, Vec<(String, Vec<u32>)>)>;

fn snapshot(opt: &Optimizer, params: &[Vec<f32>]) -> Snapshot {
    params
        .iter()
        .zip(MODEL)
        .map(|(p, (name, _, _))| {
            let states = opt.states(name).expect("states");
            (
                bits(p),
                states
                    .into_iter()
                    .map(|(n, v)| (n.to_string(), bits(&v)))
                    .collect(),
            )
        })
        .collect()
}

#[test]
fn each_parameter_runs_the_kernel_of_its_rank_class() {
    let opt = build(lars(), Target::Interp, None, None);
    assert_eq!(opt.compile_count(), 4, "2 flag sets x 2 rank classes");
    for &(name, shape, _) in MODEL {
        let want = if shape.len() >= 2 {
            RankClass::Matrix
        } else {
            RankClass::Vector
        };
        assert_eq!(opt.param_kernel(name).expect("kernel").rank, want, "{name}");
    }
    assert_eq!(
        opt.kernel(GroupId::DEFAULT).expect("kernel").rank,
        RankClass::Matrix
    );
    let plain = build(
        Rule::stdlib("sgd").expect("sgd"),
        Target::Interp,
        None,
        None,
    );
    assert_eq!(
        plain.compile_count(),
        2,
        "a rule without `matrix`: one kernel per flag set"
    );
    assert_eq!(
        plain.param_kernel("b").expect("kernel").rank,
        RankClass::Any
    );
}

#[test]
fn lars_on_cpu_equals_the_interpreter_with_1_2_and_3_threads() {
    for clip in [None, Some(0.5)] {
        let mut interp = build(lars(), Target::Interp, None, clip);
        interp.set_hyper("weight_decay", 0.01).expect("wd");
        interp.set_hyper("lr", 0.1).expect("lr");
        let mut want_p = init_params();
        let want_norms = run(&mut interp, &mut want_p, 3);
        let want = snapshot(&interp, &want_p);
        assert_eq!(want_norms.iter().all(Option::is_some), clip.is_some());
        for threads in [1, 2, 3] {
            for _run in 0..2 {
                let mut cpu = build(lars(), Target::Cpu, Some(threads), clip);
                cpu.set_hyper("weight_decay", 0.01).expect("wd");
                cpu.set_hyper("lr", 0.1).expect("lr");
                let mut p = init_params();
                let norms = run(&mut cpu, &mut p, 3);
                assert_eq!(
                    norms
                        .iter()
                        .map(|n| n.map(f64::to_bits))
                        .collect::<Vec<_>>(),
                    want_norms
                        .iter()
                        .map(|n| n.map(f64::to_bits))
                        .collect::<Vec<_>>(),
                    "grad norms, {threads} threads, clip {clip:?}"
                );
                assert!(
                    snapshot(&cpu, &p) == want,
                    "params and states differ from the interpreter: {threads} threads, clip {clip:?}"
                );
            }
        }
    }
}

#[test]
fn the_step_norm_covers_both_rank_classes_in_registration_order() {
    let mut opt = build(lars(), Target::Interp, None, Some(f64::INFINITY));
    let mut p = init_params();
    let norms = run(&mut opt, &mut p, 1);
    let g = grads(1);
    let totals = g.iter().map(|g| {
        let squares: Vec<f32> = g.iter().map(|x| x * x).collect();
        reduce(ReduceOp::Sum, &squares)
    });
    let want = combine_totals(ReduceOp::Sum, totals).sqrt();
    assert_eq!(norms, vec![Some(want)]);
}

#[test]
fn lars_first_step_matches_the_reference_math() {
    // pytorch_optimizer LARS, first step (momentum buffer starts at 0, dampening 0):
    // matrices: d = (g + wd p) · tc ‖p‖ / (‖g‖ + wd ‖p‖); vectors: d = g; the buffer becomes d,
    // so the step is d, or d + momentum · d with nesterov (group 1); p ← p − lr · step.
    let (lr, wd, tc, momentum) = (0.1, 0.01, 1e-3, 0.9);
    let mut opt = build(lars(), Target::Interp, None, None);
    opt.set_hyper("weight_decay", wd).expect("wd");
    opt.set_hyper("lr", lr).expect("lr");
    let p0 = init_params();
    let mut p = p0.clone();
    run(&mut opt, &mut p, 1);
    let g = grads(1);
    for (((name, shape, group), (p0, p1)), g) in MODEL.iter().zip(p0.iter().zip(&p)).zip(&g) {
        let norm = |x: &[f32]| x.iter().map(|&v| f64::from(v).powi(2)).sum::<f64>().sqrt();
        let trust = if shape.len() >= 2 {
            tc * norm(p0) / (norm(g) + wd * norm(p0))
        } else {
            1.0
        };
        let decay = if shape.len() >= 2 { wd } else { 0.0 };
        let nesterov = if *group == 1 { 1.0 + momentum } else { 1.0 };
        for ((&a, &b), &gi) in p0.iter().zip(p1).zip(g) {
            let (a, gi) = (f64::from(a), f64::from(gi));
            let want = a - lr * nesterov * (gi + decay * a) * trust;
            let err = (f64::from(b) - want).abs();
            assert!(
                err <= 1e-6 * (1.0 + want.abs()),
                "{name}: got {b}, want {want}"
            );
        }
    }
}

#[test]
fn classes_with_different_states_step_report_and_checkpoint() {
    let rule = || Rule::from_source("ranked.opt", RANKED).expect("rule");
    let mut a = build(rule(), Target::Cpu, Some(2), None);
    let mut pa = init_params();
    run(&mut a, &mut pa, 2);
    for &(name, shape, _) in MODEL {
        let states = a.states(name).expect("states");
        let names: Vec<&str> = states.iter().map(|(n, _)| *n).collect();
        let want: &[&str] = if shape.len() >= 2 { &["v"] } else { &[] };
        assert_eq!(names, want, "{name}");
    }
    let bytes = a.to_bytes().expect("save");
    let mut b = build(rule(), Target::Interp, None, None);
    b.load_bytes(&bytes).expect("load");
    let mut pb = pa.clone();
    assert!(snapshot(&b, &pb) == snapshot(&a, &pa), "loaded state");
    // Both continue identically (the CPU without FMA gives the interpreter's bits).
    for s in 3..5 {
        let g = grads(s);
        for (opt, params) in [(&mut a, &mut pa), (&mut b, &mut pb)] {
            let updates = params
                .iter_mut()
                .zip(&g)
                .zip(MODEL)
                .map(|((p, g), (name, _, _))| Update::new(name, p, g));
            opt.step(updates).expect("step");
        }
    }
    assert!(snapshot(&b, &pb) == snapshot(&a, &pa), "after loading");
}

#[test]
fn a_prebuilt_kernel_of_one_class_refuses_tensors_of_the_other() {
    let parsed = optc_compiler::Rule::parse("ranked.opt", RANKED).expect("parse");
    let options = optc_compiler::CompileOptions {
        rank: RankClass::Matrix,
        ..Default::default()
    };
    let kernel = parsed.specialize_with(&[], &options).expect("kernel");
    let rule = Rule::from_kernel(kernel).expect("rule");
    let mut opt = Optimizer::with_options(
        rule,
        Options {
            target: Target::Interp,
            ..Options::default()
        },
    )
    .expect("optimizer");
    opt.add_param("w", &[3, 4]).expect("a matrix is fine");
    let err = opt
        .add_param("b", &[4])
        .expect_err("a vector needs the vector kernel");
    let msg = err.to_string();
    assert!(
        msg.contains("`b`") && msg.contains("--rank vector"),
        "{msg}"
    );
    assert_eq!(
        opt.param_names().collect::<Vec<_>>(),
        ["w"],
        "nothing added"
    );
}
