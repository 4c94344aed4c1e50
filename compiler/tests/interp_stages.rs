//! The interpreter on hand-built staged kernels: reductions in the documented order, Tensor and
//! Step scope, and determinism. Expected values come from exact arithmetic stated in each test.

use optc_compiler::backend::interp::{step_many, Buffers, TensorStep};
use optc_kernel::{
    Arena, BinaryOp, Expr, Kernel, ReduceOp, ReduceOutput, ReductionDecl, ReductionId, Scope, Slot,
    Stage, Store, REDUCE_BLOCK,
};

/// Stage 0 reduces `g` with `op` over `scope`; stage 1 sets `p = p + r` with `r` the result.
fn reduce_then_add(op: ReduceOp, scope: Scope) -> Kernel {
    let mut host = Arena::new();
    let r = host.append(Expr::Reduced(ReductionId(0)));
    let mut body0 = Arena::new();
    let g = body0.append(Expr::Load(Slot::Grad));
    let mut body1 = Arena::new();
    let p = body1.append(Expr::Load(Slot::Param));
    let u = body1.append(Expr::Uniform(Kernel::uniform(0)));
    let sum = body1.append(Expr::Binary(BinaryOp::Add, p, u));
    let k = Kernel {
        rule: "reduce_then_add".into(),
        flags: vec![],
        hypers: vec![],
        states: vec![],
        scalars: vec![],
        init: Arena::new(),
        rank: Default::default(),
        host,
        variant: Vec::new(),
        storage: Default::default(),
        scalar_updates: vec![],
        vectors: Default::default(),
        reductions: vec![ReductionDecl {
            name: "g".into(),
            op,
            scope,
            stage: 0,
        }],
        stages: vec![
            Stage {
                matrix: None,
                uniforms: vec![],
                body: body0,
                stores: vec![],
                reduce: vec![ReduceOutput {
                    reduction: ReductionId(0),
                    value: g,
                }],
            },
            Stage {
                matrix: None,
                uniforms: vec![r],
                body: body1,
                stores: vec![Store {
                    slot: Slot::Param,
                    value: sum,
                }],
                reduce: vec![],
            },
        ],
    };
    k.validate().expect("valid");
    k
}

fn run(k: &Kernel, grads: &[Vec<f32>]) -> (Vec<Vec<f32>>, Vec<Vec<f64>>) {
    let mut params: Vec<Vec<f32>> = grads.iter().map(|g| vec![0.0; g.len()]).collect();
    let mut scalars: Vec<Vec<f64>> = grads.iter().map(|_| vec![]).collect();
    let tensors = params
        .iter_mut()
        .zip(grads)
        .zip(scalars.iter_mut())
        .map(|((p, g), s)| TensorStep {
            hypers: &[],
            t: 1,
            scalars: s,
            view: None,
            tensor: 0,
            bufs: Buffers {
                param: p,
                grad: g,
                states: vec![],
            },
            dims: None,
        })
        .collect();
    let report = step_many(k, tensors).expect("steps");
    (params, report.reduced)
}

/// Integers below 2^24 add exactly in f32 and in f64, so the sum equals the closed form.
#[test]
fn tensor_sum_is_exact_on_integers() {
    let k = reduce_then_add(ReduceOp::Sum, Scope::Tensor);
    let n = 2 * REDUCE_BLOCK + 1000;
    let g: Vec<f32> = (0..n).map(|i| (i % 1000) as f32).collect();
    // Two full blocks of 0..999 repeated, then 0..999 once more: n / 1000 runs of 499500.
    let expected = (n / 1000) as f64 * 499_500.0 + ((n % 1000) * (n % 1000 - 1) / 2) as f64;
    let (p, red) = run(&k, &[g.clone(), vec![1.0; 3]]);
    assert_eq!(red[0][0], expected);
    assert_eq!(red[1][0], 3.0);
    assert!(p[0].iter().all(|&x| x == expected as f32));
    assert!(p[1].iter().all(|&x| x == 3.0));
}

/// All values negative and a 7-element last block: the maximum is the largest element, not the
/// zero that a zero-filled tail would give. Step scope: one maximum over both tensors.
#[test]
fn step_max_over_negatives_with_short_tail() {
    let k = reduce_then_add(ReduceOp::Max, Scope::Step);
    let a: Vec<f32> = (0..REDUCE_BLOCK + 7).map(|i| -5.0 - i as f32).collect();
    let b: Vec<f32> = vec![-3.0, -4.0];
    let (p, red) = run(&k, &[a, b]);
    assert_eq!(red[0][0], -3.0);
    assert_eq!(red[1][0], -3.0);
    assert_eq!(p[0][0], -3.0);
    assert_eq!(p[1][1], -3.0);
}

/// Step-scope sums add the per-tensor totals in f64 in tensor order.
#[test]
fn step_sum_adds_tensor_totals() {
    let k = reduce_then_add(ReduceOp::Sum, Scope::Step);
    let (_, red) = run(&k, &[vec![0.5; 10], vec![0.25; 4], vec![]]);
    assert_eq!(red[0][0], 6.0);
    assert_eq!(red[2][0], 6.0);
}

/// The same inputs give the same bits, run after run, and the result is not the naive
/// left-to-right f32 sum (which the lanes are designed not to be).
#[test]
fn sums_are_deterministic_and_use_the_lanes() {
    let k = reduce_then_add(ReduceOp::Sum, Scope::Tensor);
    let g: Vec<f32> = (0..3 * REDUCE_BLOCK + 11)
        .map(|i| ((i as f32) * 0.618).sin() * 1e3)
        .collect();
    let (_, first) = run(&k, std::slice::from_ref(&g));
    for _ in 0..3 {
        let (_, again) = run(&k, std::slice::from_ref(&g));
        assert_eq!(first[0][0].to_bits(), again[0][0].to_bits());
    }
    assert_eq!(
        first[0][0],
        optc_kernel::reduce::reduce(ReduceOp::Sum, &g),
        "the interpreter is the documented order"
    );
    // Error budget against the f64 sum: |err| <= (blocks' f32 roundings) * sum |x| * 2^-24,
    // with at most 127 + 5 f32 roundings on any element's path, plus the f64 combine (docs/language.md).
    let exact: f64 = g.iter().map(|&x| x as f64).sum();
    let abs: f64 = g.iter().map(|&x| (x as f64).abs()).sum();
    assert!((first[0][0] - exact).abs() <= 134.0 * abs * 2f64.powi(-24));
}

#[test]
fn a_uniform_reading_its_own_stage_is_invalid() {
    let mut k = reduce_then_add(ReduceOp::Sum, Scope::Tensor);
    let r = k.stages[1].uniforms[0];
    k.stages[0].uniforms.push(r);
    assert!(k.validate().is_err());
    let mut k = reduce_then_add(ReduceOp::Sum, Scope::Tensor);
    k.stages[0].reduce.clear();
    assert!(k.validate().is_err());
}
