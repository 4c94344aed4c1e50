//! Fidelity: replays the PyTorch reference fixtures in `tests/fixtures/` through optc and checks the
//! parameters and states against the budget of `docs/fidelity.md`.
//!
//! Takes: a fixture (manifest + safetensors, made by `tools/fixtures/gen.py`) and a kernel for the
//! fixture's rule and flags. Gives: per quantity (parameter, each state, each scalar state) the
//! largest scaled error over the sampled steps and tensors. Guarantees: the gradients are the
//! fixture's (fixed stream, or `g = h * p - b` recomputed from optc's own parameters), and every
//! state the reference keeps is compared.

use optc_compiler::backend::interp::{self, Buffers};
use optc_kernel::{Init, Kernel};
use safetensors::{Dtype, SafeTensors};
use serde::Deserialize;
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

/// The budget of docs/fidelity.md: largest scaled error allowed for any parameter or state.
const BUDGET: f64 = 1e-5;

#[derive(Debug, Deserialize)]
struct Manifest {
    rule: String,
    case: String,
    hypers: BTreeMap<String, f64>,
    flags: BTreeMap<String, bool>,
    steps: u64,
    sampled_steps: Vec<u64>,
    tensors: Vec<TensorSpec>,
    grad: GradSpec,
    states: Vec<String>,
    scalar_states: Vec<String>,
    data: String,
}

#[derive(Debug, Deserialize)]
struct TensorSpec {
    name: String,
    shape: Vec<usize>,
}

#[derive(Debug, Deserialize)]
struct GradSpec {
    mode: String,
    file: Option<String>,
}

fn fixtures_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures")
}

fn read(path: &Path) -> Vec<u8> {
    std::fs::read(path).unwrap_or_else(|e| panic!("cannot read {}: {e}", path.display()))
}

fn f32s(st: &SafeTensors<'_>, key: &str) -> Vec<f32> {
    let t = st
        .tensor(key)
        .unwrap_or_else(|e| panic!("fixture has no `{key}`: {e}"));
    assert_eq!(t.dtype(), Dtype::F32, "`{key}` is not f32");
    t.data()
        .chunks_exact(4)
        .map(|b| f32::from_le_bytes([b[0], b[1], b[2], b[3]]))
        .collect()
}

fn f64s(st: &SafeTensors<'_>, key: &str) -> Vec<f64> {
    let t = st
        .tensor(key)
        .unwrap_or_else(|e| panic!("fixture has no `{key}`: {e}"));
    assert_eq!(t.dtype(), Dtype::F64, "`{key}` is not f64");
    t.data()
        .chunks_exact(8)
        .map(|b| f64::from_le_bytes([b[0], b[1], b[2], b[3], b[4], b[5], b[6], b[7]]))
        .collect()
}

/// The metric of docs/fidelity.md: `max_i |x_i - r_i| / S`, S the largest `|r_i|` (and, for a
/// parameter, the largest initial `|p0_i|` if larger).
fn scaled_error(x: &[f64], r: &[f64], p0: Option<&[f32]>) -> f64 {
    assert_eq!(x.len(), r.len());
    let mut scale = r.iter().fold(0.0f64, |a, v| a.max(v.abs()));
    if let Some(p0) = p0 {
        scale = p0.iter().fold(scale, |a, v| a.max(f64::from(v.abs())));
    }
    let err = x.iter().zip(r).fold(0.0f64, |a, (x, r)| {
        if (x - r).is_nan() {
            f64::INFINITY
        } else {
            a.max((x - r).abs())
        }
    });
    if scale > 0.0 {
        err / scale
    } else {
        err
    }
}

fn widen(x: &[f32]) -> Vec<f64> {
    x.iter().map(|&v| f64::from(v)).collect()
}

/// One step of one tensor on some backend.
type Stepper<'a> = dyn FnMut(&Kernel, &[f64], u64, &mut [f64], Buffers<'_, f32>) + 'a;

/// Replays one fixture with `kernel` (specialized for the fixture's flags) through `step`.
/// Returns the largest scaled error per quantity.
fn replay(manifest_path: &Path, kernel: &Kernel, step: &mut Stepper<'_>) -> BTreeMap<String, f64> {
    let man: Manifest = serde_json::from_slice(&read(manifest_path))
        .unwrap_or_else(|e| panic!("bad manifest {}: {e}", manifest_path.display()));
    let dir = manifest_path.parent().unwrap_or(Path::new("."));
    let data_bytes = read(&dir.join(&man.data));
    let data =
        SafeTensors::deserialize(&data_bytes).unwrap_or_else(|e| panic!("bad {}: {e}", man.data));
    let grad_bytes = match (man.grad.mode.as_str(), &man.grad.file) {
        ("fixed", Some(f)) => Some(read(&dir.join(f))),
        ("quadratic", _) => None,
        (mode, _) => panic!("{}/{}: unknown gradient mode `{mode}`", man.rule, man.case),
    };
    let grads = grad_bytes
        .as_ref()
        .map(|b| SafeTensors::deserialize(b).unwrap_or_else(|e| panic!("bad gradient file: {e}")));

    for f in &kernel.flags {
        let want = man.flags.get(&f.name).copied();
        assert_eq!(
            want,
            Some(f.value),
            "{}/{}: kernel flag `{}`",
            man.rule,
            man.case,
            f.name
        );
    }
    let hypers: Vec<f64> = kernel
        .hypers
        .iter()
        .map(|h| {
            *man.hypers.get(&h.name).unwrap_or_else(|| {
                panic!(
                    "{}/{}: fixture has no hyper `{}`",
                    man.rule, man.case, h.name
                )
            })
        })
        .collect();
    let state_index = |name: &str| {
        kernel
            .states
            .iter()
            .position(|s| s.name == name)
            .unwrap_or_else(|| panic!("{}/{}: kernel has no state `{name}`", man.rule, man.case))
    };
    let scalar_index = |name: &str| {
        kernel
            .scalars
            .iter()
            .position(|s| s.name == name)
            .unwrap_or_else(|| {
                panic!(
                    "{}/{}: kernel has no scalar state `{name}`",
                    man.rule, man.case
                )
            })
    };
    let init_values = kernel.eval_init(&hypers).unwrap_or_else(|e| panic!("{e}"));

    let mut errs = BTreeMap::new();
    for spec in &man.tensors {
        let n: usize = spec.shape.iter().product();
        let p0 = f32s(&data, &format!("init/param/{}", spec.name));
        assert_eq!(p0.len(), n);
        let mut p = p0.clone();
        let mut states: Vec<Vec<f32>> = kernel
            .states
            .iter()
            .map(|s| match s.init {
                Init::Param => p0.clone(),
                Init::Value(h) => vec![init_values[h.index()] as f32; n],
            })
            .collect();
        let mut scalars = kernel
            .initial_scalars(&hypers)
            .unwrap_or_else(|e| panic!("{e}"));
        let stream = grads.as_ref().map(|g| f32s(g, &spec.name));
        let quad = grads.is_none().then(|| {
            (
                f32s(&data, &format!("quad/h/{}", spec.name)),
                f32s(&data, &format!("quad/b/{}", spec.name)),
            )
        });
        let mut g = vec![0.0f32; n];
        for t in 1..=man.steps {
            match (&stream, &quad) {
                (Some(s), _) => {
                    let row = (t - 1) as usize * n;
                    g.copy_from_slice(&s[row..row + n]);
                }
                // g = fl32(fl32(h * p) - b), as the README states: no FMA.
                (None, Some((h, b))) => {
                    for (((g, h), p), b) in g.iter_mut().zip(h).zip(&p).zip(b) {
                        *g = h * p - b;
                    }
                }
                (None, None) => unreachable!(),
            }
            let bufs = Buffers {
                param: &mut p,
                grad: &g,
                states: states.iter_mut().map(|s| s.as_mut_slice()).collect(),
            };
            step(kernel, &hypers, t, &mut scalars, bufs);
            if !man.sampled_steps.contains(&t) {
                continue;
            }
            let mut record = |q: &str, e: f64| {
                let slot = errs.entry(q.to_string()).or_insert(0.0f64);
                *slot = slot.max(e);
            };
            let r = f32s(&data, &format!("step/{t}/param/{}", spec.name));
            record("param", scaled_error(&widen(&p), &widen(&r), Some(&p0)));
            for s in &man.states {
                let r = f32s(&data, &format!("step/{t}/state/{s}/{}", spec.name));
                record(
                    s,
                    scaled_error(&widen(&states[state_index(s)]), &widen(&r), None),
                );
            }
            for s in &man.scalar_states {
                let r = f64s(&data, &format!("step/{t}/scalar/{s}/{}", spec.name));
                record(s, scaled_error(&[scalars[scalar_index(s)]], &r, None));
            }
        }
    }
    errs
}

fn interp_step(
    kernel: &Kernel,
    hypers: &[f64],
    t: u64,
    scalars: &mut [f64],
    bufs: Buffers<'_, f32>,
) {
    interp::step_f32(kernel, hypers, t, scalars, bufs)
        .unwrap_or_else(|e| panic!("interpreter: {e}"));
}

fn assert_within_budget(what: &str, errs: &BTreeMap<String, f64>) {
    let bad: Vec<_> = errs
        .iter()
        .filter(|(_, e)| e.is_nan() || **e > BUDGET)
        .collect();
    assert!(
        bad.is_empty(),
        "{what}: over the budget {BUDGET:e}: {bad:?} (all: {errs:?})"
    );
}

/// A hand-built Adam kernel (amsgrad and maximize off), standing in for the compiled stdlib rule
/// until the frontend lands. Uniforms: beta1, 1 - beta1, beta2, 1 - beta2, 1 / sqrt(1 - beta2^t),
/// eps, lr / (1 - beta1^t), weight_decay.
mod hand {
    use optc_kernel::{
        Arena, BinaryOp as B, Expr, FlagValue, Handle, HyperDecl, HyperId, Init, Kernel, Slot,
        StateDecl, StateId, Store, UnaryOp as U, UniformId,
    };

    fn bin(a: &mut Arena<Expr>, op: B, x: Handle<Expr>, y: Handle<Expr>) -> Handle<Expr> {
        a.append(Expr::Binary(op, x, y))
    }

    pub fn adam() -> Kernel {
        let hypers = [
            ("lr", 1e-3),
            ("beta1", 0.9),
            ("beta2", 0.999),
            ("eps", 1e-8),
            ("weight_decay", 0.0),
        ];
        let mut init = Arena::new();
        let zero = init.append(Expr::Const(0.0));

        let mut host = Arena::new();
        let hy: Vec<_> = (0..hypers.len())
            .map(|i| host.append(Expr::Hyper(HyperId::new(i))))
            .collect();
        let (lr, b1, b2, eps, wd) = (hy[0], hy[1], hy[2], hy[3], hy[4]);
        let one = host.append(Expr::Const(1.0));
        let t = host.append(Expr::Step);
        let omb1 = bin(&mut host, B::Sub, one, b1);
        let omb2 = bin(&mut host, B::Sub, one, b2);
        let b1t = bin(&mut host, B::Pow, b1, t);
        let b2t = bin(&mut host, B::Pow, b2, t);
        let bc1 = bin(&mut host, B::Sub, one, b1t);
        let bc2 = bin(&mut host, B::Sub, one, b2t);
        let sbc2 = host.append(Expr::Unary(U::Sqrt, bc2));
        let inv_sbc2 = bin(&mut host, B::Div, one, sbc2);
        let step_size = bin(&mut host, B::Div, lr, bc1);
        let uniforms = vec![b1, omb1, b2, omb2, inv_sbc2, eps, step_size, wd];

        let mut body = Arena::new();
        let u: Vec<_> = (0..uniforms.len())
            .map(|i| body.append(Expr::Uniform(UniformId::new(i))))
            .collect();
        let p = body.append(Expr::Load(Slot::Param));
        let g = body.append(Expr::Load(Slot::Grad));
        let m = body.append(Expr::Load(Slot::State(StateId::new(0))));
        let v = body.append(Expr::Load(Slot::State(StateId::new(1))));
        let wdp = bin(&mut body, B::Mul, u[7], p);
        let grad = bin(&mut body, B::Add, g, wdp);
        let bm = bin(&mut body, B::Mul, u[0], m);
        let cg = bin(&mut body, B::Mul, u[1], grad);
        let m2 = bin(&mut body, B::Add, bm, cg);
        let bv = bin(&mut body, B::Mul, u[2], v);
        let gg = bin(&mut body, B::Mul, grad, grad);
        let cgg = bin(&mut body, B::Mul, u[3], gg);
        let v2 = bin(&mut body, B::Add, bv, cgg);
        let sv = body.append(Expr::Unary(U::Sqrt, v2));
        let sv2 = bin(&mut body, B::Mul, sv, u[4]);
        let denom = bin(&mut body, B::Add, sv2, u[5]);
        let sm = bin(&mut body, B::Mul, u[6], m2);
        let upd = bin(&mut body, B::Div, sm, denom);
        let p2 = bin(&mut body, B::Sub, p, upd);

        let kernel = Kernel {
            rule: "adam".into(),
            flags: vec![
                FlagValue {
                    name: "amsgrad".into(),
                    value: false,
                },
                FlagValue {
                    name: "maximize".into(),
                    value: false,
                },
            ],
            hypers: hypers
                .iter()
                .map(|(n, d)| HyperDecl {
                    name: (*n).into(),
                    default: *d,
                })
                .collect(),
            states: ["m", "v"]
                .iter()
                .map(|n| StateDecl {
                    name: (*n).into(),
                    init: Init::Value(zero),
                })
                .collect(),
            scalars: vec![],
            init,
            host,
            uniforms,
            scalar_updates: vec![],
            body,
            stores: vec![
                Store {
                    slot: Slot::Param,
                    value: p2,
                },
                Store {
                    slot: Slot::State(StateId::new(0)),
                    value: m2,
                },
                Store {
                    slot: Slot::State(StateId::new(1)),
                    value: v2,
                },
            ],
        };
        if let Err(e) = kernel.validate() {
            panic!("hand-built adam: {e}");
        }
        kernel
    }
}

#[test]
fn hand_built_adam_matches_torch_on_the_interpreter() {
    let kernel = hand::adam();
    let errs = replay(
        &fixtures_dir().join("adam/defaults.json"),
        &kernel,
        &mut interp_step,
    );
    println!("adam/defaults on the interpreter: {errs:?}");
    assert!(errs.contains_key("param") && errs.contains_key("m") && errs.contains_key("v"));
    assert_within_budget("adam/defaults (interp, hand-built kernel)", &errs);
}

#[test]
fn the_budget_catches_a_wrong_rule() {
    // The adam kernel (coupled L2 decay) against the adamw fixture (decoupled decay 1e-2).
    let kernel = hand::adam();
    let errs = replay(
        &fixtures_dir().join("adamw/defaults.json"),
        &kernel,
        &mut interp_step,
    );
    let worst = errs.values().fold(0.0f64, |a, e| a.max(*e));
    assert!(worst > 100.0 * BUDGET, "a wrong rule passed: {errs:?}");
}
