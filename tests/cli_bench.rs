//! `optc bench` works end to end and reports what it promises. No timing is asserted: speed is
//! measured by running the benchmark (BENCHMARKS.md), never by tests.

use std::process::Command;

fn bench(args: &[&str]) -> (i32, String, String) {
    let out = Command::new(env!("CARGO_BIN_EXE_optc"))
        .arg("bench")
        .args(args)
        .output()
        .expect("run optc");
    (
        out.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

#[test]
fn json_report_has_the_promised_fields() {
    let (code, out, err) = bench(&[
        "adamw",
        "--n",
        "5000",
        "--tensors",
        "3",
        "--iters",
        "2",
        "--warmup",
        "1",
        "--threads",
        "2",
        "--json",
    ]);
    assert_eq!(code, 0, "{err}");
    let last = out.lines().last().unwrap_or_default();
    let v: serde_json::Value = serde_json::from_str(last).expect("last line is JSON");
    for key in [
        "elements_per_s",
        "bytes_per_s",
        "probe_bytes_per_s",
        "fraction_of_probe",
    ] {
        assert!(v[key].as_f64().is_some_and(|x| x > 0.0), "{key} in {last}");
    }
    assert_eq!(v["elements"], 5000);
    assert_eq!(v["tensors"], 3);
    assert_eq!(v["threads"], 2);
    assert_eq!(
        v["bytes_per_element"].as_f64(),
        Some(28.0),
        "AdamW moves p, g, m, v in and p, m, v out"
    );
    assert_eq!(v["passes"], 1);
    // The time from source to the runnable kernel, phase by phase (medians of repetitions).
    let compile = &v["compile"];
    for key in [
        "total_s",
        "parse_s",
        "check_s",
        "flag_sets_s",
        "specialize_s",
        "jit_s",
        "clif_s",
    ] {
        assert!(
            compile[key].as_f64().is_some_and(|x| x > 0.0),
            "compile.{key} in {last}"
        );
    }
    assert!(compile["reps"].as_u64().is_some_and(|r| r >= 5), "{last}");
    let ratio = v["bytes_per_s"].as_f64().unwrap_or_default()
        / v["probe_bytes_per_s"].as_f64().unwrap_or(1.0);
    assert!((ratio - v["fraction_of_probe"].as_f64().unwrap_or_default()).abs() < 1e-9);
}

#[test]
fn flags_change_the_kernel_and_bad_input_is_an_error() {
    let (code, out, err) = bench(&[
        "adamw",
        "--n",
        "1000",
        "--iters",
        "1",
        "--warmup",
        "0",
        "--set",
        "amsgrad=true",
        "--json",
    ]);
    assert_eq!(code, 0, "{err}");
    let v: serde_json::Value =
        serde_json::from_str(out.lines().last().unwrap_or_default()).expect("json");
    assert_eq!(
        v["bytes_per_element"].as_f64(),
        Some(36.0),
        "amsgrad adds v_max: read and written"
    );
    let (code, _, err) = bench(&["adamw", "--n", "2", "--tensors", "3"]);
    assert_eq!(code, 1);
    assert!(err.contains("cannot split --n 2 into --tensors 3"), "{err}");
    let (code, _, err) = bench(&["adamw", "--set", "lr=fast"]);
    assert_eq!(code, 1);
    assert!(err.contains("hyper `lr` takes a number"), "{err}");
}

/// A rule with rank classes over matrices and vectors at once (lars on a matrix and a vector):
/// each kernel's bytes weighted by its elements, each with its own probe; adafactor on a matrix
/// (`--shape`) is its factored kernel, 24 bytes per element over 3 passes.
#[test]
fn rank_class_rules_bench_over_mixed_shapes_and_matrices() {
    let (code, out, err) = bench(&[
        "adafactor",
        "--shape",
        "300,200",
        "--iters",
        "1",
        "--warmup",
        "0",
        "--json",
    ]);
    assert_eq!(code, 0, "{err}");
    let v: serde_json::Value =
        serde_json::from_str(out.lines().last().unwrap_or_default()).expect("json");
    assert_eq!(v["bytes_per_element"].as_f64(), Some(24.0), "{v}");
    assert_eq!(v["passes"], 3);
    assert_eq!(v["rank"], "matrix");
    // lars: a [100, 30] matrix (28 B/element over 2 passes) and a [1000] vector (20 B/element,
    // 1 pass): (28 * 3000 + 20 * 1000) / 4000 = 26.
    let (code, out, err) = bench(&[
        "lars", "--shape", "100,30", "--shape", "1000", "--iters", "1", "--warmup", "0", "--json",
    ]);
    assert_eq!(code, 0, "{err}");
    let v: serde_json::Value =
        serde_json::from_str(out.lines().last().unwrap_or_default()).expect("json");
    assert_eq!(v["bytes_per_element"].as_f64(), Some(26.0), "{v}");
    assert_eq!(v["passes"], 2);
    assert_eq!(v["tensors"], 2);
    let (code, _, err) = bench(&["adafactor", "--shape", "3,0"]);
    assert_eq!(code, 1);
    assert!(err.contains("expected positive dims"), "{err}");
}

#[test]
fn storage_dtypes_set_the_bytes_moved_and_the_state_bytes() {
    // adamw reads p, g, m, v and writes p, m, v: 7 values of 2 bytes in bf16 (14 B/element),
    // with 2 bf16 states (4 B of state per parameter); a master adds an f32 read and write and
    // 4 B of state.
    for (extra, bytes, state) in [
        (&[][..], 28.0, 8.0),
        (
            &["--param-dtype", "bf16", "--state-dtype", "bf16"][..],
            14.0,
            4.0,
        ),
        (
            &[
                "--param-dtype",
                "bf16",
                "--state-dtype",
                "bf16",
                "--master-weights",
            ][..],
            20.0,
            8.0,
        ),
        (
            &[
                "--param-dtype",
                "f16",
                "--stochastic-rounding",
                "--sr-seed",
                "5",
            ][..],
            22.0,
            8.0,
        ),
    ] {
        let mut args = vec![
            "adamw", "--n", "4099", "--iters", "1", "--warmup", "0", "--json",
        ];
        args.extend_from_slice(extra);
        let (code, out, err) = bench(&args);
        assert_eq!(code, 0, "{extra:?}: {err}");
        let last = out.lines().last().unwrap_or_default();
        let v: serde_json::Value = serde_json::from_str(last).expect("last line is JSON");
        assert_eq!(
            v["bytes_per_element"].as_f64(),
            Some(bytes),
            "{extra:?}: {last}"
        );
        assert_eq!(
            v["state_bytes_per_param"].as_f64(),
            Some(state),
            "{extra:?}: {last}"
        );
    }
    let (code, _, err) = bench(&["adamw", "--n", "10", "--master-weights"]);
    assert_eq!(code, 1);
    assert!(
        err.contains("--master-weights needs a 16-bit parameter"),
        "{err}"
    );
}

#[test]
fn int8_states_take_about_two_bytes_per_parameter() {
    // adamw's m and v as int8 codes (1 B each per element) plus one f32 absmax per block of
    // 256 elements per state (optc_kernel::quant::QUANT_BLOCK): 2 + 2 * 4 / 256 = 2.03125 B per
    // parameter on one tensor of 2^20 elements; p and g stay f32 (read p, g, m, v: 4 + 4 + 1 + 1,
    // write p, m, v: 4 + 1 + 1 = 16 B moved per element).
    let (code, out, err) = bench(&[
        "adamw",
        "--n",
        "1048576",
        "--iters",
        "1",
        "--warmup",
        "0",
        "--state-dtype",
        "int8",
        "--json",
    ]);
    assert_eq!(code, 0, "{err}");
    let last = out.lines().last().unwrap_or_default();
    let v: serde_json::Value = serde_json::from_str(last).expect("last line is JSON");
    assert_eq!(v["tensors"].as_u64(), Some(1), "{last}");
    assert_eq!(v["state_dtype"].as_str(), Some("int8"), "{last}");
    let state = v["state_bytes_per_param"].as_f64().expect("state bytes");
    assert!(state <= 2.1, "{last}");
    assert_eq!(state, 2.0 + 2.0 * 4.0 / 256.0, "{last}");
    assert_eq!(v["bytes_per_element"].as_f64(), Some(16.0), "{last}");
}

/// `optc bench --target cuda` with 16-bit parameters and int8 states reaches the CUDA executor:
/// without a driver it fails with the driver's error (exit 1), not a dtype refusal.
#[cfg(feature = "cuda")]
#[test]
fn cuda_bench_takes_every_storage_setting_to_the_executor() {
    if optc_runtime::cuda::driver_available() {
        eprintln!("SKIPPED: a CUDA driver is present; this test covers machines without one");
        return;
    }
    for extra in [
        &["--param-dtype", "bf16", "--state-dtype", "int8"][..],
        &[
            "--param-dtype",
            "f16",
            "--state-dtype",
            "bf16",
            "--master-weights",
        ],
        &["--state-dtype", "int8"],
    ] {
        let mut args = vec![
            "adamw", "--target", "cuda", "--n", "5000", "--iters", "1", "--warmup", "0",
        ];
        args.extend_from_slice(extra);
        let (code, _, err) = bench(&args);
        assert_eq!(code, 1, "{extra:?}: {err}");
        assert!(err.contains("no CUDA driver"), "{extra:?}: {err}");
    }
}
