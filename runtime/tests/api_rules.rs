//! Rules from source and the stdlib: flags per group, one kernel per flag set.
#![cfg(feature = "compiler")]

mod api_support;

use api_support::{bits, data};
use optc_runtime::{GroupId, Optimizer, Options, Rule, Target, Update};

#[test]
fn one_kernel_per_flag_set_and_states_follow_flags() {
    let mut opt = Optimizer::new(Rule::stdlib("adamw").expect("stdlib")).expect("opt");
    let ams = opt.add_group(&[("amsgrad", true)]).expect("group");
    let ams2 = opt.add_group(&[("amsgrad", true)]).expect("group");
    let plain = opt.add_group(&[("amsgrad", false)]).expect("group");
    assert_eq!(opt.compile_count(), 2);
    assert!(std::ptr::eq(
        opt.kernel(ams).expect("k"),
        opt.kernel(ams2).expect("k")
    ));
    assert!(std::ptr::eq(
        opt.kernel(plain).expect("k"),
        opt.kernel(GroupId::DEFAULT).expect("k")
    ));
    opt.add_param("a", &[3]).expect("a");
    opt.add_param_to(ams, "b", &[3]).expect("b");
    let (mut a, mut b, g) = (data(3, 1), data(3, 2), data(3, 3));
    opt.step([Update::new("a", &mut a, &g), Update::new("b", &mut b, &g)])
        .expect("step");
    let names = |n: &str| -> Vec<String> {
        opt.states(n)
            .expect("states")
            .iter()
            .map(|(s, _)| s.to_string())
            .collect()
    };
    assert_eq!(names("a"), ["m", "v"]);
    assert_eq!(names("b"), ["m", "v", "v_max"]);
}

#[test]
fn cpu_and_interp_targets_agree_on_the_stdlib_adamw() {
    let run = |target: Target| {
        let options = Options {
            target,
            threads: Some(2),
            flags: vec![("amsgrad".into(), true)],
            ..Options::default()
        };
        let mut opt =
            Optimizer::with_options(Rule::stdlib("adamw").expect("stdlib"), options).expect("opt");
        opt.add_param("w", &[100_000]).expect("add");
        let mut w = data(100_000, 7);
        for s in 0..3 {
            opt.set_hyper("lr", 0.01 / (s + 1) as f64).expect("lr");
            opt.step([Update::new("w", &mut w, &data(100_000, 50 + s))])
                .expect("step");
        }
        w
    };
    let (cpu, interp) = (run(Target::Cpu), run(Target::Interp));
    // The JIT may fuse multiply-adds; allow a few ulps of the step.
    let worst = cpu
        .iter()
        .zip(&interp)
        .map(|(a, b)| (a - b).abs())
        .fold(0.0f32, f32::max);
    assert!(worst < 1e-6, "worst difference {worst}");
    assert_ne!(
        bits(&cpu),
        bits(&data(100_000, 7)),
        "the step moved the weights"
    );
}

#[test]
fn rule_loading_errors() {
    let e = Rule::stdlib("adamm")
        .err()
        .map(|e| e.to_string())
        .unwrap_or_default();
    assert!(
        e.starts_with("unknown stdlib rule `adamm` (the stdlib has sgd, "),
        "{e}"
    );
    assert!(e.ends_with("; did you mean `adam`?"), "{e}");
    let e = Rule::from_source("bad.opt", "optimizer x\nupdate { p = q }\n")
        .err()
        .map(|e| e.to_string());
    assert!(
        e.as_deref().unwrap_or_default().contains("bad.opt:2:"),
        "{e:?}"
    );
    let e = Rule::from_file("/nonexistent/rule.opt")
        .err()
        .map(|e| e.to_string())
        .unwrap_or_default();
    assert!(e.starts_with("/nonexistent/rule.opt: "), "{e}");
    let rule = Rule::from_source(
        "sgd.opt",
        optc_compiler::stdlib::source("sgd").unwrap_or_default(),
    )
    .expect("sgd");
    assert_eq!(rule.name(), "sgd");
    assert!(rule.hypers().iter().any(|h| h.name == "momentum"));
}

/// `Options::counts` (and `Rule::with_counts`) set an integer flag: Muon with `ns_steps = 2`
/// steps exactly as the rule written with `flag ns_steps = 2`, and not as the default 5.
#[test]
fn integer_flags_are_set_at_run_time() {
    let source = optc_compiler::stdlib::source("muon").expect("muon");
    let run = |rule: Rule, counts: Vec<(String, u32)>| {
        let options = Options {
            target: Target::Interp,
            counts,
            ..Options::default()
        };
        let mut opt = Optimizer::with_options(rule, options).expect("opt");
        opt.add_param("w", &[6, 4]).expect("w");
        let mut w = data(24, 3);
        for s in 0..2 {
            opt.step([Update::new("w", &mut w, &data(24, 10 + s))])
                .expect("step");
        }
        bits(&w)
    };
    let set = run(
        Rule::stdlib("muon").expect("muon"),
        vec![("ns_steps".into(), 2)],
    );
    let written = Rule::from_source(
        "muon2.opt",
        &source.replace("flag ns_steps = 5", "flag ns_steps = 2"),
    )
    .expect("parses");
    assert_eq!(set, run(written, Vec::new()));
    assert_ne!(set, run(Rule::stdlib("muon").expect("muon"), Vec::new()));

    let err = |counts: Vec<(String, u32)>| {
        let options = Options {
            counts,
            ..Options::default()
        };
        match Optimizer::with_options(Rule::stdlib("muon").expect("muon"), options) {
            Ok(_) => panic!("an error"),
            Err(e) => e.to_string(),
        }
    };
    let e = err(vec![("ns_step".into(), 2)]);
    assert!(e.contains("did you mean `ns_steps`?"), "{e}");
    let e = err(vec![("ns_steps".into(), 1000)]);
    assert!(e.contains("from 0 to 99"), "{e}");
    // A prebuilt kernel's counts are fixed.
    let kernel = optc_compiler::stdlib::rule("adamw")
        .expect("adamw")
        .expect("compiles")
        .specialize(&[])
        .expect("kernel");
    let e = Rule::from_kernel(kernel)
        .expect("rule")
        .with_counts(&[("ns_steps", 2)])
        .expect_err("an error")
        .to_string();
    assert!(
        e.contains("prebuilt kernel") && e.contains("ns_steps"),
        "{e}"
    );
}
