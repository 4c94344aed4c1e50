//! Clipping by global norm for any rule (`Options::max_grad_norm`), as
//! `torch.nn.utils.clip_grad_norm_(params, V)` before the step: over every tensor of a step call
//! across groups, fused in front of the rule's passes, with the total norm reported.
#![cfg(feature = "compiler")]

mod api_support;

use api_support::{bits, data};
use optc_kernel::reduce::{reduce, ReduceOp};
use optc_runtime::{GroupId, Optimizer, Options, Rule, Target, Update};

fn optimizer(rule: &str, target: Target, threads: usize, clip: Option<f64>) -> Optimizer {
    let options = Options {
        target,
        threads: Some(threads),
        allow_fma: false,
        max_grad_norm: clip,
        ..Options::default()
    };
    Optimizer::with_options(Rule::stdlib(rule).expect("rule"), options).expect("optimizer")
}

const LENS: [usize; 3] = [4097, 5, 1000];
const NAMES: [&str; 3] = ["a", "b", "c"];

/// `a` and `b` in group 0, `c` in a second group with its own lr.
fn register(opt: &mut Optimizer) {
    opt.add_param(NAMES[0], &[LENS[0]]).expect("add");
    let g = opt.add_group(&[]).expect("group");
    opt.set_group_hyper(g, "lr", 0.02).expect("lr");
    opt.add_param_to(g, NAMES[2], &[LENS[2]]).expect("add");
    opt.add_param(NAMES[1], &[LENS[1]]).expect("add");
}

fn grads(seed: u32) -> Vec<Vec<f32>> {
    LENS.iter()
        .enumerate()
        .map(|(i, &n)| data(n, seed + i as u32).iter().map(|x| 3.0 * x).collect())
        .collect()
}

fn step(opt: &mut Optimizer, p: &mut [Vec<f32>], g: &[Vec<f32>]) -> Option<f64> {
    // Given in another order than registered (a, c, b): the norm must not depend on it.
    let [pa, pb, pc] = p else { panic!("three") };
    opt.step([
        Update::new(NAMES[1], pb, &g[1]),
        Update::new(NAMES[0], pa, &g[0]),
        Update::new(NAMES[2], pc, &g[2]),
    ])
    .expect("step")
    .grad_norm
}

/// The total norm as docs/stages.md defines it: `g·g` in f32, each tensor reduced in block order,
/// the totals added in f64 in registration order (a, c, b).
fn norm(g: &[Vec<f32>]) -> f64 {
    let total = [0usize, 2, 1]
        .iter()
        .map(|&i| {
            let gg: Vec<f32> = g[i].iter().map(|x| x * x).collect();
            reduce(ReduceOp::Sum, &gg)
        })
        .fold(-0.0, |a, b| a + b);
    total.sqrt()
}

#[test]
fn clipping_adds_one_pass_that_reads_g() {
    let plain = optimizer("adamw", Target::Interp, 1, None);
    let clipped = optimizer("adamw", Target::Interp, 1, Some(1.0));
    let (k0, k1) = (
        plain.kernel(GroupId::DEFAULT).expect("k"),
        clipped.kernel(GroupId::DEFAULT).expect("k"),
    );
    assert_eq!(k0.bytes_per_element(), 28);
    assert_eq!(
        k1.bytes_per_element(),
        32,
        "g read once to reduce, then the usual 28"
    );
    assert_eq!(k1.stages.len(), k0.stages.len() + 1);
    assert_eq!(
        clipped.hyper(GroupId::DEFAULT, "max_grad_norm").expect("h"),
        1.0
    );
    assert!(plain.hyper(GroupId::DEFAULT, "max_grad_norm").is_err());
}

#[test]
fn sgd_steps_with_the_clipped_gradient_and_reports_the_norm() {
    for v in [0.5, 1e9] {
        let mut clipped = optimizer("sgd", Target::Interp, 1, Some(v));
        let mut plain = optimizer("sgd", Target::Interp, 1, None);
        register(&mut clipped);
        register(&mut plain);
        let mut p: Vec<Vec<f32>> = LENS.iter().map(|&n| data(n, 50)).collect();
        let mut q = p.clone();
        for k in 0..3 {
            let g = grads(10 * k);
            let total = norm(&g);
            let got = step(&mut clipped, &mut p, &g).expect("a clipped step reports the norm");
            assert_eq!(got.to_bits(), total.to_bits(), "max_grad_norm {v} step {k}");
            // torch: clip_coef = max_norm / (total_norm + 1e-6), clamped to 1, grads *= it.
            let coef = (v / (total + 1e-6)).min(1.0) as f32;
            assert_eq!(
                coef < 1.0,
                v == 0.5,
                "the small threshold clips, the large does not"
            );
            let scaled: Vec<Vec<f32>> = g
                .iter()
                .map(|g| g.iter().map(|x| x * coef).collect())
                .collect();
            assert_eq!(
                step(&mut plain, &mut q, &scaled),
                None,
                "no clipping, no norm"
            );
            for (a, b) in p.iter().zip(&q) {
                assert_eq!(bits(a), bits(b), "max_grad_norm {v} step {k}");
            }
        }
    }
}

#[test]
fn clipped_adamw_gives_the_interpreters_bits_with_any_thread_count() {
    let run = |target: Target, threads: usize| {
        let mut opt = optimizer("adamw", target, threads, Some(0.3));
        register(&mut opt);
        let mut p: Vec<Vec<f32>> = LENS.iter().map(|&n| data(n, 70)).collect();
        let mut norms = Vec::new();
        for k in 0..3 {
            norms.push(step(&mut opt, &mut p, &grads(100 + k)).map(f64::to_bits));
        }
        let states: Vec<Vec<u32>> = NAMES
            .iter()
            .flat_map(|n| opt.states(n).expect("states"))
            .map(|(_, v)| bits(&v))
            .collect();
        (p.iter().map(|x| bits(x)).collect::<Vec<_>>(), states, norms)
    };
    let want = run(Target::Interp, 1);
    for threads in [1, 2, 3] {
        assert_eq!(run(Target::Cpu, threads), want, "{threads} threads");
    }
}

#[test]
fn an_infinite_threshold_reports_the_norm_and_changes_nothing() {
    let mut report = optimizer("adamw", Target::Cpu, 2, Some(f64::INFINITY));
    let mut plain = optimizer("adamw", Target::Cpu, 2, None);
    register(&mut report);
    register(&mut plain);
    let mut p: Vec<Vec<f32>> = LENS.iter().map(|&n| data(n, 80)).collect();
    let mut q = p.clone();
    let g = grads(7);
    assert_eq!(step(&mut report, &mut p, &g), Some(norm(&g)));
    step(&mut plain, &mut q, &g);
    for (a, b) in p.iter().zip(&q) {
        assert_eq!(bits(a), bits(b));
    }
    for bad in [0.0, -1.0, f64::NAN] {
        let options = Options {
            max_grad_norm: Some(bad),
            ..Options::default()
        };
        let err = Optimizer::with_options(Rule::stdlib("sgd").expect("rule"), options)
            .expect_err("not positive");
        assert!(
            err.to_string().contains("max_grad_norm must be positive"),
            "{err}"
        );
    }
}
