//! Hand-built kernels for the runtime API tests (until the frontend can compile `.opt` rules).
#![allow(dead_code)]

use optc_kernel::{
    Arena, BinaryOp, Expr, FlagValue, HyperDecl, HyperId, Init, Kernel, ScalarDecl, ScalarId,
    ScalarUpdate, Slot, Stage, StateDecl, StateId, Store, UnaryOp,
};

fn hyper(name: &str, default: f64) -> HyperDecl {
    HyperDecl {
        name: name.into(),
        default,
    }
}

/// torch.optim.AdamW (amsgrad=false, maximize=false), with the uniforms hoisted:
/// u = [beta1, 1-beta1, beta2, 1-beta2, lr/bc1, 1/sqrt(bc2), eps, lr*wd].
pub fn adamw() -> Kernel {
    use BinaryOp::*;
    let mut host = Arena::new();
    let lr = host.append(Expr::Hyper(HyperId(0)));
    let b1 = host.append(Expr::Hyper(HyperId(1)));
    let b2 = host.append(Expr::Hyper(HyperId(2)));
    let eps = host.append(Expr::Hyper(HyperId(3)));
    let wd = host.append(Expr::Hyper(HyperId(4)));
    let t = host.append(Expr::Step);
    let one = host.append(Expr::Const(1.0));
    let omb1 = host.append(Expr::Binary(Sub, one, b1));
    let omb2 = host.append(Expr::Binary(Sub, one, b2));
    let b1t = host.append(Expr::Binary(Pow, b1, t));
    let bc1 = host.append(Expr::Binary(Sub, one, b1t));
    let step_size = host.append(Expr::Binary(Div, lr, bc1));
    let b2t = host.append(Expr::Binary(Pow, b2, t));
    let bc2 = host.append(Expr::Binary(Sub, one, b2t));
    let rbc2 = host.append(Expr::Unary(UnaryOp::Rsqrt, bc2));
    let lrwd = host.append(Expr::Binary(Mul, lr, wd));
    let uniforms = vec![b1, omb1, b2, omb2, step_size, rbc2, eps, lrwd];

    let mut body = Arena::new();
    let p = body.append(Expr::Load(Slot::Param));
    let g = body.append(Expr::Load(Slot::Grad));
    let m = body.append(Expr::Load(Slot::State(StateId(0))));
    let v = body.append(Expr::Load(Slot::State(StateId(1))));
    let u: Vec<_> = (0..8)
        .map(|i| body.append(Expr::Uniform(Kernel::uniform(i))))
        .collect();
    let a = body.append(Expr::Binary(Mul, u[0], m));
    let b = body.append(Expr::Binary(Mul, u[1], g));
    let m2 = body.append(Expr::Binary(Add, a, b));
    let a = body.append(Expr::Binary(Mul, u[2], v));
    let gg = body.append(Expr::Binary(Mul, g, g));
    let b = body.append(Expr::Binary(Mul, u[3], gg));
    let v2 = body.append(Expr::Binary(Add, a, b));
    let s = body.append(Expr::Unary(UnaryOp::Sqrt, v2));
    let s = body.append(Expr::Binary(Mul, s, u[5]));
    let denom = body.append(Expr::Binary(Add, s, u[6]));
    let decay = body.append(Expr::Binary(Mul, u[7], p));
    let p1 = body.append(Expr::Binary(Sub, p, decay));
    let r = body.append(Expr::Binary(Div, m2, denom));
    let upd = body.append(Expr::Binary(Mul, u[4], r));
    let p2 = body.append(Expr::Binary(Sub, p1, upd));

    let mut init = Arena::new();
    let zero = init.append(Expr::Const(0.0));
    Kernel {
        rule: "adamw".into(),
        flags: vec![FlagValue {
            name: "amsgrad".into(),
            value: false,
        }],
        hypers: vec![
            hyper("lr", 1e-3),
            hyper("beta1", 0.9),
            hyper("beta2", 0.999),
            hyper("eps", 1e-8),
            hyper("weight_decay", 1e-2),
        ],
        states: vec![
            StateDecl {
                name: "m".into(),
                init: Init::Value(zero),
                shape: Default::default(),
            },
            StateDecl {
                name: "v".into(),
                init: Init::Value(zero),
                shape: Default::default(),
            },
        ],
        scalars: vec![],
        init,
        rank: Default::default(),
        host,
        variant: Vec::new(),
        storage: Default::default(),
        scalar_updates: vec![],
        vectors: Default::default(),
        reductions: vec![],
        stages: vec![Stage {
            matrix: None,
            uniforms,
            body,
            reduce: vec![],
            stores: vec![
                Store {
                    slot: Slot::Param,
                    value: p2,
                },
                Store {
                    slot: Slot::State(StateId(0)),
                    value: m2,
                },
                Store {
                    slot: Slot::State(StateId(1)),
                    value: v2,
                },
            ],
        }],
    }
}

/// A toy rule exercising every kind of state: a scalar `acc` (starts at 1, times `decay` each
/// step), a slow copy `slow` (starts as p), and `c` (starts at `c0`).
/// p' = p - lr*acc'*g; slow' = (slow + p') * 0.5; c' = c + g.
pub fn toy() -> Kernel {
    use BinaryOp::*;
    let mut init = Arena::new();
    let one = init.append(Expr::Const(1.0));
    let c0 = init.append(Expr::Hyper(HyperId(2)));
    let mut host = Arena::new();
    let lr = host.append(Expr::Hyper(HyperId(0)));
    let decay = host.append(Expr::Hyper(HyperId(1)));
    let acc = host.append(Expr::Scalar(ScalarId(0)));
    let acc2 = host.append(Expr::Binary(Mul, acc, decay));
    let u0 = host.append(Expr::Binary(Mul, lr, acc2));
    let mut body = Arena::new();
    let p = body.append(Expr::Load(Slot::Param));
    let g = body.append(Expr::Load(Slot::Grad));
    let slow = body.append(Expr::Load(Slot::State(StateId(0))));
    let c = body.append(Expr::Load(Slot::State(StateId(1))));
    let u = body.append(Expr::Uniform(Kernel::uniform(0)));
    let step = body.append(Expr::Binary(Mul, u, g));
    let p2 = body.append(Expr::Binary(Sub, p, step));
    let sum = body.append(Expr::Binary(Add, slow, p2));
    let half = body.append(Expr::Const(0.5));
    let slow2 = body.append(Expr::Binary(Mul, sum, half));
    let c2 = body.append(Expr::Binary(Add, c, g));
    Kernel {
        rule: "toy".into(),
        flags: vec![],
        hypers: vec![hyper("lr", 0.1), hyper("decay", 0.5), hyper("c0", 2.0)],
        states: vec![
            StateDecl {
                name: "slow".into(),
                init: Init::Param,
                shape: Default::default(),
            },
            StateDecl {
                name: "c".into(),
                init: Init::Value(c0),
                shape: Default::default(),
            },
        ],
        scalars: vec![ScalarDecl {
            name: "acc".into(),
            init: one,
        }],
        init,
        rank: Default::default(),
        host,
        reductions: vec![],
        vectors: Default::default(),
        variant: Vec::new(),
        storage: Default::default(),
        scalar_updates: vec![ScalarUpdate {
            scalar: ScalarId(0),
            value: acc2,
        }],
        stages: vec![Stage {
            matrix: None,
            uniforms: vec![u0],
            body,
            reduce: vec![],
            stores: vec![
                Store {
                    slot: Slot::Param,
                    value: p2,
                },
                Store {
                    slot: Slot::State(StateId(0)),
                    value: slow2,
                },
                Store {
                    slot: Slot::State(StateId(1)),
                    value: c2,
                },
            ],
        }],
    }
}

/// Deterministic test data: `n` values in about [-1, 1], different for each `seed`.
pub fn data(n: usize, seed: u32) -> Vec<f32> {
    let mut x = seed.wrapping_mul(2654435761).wrapping_add(12345);
    (0..n)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 17;
            x ^= x << 5;
            (x as f32 / u32::MAX as f32) * 2.0 - 1.0
        })
        .collect()
}

/// Bit patterns, for exact comparisons that also tell NaNs and signed zeros apart.
pub fn bits(x: &[f32]) -> Vec<u32> {
    x.iter().map(|v| v.to_bits()).collect()
}

/// The storage settings every backend is checked under (`runtime/tests/api_dtypes.rs` on the
/// CPU, `runtime/tests/cuda_gpu/dtypes.rs` on CUDA): 16-bit parameters and states, f32 master
/// weights, stochastic rounding.
pub fn dtype_settings() -> Vec<optc_kernel::Precision> {
    use optc_kernel::{Dtype, Precision};
    let p = |param, state, master_weights, stochastic_rounding| Precision {
        param,
        state,
        master_weights,
        stochastic_rounding,
    };
    vec![
        p(Dtype::Bf16, Dtype::Bf16, false, None),
        p(Dtype::F16, Dtype::F32, false, None),
        p(Dtype::F32, Dtype::Bf16, false, None),
        p(Dtype::Bf16, Dtype::Bf16, true, None),
        p(Dtype::F16, Dtype::Bf16, true, None),
        p(Dtype::Bf16, Dtype::F32, false, Some(3)),
        p(Dtype::F16, Dtype::Bf16, false, Some(4)),
    ]
}

/// A deterministic value in [-1, 1) for element `i` of stream `seed` (splitmix64's finalizer).
pub fn value(seed: u64, i: usize) -> f32 {
    let mut z = seed
        .wrapping_mul(0x9E37_79B9_7F4A_7C15)
        .wrapping_add(i as u64 + 1);
    z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    z ^= z >> 31;
    (z >> 40) as f32 / (1u64 << 23) as f32 - 1.0
}

/// Whether stdlib rule `rule` has matrix stages (on matrices). A backend computes their products
/// with its own library (`gemm` on the CPU, cuBLAS on CUDA), whose summation order differs from
/// the interpreter's reference triple loop (docs/stages.md, "Matrix stages"), so the two agree
/// within [`close`]'s budget, not bit for bit.
pub fn has_matrix_stages(rule: &str) -> bool {
    let r = match optc_compiler::stdlib::rule(rule) {
        Some(Ok(r)) => r,
        _ => panic!("{rule}: not a stdlib rule"),
    };
    let options = optc_compiler::CompileOptions {
        rank: optc_kernel::RankClass::Matrix,
        ..optc_compiler::CompileOptions::default()
    };
    r.flag_sets().iter().any(|flags| {
        r.specialize_values_with(flags, &options)
            .map(|k| k.stages.iter().any(|s| s.matrix.is_some()))
            .unwrap_or(false)
    })
}

/// `x` (from `backend`) within the matrix budget of `y` (from the interpreter), element by
/// element: the products' f32 rounding in another order (relative 1e-4 of the tensor's largest
/// value) plus one step of the coarsest storage dtype (2^-7 relative: a value a few f32 ulps
/// away can round to the neighbouring bf16 or f16).
pub fn close(x: &[f32], y: &[f32], what: &str, backend: &str) {
    assert_eq!(x.len(), y.len(), "{what}: lengths");
    let scale = y.iter().fold(0f32, |m, v| m.max(v.abs()));
    for (i, (&a, &b)) in x.iter().zip(y).enumerate() {
        let tol = 1e-4 * scale + b.abs() * 2f32.powi(-7);
        assert!(
            (a - b).abs() <= tol || (a.is_nan() && b.is_nan()),
            "{what}: element {i}: {backend} {a:e} vs interpreter {b:e} (budget {tol:e})"
        );
    }
}

/// An optimizer for stdlib rule `rule` on `target` with storage `prec`, without FMA (so the CPU
/// can equal the interpreter bit for bit), with the parameters `params` (name, shape) added.
pub fn optimizer(
    rule: &str,
    target: optc_runtime::Target,
    prec: optc_kernel::Precision,
    params: &[(&str, &[usize])],
) -> optc_runtime::Optimizer {
    let options = optc_runtime::Options {
        target,
        precision: prec,
        allow_fma: false,
        ..optc_runtime::Options::default()
    };
    let r = optc_runtime::Rule::stdlib(rule).expect("stdlib rule");
    let mut opt = optc_runtime::Optimizer::with_options(r, options)
        .unwrap_or_else(|e| panic!("{rule} {prec:?}: {e}"));
    for &(name, shape) in params {
        opt.add_param(name, shape).expect("add");
    }
    opt
}
