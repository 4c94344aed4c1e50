//! Every stdlib rule (the staged ones included), for every flag set and rank class, lowers to Cranelift IR that passes the verifier (with and
//! without FMA; a factored kernel through its row form); the CLIF text of each rule at its default
//! flags is snapshotted with fixed options (no FMA, 2x unrolled, System V).

use optc_compiler::backend::clif::rows::row_form;
use optc_compiler::backend::clif::{emit, emit_text, Error, Options};
use optc_compiler::{stdlib, CompileOptions, RankClass, Rule};
use optc_kernel::{Kernel, Scope, StateShape};

/// Whether the CPU backend lowers `k`: no Row or Col scope, no row- or column-shaped state (the
/// others must be refused with `Error::Unsupported`).
fn lowers(k: &Kernel) -> bool {
    k.reductions
        .iter()
        .all(|r| !matches!(r.scope, Scope::Row | Scope::Col))
        && k.states.iter().all(|s| s.shape == StateShape::Full)
}

fn rules() -> Vec<Rule> {
    stdlib::names()
        .map(|n| match stdlib::rule(n) {
            Some(Ok(r)) => r,
            other => panic!(
                "stdlib rule {n} does not compile: {:?}",
                other.map(|r| r.err())
            ),
        })
        .collect()
}

/// The rank classes a rule is compiled for, with the suffix of their snapshot names.
fn ranks(r: &Rule) -> Vec<(RankClass, &'static str)> {
    if r.uses_rank() {
        vec![
            (RankClass::Matrix, "_matrix"),
            (RankClass::Vector, "_vector"),
        ]
    } else {
        vec![(RankClass::Any, "")]
    }
}

/// The kernel of `r` for `flags` and `rank`.
fn kernel(r: &Rule, flags: &[bool], rank: RankClass) -> Kernel {
    let options = CompileOptions {
        rank,
        ..CompileOptions::default()
    };
    r.specialize_values_with(flags, &options)
        .unwrap_or_else(|e| panic!("{}: {e}", r.name()))
}

#[test]
fn clif_every_stdlib_rule_and_flag_set_verifies() {
    for r in rules() {
        for (flags, (rank, _)) in r
            .flag_sets()
            .into_iter()
            .flat_map(|f| ranks(&r).into_iter().map(move |x| (f.clone(), x)))
        {
            let k = kernel(&r, &flags, rank);
            for fma in [false, true] {
                for unroll in [1, 2] {
                    let opts = Options {
                        fma,
                        unroll,
                        ..Options::default()
                    };
                    match emit(&k, &opts) {
                        // A factored kernel lowers through its row form.
                        Err(Error::Unsupported { .. }) if !lowers(&k) => {
                            let form = row_form(&k).unwrap_or_else(|e| panic!("{}: {e}", r.name()));
                            emit(&form.kernel, &opts)
                                .unwrap_or_else(|e| panic!("{} row form: {e}", r.name()));
                        }
                        Err(e) => panic!("{} {flags:?} fma={fma} unroll={unroll}: {e}", r.name()),
                        Ok(_) if !lowers(&k) => panic!("{}: lowered a row/col kernel", r.name()),
                        Ok(_) => {}
                    }
                }
            }
        }
    }
}

#[test]
fn clif_text_of_every_stdlib_rule() {
    for r in rules() {
        let defaults = r.flag_values(&[]).expect("default flags");
        for (rank, suffix) in ranks(&r) {
            let k = kernel(&r, &defaults, rank);
            let text = if lowers(&k) {
                emit_text(&k, &Options::default()).expect("lowers")
            } else {
                let form = row_form(&k).expect("row form");
                emit_text(&form.kernel, &Options::default()).expect("the row form lowers")
            };
            insta::assert_snapshot!(format!("clif_stdlib_{}{suffix}", r.name()), text);
        }
    }
}
