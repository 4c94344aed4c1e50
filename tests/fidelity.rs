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

/// The checkout the fixtures are read from: `OPTC_REPO_DIR` if set (the GPU bundle, which runs
/// this file from `tests/cuda_fidelity.rs` away from the checkout), else the one built from.
fn repo_dir() -> PathBuf {
    std::env::var_os("OPTC_REPO_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from(env!("CARGO_MANIFEST_DIR")))
}

fn fixtures_dir() -> PathBuf {
    repo_dir().join("tests/fixtures")
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
pub(crate) type Stepper<'a> = dyn FnMut(&Kernel, &[f64], u64, &mut [f64], Buffers<'_, f32>) + 'a;

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

/// Compiles stdlib rule `name` with `old` replaced by `new` in its source, for the default flags.
fn mutated_stdlib_kernel(name: &str, old: &str, new: &str) -> Kernel {
    let source =
        optc_compiler::stdlib::source(name).unwrap_or_else(|| panic!("no stdlib rule `{name}`"));
    assert_eq!(
        source.matches(old).count(),
        1,
        "`{old}` is not in stdlib/{name}.opt exactly once"
    );
    let rule = optc_compiler::Rule::parse("mutant.opt", &source.replace(old, new))
        .unwrap_or_else(|d| panic!("mutant of {name} does not compile: {d}"));
    rule.specialize(&[]).unwrap_or_else(|e| panic!("{e}"))
}

#[test]
fn the_budget_catches_plausible_mistakes() {
    // Each mutant is a one-line slip that a rule author could make; each must fail its fixtures.
    let mutants = [
        (
            "adam",
            "defaults",
            "sqrt(v_used) / sqrt(1 - beta2 ^ t) + eps",
            "(sqrt(v_used) + eps) / sqrt(1 - beta2 ^ t)",
        ),
        (
            "sgd",
            "momentum_dampening",
            "t == 1 ? grad : momentum",
            "momentum",
        ),
        (
            "adabound",
            "loose_bounds_small_eps",
            "sqrt(v_used + 1e-15)",
            "sqrt(v_used)",
        ),
    ];
    for (rule, case, old, new) in mutants {
        let kernel = mutated_stdlib_kernel(rule, old, new);
        let errs = replay(
            &fixtures_dir().join(format!("{rule}/{case}.json")),
            &kernel,
            &mut interp_step,
        );
        let worst = errs.values().fold(0.0f64, |a, e| a.max(*e));
        assert!(
            worst > 10.0 * BUDGET,
            "{rule}: `{new}` passed {case}: {errs:?}"
        );
    }
}

/// Every fixture manifest, sorted.
fn manifests() -> Vec<PathBuf> {
    let mut out = Vec::new();
    let dir = fixtures_dir();
    let rules =
        std::fs::read_dir(&dir).unwrap_or_else(|e| panic!("cannot list {}: {e}", dir.display()));
    for entry in rules.flatten() {
        if !entry.path().is_dir() {
            continue;
        }
        for case in std::fs::read_dir(entry.path())
            .into_iter()
            .flatten()
            .flatten()
        {
            if case.path().extension().is_some_and(|e| e == "json") {
                out.push(case.path());
            }
        }
    }
    out.sort();
    out
}

/// The stdlib kernel for a fixture: its rule specialized for the fixture's flags.
fn stdlib_kernel(manifest_path: &Path) -> (String, Kernel) {
    let man: Manifest = serde_json::from_slice(&read(manifest_path))
        .unwrap_or_else(|e| panic!("bad manifest {}: {e}", manifest_path.display()));
    let rule = optc_compiler::stdlib::rule(&man.rule)
        .unwrap_or_else(|| panic!("no stdlib rule `{}`", man.rule))
        .unwrap_or_else(|d| panic!("stdlib rule `{}` does not compile: {d}", man.rule));
    let flags: Vec<(&str, bool)> = man.flags.iter().map(|(k, v)| (k.as_str(), *v)).collect();
    let kernel = rule
        .specialize(&flags)
        .unwrap_or_else(|e| panic!("{}/{}: {e}", man.rule, man.case));
    (format!("{}/{}", man.rule, man.case), kernel)
}

/// Replays every fixture on one backend; prints each case's errors and every rule's worst, and
/// asserts the budget.
pub(crate) fn replay_all(backend: &str, step: &mut Stepper<'_>) {
    let paths = manifests();
    assert!(
        paths.len() >= 36,
        "expected at least 3 cases for each of 12 rules, found {}",
        paths.len()
    );
    let mut worst_per_rule: BTreeMap<String, (f64, String)> = BTreeMap::new();
    let mut failures = Vec::new();
    for path in &paths {
        let (name, kernel) = stdlib_kernel(path);
        let errs = replay(path, &kernel, step);
        let (q, worst) = errs
            .iter()
            .fold((String::new(), 0.0f64), |(wq, w), (q, e)| {
                if *e > w || e.is_nan() {
                    (q.clone(), *e)
                } else {
                    (wq, w)
                }
            });
        println!("{backend} {name}: {errs:?}");
        let rule = kernel.rule.clone();
        let entry = worst_per_rule.entry(rule).or_insert((0.0, String::new()));
        if worst > entry.0 {
            *entry = (worst, format!("{name} {q}"));
        }
        if worst.is_nan() || worst > BUDGET {
            failures.push(format!("{name}: {errs:?}"));
        }
    }
    for (rule, (worst, at)) in &worst_per_rule {
        println!("{backend} worst {rule}: {worst:.1e} ({at})");
    }
    assert!(
        failures.is_empty(),
        "{backend}: over the budget {BUDGET:e}:\n{}",
        failures.join("\n")
    );
}

#[test]
fn every_stdlib_rule_matches_torch_on_the_interpreter() {
    replay_all("interp", &mut interp_step);
}

#[derive(Debug, Deserialize)]
struct Defaults {
    rules: BTreeMap<String, RuleDefaults>,
}

#[derive(Debug, Deserialize)]
struct RuleDefaults {
    reference: String,
    hypers: BTreeMap<String, f64>,
    flags: BTreeMap<String, bool>,
}

#[test]
fn stdlib_defaults_match_the_reference_classes() {
    let path = repo_dir().join("tools/fixtures/defaults.json");
    let defaults: Defaults =
        serde_json::from_slice(&read(&path)).unwrap_or_else(|e| panic!("bad defaults.json: {e}"));
    assert_eq!(defaults.rules.len(), 12);
    for (name, want) in &defaults.rules {
        let rule = optc_compiler::stdlib::rule(name)
            .unwrap_or_else(|| panic!("no stdlib rule `{name}`"))
            .unwrap_or_else(|d| panic!("stdlib rule `{name}` does not compile: {d}"));
        let hypers: BTreeMap<String, f64> = rule
            .hypers()
            .iter()
            .map(|h| (h.name.clone(), h.default))
            .collect();
        let flags: BTreeMap<String, bool> = rule
            .flags()
            .iter()
            .map(|f| (f.name.clone(), f.default))
            .collect();
        assert_eq!(
            hypers, want.hypers,
            "{name}: hypers and defaults differ from {}",
            want.reference
        );
        assert_eq!(
            flags, want.flags,
            "{name}: flags and defaults differ from {}",
            want.reference
        );
    }
}

/// The CPU JIT as users get it (FMA where the host has it), one compiled kernel per rule and flag
/// set, stepped through `step_many` like the runtime does.
#[test]
fn every_stdlib_rule_matches_torch_on_the_cpu_jit() {
    use optc_runtime::cpu::{CpuKernel, TensorArgs};
    let mut cache: Option<(Kernel, CpuKernel)> = None;
    let mut step =
        |kernel: &Kernel, hypers: &[f64], t: u64, scalars: &mut [f64], bufs: Buffers<'_, f32>| {
            if cache.as_ref().is_none_or(|(k, _)| k != kernel) {
                let jit = CpuKernel::compile(kernel).unwrap_or_else(|e| panic!("jit: {e}"));
                cache = Some((kernel.clone(), jit));
            }
            let Some((_, jit)) = cache.as_ref() else {
                unreachable!()
            };
            let host = kernel
                .eval_host(hypers, t, scalars, &[])
                .unwrap_or_else(|e| panic!("host program: {e}"));
            let args = TensorArgs {
                param: bufs.param,
                grad: bufs.grad,
                states: bufs.states,
                uniforms: host.uniforms[0].iter().map(|&u| u as f32).collect(),
            };
            jit.step_many(vec![args], None)
                .unwrap_or_else(|e| panic!("jit step: {e}"));
            scalars.copy_from_slice(&host.scalars);
        };
    replay_all("cpu-jit", &mut step);
}
