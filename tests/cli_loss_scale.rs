//! `--loss-scale S|dynamic` end to end (docs/loss_scaling.md): `optc run` with a fixed and a
//! dynamic scale against plain runs on the unscaled gradients with the bad step left out, the
//! recorded scales and skips, and the bytes `optc compile` and `optc bench` report.

use safetensors::tensor::TensorView;
use safetensors::{Dtype, SafeTensors};
use std::path::{Path, PathBuf};
use std::process::Command;

fn dir(test: &str) -> PathBuf {
    let d = std::env::temp_dir().join(format!("optc-cli-scale-{}-{test}", std::process::id()));
    std::fs::create_dir_all(&d).expect("temp dir");
    d
}

fn data(n: usize, seed: u32) -> Vec<f32> {
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

fn bytes(v: &[f32]) -> Vec<u8> {
    v.iter().flat_map(|x| x.to_le_bytes()).collect()
}

fn write(path: &Path, tensors: &[(&str, Vec<usize>, Vec<f32>)]) {
    let raw: Vec<(String, Vec<usize>, Vec<u8>)> = tensors
        .iter()
        .map(|(n, s, v)| (n.to_string(), s.clone(), bytes(v)))
        .collect();
    let views: Vec<(&str, TensorView<'_>)> = raw
        .iter()
        .map(|(n, s, b)| {
            (
                n.as_str(),
                TensorView::new(Dtype::F32, s.clone(), b).expect("view"),
            )
        })
        .collect();
    safetensors::serialize_to_file(views, None, path).expect("write");
}

fn optc(args: &[&str]) -> (i32, String, String) {
    let out = Command::new(env!("CARGO_BIN_EXE_optc"))
        .args(args)
        .output()
        .expect("run optc");
    (
        out.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

/// The parameters (a 2x3 matrix `w`, a vector `b`) and per-step gradients of 4 steps.
struct Case {
    w: Vec<f32>,
    b: Vec<f32>,
    gw: Vec<Vec<f32>>,
    gb: Vec<Vec<f32>>,
}

fn case() -> Case {
    Case {
        w: data(6, 1),
        b: data(3, 2),
        gw: (0..4).map(|k| data(6, 10 + k)).collect(),
        gb: (0..4).map(|k| data(3, 20 + k)).collect(),
    }
}

/// Writes `P.safetensors` and a gradient file of the steps `steps` of `c`, each multiplied by
/// `scale`, with `poison` (step, index into `w`, value) applied.
fn files(
    d: &Path,
    tag: &str,
    c: &Case,
    steps: &[usize],
    scale: f32,
    poison: Option<(usize, usize, f32)>,
) -> (PathBuf, PathBuf) {
    let p = d.join("p.safetensors");
    write(
        &p,
        &[("w", vec![2, 3], c.w.clone()), ("b", vec![3], c.b.clone())],
    );
    let mut gw = Vec::new();
    let mut gb = Vec::new();
    for &k in steps {
        let mut row: Vec<f32> = c.gw[k].iter().map(|x| x * scale).collect();
        if let Some((s, i, v)) = poison {
            if s == k {
                row[i] = v;
            }
        }
        gw.extend(row);
        gb.extend(c.gb[k].iter().map(|x| x * scale));
    }
    let n = steps.len();
    let g = d.join(format!("g-{tag}.safetensors"));
    write(&g, &[("w", vec![n, 2, 3], gw), ("b", vec![n, 3], gb)]);
    (p, g)
}

/// Every tensor of an output file except `__optc__/*`, as raw bytes by name.
fn tensors(path: &Path) -> Vec<(String, Vec<u8>)> {
    let bytes = std::fs::read(path).expect("output");
    let st = SafeTensors::deserialize(&bytes).expect("safetensors");
    let mut out: Vec<(String, Vec<u8>)> = st
        .tensors()
        .into_iter()
        .filter(|(n, _)| !n.starts_with("__optc__/"))
        .map(|(n, t)| (n, t.data().to_vec()))
        .collect();
    out.sort();
    out
}

fn key(path: &Path, name: &str) -> Vec<u8> {
    let bytes = std::fs::read(path).expect("output");
    let st = SafeTensors::deserialize(&bytes).expect("safetensors");
    st.tensor(name).expect(name).data().to_vec()
}

fn f64s(b: &[u8]) -> Vec<f64> {
    b.chunks_exact(8)
        .map(|c| f64::from_le_bytes(c.try_into().expect("8 bytes")))
        .collect()
}

fn run(p: &Path, g: &Path, steps: usize, out: &Path, extra: &[&str]) {
    let steps = steps.to_string();
    let mut args = vec![
        "run",
        "adamw",
        "--target",
        "interp",
        "--params",
        p.to_str().expect("ok"),
        "--grads",
        g.to_str().expect("ok"),
        "--steps",
        &steps,
        "-o",
        out.to_str().expect("ok"),
    ];
    args.extend(extra);
    let (code, _, err) = optc(&args);
    assert_eq!(code, 0, "{err}");
}

#[test]
fn a_fixed_scale_skips_the_inf_step_and_otherwise_equals_the_unscaled_run() {
    let d = dir("fixed");
    let c = case();
    let (p, g) = files(
        &d,
        "scaled",
        &c,
        &[0, 1, 2, 3],
        1024.0,
        Some((1, 4, f32::INFINITY)),
    );
    let out = d.join("scaled.safetensors");
    run(&p, &g, 4, &out, &["--loss-scale", "1024"]);
    // The same gradients unscaled exactly (1024 is a power of two), step 1 left out.
    let (p, g) = files(&d, "plain", &c, &[0, 2, 3], 1.0, None);
    let plain = d.join("plain.safetensors");
    run(&p, &g, 3, &plain, &[]);
    assert_eq!(tensors(&out), tensors(&plain));
    assert_eq!(key(&out, "__optc__/skipped"), [0, 1, 0, 0]);
    assert_eq!(f64s(&key(&out, "__optc__/loss_scale")), [1024.0; 4]);
}

#[test]
fn a_dynamic_scale_backs_off_after_the_nan_step() {
    let d = dir("dynamic");
    let c = case();
    let (p, g) = files(&d, "true", &c, &[0, 1, 2, 3], 1.0, Some((2, 0, f32::NAN)));
    let out = d.join("dynamic.safetensors");
    run(&p, &g, 4, &out, &["--loss-scale", "dynamic"]);
    let (p, g) = files(&d, "plain", &c, &[0, 1, 3], 1.0, None);
    let plain = d.join("plain.safetensors");
    run(&p, &g, 3, &plain, &[]);
    assert_eq!(tensors(&out), tensors(&plain));
    assert_eq!(key(&out, "__optc__/skipped"), [0, 0, 1, 0]);
    assert_eq!(
        f64s(&key(&out, "__optc__/loss_scale")),
        [65536.0, 65536.0, 65536.0, 32768.0]
    );
}

#[test]
fn compile_and_bench_report_one_more_read_of_g() {
    let (code, out, err) = optc(&["compile", "adamw", "--loss-scale", "--emit", "ir"]);
    assert_eq!(code, 0, "{err}");
    assert!(out.contains("total: 32 bytes/element in 2 stages"), "{out}");
    assert!(out.contains("loss scale: sum(g * 0)"), "{out}");
    let (code, out, err) = optc(&[
        "bench",
        "adamw",
        "--n",
        "5000",
        "--iters",
        "1",
        "--warmup",
        "0",
        "--threads",
        "1",
        "--loss-scale",
        "dynamic",
        "--json",
    ]);
    assert_eq!(code, 0, "{err}");
    let report: serde_json::Value =
        serde_json::from_str(out.lines().last().expect("json")).expect("json");
    assert_eq!(report["bytes_per_element"], 32.0);
    assert_eq!(report["passes"], 2);
    let (code, _, err) = optc(&["bench", "adamw", "--loss-scale=-3"]);
    assert_ne!(code, 0);
    assert!(
        err.contains("expected a positive, finite loss scale"),
        "{err}"
    );
}

#[test]
fn compare_with_a_power_of_two_scale_trains_exactly_as_without() {
    let d = dir("compare");
    let losses = |extra: &[&str], out: &Path| -> serde_json::Value {
        let mut args = vec![
            "compare",
            "adamw",
            "--task",
            "quadratic",
            "--steps",
            "30",
            "--seeds",
            "1",
            "--out",
        ];
        args.push(out.to_str().expect("utf-8 path"));
        args.extend(extra);
        let (code, _, err) = optc(&args);
        assert_eq!(code, 0, "{err}");
        let text = std::fs::read_to_string(out.join("results.json")).expect("results");
        let json: serde_json::Value = serde_json::from_str(&text).expect("json");
        json["entries"][0]["runs"][0]["step_losses"].clone()
    };
    let scaled = losses(&["--loss-scale", "1024"], &d.join("scaled"));
    let dynamic = losses(&["--loss-scale", "dynamic"], &d.join("dynamic"));
    let plain = losses(&[], &d.join("plain"));
    assert!(plain.as_array().is_some_and(|a| !a.is_empty()), "{plain}");
    assert_eq!(scaled, plain);
    assert_eq!(dynamic, plain);
    // The option does reach the optimizer: a scale that overflows every gradient to inf skips
    // every step, so the loss never moves.
    let overflow = losses(&["--loss-scale", "1e38"], &d.join("overflow"));
    let values = overflow.as_array().expect("losses");
    assert!(values.iter().all(|v| *v == values[0]), "{overflow}");
    assert_ne!(overflow, plain);
}
