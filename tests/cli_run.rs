//! `optc run` end to end: the binary on safetensors files, checked against the reference
//! interpreter, and its error paths.

use optc_compiler::backend::interp::{step_f32, Buffers};
use optc_kernel::{Init, Kernel};
use safetensors::tensor::TensorView;
use safetensors::{Dtype, SafeTensors};
use std::path::{Path, PathBuf};
use std::process::Command;

fn dir(test: &str) -> PathBuf {
    let d = std::env::temp_dir().join(format!("optc-cli-run-{}-{test}", std::process::id()));
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

/// Writes `tensors` (name, dtype, shape, bytes) to `path`.
fn write(path: &Path, tensors: &[(&str, Dtype, Vec<usize>, Vec<u8>)]) {
    let views: Vec<(&str, TensorView<'_>)> = tensors
        .iter()
        .map(|(n, d, s, b)| (*n, TensorView::new(*d, s.clone(), b).expect("view")))
        .collect();
    safetensors::serialize_to_file(views, None, path).expect("write");
}

fn optc(args: &[&str]) -> (i32, String) {
    let out = Command::new(env!("CARGO_BIN_EXE_optc"))
        .arg("run")
        .args(args)
        .output()
        .expect("run optc");
    (
        out.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

/// Two parameters (a matrix and a vector) and 4 steps of gradients.
struct Case {
    p: PathBuf,
    g: PathBuf,
    w: Vec<f32>,
    b: Vec<f32>,
    gw: Vec<f32>,
    gb: Vec<f32>,
}

fn case(d: &Path) -> Case {
    let (w, b) = (data(6, 1), data(3, 2));
    let (gw, gb) = (data(4 * 6, 3), data(4 * 3, 4));
    let c = Case {
        p: d.join("p.safetensors"),
        g: d.join("g.safetensors"),
        w,
        b,
        gw,
        gb,
    };
    write(
        &c.p,
        &[
            ("w", Dtype::F32, vec![2, 3], bytes(&c.w)),
            ("b", Dtype::F32, vec![3], bytes(&c.b)),
        ],
    );
    write(
        &c.g,
        &[
            ("w", Dtype::F32, vec![4, 2, 3], bytes(&c.gw)),
            ("b", Dtype::F32, vec![4, 3], bytes(&c.gb)),
        ],
    );
    c
}

/// The interpreter's result for one tensor: final param, states, scalars.
fn reference(
    kernel: &Kernel,
    hypers: &[f64],
    p: &[f32],
    grads: &[f32],
    steps: usize,
) -> (Vec<f32>, Vec<Vec<f32>>, Vec<f64>) {
    let mut p = p.to_vec();
    let init = kernel.eval_init(hypers).expect("init");
    let mut states: Vec<Vec<f32>> = kernel
        .states
        .iter()
        .map(|s| match s.init {
            Init::Param => p.clone(),
            Init::Value(h) => vec![init[h.index()] as f32; p.len()],
        })
        .collect();
    let mut scalars = kernel.initial_scalars(hypers).expect("scalars");
    for t in 0..steps {
        let g = &grads[t * p.len()..(t + 1) * p.len()];
        let bufs = Buffers {
            param: &mut p,
            grad: g,
            states: states.iter_mut().map(|s| s.as_mut_slice()).collect(),
        };
        step_f32(kernel, hypers, t as u64 + 1, &mut scalars, bufs).expect("interp");
    }
    (p, states, scalars)
}

fn read_f32(st: &SafeTensors<'_>, name: &str) -> Vec<u32> {
    let v = st.tensor(name).expect(name);
    assert_eq!(v.dtype(), Dtype::F32, "{name}");
    v.data()
        .chunks_exact(4)
        .map(|c| u32::from_le_bytes([c[0], c[1], c[2], c[3]]))
        .collect()
}

fn bits(v: &[f32]) -> Vec<u32> {
    v.iter().map(|x| x.to_bits()).collect()
}

fn check_against_interp(
    rule: &str,
    flags: &[(&str, bool)],
    sets: &[(&str, f64)],
    extra: &[&str],
    steps: usize,
) {
    let d = dir(&format!("{rule}-{}", extra.join("")));
    let c = case(&d);
    let out = d.join("out.safetensors");
    let steps_s = steps.to_string();
    let mut args = vec![
        rule,
        "--params",
        c.p.to_str().expect("p"),
        "--grads",
        c.g.to_str().expect("g"),
    ];
    args.extend(["--steps", &steps_s, "-o", out.to_str().expect("o")]);
    let set_args: Vec<String> = flags
        .iter()
        .map(|(n, v)| format!("{n}={v}"))
        .chain(sets.iter().map(|(n, v)| format!("{n}={v}")))
        .collect();
    for s in &set_args {
        args.extend(["--set", s]);
    }
    args.extend(extra);
    let (code, stderr) = optc(&args);
    assert_eq!(code, 0, "{stderr}");
    // The output was written atomically: no temporary file is left next to it.
    let mut files: Vec<String> = std::fs::read_dir(&d)
        .expect("read dir")
        .map(|e| e.expect("entry").file_name().to_string_lossy().into_owned())
        .collect();
    files.sort();
    assert_eq!(files, ["g.safetensors", "out.safetensors", "p.safetensors"]);

    let compiled = optc_compiler::stdlib::rule(rule)
        .expect("stdlib")
        .expect("parses");
    let kernel = compiled.specialize(flags).expect("specialize");
    let hypers: Vec<f64> = kernel
        .hypers
        .iter()
        .map(|h| {
            sets.iter()
                .find(|(n, _)| *n == h.name)
                .map_or(h.default, |s| s.1)
        })
        .collect();
    let out_bytes = std::fs::read(&out).expect("out");
    let st = SafeTensors::deserialize(&out_bytes).expect("out parses");
    let mut expected_names = vec!["b".to_string(), "w".to_string()];
    for (name, p, g) in [("w", &c.w, &c.gw), ("b", &c.b, &c.gb)] {
        let (p, states, scalars) = reference(&kernel, &hypers, p, g, steps);
        assert_eq!(read_f32(&st, name), bits(&p), "{rule} {name}");
        for (decl, s) in kernel.states.iter().zip(&states) {
            let key = format!("{name}.{}", decl.name);
            assert_eq!(read_f32(&st, &key), bits(s), "{rule} {key}");
            expected_names.push(key);
        }
        for (decl, s) in kernel.scalars.iter().zip(&scalars) {
            let key = format!("{name}.{}", decl.name);
            let v = st.tensor(&key).expect("scalar");
            assert_eq!((v.dtype(), v.shape()), (Dtype::F64, &[][..]));
            assert_eq!(v.data(), s.to_le_bytes(), "{rule} {key}");
            expected_names.push(key);
        }
    }
    let mut names: Vec<String> = st.names().into_iter().map(String::from).collect();
    names.sort();
    expected_names.sort();
    assert_eq!(names, expected_names);
    let _ = std::fs::remove_dir_all(&d);
}

#[test]
fn run_matches_the_interpreter() {
    check_against_interp("adamw", &[], &[("lr", 0.01)], &["--target", "interp"], 4);
    check_against_interp("adamw", &[], &[], &["--no-fma", "--threads", "3"], 4);
    check_against_interp(
        "adamw",
        &[("amsgrad", true)],
        &[("beta1", 0.8)],
        &["--no-fma"],
        3,
    );
    // A scalar state (NAdam's mu_product) and fewer steps than gradient rows.
    check_against_interp("nadam", &[], &[], &["--target", "interp"], 2);
}

#[test]
fn run_errors_exit_1_with_a_clear_message() {
    let d = dir("errors");
    let c = case(&d);
    let out = d.join("out.safetensors");
    let (p, g, o) = (
        c.p.to_str().expect("p"),
        c.g.to_str().expect("g"),
        out.to_str().expect("o"),
    );
    let base = |extra: &[&str]| {
        let mut a = vec!["adamw", "--params", p, "--grads", g, "-o", o];
        a.extend(extra);
        optc(&a)
    };
    let expect = |r: (i32, String), needle: &str| {
        assert_eq!(r.0, 1, "{}", r.1);
        assert!(r.1.contains(needle), "stderr: {}\nwanted: {needle}", r.1);
    };
    expect(base(&["--steps", "5"]), "gradients `b` in `");
    expect(base(&["--steps", "5"]), "hold 4 steps, but --steps is 5");
    expect(
        base(&["--steps", "1", "--set", "lrr=0.1"]),
        "has no hyper or flag `lrr` (did you mean `lr`?)",
    );
    expect(
        base(&["--steps", "1", "--set", "amsgrad=maybe"]),
        "flag `amsgrad` takes true or false",
    );
    let r = optc(&[
        "adamq", "--params", p, "--grads", g, "--steps", "1", "-o", o,
    ]);
    expect(r, "no stdlib rule of that name (did you mean `adam`?)");

    // Shape mismatch.
    let bad = d.join("bad_shape.safetensors");
    write(
        &bad,
        &[
            ("w", Dtype::F32, vec![4, 3, 2], bytes(&c.gw)),
            ("b", Dtype::F32, vec![4, 3], bytes(&c.gb)),
        ],
    );
    let r = optc(&[
        "adamw",
        "--params",
        p,
        "--grads",
        bad.to_str().expect("p"),
        "--steps",
        "1",
        "-o",
        o,
    ]);
    expect(r, "gradients `w` in `");
    let r = optc(&[
        "adamw",
        "--params",
        p,
        "--grads",
        bad.to_str().expect("p"),
        "--steps",
        "1",
        "-o",
        o,
    ]);
    expect(
        r,
        "have shape [4, 3, 2]; expected [steps, 2, 3] for the parameter of shape [2, 3]",
    );

    // Missing gradients, and gradients for an unknown parameter.
    let missing = d.join("missing.safetensors");
    write(&missing, &[("w", Dtype::F32, vec![4, 2, 3], bytes(&c.gw))]);
    let r = optc(&[
        "adamw",
        "--params",
        p,
        "--grads",
        missing.to_str().expect("m"),
        "--steps",
        "1",
        "-o",
        o,
    ]);
    expect(r, "has no gradients for parameter `b`");
    let extra = d.join("extra.safetensors");
    write(
        &extra,
        &[
            ("w", Dtype::F32, vec![4, 2, 3], bytes(&c.gw)),
            ("b", Dtype::F32, vec![4, 3], bytes(&c.gb)),
            ("bb", Dtype::F32, vec![4, 3], bytes(&c.gb)),
        ],
    );
    let r = optc(&[
        "adamw",
        "--params",
        p,
        "--grads",
        extra.to_str().expect("e"),
        "--steps",
        "1",
        "-o",
        o,
    ]);
    expect(r, "has gradients `bb` for no parameter of");

    // Non-f32 parameters.
    let f64p = d.join("f64.safetensors");
    write(&f64p, &[("w", Dtype::F64, vec![3], vec![0u8; 24])]);
    let r = optc(&[
        "adamw",
        "--params",
        f64p.to_str().expect("f"),
        "--grads",
        g,
        "--steps",
        "1",
        "-o",
        o,
    ]);
    expect(
        r,
        "tensor `w` is F64, but --param-dtype f32 reads F32 tensors",
    );

    // Not a safetensors file.
    let junk = d.join("junk.safetensors");
    std::fs::write(&junk, b"junk").expect("write");
    let r = optc(&[
        "adamw",
        "--params",
        junk.to_str().expect("j"),
        "--grads",
        g,
        "--steps",
        "1",
        "-o",
        o,
    ]);
    expect(r, "is not a safetensors file");
    assert!(!out.exists(), "no output is written on error");
    let _ = std::fs::remove_dir_all(&d);
}

/// `--set max_grad_norm=V` clips over every tensor of the file in one call and writes each step's
/// total norm: sqrt of the f64 sum, over the tensors in registration order (`b`, `w`: sorted), of
/// each tensor's sum of `g·g` in the order of `optc_kernel::reduce`.
#[test]
fn run_clips_by_the_global_norm_of_every_tensor_and_writes_the_norms() {
    use optc_kernel::reduce::{reduce, ReduceOp};
    let d = dir("clip");
    let c = case(&d);
    let out = d.join("out.safetensors");
    let (code, stderr) = optc(&[
        "sgd",
        "--params",
        c.p.to_str().expect("p"),
        "--grads",
        c.g.to_str().expect("g"),
        "--steps",
        "4",
        "--set",
        "max_grad_norm=0.5",
        "--set",
        "lr=0.1",
        "--no-fma",
        "-o",
        out.to_str().expect("o"),
    ]);
    assert_eq!(code, 0, "{stderr}");
    let out_bytes = std::fs::read(&out).expect("out");
    let st = SafeTensors::deserialize(&out_bytes).expect("out parses");
    let v = st.tensor("__optc__/grad_norm").expect("the norms");
    assert_eq!((v.dtype(), v.shape()), (Dtype::F64, &[4usize][..]));
    let got: Vec<f64> = v
        .data()
        .chunks_exact(8)
        .map(|b| f64::from_le_bytes(b.try_into().expect("8 bytes")))
        .collect();
    let (mut w, mut b) = (c.w.clone(), c.b.clone());
    for (k, norm) in got.iter().enumerate() {
        let gw = &c.gw[6 * k..6 * (k + 1)];
        let gb = &c.gb[3 * k..3 * (k + 1)];
        let sq = |g: &[f32]| reduce(ReduceOp::Sum, &g.iter().map(|x| x * x).collect::<Vec<_>>());
        let total = (-0.0 + sq(gb)) + sq(gw);
        assert_eq!(norm.to_bits(), total.sqrt().to_bits(), "step {}", k + 1);
        // Plain SGD on the clipped gradient, as torch after clip_grad_norm_.
        let coef = (0.5 / (total.sqrt() + 1e-6)).min(1.0) as f32;
        let lr = 0.1f64 as f32;
        for (p, g) in w.iter_mut().zip(gw) {
            *p -= lr * (g * coef);
        }
        for (p, g) in b.iter_mut().zip(gb) {
            *p -= lr * (g * coef);
        }
    }
    assert_eq!(read_f32(&st, "w"), bits(&w));
    assert_eq!(read_f32(&st, "b"), bits(&b));
    let _ = std::fs::remove_dir_all(&d);
}

/// `optc run --param-dtype bf16 --state-dtype bf16 [--master-weights]`: bf16 files in, bf16
/// parameters and each state in its dtype out, equal to the optimizer API on the same data (the
/// CPU JIT without FMA equals the interpreter; `runtime/tests/api_dtypes.rs`), and an f32 file is
/// a clear error.
#[test]
fn run_reads_and_writes_bf16_files() {
    use half::bf16;
    let d = dir("bf16");
    let (n, steps) = (37usize, 3usize);
    let p0: Vec<bf16> = data(n, 1).iter().map(|&x| bf16::from_f32(x)).collect();
    let gs: Vec<bf16> = data(n * steps, 2)
        .iter()
        .map(|&x| bf16::from_f32(x))
        .collect();
    let le = |v: &[bf16]| {
        v.iter()
            .flat_map(|x| x.to_bits().to_le_bytes())
            .collect::<Vec<u8>>()
    };
    let (p, g) = (d.join("p.safetensors"), d.join("g.safetensors"));
    write(&p, &[("w", Dtype::BF16, vec![n], le(&p0))]);
    write(&g, &[("w", Dtype::BF16, vec![steps, n], le(&gs))]);
    for master in [false, true] {
        let o = d.join(format!("out-{master}.safetensors"));
        let mut args = vec![
            "adamw",
            "--params",
            p.to_str().expect("p"),
            "--grads",
            g.to_str().expect("g"),
            "--steps",
            "3",
            "--no-fma",
            "--param-dtype",
            "bf16",
            "--state-dtype",
            "bf16",
            "-o",
            o.to_str().expect("o"),
        ];
        if master {
            args.push("--master-weights");
        }
        let (code, err) = optc(&args);
        assert_eq!(code, 0, "{err}");
        let bytes = std::fs::read(&o).expect("output");
        let st = SafeTensors::deserialize(&bytes).expect("safetensors");
        // The same steps through the optimizer API.
        let precision = optc_kernel::Precision {
            param: optc_kernel::Dtype::Bf16,
            state: optc_kernel::Dtype::Bf16,
            master_weights: master,
            stochastic_rounding: None,
        };
        let options = optc_runtime::Options {
            precision,
            allow_fma: false,
            ..optc_runtime::Options::default()
        };
        let rule = optc_runtime::Rule::stdlib("adamw").expect("adamw");
        let mut opt = optc_runtime::Optimizer::with_options(rule, options).expect("opt");
        opt.add_param("w", &[n]).expect("add");
        let mut w = p0.clone();
        for k in 0..steps {
            opt.step([optc_runtime::Update::bf16(
                "w",
                &mut w,
                &gs[k * n..(k + 1) * n],
            )])
            .expect("step");
        }
        let out = st.tensor("w").expect("w");
        assert_eq!(out.dtype(), Dtype::BF16);
        assert_eq!(out.data(), le(&w).as_slice());
        for (state, dtype) in [("m", Dtype::BF16), ("v", Dtype::BF16)] {
            let v = st.tensor(&format!("w.{state}")).expect("state");
            assert_eq!(v.dtype(), dtype, "{state}");
            let want: Vec<u8> = opt
                .states("w")
                .expect("states")
                .iter()
                .find(|(s, _)| *s == state)
                .expect("state")
                .1
                .iter()
                .flat_map(|&x| bf16::from_f32(x).to_bits().to_le_bytes())
                .collect();
            assert_eq!(v.data(), want.as_slice(), "{state}");
        }
        assert_eq!(
            st.tensor("w.master").map(|v| v.dtype()).ok(),
            master.then_some(Dtype::F32)
        );
    }
    // An f32 parameter file with --param-dtype bf16.
    let p32 = d.join("p32.safetensors");
    write(&p32, &[("w", Dtype::F32, vec![n], bytes(&data(n, 1)))]);
    let o = d.join("bad.safetensors");
    let r = optc(&[
        "adamw",
        "--params",
        p32.to_str().expect("p"),
        "--grads",
        g.to_str().expect("g"),
        "--steps",
        "1",
        "--param-dtype",
        "bf16",
        "-o",
        o.to_str().expect("o"),
    ]);
    assert_eq!(r.0, 1, "{}", r.1);
    assert!(
        r.1.contains("tensor `w` is F32, but --param-dtype bf16 reads BF16 tensors"),
        "{}",
        r.1
    );
    std::fs::remove_dir_all(&d).ok();
}

/// `--set ns_steps=N` sets Muon's integer flag: the CLI's result on the interpreter is the one
/// of the rule written with `flag ns_steps = N`, stepped in process; bad counts exit 1.
#[test]
fn run_sets_an_integer_flag() {
    let d = dir("counts");
    let c = case(&d);
    let out = d.join("out.safetensors");
    let (p, g, o) = (
        c.p.to_str().expect("p"),
        c.g.to_str().expect("g"),
        out.to_str().expect("o"),
    );
    let args = |set: &str| {
        let mut a = vec!["muon", "--params", p, "--grads", g, "-o", o];
        a.extend(["--steps", "2", "--target", "interp", "--set", set]);
        a.into_iter().map(String::from).collect::<Vec<_>>()
    };
    let run = |set: &str| {
        let a = args(set);
        let r = optc(&a.iter().map(String::as_str).collect::<Vec<_>>());
        assert_eq!(r.0, 0, "{}", r.1);
        let bytes = std::fs::read(&out).expect("out");
        let st = SafeTensors::deserialize(&bytes).expect("safetensors");
        read_f32(&st, "w")
    };
    let source = optc_compiler::stdlib::source("muon").expect("muon");
    let written = optc_runtime::Rule::from_source(
        "muon.opt",
        &source.replace("flag ns_steps = 5", "flag ns_steps = 2"),
    )
    .expect("parses");
    let options = optc_runtime::Options {
        target: optc_runtime::Target::Interp,
        ..optc_runtime::Options::default()
    };
    let mut opt = optc_runtime::Optimizer::with_options(written, options).expect("opt");
    opt.add_param("w", &[2, 3]).expect("w");
    opt.add_param("b", &[3]).expect("b");
    let (mut w, mut b) = (c.w.clone(), c.b.clone());
    for t in 0..2 {
        opt.step([
            optc_runtime::Update::new("w", &mut w, &c.gw[t * 6..(t + 1) * 6]),
            optc_runtime::Update::new("b", &mut b, &c.gb[t * 3..(t + 1) * 3]),
        ])
        .expect("step");
    }
    let two = run("ns_steps=2");
    assert_eq!(two, bits(&w));
    assert_ne!(two, run("ns_steps=5"));

    for (set, needle) in [
        (
            "ns_steps=2.5",
            "`--set ns_steps=2.5`: an integer flag is a repeat count: a whole number from 0 to 99",
        ),
        ("ns_steps=100", "from 0 to 99"),
        ("ns_step=3", "(did you mean `ns_steps`?)"),
    ] {
        let a = args(set);
        let r = optc(&a.iter().map(String::as_str).collect::<Vec<_>>());
        assert_eq!(r.0, 1, "{set}: {}", r.1);
        assert!(r.1.contains(needle), "{set}: {}", r.1);
    }
}

/// `optc run --target cuda` with 16-bit parameters and int8 or bf16 states reaches the CUDA
/// executor: without a driver it fails with the driver's error (exit 1), not a dtype refusal.
#[cfg(feature = "cuda")]
#[test]
fn run_on_cuda_takes_every_storage_setting_to_the_executor() {
    use half::bf16;
    if optc_runtime::cuda::driver_available() {
        eprintln!("SKIPPED: a CUDA driver is present; this test covers machines without one");
        return;
    }
    let d = dir("cuda-dtypes");
    let n = 37usize;
    let le = |v: &[f32]| {
        v.iter()
            .flat_map(|&x| bf16::from_f32(x).to_bits().to_le_bytes())
            .collect::<Vec<u8>>()
    };
    let (p, g) = (d.join("p.safetensors"), d.join("g.safetensors"));
    write(&p, &[("w", Dtype::BF16, vec![n], le(&data(n, 1)))]);
    write(&g, &[("w", Dtype::BF16, vec![1, n], le(&data(n, 2)))]);
    for extra in [
        &["--state-dtype", "int8"][..],
        &["--state-dtype", "bf16", "--master-weights"],
        &["--stochastic-rounding"],
    ] {
        let o = d.join("out.safetensors");
        let mut args = vec![
            "adamw",
            "--target",
            "cuda",
            "--params",
            p.to_str().expect("p"),
            "--grads",
            g.to_str().expect("g"),
            "--steps",
            "1",
            "--param-dtype",
            "bf16",
            "-o",
            o.to_str().expect("o"),
        ];
        args.extend_from_slice(extra);
        let (code, out) = optc(&args);
        assert_eq!(code, 1, "{extra:?}: {out}");
        assert!(out.contains("no CUDA driver"), "{extra:?}: {out}");
        assert!(!o.exists(), "{extra:?}: wrote an output");
    }
}
