//! The stage schedule through the optimizer (on the interpreter target, which runs any stage):
//! reductions finalized per tensor and per step, the Step-scope combine in registration order
//! across groups, the host program between stages, scalar updates after the last stage, and
//! all-or-nothing errors with a staged kernel. Expected values come from stated math or from
//! `optc_kernel::reduce` (the definition of the summation order).
#![cfg(feature = "compiler")]

mod api_support;

use api_support::{bits, data};
use optc_kernel::reduce::{reduce, ReduceOp, ReductionDecl, Scope};
use optc_kernel::{
    Arena, BinaryOp, Expr, HyperDecl, HyperId, Init, Kernel, ReduceOutput, ReductionId, ScalarDecl,
    ScalarId, ScalarUpdate, Slot, Stage, StateDecl, StateId, Store,
};
use optc_runtime::{Optimizer, Options, Rule, Target, Update};

/// Two stages. Stage 0 reduces `g`: `total` (Step-scope sum) and `peak` (Tensor-scope max).
/// Stage 1: `p' = p - lr * total`, `m' = peak` (the state shows each tensor's max); the scalar
/// `last` becomes `total`.
fn two_stage() -> Kernel {
    let mut init = Arena::new();
    let zero = init.append(Expr::Const(0.0));
    let mut host = Arena::new();
    let lr = host.append(Expr::Hyper(HyperId(0)));
    let total = host.append(Expr::Reduced(ReductionId(0)));
    let peak = host.append(Expr::Reduced(ReductionId(1)));
    let step = host.append(Expr::Binary(BinaryOp::Mul, lr, total));
    let mut body0 = Arena::new();
    let g = body0.append(Expr::Load(Slot::Grad));
    let mut body1 = Arena::new();
    let p = body1.append(Expr::Load(Slot::Param));
    let u0 = body1.append(Expr::Uniform(Kernel::uniform(0)));
    let u1 = body1.append(Expr::Uniform(Kernel::uniform(1)));
    let p2 = body1.append(Expr::Binary(BinaryOp::Sub, p, u0));
    let reduction = |name: &str, op, scope| ReductionDecl {
        name: name.into(),
        op,
        scope,
        stage: 0,
    };
    Kernel {
        rule: "two_stage".into(),
        flags: vec![],
        hypers: vec![HyperDecl {
            name: "lr".into(),
            default: 0.5,
        }],
        states: vec![StateDecl {
            name: "m".into(),
            init: Init::Value(zero),
            shape: Default::default(),
        }],
        scalars: vec![ScalarDecl {
            name: "last".into(),
            init: zero,
        }],
        init,
        rank: Default::default(),
        host,
        vectors: Default::default(),
        variant: Vec::new(),
        storage: Default::default(),
        scalar_updates: vec![ScalarUpdate {
            scalar: ScalarId(0),
            value: total,
        }],
        reductions: vec![
            reduction("total", ReduceOp::Sum, Scope::Step),
            reduction("peak", ReduceOp::Max, Scope::Tensor),
        ],
        stages: vec![
            Stage {
                matrix: None,
                uniforms: vec![],
                body: body0,
                stores: vec![],
                reduce: vec![
                    ReduceOutput {
                        reduction: ReductionId(0),
                        value: g,
                    },
                    ReduceOutput {
                        reduction: ReductionId(1),
                        value: g,
                    },
                ],
            },
            Stage {
                matrix: None,
                uniforms: vec![step, peak],
                body: body1,
                stores: vec![
                    Store {
                        slot: Slot::Param,
                        value: p2,
                    },
                    Store {
                        slot: Slot::State(StateId(0)),
                        value: u1,
                    },
                ],
                reduce: vec![],
            },
        ],
    }
}

fn interp() -> Optimizer {
    let options = Options {
        target: Target::Interp,
        ..Options::default()
    };
    Optimizer::with_options(Rule::from_kernel(two_stage()).expect("valid"), options)
        .expect("optimizer")
}

#[test]
fn the_step_total_is_combined_in_registration_order_across_groups() {
    // f64 sums of 1e16, -1e16 and 1 depend on the order: registration order (a, c, b) gives
    // (1e16 - 1e16) + 1 = 1; the update order (b, a, c) would give (1 + 1e16) - 1e16 = 0.
    let mut opt = interp();
    opt.add_param("a", &[1]).expect("add");
    let g1 = opt.add_group(&[]).expect("group");
    opt.add_param_to(g1, "c", &[1]).expect("add");
    opt.add_param("b", &[1]).expect("add");
    let (mut a, mut b, mut c) = (vec![10.0f32], vec![20.0f32], vec![30.0f32]);
    let (ga, gb, gc) = ([1e16f32], [1.0f32], [-1e16f32]);
    let report = opt
        .step([
            Update::new("b", &mut b, &gb),
            Update::new("a", &mut a, &ga),
            Update::new("c", &mut c, &gc),
        ])
        .expect("step");
    assert_eq!(report.grad_norm, None, "no clipping, no norm");
    // lr 0.5 times the total 1.
    assert_eq!((a[0], b[0], c[0]), (9.5, 19.5, 29.5));
    for (name, peak) in [("a", 1e16f32), ("b", 1.0), ("c", -1e16)] {
        assert_eq!(opt.scalars(name).expect("scalars"), vec![("last", 1.0)]);
        assert_eq!(opt.states(name).expect("states")[0].1, vec![peak]);
    }
}

#[test]
fn reductions_over_blocks_and_short_tails_follow_the_definition() {
    // Lengths around the block size; a max over negative values only (a zero-padded tail would
    // give 0); the sum of the step over every tensor.
    let lens = [1usize, 4095, 4097, 3 * 4096 + 5];
    let mut opt = interp();
    let names: Vec<String> = (0..lens.len()).map(|i| format!("t{i}")).collect();
    for (n, &len) in names.iter().zip(&lens) {
        opt.add_param(n, &[len]).expect("add");
    }
    let grads: Vec<Vec<f32>> = lens
        .iter()
        .enumerate()
        .map(|(i, &n)| data(n, i as u32).iter().map(|x| -x.abs() - 0.25).collect())
        .collect();
    let mut params: Vec<Vec<f32>> = lens.iter().map(|&n| vec![1.0; n]).collect();
    let updates = names
        .iter()
        .zip(params.iter_mut())
        .zip(&grads)
        .map(|((n, p), g)| Update::new(n, p, g));
    opt.step(updates).expect("step");
    let total = grads
        .iter()
        .map(|g| reduce(ReduceOp::Sum, g))
        .fold(-0.0, |a, b| a + b);
    let want_p = 1.0f32 - (0.5 * total) as f32;
    for ((n, g), p) in names.iter().zip(&grads).zip(&params) {
        let peak = reduce(ReduceOp::Max, g) as f32;
        assert!(peak < 0.0);
        let m = &opt.states(n).expect("states")[0].1;
        assert_eq!(bits(m), bits(&vec![peak; g.len()]), "{n}");
        assert_eq!(bits(p), bits(&vec![want_p; g.len()]), "{n}");
        assert_eq!(
            opt.scalars(n).expect("scalars")[0].1.to_bits(),
            total.to_bits()
        );
    }
}

#[test]
fn a_bad_update_in_a_staged_step_changes_nothing() {
    let mut opt = interp();
    opt.add_param("a", &[5000]).expect("add");
    opt.add_param("b", &[3]).expect("add");
    let (mut a, mut b) = (data(5000, 1), data(3, 2));
    let (ga, gb) = (data(5000, 3), data(3, 4));
    opt.step([Update::new("a", &mut a, &ga), Update::new("b", &mut b, &gb)])
        .expect("step");
    let before = (a.clone(), b.clone(), opt.to_bytes().expect("bytes"));
    let short = data(2, 5);
    let err = opt
        .step([
            Update::new("a", &mut a, &ga),
            Update::new("b", &mut b, &short),
        ])
        .expect_err("a short gradient");
    assert_eq!(
        err.to_string(),
        "the gradient of parameter `b` has 2 elements, expected 3"
    );
    assert_eq!((&a, &b), (&before.0, &before.1));
    assert_eq!(opt.to_bytes().expect("bytes"), before.2);
    assert_eq!(opt.step_count("a").expect("t"), 1);
}

#[test]
fn the_cpu_gives_the_interpreters_bits_with_any_thread_count() {
    let lens = [3usize, 4097, 70_001, 2 * 4096];
    let run = |target: Target, threads: usize| {
        let options = Options {
            target,
            threads: Some(threads),
            allow_fma: false,
            ..Options::default()
        };
        let mut opt = Optimizer::with_options(Rule::from_kernel(two_stage()).expect("k"), options)
            .expect("optimizer");
        let names: Vec<String> = (0..lens.len()).map(|i| format!("t{i}")).collect();
        for (n, &len) in names.iter().zip(&lens) {
            opt.add_param(n, &[len]).expect("add");
        }
        let mut params: Vec<Vec<f32>> = lens.iter().map(|&n| data(n, 9)).collect();
        for k in 0..2u32 {
            let grads: Vec<Vec<f32>> = lens.iter().map(|&n| data(n, 10 + k)).collect();
            let updates = names
                .iter()
                .zip(params.iter_mut())
                .zip(&grads)
                .map(|((n, p), g)| Update::new(n, p, g));
            opt.step(updates).expect("step");
        }
        let states: Vec<Vec<u32>> = names
            .iter()
            .map(|n| bits(&opt.states(n).expect("states")[0].1))
            .collect();
        let scalars: Vec<u64> = names
            .iter()
            .map(|n| opt.scalars(n).expect("scalars")[0].1.to_bits())
            .collect();
        let params: Vec<Vec<u32>> = params.iter().map(|p| bits(p)).collect();
        (params, states, scalars)
    };
    let want = run(Target::Interp, 1);
    for threads in [1, 2, 3] {
        assert_eq!(run(Target::Cpu, threads), want, "{threads} threads");
    }
}
