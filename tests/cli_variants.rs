//! Kernel variants from the command line: `optc compile --emit ir` lists them, and a CUDA
//! artifact carries every variant, which the runtime picks from per step (here on the CPU
//! target, which JIT-compiles the artifact's kernels; the PTX is checked by ptxas elsewhere).

use optc_runtime::{GroupId, Optimizer, Options, Rule, Target, Update};
use std::process::{Command, Output};

fn optc(args: &[&str]) -> Output {
    let out = Command::new(env!("CARGO_BIN_EXE_optc"))
        .args(args)
        .current_dir(env!("CARGO_MANIFEST_DIR"))
        .env("NO_COLOR", "1")
        .output()
        .unwrap_or_else(|e| panic!("cannot run optc: {e}"));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!err.contains("panicked"), "optc panicked:\n{err}");
    out
}

#[test]
fn emit_ir_lists_the_variants() {
    let o = optc(&["compile", "sgd", "--emit", "ir"]);
    assert!(o.status.success());
    let text = String::from_utf8_lossy(&o.stdout);
    assert!(text.contains("c1 = momentum != 0"), "{text}");
    assert!(
        text.contains("v0 (c0=false, c1=false): 12 bytes/element in 1 stage"),
        "{text}"
    );
    assert!(
        text.contains("v2 (c0=false, c1=true): 20 bytes/element in 1 stage"),
        "{text}"
    );
    assert_eq!(text.matches("\nkernel sgd [").count(), 4, "{text}");
    // A rule without conditions prints its one kernel as before.
    let o = optc(&["compile", "adamw", "--emit", "ir"]);
    let text = String::from_utf8_lossy(&o.stdout);
    assert!(text.starts_with("kernel adamw ["), "{text}");
}

#[test]
fn a_cuda_artifact_carries_every_variant() {
    let dir = std::env::temp_dir().join(format!("optc-variants-{}", std::process::id()));
    std::fs::create_dir_all(&dir).expect("dir");
    let path = dir.join("rmsprop.optc.json");
    let o = optc(&[
        "compile",
        "rmsprop",
        "--target",
        "cuda",
        "-o",
        path.to_str().expect("path"),
    ]);
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    let json = std::fs::read_to_string(&path).expect("read");
    std::fs::remove_dir_all(&dir).ok();
    let artifact = optc_kernel::Artifact::from_json(&json).expect("artifact");
    assert_eq!(artifact.format_version, optc_kernel::FORMAT_VERSION);
    let bytes: Vec<usize> = artifact
        .variants
        .iter()
        .map(|v| v.kernel.bytes_per_element())
        .collect();
    assert_eq!(bytes, [20, 20, 28, 28]);
    assert!(artifact.variants.iter().all(|v| v.ptx.is_some()));

    let options = Options {
        target: Target::Cpu,
        allow_fma: false,
        ..Options::default()
    };
    let rule = Rule::from_artifact_json(&json).expect("rule");
    let mut opt = Optimizer::with_options(rule, options).expect("opt");
    opt.add_param("w", &[16]).expect("add");
    assert_eq!(
        opt.kernel(GroupId::DEFAULT).expect("k").bytes_per_element(),
        20
    );
    let (mut w, g) = (vec![0.5f32; 16], vec![0.25f32; 16]);
    opt.step([Update::new("w", &mut w, &g)]).expect("step");
    assert_eq!(opt.states("w").expect("s").len(), 1);
    opt.set_hyper("momentum", 0.5).expect("m");
    opt.step([Update::new("w", &mut w, &g)]).expect("step");
    assert_eq!(opt.compile_count(), 2);
    let names: Vec<String> = opt
        .states("w")
        .expect("s")
        .into_iter()
        .map(|(n, _)| n.to_string())
        .collect();
    assert_eq!(names, ["v", "buf"]);

    // A variant list that does not fit its conditions is refused.
    let mut bad = artifact.clone();
    bad.variants.pop();
    let text = bad.to_json().expect("json");
    let err = optc_kernel::Artifact::from_json(&text).expect_err("3 variants for 2 conditions");
    assert!(
        err.to_string().contains("3 variants for 2 conditions"),
        "{err}"
    );
}
