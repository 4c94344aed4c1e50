//! The stage splitting pass on real rules: how many passes and bytes each kernel takes, where
//! clipping lands, and the meaning of staged kernels against independent f64 arithmetic.

use optc_compiler::backend::interp::{step_f64, step_many, Buffers, TensorStep};
use optc_compiler::{stdlib, CompileOptions, Rule};
use optc_kernel::{Kernel, Scope, Slot};

fn rule(name: &str) -> Rule {
    stdlib::rule(name).expect("stdlib rule").expect("compiles")
}

fn clipped(name: &str, flags: &[(&str, bool)]) -> Kernel {
    rule(name)
        .specialize_with(
            flags,
            &CompileOptions {
                clip: true,
                ..Default::default()
            },
        )
        .unwrap_or_else(|e| panic!("{e}"))
}

#[test]
fn adamw_with_clipping_moves_32_bytes_per_element() {
    let k = clipped("adamw", &[]);
    assert_eq!(k.stages.len(), 2, "{k}");
    // Stage 0 reads g once to reduce it; stage 1 is AdamW (28 bytes).
    let s0 = k.stage_buffers(0);
    assert!(s0
        .iter()
        .all(|b| b.read == (b.slot == Slot::Grad) && !b.written));
    assert_eq!(k.stage_bytes_per_element(0), 4);
    assert_eq!(k.bytes_per_element(), 32, "{k}");
    let r = k.grad_norm_reduction().expect("clipping reduction");
    assert_eq!(k.reductions[r.index()].scope, Scope::Step);
    assert_eq!(k.reductions[r.index()].stage, 0);
    assert!(k.hypers.iter().any(|h| h.name == "max_grad_norm"));
    insta::assert_snapshot!("adamw+clip", k.to_string());
}

#[test]
fn lamb_moves_at_most_40_bytes_per_element() {
    let r = rule("lamb");
    for flags in r.flag_sets() {
        let k = r.specialize_values(&flags).expect("compiles");
        assert_eq!(k.stages.len(), 2, "{k}");
        assert!(k.bytes_per_element() <= 40, "{k}");
    }
    // The norm of the update reads the clipped gradient, so it waits for the global norm: one
    // more pass. ‖p‖ does not, and shares the first pass with the sum of g·g.
    let k = clipped("lamb", &[]);
    assert_eq!(k.stages.len(), 3, "{k}");
    assert_eq!(k.stage_bytes_per_element(0), 8, "{k}");
    assert_eq!(k.bytes_per_element(), 44, "{k}");
    insta::assert_snapshot!("lamb+clip", k.to_string());
}

#[test]
fn clipping_a_rule_that_declares_max_grad_norm_is_an_error() {
    let src = "optimizer x\nhyper lr = 1\nhyper max_grad_norm = 1\nupdate { p = p - lr * max_grad_norm * g }\n";
    let r = Rule::parse("x.opt", src).expect("parses");
    let err = r
        .specialize_with(
            &[],
            &CompileOptions {
                clip: true,
                ..Default::default()
            },
        )
        .expect_err("clash");
    assert!(err.to_string().contains("E0701"), "{err}");
}

/// Clipped AdamW on the interpreter equals unclipped AdamW given `g * clip`, with `clip`
/// computed here in f64 from the definition (torch.nn.utils.clip_grad_norm_).
#[test]
fn clipping_scales_g_by_the_global_norm() {
    let plain = rule("adamw").specialize(&[]).expect("compiles");
    let clip = clipped("adamw", &[]);
    let grads: [Vec<f64>; 2] = [
        (0..50).map(|i| (i as f64 * 0.37).sin() * 3.0).collect(),
        (0..7).map(|i| i as f64 - 2.5).collect(),
    ];
    let max_norm = 1.5;
    let total: f64 = grads.iter().flatten().map(|g| g * g).sum::<f64>().sqrt();
    let coef = (max_norm / (total + 1e-6)).min(1.0);
    assert!(coef < 0.2, "the test must actually clip");
    let mut hypers = clip.default_hypers();
    let at = clip
        .hypers
        .iter()
        .position(|h| h.name == "max_grad_norm")
        .expect("hyper");
    hypers[at] = max_norm;
    // Clipped, both tensors in one step call.
    let mut ps: Vec<Vec<f64>> = grads.iter().map(|g| vec![0.5; g.len()]).collect();
    let mut states: Vec<[Vec<f64>; 2]> = grads
        .iter()
        .map(|g| [vec![0.0; g.len()], vec![0.0; g.len()]])
        .collect();
    let mut scalars: Vec<Vec<f64>> = vec![vec![], vec![]];
    let tensors = ps
        .iter_mut()
        .zip(&grads)
        .zip(states.iter_mut())
        .zip(scalars.iter_mut())
        .map(|(((p, g), [m, v]), s)| TensorStep {
            hypers: &hypers,
            t: 1,
            scalars: s,
            view: None,
            tensor: 0,
            bufs: Buffers {
                param: p,
                grad: g,
                states: vec![m, v],
            },
            dims: None,
        })
        .collect();
    let report = step_many(&clip, tensors).expect("steps");
    let r = clip.grad_norm_reduction().expect("reduction").index();
    assert!((report.reduced[0][r].sqrt() - total).abs() <= 1e-12 * total);
    // Unclipped, on pre-scaled gradients.
    for (i, g) in grads.iter().enumerate() {
        let scaled: Vec<f64> = g.iter().map(|x| x * coef).collect();
        let mut p = vec![0.5; g.len()];
        let (mut m, mut v) = (vec![0.0; g.len()], vec![0.0; g.len()]);
        let hp = plain.default_hypers();
        step_f64(
            &plain,
            &hp,
            1,
            &mut [],
            Buffers {
                param: &mut p,
                grad: &scaled,
                states: vec![&mut m, &mut v],
            },
        )
        .expect("steps");
        for (a, b) in p.iter().zip(&ps[i]) {
            assert!((a - b).abs() <= 1e-12, "{a} vs {b}");
        }
    }
}

/// LAMB on the interpreter (f64) against the update written out here from the paper and
/// pytorch_optimizer's code, for two steps.
#[test]
fn lamb_matches_its_definition() {
    let k = rule("lamb").specialize(&[]).expect("compiles");
    let (lr, b1, b2, eps) = (1e-3, 0.9, 0.999, 1e-6);
    let n = 300;
    let mut p: Vec<f64> = (0..n).map(|i| ((i as f64) * 0.11).cos()).collect();
    let (mut m, mut v) = (vec![0.0; n], vec![0.0; n]);
    let (mut pe, mut me, mut ve) = (p.clone(), m.clone(), v.clone());
    for t in 1..=2u64 {
        let g: Vec<f64> = (0..n)
            .map(|i| ((i as f64 + t as f64) * 0.7).sin())
            .collect();
        step_f64(
            &k,
            &k.default_hypers(),
            t,
            &mut [],
            Buffers {
                param: &mut p,
                grad: &g,
                states: vec![&mut m, &mut v],
            },
        )
        .expect("steps");
        for i in 0..n {
            me[i] = b1 * me[i] + (1.0 - b1) * g[i];
            ve[i] = b2 * ve[i] + (1.0 - b2) * g[i] * g[i];
        }
        let u: Vec<f64> = (0..n).map(|i| me[i] / (ve[i].sqrt() + eps)).collect();
        let wn = pe
            .iter()
            .map(|x| x * x)
            .sum::<f64>()
            .sqrt()
            .clamp(0.0, 10.0);
        let un = u.iter().map(|x| x * x).sum::<f64>().sqrt();
        let trust = if wn == 0.0 || un == 0.0 {
            1.0
        } else {
            wn / (un + eps)
        };
        let step = lr / (1.0 - b1.powi(t as i32)) * trust;
        for i in 0..n {
            pe[i] -= step * u[i];
        }
    }
    for i in 0..n {
        assert!((p[i] - pe[i]).abs() <= 1e-12, "{i}: {} vs {}", p[i], pe[i]);
        assert!((m[i] - me[i]).abs() <= 1e-15 && (v[i] - ve[i]).abs() <= 1e-15);
    }
}

/// A reduction of a reduction-dependent value takes one more pass; nested reductions work.
#[test]
fn nested_reductions_take_one_pass_each() {
    let src = "optimizer centered\nhyper lr = 1\nupdate { let c = g - mean(g)\n p = p - lr * c / norm(c) }\n";
    let r = Rule::parse("c.opt", src).unwrap_or_else(|d| panic!("{d}"));
    let k = r.specialize(&[]).expect("compiles");
    assert_eq!(k.stages.len(), 3, "{k}");
    let g = [1.0, 2.0, 3.0, 6.0];
    let mut p = vec![0.0; 4];
    step_f64(
        &k,
        &k.default_hypers(),
        1,
        &mut [],
        Buffers {
            param: &mut p,
            grad: &g,
            states: vec![],
        },
    )
    .expect("steps");
    // mean 3; c = -2 -1 0 3; |c| = sqrt(14).
    let want: Vec<f64> = [-2.0, -1.0, 0.0, 3.0]
        .iter()
        .map(|c: &f64| -c / 14f64.sqrt())
        .collect();
    for (a, b) in p.iter().zip(&want) {
        assert!((a - b).abs() <= 1e-15, "{a} vs {b}");
    }
}

fn scaled(name: &str, clip: bool) -> Kernel {
    let options = CompileOptions {
        clip,
        loss_scale: true,
        rank: if rule(name).uses_rank() {
            optc_kernel::RankClass::Matrix
        } else {
            optc_kernel::RankClass::Any
        },
    };
    rule(name)
        .specialize_with(&[], &options)
        .unwrap_or_else(|e| panic!("{e}"))
}

#[test]
fn loss_scaling_checks_g_in_stage_0_and_stores_nothing_there() {
    for name in stdlib::names() {
        for clip in [false, true] {
            let k = scaled(name, clip);
            let r = k.nonfinite_reduction().expect("the check");
            let decl = &k.reductions[r.index()];
            assert_eq!((decl.scope, decl.stage), (Scope::Step, 0), "{name}");
            assert_eq!(k.writes_before_check(), None, "{name}: {k}");
            assert!(k.stages[0].stores.is_empty(), "{name}");
            assert!(k.hypers.iter().any(|h| h.name == "loss_scale"));
            if clip {
                // The norm shares the check's pass.
                let n = k.grad_norm_reduction().expect("norm");
                assert_eq!(k.reductions[n.index()].stage, 0, "{name}");
            }
        }
    }
    let k = scaled("adamw", false);
    assert_eq!(k.bytes_per_element(), 32, "{k}");
    assert_eq!(scaled("adamw", true).bytes_per_element(), 32);
    insta::assert_snapshot!("adamw+loss_scale", k.to_string());
}

#[test]
fn a_matrix_program_on_raw_values_cannot_wait_for_the_check() {
    let source = "optimizer gram\nhyper lr = 0.1\nupdate {\n    if matrix {\n        let x = g @ transpose(g)\n        p = p - lr * (x @ g)\n    } else {\n        p = p - lr * g\n    }\n}\n";
    let r = Rule::parse("gram.opt", source).unwrap_or_else(|d| panic!("{}", d.render(false)));
    let options = CompileOptions {
        loss_scale: true,
        rank: optc_kernel::RankClass::Matrix,
        ..Default::default()
    };
    let err = r
        .specialize_with(&[], &options)
        .expect_err("E0704")
        .to_string();
    assert!(err.contains("E0704"), "{err}");
    let vector = CompileOptions {
        rank: optc_kernel::RankClass::Vector,
        ..options
    };
    assert!(r.specialize_with(&[], &vector).is_ok());
}
