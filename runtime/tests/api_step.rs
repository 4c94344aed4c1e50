//! The step: multi-tensor steps, state creation, per-parameter step counts and scalar states,
//! checked against the reference interpreter.
#![cfg(feature = "compiler")]

mod api_support;

use api_support::{adamw, bits, data, toy};
use optc_compiler::backend::interp::{step_f32, Buffers};
use optc_kernel::Kernel;
use optc_runtime::{Optimizer, Options, Rule, Target, Update};

const SHAPES: [(&str, usize); 3] = [("a", 37), ("b", 150_000), ("c", 5)];

fn optimizer(kernel: Kernel, target: Target) -> Optimizer {
    let options = Options {
        target,
        threads: Some(2),
        allow_fma: false,
        ..Options::default()
    };
    let rule = Rule::from_kernel(kernel).expect("valid kernel");
    let mut opt = Optimizer::with_options(rule, options).expect("optimizer");
    for (name, n) in SHAPES {
        opt.add_param(name, &[n]).expect("add");
    }
    opt
}

fn params() -> Vec<Vec<f32>> {
    SHAPES
        .iter()
        .enumerate()
        .map(|(i, (_, n))| data(*n, i as u32))
        .collect()
}

fn grads(step: u32) -> Vec<Vec<f32>> {
    SHAPES
        .iter()
        .enumerate()
        .map(|(i, (_, n))| data(*n, 100 * step + i as u32))
        .collect()
}

/// One tensor by the interpreter: `steps` steps from `p`, states as the rule initializes them.
fn reference(
    kernel: &Kernel,
    hypers: &[f64],
    p: &mut [f32],
    grads: &[Vec<f32>],
) -> (Vec<Vec<f32>>, Vec<f64>) {
    let init = kernel.eval_init(hypers).expect("init");
    let mut states: Vec<Vec<f32>> = kernel
        .states
        .iter()
        .map(|s| match s.init {
            optc_kernel::Init::Param => p.to_vec(),
            optc_kernel::Init::Value(h) => vec![init[h.index()] as f32; p.len()],
        })
        .collect();
    let mut scalars = kernel.initial_scalars(hypers).expect("scalars");
    for (t, g) in grads.iter().enumerate() {
        let bufs = Buffers {
            param: p,
            grad: g,
            states: states.iter_mut().map(|s| s.as_mut_slice()).collect(),
        };
        step_f32(kernel, hypers, t as u64 + 1, &mut scalars, bufs).expect("interp");
    }
    (states, scalars)
}

#[test]
fn multi_tensor_step_equals_per_tensor_steps() {
    for kernel in [adamw(), toy()] {
        let mut together = optimizer(kernel.clone(), Target::Cpu);
        let mut apart = optimizer(kernel.clone(), Target::Cpu);
        let (mut p1, mut p2) = (params(), params());
        for step in 0..3 {
            let g = grads(step);
            let updates = SHAPES
                .iter()
                .zip(p1.iter_mut())
                .zip(&g)
                .map(|(((n, _), p), g)| Update::new(n, p, g));
            together.step(updates).expect("step");
            for (((name, _), p), g) in SHAPES.iter().zip(p2.iter_mut()).zip(&g) {
                apart.step([Update::new(name, p, g)]).expect("step");
            }
        }
        for ((name, _), (a, b)) in SHAPES.iter().zip(p1.iter().zip(&p2)) {
            assert_eq!(bits(a), bits(b), "{} param {name}", kernel.rule);
            let (sa, sb) = (
                together.states(name).expect("states"),
                apart.states(name).expect("states"),
            );
            assert_eq!(sa.len(), kernel.states.len());
            for ((na, a), (nb, b)) in sa.iter().zip(&sb) {
                assert_eq!(
                    (na, bits(a)),
                    (nb, bits(b)),
                    "{} state {na} of {name}",
                    kernel.rule
                );
            }
            assert_eq!(
                together.scalars(name).expect("s"),
                apart.scalars(name).expect("s")
            );
            assert_eq!(together.step_count(name).expect("t"), 3);
        }
    }
}

#[test]
fn targets_match_the_interpreter_exactly() {
    // Without FMA contraction the CPU JIT rounds every op as the interpreter does.
    for (kernel, target) in [
        (adamw(), Target::Interp),
        (toy(), Target::Interp),
        (adamw(), Target::Cpu),
        (toy(), Target::Cpu),
    ] {
        let mut opt = optimizer(kernel.clone(), target);
        opt.set_hyper("lr", 0.05).expect("lr");
        let hypers: Vec<f64> = kernel
            .hypers
            .iter()
            .map(|h| if h.name == "lr" { 0.05 } else { h.default })
            .collect();
        let mut p = params();
        let all: Vec<Vec<Vec<f32>>> = (0..4).map(grads).collect();
        for g in &all {
            let updates = SHAPES
                .iter()
                .zip(p.iter_mut())
                .zip(g)
                .map(|(((n, _), p), g)| Update::new(n, p, g));
            opt.step(updates).expect("step");
        }
        for (i, (name, _)) in SHAPES.iter().enumerate() {
            let mut want = params()[i].clone();
            let gs: Vec<Vec<f32>> = all.iter().map(|g| g[i].clone()).collect();
            let (states, scalars) = reference(&kernel, &hypers, &mut want, &gs);
            assert_eq!(bits(&p[i]), bits(&want), "{} {name}", kernel.rule);
            let got = opt.states(name).expect("states");
            for ((_, got), want) in got.iter().zip(&states) {
                assert_eq!(bits(got), bits(want));
            }
            let got: Vec<f64> = opt.scalars(name).expect("s").iter().map(|s| s.1).collect();
            assert_eq!(got, scalars);
        }
    }
}

#[test]
fn step_counts_and_scalars_are_per_parameter() {
    let kernel = toy();
    let mut opt = optimizer(kernel.clone(), Target::Cpu);
    let mut p = params();
    let g = grads(0);
    // `a` steps twice, `b` once, `c` never.
    let (pa, rest) = p.split_at_mut(1);
    opt.step([Update::new("a", &mut pa[0], &g[0])])
        .expect("step");
    opt.step([
        Update::new("a", &mut pa[0], &g[0]),
        Update::new("b", &mut rest[0], &g[1]),
    ])
    .expect("step");
    assert_eq!(opt.step_count("a").expect("a"), 2);
    assert_eq!(opt.step_count("b").expect("b"), 1);
    assert_eq!(opt.step_count("c").expect("c"), 0);
    // acc starts at 1 and is multiplied by decay = 0.5 per step.
    assert_eq!(opt.scalars("a").expect("a"), vec![("acc", 0.25)]);
    assert_eq!(opt.scalars("b").expect("b"), vec![("acc", 0.5)]);
    assert!(opt.states("c").expect("c").is_empty());
    // b's first step: slow started as b's value at that step, c as c0 = 2.
    let mut want = params()[1].clone();
    let before = want.clone();
    let (states, _) = reference(
        &kernel,
        &kernel.default_hypers(),
        &mut want,
        &[g[1].clone()],
    );
    let got = opt.states("b").expect("b");
    assert_eq!(bits(&got[0].1), bits(&states[0]));
    assert_eq!(got[1].1[0], 2.0 + g[1][0]);
    assert_ne!(bits(&states[0]), bits(&before), "the step changes slow");
}

#[test]
fn an_optimizer_can_move_to_another_thread() {
    fn assert_send<T: Send>(_: &T) {}
    let opt = optimizer(toy(), Target::Cpu);
    assert_send(&opt);
    let handle = std::thread::spawn(move || {
        let mut opt = opt;
        let mut p = vec![1.0f32; 5];
        opt.step([Update::new("c", &mut p, &[1.0; 5])]).map(|_| p)
    });
    // p' = p - lr * (1 * decay) * g = 1 - 0.1 * 0.5 * 1
    assert_eq!(
        handle.join().ok().and_then(Result::ok),
        Some(vec![0.95f32; 5])
    );
}
