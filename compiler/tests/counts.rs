//! Integer flags set after parsing (`Rule::with_counts`): the same kernels as the source written
//! with that count, and clear errors for names and values a rule cannot take.

use optc_compiler::{stdlib, CompileOptions, RankClass, Rule};
use optc_kernel::matrix::MatExpr;
use optc_kernel::Kernel;

fn muon() -> Rule {
    stdlib::rule("muon").expect("muon").expect("compiles")
}

fn matrix_kernel(r: &Rule) -> Kernel {
    let options = CompileOptions {
        rank: RankClass::Matrix,
        ..CompileOptions::default()
    };
    r.specialize_with(&[], &options).expect("specialize")
}

fn products(k: &Kernel) -> usize {
    k.stages
        .iter()
        .filter_map(|s| s.matrix.as_ref())
        .flat_map(|p| &p.nodes)
        .filter(|n| matches!(n, MatExpr::MatMul(..)))
        .count()
}

#[test]
fn a_count_set_after_parsing_compiles_as_if_written_in_the_source() {
    let source = stdlib::source("muon").expect("muon");
    assert!(source.contains("flag ns_steps = 5"));
    for steps in [0u32, 1, 3, 7] {
        let set = muon().with_counts(&[("ns_steps", steps)]).expect("count");
        assert_eq!(set.counts(), [("ns_steps".to_string(), steps)]);
        let written = Rule::parse(
            "stdlib/muon.opt",
            &source.replace("flag ns_steps = 5", &format!("flag ns_steps = {steps}")),
        )
        .expect("parses");
        let (a, b) = (matrix_kernel(&set), matrix_kernel(&written));
        assert_eq!(a, b, "ns_steps = {steps}");
        // Three products per Newton–Schulz step.
        assert_eq!(products(&a), 3 * steps as usize);
    }
    assert_eq!(products(&matrix_kernel(&muon())), 15);
}

#[test]
fn bad_counts_are_clear_errors() {
    let err = |r: &Rule, name: &str, v: u32| {
        r.with_counts(&[(name, v)])
            .expect_err("an error")
            .to_string()
    };
    let e = err(&muon(), "ns_step", 3);
    assert!(
        e.contains("has no integer flag `ns_step`") && e.contains("did you mean `ns_steps`?"),
        "{e}"
    );
    let e = err(&muon(), "nesterov", 1);
    assert!(
        e.contains("has no integer flag `nesterov`") && e.contains("`ns_steps`"),
        "{e}"
    );
    let e = err(&muon(), "ns_steps", 100);
    assert!(
        e.contains("from 0 to 99") && e.contains("100 is too large"),
        "{e}"
    );
    let adamw = stdlib::rule("adamw").expect("adamw").expect("compiles");
    let e = err(&adamw, "ns_steps", 3);
    assert!(e.contains("it declares none"), "{e}");
    let e = muon()
        .with_counts(&[("ns_steps", 2), ("ns_steps", 3)])
        .expect_err("an error")
        .to_string();
    assert!(e.contains("given twice"), "{e}");
    assert_eq!(optc_compiler::check::parse_count("7"), Ok(7));
    for bad in ["-1", "2.5", "100", "x", ""] {
        assert!(optc_compiler::check::parse_count(bad).is_err(), "{bad}");
    }
}
