//! Fidelity: replays the PyTorch reference fixtures in `tests/fixtures/` through optc and checks the
//! parameters, states and reported gradient norms against the budget of `docs/fidelity.md`.
//!
//! Takes: a fixture (manifest + safetensors, made by `tools/fixtures/gen.py`) and a rule. Gives:
//! per quantity (parameter, each state, each scalar state, the total norm of a clipped case) the
//! largest scaled error over the sampled steps and tensors. Guarantees: the replay goes through
//! the public `Optimizer` (every tensor of the case in one `step` call, as clipping by global norm
//! needs), on the interpreter or the CPU JIT; the gradients are the fixture's (fixed stream, or
//! `g = h * p - b` recomputed from optc's own parameters); the rule's hypers and flags are exactly
//! the fixture's; every state the reference keeps is compared.

use optc_runtime::{Optimizer, Options, Rule, Target, Update};
use safetensors::{Dtype, SafeTensors};
use serde::Deserialize;
use std::collections::{BTreeMap, BTreeSet};
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
    /// Clipping by global norm before every step (clipped cases only).
    #[serde(default)]
    clip: Option<ClipSpec>,
}

#[derive(Debug, Deserialize)]
struct TensorSpec {
    name: String,
    shape: Vec<usize>,
    /// The states this tensor holds (staged set); absent: the manifest's `states`.
    #[serde(default)]
    states: Option<Vec<String>>,
    /// The steps this tensor is stored at (staged set); absent: the manifest's `sampled_steps`.
    #[serde(default)]
    sampled_steps: Option<Vec<u64>>,
}

#[derive(Debug, Deserialize)]
struct GradSpec {
    mode: String,
    file: Option<String>,
}

#[derive(Debug, Deserialize)]
struct ClipSpec {
    max_grad_norm: f64,
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

/// Where a replay runs (`tests/cuda_fidelity.rs` adds the CUDA target).
#[derive(Clone, Copy, Debug)]
pub(crate) struct Backend {
    /// The name printed in the results (`{name} worst {rule}: ...`).
    pub(crate) name: &'static str,
    /// The optimizer's target.
    pub(crate) target: Target,
}

const INTERP: Backend = Backend {
    name: "interp",
    target: Target::Interp,
};

/// The CPU JIT as users get it: FMA contraction where the host has it.
const CPU_JIT: Backend = Backend {
    name: "cpu-jit",
    target: Target::Cpu,
};

fn read_manifest(path: &Path) -> Manifest {
    serde_json::from_slice(&read(path))
        .unwrap_or_else(|e| panic!("bad manifest {}: {e}", path.display()))
}

/// Replays one fixture with `rule` through an optimizer on `backend`. Returns the largest
/// scaled error per quantity.
fn replay(manifest_path: &Path, rule: Rule, backend: Backend) -> BTreeMap<String, f64> {
    replay_manifest(&read_manifest(manifest_path), manifest_path, rule, backend)
}

/// [`replay`] of an already read (possibly altered) manifest.
fn replay_manifest(
    man: &Manifest,
    manifest_path: &Path,
    rule: Rule,
    backend: Backend,
) -> BTreeMap<String, f64> {
    let what = format!("{}/{} on {}", man.rule, man.case, backend.name);
    let dir = manifest_path.parent().unwrap_or(Path::new("."));
    let data_bytes = read(&dir.join(&man.data));
    let data =
        SafeTensors::deserialize(&data_bytes).unwrap_or_else(|e| panic!("bad {}: {e}", man.data));
    let grad_bytes = match (man.grad.mode.as_str(), &man.grad.file) {
        ("fixed", Some(f)) => Some(read(&dir.join(f))),
        ("quadratic", _) => None,
        (mode, _) => panic!("{what}: unknown gradient mode `{mode}`"),
    };
    let grads = grad_bytes
        .as_ref()
        .map(|b| SafeTensors::deserialize(b).unwrap_or_else(|e| panic!("bad gradient file: {e}")));

    // The rule must model exactly the reference's hypers and flags: a case that sets a hyper or
    // flag the rule lacks would otherwise replay a different optimizer.
    let rule_hypers: BTreeSet<&str> = rule.hypers().iter().map(|h| h.name.as_str()).collect();
    let rule_flags: BTreeSet<&str> = rule.flags().iter().map(|f| f.name.as_str()).collect();
    assert_eq!(
        rule_hypers,
        man.hypers.keys().map(String::as_str).collect(),
        "{what}: hypers"
    );
    assert_eq!(
        rule_flags,
        man.flags.keys().map(String::as_str).collect(),
        "{what}: flags"
    );
    let options = Options {
        target: backend.target,
        flags: man.flags.iter().map(|(k, v)| (k.clone(), *v)).collect(),
        max_grad_norm: man.clip.as_ref().map(|c| c.max_grad_norm),
        ..Options::default()
    };
    let mut opt = Optimizer::with_options(rule, options).unwrap_or_else(|e| panic!("{what}: {e}"));
    for (name, value) in &man.hypers {
        opt.set_hyper(name, *value)
            .unwrap_or_else(|e| panic!("{what}: {e}"));
    }
    for spec in &man.tensors {
        opt.add_param(&spec.name, &spec.shape)
            .unwrap_or_else(|e| panic!("{what}: {e}"));
    }

    let p0: Vec<Vec<f32>> = man
        .tensors
        .iter()
        .map(|spec| {
            let p0 = f32s(&data, &format!("init/param/{}", spec.name));
            assert_eq!(p0.len(), spec.shape.iter().product::<usize>());
            p0
        })
        .collect();
    let mut p = p0.clone();
    let mut g: Vec<Vec<f32>> = p0.iter().map(|x| vec![0.0; x.len()]).collect();
    let streams: Option<Vec<Vec<f32>>> = grads
        .as_ref()
        .map(|gs| man.tensors.iter().map(|s| f32s(gs, &s.name)).collect());
    let quads: Vec<(Vec<f32>, Vec<f32>)> = if streams.is_none() {
        man.tensors
            .iter()
            .map(|s| {
                (
                    f32s(&data, &format!("quad/h/{}", s.name)),
                    f32s(&data, &format!("quad/b/{}", s.name)),
                )
            })
            .collect()
    } else {
        Vec::new()
    };

    // The total norms torch's clip_grad_norm_ returned, one per step, and the ones optc reports.
    let norms_ref = man.clip.as_ref().map(|_| f32s(&data, "norm/total"));
    let mut norms = Vec::new();
    let mut errs = BTreeMap::new();
    let mut record = |q: &str, e: f64| {
        let slot = errs.entry(q.to_string()).or_insert(0.0f64);
        *slot = slot.max(e);
    };
    for t in 1..=man.steps {
        for (i, g) in g.iter_mut().enumerate() {
            match &streams {
                Some(s) => {
                    let n = g.len();
                    let row = (t - 1) as usize * n;
                    g.copy_from_slice(&s[i][row..row + n]);
                }
                // g = fl32(fl32(h * p) - b), as the README states: no FMA.
                None => {
                    let (h, b) = &quads[i];
                    for (((g, h), p), b) in g.iter_mut().zip(h).zip(&p[i]).zip(b) {
                        *g = h * p - b;
                    }
                }
            }
        }
        let updates = man
            .tensors
            .iter()
            .zip(p.iter_mut())
            .zip(&g)
            .map(|((spec, p), g)| Update::new(&spec.name, p, g));
        let report = opt
            .step(updates)
            .unwrap_or_else(|e| panic!("{what}: step {t}: {e}"));
        if norms_ref.is_some() {
            norms.push(
                report
                    .grad_norm
                    .unwrap_or_else(|| panic!("{what}: step {t} reported no gradient norm")),
            );
        }

        for (i, spec) in man.tensors.iter().enumerate() {
            let sampled = spec.sampled_steps.as_ref().unwrap_or(&man.sampled_steps);
            if !sampled.contains(&t) {
                continue;
            }
            let r = f32s(&data, &format!("step/{t}/param/{}", spec.name));
            record(
                "param",
                scaled_error(&widen(&p[i]), &widen(&r), Some(&p0[i])),
            );
            let states = opt
                .states(&spec.name)
                .unwrap_or_else(|e| panic!("{what}: {e}"));
            for s in spec.states.as_ref().unwrap_or(&man.states) {
                let r = f32s(&data, &format!("step/{t}/state/{s}/{}", spec.name));
                let Some((_, x)) = states.iter().find(|(n, _)| n == s) else {
                    panic!("{what}: the kernel of `{}` has no state `{s}`", spec.name)
                };
                assert_eq!(
                    x.len(),
                    r.len(),
                    "{what}: length of state `{s}` of `{}`",
                    spec.name
                );
                record(s, scaled_error(&widen(x), &widen(&r), None));
            }
            let scalars = opt
                .scalars(&spec.name)
                .unwrap_or_else(|e| panic!("{what}: {e}"));
            for s in &man.scalar_states {
                let r = f64s(&data, &format!("step/{t}/scalar/{s}/{}", spec.name));
                let Some((_, x)) = scalars.iter().find(|(n, _)| n == s) else {
                    panic!("{what}: no scalar state `{s}`")
                };
                record(s, scaled_error(&[*x], &r, None));
            }
        }
    }
    if let Some(r) = &norms_ref {
        assert_eq!(norms.len(), r.len(), "{what}: one total norm per step");
        record("total_norm", scaled_error(&norms, &widen(r), None));
    }
    errs
}

/// Stdlib rule `name` with `old` replaced by `new` in its source.
fn mutated_stdlib_rule(name: &str, old: &str, new: &str) -> Rule {
    let source =
        optc_compiler::stdlib::source(name).unwrap_or_else(|| panic!("no stdlib rule `{name}`"));
    assert_eq!(
        source.matches(old).count(),
        1,
        "`{old}` is not in stdlib/{name}.opt exactly once"
    );
    Rule::from_source("mutant.opt", &source.replace(old, new))
        .unwrap_or_else(|e| panic!("mutant of {name} does not compile: {e}"))
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
        let errs = replay(
            &fixtures_dir().join(format!("{rule}/{case}.json")),
            mutated_stdlib_rule(rule, old, new),
            INTERP,
        );
        let worst = errs.values().fold(0.0f64, |a, e| a.max(*e));
        assert!(
            worst > 10.0 * BUDGET,
            "{rule}: `{new}` passed {case}: {errs:?}"
        );
    }
    // Clipping: a threshold 10% off, or none at all, must fail the clipped fixtures.
    for case in ["adamw/clip_defaults", "sgd/clip_momentum"] {
        let path = fixtures_dir().join(format!("{case}.json"));
        for scale in [1.1, f64::INFINITY] {
            let mut man = read_manifest(&path);
            let clip = man
                .clip
                .as_mut()
                .unwrap_or_else(|| panic!("{case} is not clipped"));
            clip.max_grad_norm *= scale;
            let rule = Rule::stdlib(&man.rule).unwrap_or_else(|e| panic!("{case}: {e}"));
            let errs = replay_manifest(&man, &path, rule, INTERP);
            let worst = errs.values().fold(0.0f64, |a, e| a.max(*e));
            assert!(
                worst > 10.0 * BUDGET,
                "{case} passed with max_grad_norm scaled by {scale}: {errs:?}"
            );
        }
    }
}

/// The stdlib rules with fixtures: the 12 single-pass rules, then the staged ones.
const RULES: [&str; 16] = [
    "sgd",
    "adagrad",
    "rmsprop",
    "adadelta",
    "adam",
    "adamw",
    "adamax",
    "nadam",
    "radam",
    "adabelief",
    "adabound",
    "lion",
    "lamb",
    "stableadamw",
    "lars",
    "adafactor",
];

/// Every fixture manifest, sorted.
fn manifests() -> Vec<PathBuf> {
    let mut out = Vec::new();
    let dir = fixtures_dir();
    let rules =
        std::fs::read_dir(&dir).unwrap_or_else(|e| panic!("cannot list {}: {e}", dir.display()));
    for entry in rules.flatten() {
        // One directory per rule; others (`dtypes/`, with its own manifest format) are not
        // rule fixtures.
        let is_rule = entry
            .file_name()
            .to_str()
            .is_some_and(|n| RULES.contains(&n));
        if !entry.path().is_dir() || !is_rule {
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
    // Until the staged rules land, only the rules in RULES replay.
    out.retain(|p| RULES.contains(&read_manifest(p).rule.as_str()));
    out
}

/// Replays every fixture on one backend; prints each case's errors and every rule's worst, and
/// asserts the budget.
pub(crate) fn replay_all(backend: Backend) {
    let paths = manifests();
    let mut cases_per_rule: BTreeMap<String, usize> = BTreeMap::new();
    let mut worst_per_rule: BTreeMap<String, (f64, String)> = BTreeMap::new();
    let mut failures = Vec::new();
    for path in &paths {
        let man = read_manifest(path);
        let name = format!("{}/{}", man.rule, man.case);
        let rule = Rule::stdlib(&man.rule).unwrap_or_else(|e| panic!("{name}: {e}"));
        let errs = replay(path, rule, backend);
        let (q, worst) = errs
            .iter()
            .fold((String::new(), 0.0f64), |(wq, w), (q, e)| {
                if *e > w || e.is_nan() {
                    (q.clone(), *e)
                } else {
                    (wq, w)
                }
            });
        println!("{} {name}: {errs:?}", backend.name);
        *cases_per_rule.entry(man.rule.clone()).or_insert(0) += 1;
        let entry = worst_per_rule
            .entry(man.rule.clone())
            .or_insert((0.0, String::new()));
        if worst > entry.0 {
            *entry = (worst, format!("{name} {q}"));
        }
        if worst.is_nan() || worst > BUDGET {
            failures.push(format!("{name}: {errs:?}"));
        }
    }
    for rule in RULES {
        let n = cases_per_rule.get(rule).copied().unwrap_or(0);
        assert!(n >= 3, "{rule}: {n} fixture cases, expected at least 3");
    }
    for (rule, (worst, at)) in &worst_per_rule {
        println!("{} worst {rule}: {worst:.1e} ({at})", backend.name);
    }
    assert!(
        failures.is_empty(),
        "{}: over the budget {BUDGET:e}:\n{}",
        backend.name,
        failures.join("\n")
    );
}

#[test]
fn every_stdlib_rule_matches_torch_on_the_interpreter() {
    replay_all(INTERP);
}

/// The CPU JIT as users get it (FMA where the host has it), through the optimizer.
#[test]
fn every_stdlib_rule_matches_torch_on_the_cpu_jit() {
    replay_all(CPU_JIT);
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
    assert_eq!(defaults.rules.len(), 16);
    for (name, want) in &defaults.rules {
        // Until these staged rules land on main.
        if !RULES.contains(&name.as_str()) {
            continue;
        }
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
