//! `optc run --resume` from a torch optimizer's state continues as torch continues.
//!
//! The fixtures in `tests/fixtures/torch_state/` (made by `tools/fixtures/torch_state.py`) hold,
//! per case, a torch run stopped after 5 steps (parameters and optimizer state, saved with the
//! snippet of docs/torch.md) and how torch went on for 5 more steps. optc resumes from that state,
//! takes the same 5 steps, and must land on torch's parameters and state within the fidelity
//! budget of docs/fidelity.md; the same run without `--resume` must not (so the state mattered).
//! Loading and saving the state without a step gives it back bit for bit.

use safetensors::{Dtype, SafeTensors};
use serde::Deserialize;
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::Command;

/// The budget of docs/fidelity.md: the largest scaled error allowed.
const BUDGET: f64 = 1e-5;

#[derive(Deserialize)]
struct Manifest {
    rule: String,
    set: BTreeMap<String, serde_json::Value>,
    steps: u64,
    resume_step: u64,
    tensors: BTreeMap<String, Vec<usize>>,
    f32_vs_f64: f64,
}

fn case_dir(case: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("tests/fixtures/torch_state")
        .join(case)
}

fn tmp(test: &str) -> PathBuf {
    let d = std::env::temp_dir().join(format!("optc-torch-state-{}-{test}", std::process::id()));
    std::fs::create_dir_all(&d).expect("temp dir");
    d
}

fn read(path: &Path) -> Vec<u8> {
    std::fs::read(path).unwrap_or_else(|e| panic!("cannot read {}: {e}", path.display()))
}

/// Every tensor of a safetensors file as f64, with its dtype.
fn tensors(path: &Path) -> BTreeMap<String, (Dtype, Vec<f64>)> {
    let bytes = read(path);
    let st = SafeTensors::deserialize(&bytes).expect("safetensors");
    st.tensors()
        .into_iter()
        .map(|(name, view)| {
            let values = match view.dtype() {
                Dtype::F32 => view
                    .data()
                    .chunks_exact(4)
                    .map(|c| f64::from(f32::from_le_bytes([c[0], c[1], c[2], c[3]])))
                    .collect(),
                Dtype::F64 => view
                    .data()
                    .chunks_exact(8)
                    .map(|c| f64::from_le_bytes(c.try_into().expect("8 bytes")))
                    .collect(),
                other => panic!("`{name}` in {}: unexpected dtype {other:?}", path.display()),
            };
            (name, (view.dtype(), values))
        })
        .collect()
}

fn optc(args: &[String]) -> (bool, String) {
    let out = Command::new(env!("CARGO_BIN_EXE_optc"))
        .args(args)
        .output()
        .expect("run optc");
    (
        out.status.success(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

/// `optc run` of the case's second half; `extra` adds --resume and the like.
fn run_case(case: &str, m: &Manifest, steps: u64, out: &Path, extra: &[String]) -> (bool, String) {
    let d = case_dir(case);
    let mut args: Vec<String> = vec![
        "run".into(),
        m.rule.clone(),
        "--target".into(),
        "cpu".into(),
        "--params".into(),
        d.join("params.safetensors").display().to_string(),
        "--grads".into(),
        d.join("grads.safetensors").display().to_string(),
        "--steps".into(),
        steps.to_string(),
        "-o".into(),
        out.display().to_string(),
    ];
    for (name, value) in &m.set {
        args.push("--set".into());
        args.push(format!("{name}={value}"));
    }
    args.extend(extra.iter().cloned());
    optc(&args)
}

/// The metric of docs/fidelity.md: `max_i |x_i - r_i| / max_i |r_i|`.
fn scaled_error(x: &[f64], r: &[f64]) -> f64 {
    assert_eq!(x.len(), r.len());
    let scale = r.iter().fold(0.0f64, |a, v| a.max(v.abs()));
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

fn manifest(case: &str) -> Manifest {
    serde_json::from_slice(&read(&case_dir(case).join("manifest.json"))).expect("manifest")
}

/// Resumes `case` from torch's state; returns the largest scaled error against torch's
/// continuation over the parameters and every state, and the same for a run without `--resume`.
fn check(case: &str) -> (f64, f64) {
    let m = manifest(case);
    let d = case_dir(case);
    let t = tmp(case);
    let (out, state) = (t.join("out.safetensors"), t.join("state.safetensors"));
    let resume = vec![
        "--resume".to_string(),
        d.join("state.safetensors").display().to_string(),
        "--save-state".to_string(),
        state.display().to_string(),
        "--state-format".to_string(),
        "torch".to_string(),
    ];
    let (ok, err) = run_case(case, &m, m.steps, &out, &resume);
    assert!(ok, "{case}: optc run failed: {err}");

    let got = tensors(&out);
    let want = tensors(&d.join("expected.safetensors"));
    let got_state = tensors(&state);
    let want_state = tensors(&d.join("expected_state.safetensors"));
    let keys: Vec<&String> = got_state.keys().collect();
    assert_eq!(
        keys,
        want_state.keys().collect::<Vec<_>>(),
        "{case}: state keys"
    );
    let mut worst: f64 = 0.0;
    for name in m.tensors.keys() {
        worst = worst.max(scaled_error(&got[name].1, &want[name].1));
        assert_eq!(
            got_state[&format!("{name}.step")].1,
            vec![(m.resume_step + m.steps) as f64],
            "{case}: `{name}.step` counts the torch steps and optc's"
        );
    }
    for (key, (_, values)) in &want_state {
        if !key.ends_with(".step") {
            worst = worst.max(scaled_error(&got_state[key].1, values));
        }
    }

    let fresh = t.join("fresh.safetensors");
    let (ok, err) = run_case(case, &m, m.steps, &fresh, &[]);
    assert!(ok, "{case}: optc run without --resume failed: {err}");
    let fresh = tensors(&fresh);
    let fresh_err = m
        .tensors
        .keys()
        .map(|n| scaled_error(&fresh[n].1, &want[n].1))
        .fold(0.0, f64::max);
    std::fs::remove_dir_all(&t).ok();
    (worst, fresh_err)
}

fn assert_continues_as_torch(case: &str) {
    let (resumed, fresh) = check(case);
    let noise = manifest(case).f32_vs_f64;
    assert!(
        resumed <= BUDGET,
        "{case}: resumed from torch's state, optc is {resumed:.3e} from torch (budget {BUDGET:e}; torch f32 vs f64: {noise:.3e})"
    );
    assert!(
        fresh > 100.0 * BUDGET,
        "{case}: without --resume optc is only {fresh:.3e} from torch; the test would not see a lost state"
    );
}

#[test]
fn adamw_with_amsgrad_resumes_from_torch() {
    assert_continues_as_torch("adamw_amsgrad");
}

#[test]
fn sgd_with_momentum_resumes_from_torch() {
    assert_continues_as_torch("sgd_momentum");
}

#[test]
fn nadam_resumes_from_torch_with_its_scalar_state() {
    assert_continues_as_torch("nadam");
}

#[test]
fn a_torch_state_round_trips_bit_for_bit() {
    for case in ["adamw_amsgrad", "sgd_momentum", "nadam"] {
        let m = manifest(case);
        let d = case_dir(case);
        let t = tmp(&format!("{case}-rt"));
        let (out, state) = (t.join("out.safetensors"), t.join("state.safetensors"));
        let extra = [
            "--resume".to_string(),
            d.join("state.safetensors").display().to_string(),
            "--save-state".to_string(),
            state.display().to_string(),
            "--state-format".to_string(),
            "torch".to_string(),
        ];
        let (ok, err) = run_case(case, &m, 0, &out, &extra);
        assert!(ok, "{case}: {err}");
        let (a, b) = (tensors(&state), tensors(&d.join("state.safetensors")));
        assert_eq!(
            a.keys().collect::<Vec<_>>(),
            b.keys().collect::<Vec<_>>(),
            "{case}"
        );
        for (key, (_, values)) in &b {
            // Values are compared as f64: torch writes `step` and NAdam's `mu_product` as F32,
            // optc as F64 (exact either way).
            assert_eq!(&a[key].1, values, "{case}: `{key}`");
        }
        std::fs::remove_dir_all(&t).ok();
    }
}

#[test]
fn an_optc_checkpoint_is_told_apart_from_a_torch_state() {
    let case = "adamw_amsgrad";
    let m = manifest(case);
    let d = case_dir(case);
    let t = tmp("optc-format");
    let (out, ckpt) = (t.join("out.safetensors"), t.join("ckpt.safetensors"));
    let save = |format: &str, path: &Path| {
        vec![
            "--resume".to_string(),
            d.join("state.safetensors").display().to_string(),
            "--save-state".to_string(),
            path.display().to_string(),
            "--state-format".to_string(),
            format.to_string(),
        ]
    };
    // torch state -> optc checkpoint (0 steps) -> resumed and stepped: the same as from torch.
    let (ok, err) = run_case(case, &m, 0, &out, &save("optc", &ckpt));
    assert!(ok, "{err}");
    let from_torch = t.join("from-torch.safetensors");
    let from_optc = t.join("from-optc.safetensors");
    let (ok, err) = run_case(case, &m, m.steps, &from_torch, &save("torch", &t.join("a")));
    assert!(ok, "{err}");
    let resume_optc = ["--resume".to_string(), ckpt.display().to_string()];
    let (ok, err) = run_case(case, &m, m.steps, &from_optc, &resume_optc);
    assert!(ok, "{err}");
    assert_eq!(tensors(&from_torch), tensors(&from_optc));
    std::fs::remove_dir_all(&t).ok();
}

#[test]
fn a_torch_state_that_does_not_fit_is_a_clear_error() {
    let case = "adamw_amsgrad";
    let mut m = manifest(case);
    let d = case_dir(case);
    let t = tmp("misfit");
    let out = t.join("out.safetensors");
    let resume = [
        "--resume".to_string(),
        d.join("state.safetensors").display().to_string(),
    ];
    // Without amsgrad the rule keeps no `max_exp_avg_sq`.
    m.set
        .insert("amsgrad".into(), serde_json::Value::Bool(false));
    let (ok, err) = run_case(case, &m, 1, &out, &resume);
    assert!(!ok);
    assert!(
        err.contains("max_exp_avg_sq` belongs to no state of this optimizer")
            && err.contains("do the flags match the torch run?"),
        "{err}"
    );
    // Another rule's state: sgd at momentum 0 keeps no state (as torch), so adamw's `exp_avg`
    // belongs to nothing.
    m.rule = "sgd".into();
    m.set = BTreeMap::new();
    let (ok, err) = run_case(case, &m, 1, &out, &resume);
    assert!(!ok);
    assert!(
        err.contains("`b.exp_avg` belongs to no state of this optimizer"),
        "{err}"
    );
    assert!(!out.exists(), "no output after a failed resume");
    std::fs::remove_dir_all(&t).ok();
}
